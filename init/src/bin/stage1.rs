//! Stage 1: `/init` in the initramfs.
//!
//! Mounts the pseudo-filesystems, loads the early modules, verifies the booted slot's
//! signed manifest against the keys baked into this initramfs, opens the slot with
//! dm-verity, mounts the EROFS root read-only, prepares the data partition (formatting
//! it on first boot), switches root and execs stage 2.
//!
//! A slot that fails verification is marked bad on the ESP and the machine reboots, so
//! systemd-boot falls back to the other slot without burning its remaining tries.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use llamabox_format::paths::{BOARD as BOARD_FILE, TRUSTED_KEYS};
use llamabox_format::{PublicKey, SignedManifest, Slot, SlotManifest, MANIFEST_BLOCK_SIZE};
use llamabox_init::boot_info::BootInfo;
use llamabox_init::esp::MountedEsp;
use llamabox_init::{block, cmdline, device_mapper, fs, info, kmod, power};
use nix::mount::MsFlags;

const SYSROOT: &str = "/sysroot";
const DATA_LABEL: &str = "llamabox-data";
const STAGE2: &str = "/sbin/init";

/// Why boot stopped. `Slot` failures are the slot's fault: the slot is marked bad.
enum Failure {
    Slot(String),
    System(String),
}

fn main() {
    let started = Instant::now();
    let mut boot = BootInfo::default();
    match run(&mut boot, started) {
        Ok(never) => match never {},
        Err(Failure::Slot(message)) => {
            info!("slot verification FAILED: {message}");
            mark_booted_slot_bad(&boot);
            info!("rebooting so the bootloader falls back to the other slot");
            power::reboot_now();
        }
        Err(Failure::System(message)) => {
            info!("boot FAILED: {message}");
            info!("rebooting in 5 s");
            std::thread::sleep(Duration::from_secs(5));
            power::reboot_now();
        }
    }
}

fn run(boot: &mut BootInfo, started: Instant) -> Result<std::convert::Infallible, Failure> {
    use Failure::{Slot as SlotFailure, System};

    mount_pseudo_filesystems().map_err(System)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let slot = cmdline::slot(&cmdline).ok_or_else(|| {
        System(format!(
            "no `{}=a|b` on the kernel command line",
            cmdline::SLOT
        ))
    })?;
    boot.set("slot", slot);
    info!("booting slot {slot}");

    let loaded = kmod::load_all().map_err(System)?;
    info!("loaded {loaded} kernel modules");

    // Before anything on the disk is open, so the kernel can re-read its table.
    if let Err(e) = grow_data_partition(boot) {
        info!("the data partition keeps its size: {e}");
    }
    let on_trial = inspect_boot_entry(slot, boot);
    let partition = block::wait_for_label(slot.partition_label(), Duration::from_secs(20))
        .ok_or_else(|| {
            System(format!(
                "no partition labelled `{}` appeared",
                slot.partition_label()
            ))
        })?;
    let device = partition.device.to_string_lossy().into_owned();

    let manifest = verify_manifest(&device, partition.size_bytes).map_err(SlotFailure)?;
    info!(
        "slot {slot}: manifest signed by a trusted key: version {}, root hash {}",
        manifest.version, manifest.root_hash
    );
    boot.set("version", &manifest.version);
    boot.set("root-hash", &manifest.root_hash);

    let verity = device_mapper::create_read_only("llamabox-root", &manifest.verity_table(&device))
        .map_err(System)?;
    if on_trial {
        // A slot on trial is read in full once, so every block is checked before the
        // slot can be blessed; afterwards dm-verity checks blocks as they are read.
        let t = Instant::now();
        scan_every_block(&verity, manifest.data_size)
            .map_err(|e| SlotFailure(format!("slot {slot}: {e}")))?;
        info!(
            "slot {slot}: all {} bytes verified in {:.1} s",
            manifest.data_size,
            t.elapsed().as_secs_f32()
        );
    }
    fs::mount_fs(&verity, SYSROOT, "erofs", MsFlags::MS_RDONLY, None)
        .map_err(|e| SlotFailure(format!("slot {slot}: {e}")))?;

    switch_root().map_err(System)?;
    prepare_data_partition(boot).map_err(System)?;

    boot.set("stage1-ms", started.elapsed().as_millis());
    boot.write().map_err(|e| {
        System(format!(
            "cannot write {}: {e}",
            llamabox_init::boot_info::PATH
        ))
    })?;
    info!("root is verified and mounted read-only; starting stage 2 ({STAGE2})");
    let err = std::process::Command::new(STAGE2).exec();
    Err(System(format!("cannot exec {STAGE2}: {err}")))
}

fn mount_pseudo_filesystems() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    fs::mount_fs("proc", "/proc", "proc", nosuid, None)?;
    fs::mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    // Debian's kernel does not mount devtmpfs by itself (DEVTMPFS_MOUNT is off).
    fs::mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    fs::mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// Reads the slot's boot entry on the ESP. Returns whether the slot is on trial; when the
/// ESP cannot be read the slot is treated as on trial (the safe side: scan it in full).
fn inspect_boot_entry(slot: Slot, boot: &mut BootInfo) -> bool {
    let esp = match MountedEsp::mount("/run/esp") {
        Ok(esp) => esp,
        Err(e) => {
            info!("cannot read the ESP ({e}); treating slot {slot} as on trial");
            return true;
        }
    };
    let entry = esp.entry(slot);
    // Whether a known-good release waits in the other slot: the release check (a
    // critical service) tests a slot on trial only then, as a factory image's first
    // boot has nothing better to fall back to.
    let fallback = match esp.entry(slot.other()) {
        Some(e) if e.is_on_trial() => "unblessed",
        Some(_) => "blessed",
        None => "none",
    };
    boot.set("fallback", fallback);
    copy_device_identity(&esp);
    esp.unmount();
    match entry {
        Some(entry) => {
            let trial = entry.is_on_trial();
            info!(
                "boot entry {} ({})",
                entry.file_name(),
                if trial { "on trial" } else { "blessed" }
            );
            boot.set("entry", entry.file_name());
            boot.set("trial", if trial { "yes" } else { "no" });
            trial
        }
        None => {
            info!("no boot entry for slot {slot} on the ESP; treating it as on trial");
            true
        }
    }
}

/// The box's own identity (setup code), put on the ESP by the flashing tool, goes to
/// `/run` for the gateway, readable by root only until the supervisor hands the gateway's
/// directory to its user. Unprovisioned boxes have none.
fn copy_device_identity(esp: &MountedEsp) {
    use llamabox_format::provisioning::{DeviceIdentity, ESP_PATH, MAX_SIZE, RUN_PATH};
    use std::io::Read;
    let source = esp.root().join(ESP_PATH);
    let Ok(file) = std::fs::File::open(&source) else {
        return;
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_SIZE as u64 + 1).read_to_end(&mut bytes) {
        return info!("cannot read {}: {e}", source.display());
    }
    // Checked here so a damaged file is reported at boot, not later by the gateway.
    if let Err(e) = DeviceIdentity::parse(&bytes) {
        return info!("ignoring {}: {e}", source.display());
    }
    let target = std::path::Path::new(RUN_PATH);
    let written = target
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(target)?
                .write_all(&bytes)
        });
    match written {
        Ok(()) => info!("device identity from the ESP in {RUN_PATH}"),
        Err(e) => info!("cannot write {RUN_PATH}: {e}"),
    }
}

fn mark_booted_slot_bad(boot: &BootInfo) {
    let Some(slot) = boot.get("slot").and_then(Slot::parse) else {
        return;
    };
    let esp = match MountedEsp::mount("/run/esp") {
        Ok(esp) => esp,
        Err(e) => return info!("cannot mark slot {slot} bad: {e}"),
    };
    if let Some(entry) = esp.entry(slot) {
        let bad = entry.marked_bad();
        match esp.rename(&entry, &bad) {
            Ok(()) => info!(
                "marked slot {slot} bad: {} -> {}",
                entry.file_name(),
                bad.file_name()
            ),
            Err(e) => info!("cannot mark slot {slot} bad: {e}"),
        }
    }
    esp.unmount();
}

fn trusted_keys() -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    let dir =
        std::fs::read_dir(TRUSTED_KEYS).map_err(|e| format!("cannot read {TRUSTED_KEYS}: {e}"))?;
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        match PublicKey::parse(&text) {
            Ok(k) => keys.push(k),
            Err(e) => info!("ignoring {}: {e}", entry.path().display()),
        }
    }
    if keys.is_empty() {
        return Err(format!("no trusted keys in {TRUSTED_KEYS}"));
    }
    Ok(keys)
}

fn verify_manifest(device: &str, partition_size: u64) -> Result<SlotManifest, String> {
    let mut block = vec![0u8; MANIFEST_BLOCK_SIZE];
    let mut file = std::fs::File::open(device).map_err(|e| format!("cannot open {device}: {e}"))?;
    file.seek(SeekFrom::Start(partition_size - MANIFEST_BLOCK_SIZE as u64))
        .and_then(|_| file.read_exact(&mut block))
        .map_err(|e| format!("cannot read the manifest of {device}: {e}"))?;
    let keys = trusted_keys()?;
    let manifest = SignedManifest::decode(&block)
        .and_then(|m| m.verify(&keys))
        .map_err(|e| format!("{device}: {e}"))?;
    let board = std::fs::read_to_string(BOARD_FILE).unwrap_or_default();
    if manifest.board != board.trim() {
        return Err(format!(
            "{device}: built for board `{}`, this is `{}`",
            manifest.board,
            board.trim()
        ));
    }
    if manifest.hash_offset + 4096 > partition_size {
        return Err(format!(
            "{device}: hash tree offset {} lies outside the partition",
            manifest.hash_offset
        ));
    }
    Ok(manifest)
}

/// Reads the whole verity device; dm-verity fails the read of any block whose hash does
/// not match the signed tree.
fn scan_every_block(device: &str, size: u64) -> Result<(), String> {
    const CHUNK: usize = 1 << 20;
    let mut file = std::fs::File::open(device).map_err(|e| format!("cannot open {device}: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let want = CHUNK.min((size - offset) as usize);
        if file.read_exact(&mut buf[..want]).is_err() {
            // Find the first failing 4 KiB block in this chunk for the message.
            let mut block = [0u8; 4096];
            for b in (offset..offset + want as u64).step_by(4096) {
                let bad = file
                    .seek(SeekFrom::Start(b))
                    .and_then(|_| file.read_exact(&mut block))
                    .is_err();
                if bad {
                    return Err(format!(
                        "root filesystem block {} (byte offset {b}) does not match its dm-verity hash: the slot is corrupt or was tampered with",
                        b / 4096
                    ));
                }
            }
            return Err(format!(
                "read error in the root filesystem near byte offset {offset}"
            ));
        }
        offset += want as u64;
    }
    Ok(())
}

/// Moves the pseudo-filesystems into the new root and makes it `/`.
fn switch_root() -> Result<(), String> {
    for dir in ["/dev", "/proc", "/sys", "/run"] {
        fs::move_mount(dir, &format!("{SYSROOT}{dir}"))?;
    }
    nix::unistd::chdir(SYSROOT).map_err(|e| format!("chdir {SYSROOT}: {e}"))?;
    fs::move_mount(".", "/")?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// First boot (the data partition is not formatted yet): gives the data partition the
/// rest of the card the image was written to, then has the kernel re-read the table.
fn grow_data_partition(boot: &mut BootInfo) -> Result<(), String> {
    let data = block::wait_for_label(DATA_LABEL, Duration::from_secs(10))
        .ok_or_else(|| format!("no partition labelled `{DATA_LABEL}`"))?;
    if has_ext4_superblock(&data.device.to_string_lossy()) {
        return Ok(());
    }
    let disk = block::disk_of(&data.device)
        .ok_or_else(|| format!("cannot find the disk of {}", data.device.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.device)
        .map_err(|e| format!("cannot open {}: {e}", disk.device.display()))?;
    let Some(grown) =
        llamabox_format::gpt::grow_to_disk_end(&mut file, disk.size_bytes, DATA_LABEL)?
    else {
        return Ok(());
    };
    file.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", disk.device.display()))?;
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    use std::os::fd::AsRawFd;
    // SAFETY: BLKRRPART takes no argument; the descriptor is an open block device.
    unsafe { blkrrpart(file.as_raw_fd()) }
        .map_err(|e| format!("the table grew, but the kernel did not re-read it ({e})"))?;
    drop(file);
    let deadline = Instant::now() + Duration::from_secs(10);
    while block::find_by_label(DATA_LABEL).map(|p| p.size_bytes) != Some(grown.new_bytes) {
        if Instant::now() > deadline {
            return Err("the kernel did not show the grown partition in time".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    info!(
        "first boot: the data partition grew from {} MiB to {} MiB (the rest of the disk)",
        grown.old_bytes >> 20,
        grown.new_bytes >> 20
    );
    boot.set("data-grown-mib", grown.new_bytes >> 20);
    Ok(())
}

/// Mounts the data partition on `/data` (formatting it on first boot), and gives the
/// read-only root its writable places: `/var`, `/etc/llamabox/local` and `/tmp`.
fn prepare_data_partition(boot: &mut BootInfo) -> Result<(), String> {
    let data = block::wait_for_label(DATA_LABEL, Duration::from_secs(10))
        .ok_or_else(|| format!("no partition labelled `{DATA_LABEL}`"))?;
    let device = data.device.to_string_lossy().into_owned();
    if !has_ext4_superblock(&device) {
        info!(
            "first boot: formatting the data partition {device} ({} MiB)",
            data.size_bytes >> 20
        );
        let output = std::process::Command::new("/sbin/mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                DATA_LABEL,
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(&device)
            .output()
            .map_err(|e| format!("cannot run /sbin/mke2fs: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mke2fs {device} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        boot.set("data-formatted", "yes");
    }
    fs::mount_fs(
        &device,
        "/data",
        "ext4",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;
    for dir in ["/data/var", "/data/config"] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    }
    fs::bind("/data/var", "/var")?;
    fs::bind("/data/config", "/etc/llamabox/local")?;
    fs::mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    Ok(())
}

fn has_ext4_superblock(device: &str) -> bool {
    // The ext2/3/4 superblock starts at byte 1024; its magic 0xEF53 is at offset 56.
    let mut magic = [0u8; 2];
    std::fs::File::open(device)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(1024 + 56))?;
            f.read_exact(&mut magic)
        })
        .map(|_| magic == [0x53, 0xEF])
        .unwrap_or(false)
}
