//! Stage 2: `/sbin/init`, PID 1 in the verified root.
//!
//! Records the boot on the data partition, mounts cgroup v2, then runs the supervisor
//! over the shipped and local service files. The supervisor's health gate blesses the
//! booted slot once every critical service has been ready for a grace period, or
//! reboots if that does not happen in time. When the supervisor has stopped every
//! service (SIGTERM: power off; SIGINT or ctrl-alt-del: reboot), PID 1 syncs, unmounts
//! the data partition and leaves.

use std::path::PathBuf;
use std::time::Duration;

use llamabox_format::paths::HEALTH as HEALTH_CONFIG;
use llamabox_format::Slot;
use llamabox_init::boot_info::BootInfo;
use llamabox_init::esp::MountedEsp;
use llamabox_init::{cmdline, fs, info, power};
use llamabox_supervisor::supervisor::{BusConfig, Config, Exit, HealthGate, Supervisor};
use nix::mount::MsFlags;

const BOOT_COUNT: &str = "/var/lib/llamabox/boot-count";
const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

fn main() {
    let boot = BootInfo::read().unwrap_or_default();
    let slot = boot
        .get("slot")
        .and_then(Slot::parse)
        .or_else(|| cmdline::slot(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default()));
    let slot_name = slot.map(|s| s.name()).unwrap_or("unknown");
    info!(
        "stage 2 reached: slot {slot_name}, version {}",
        boot.get("version").unwrap_or("unknown")
    );

    report_root_read_only();
    match record_boot() {
        Ok(n) => info!("boot number {n} recorded in {BOOT_COUNT}"),
        Err(e) => info!("cannot record this boot on the data partition: {e}"),
    }
    let cgroup_root = mount_cgroups();
    // Before any service opens a socket.
    load_firewall();
    open_sound_devices_to_audio();
    // The system bus's socket directory (see the dbus service).
    let _ = std::fs::create_dir_all("/run/dbus");
    let _ = nix::sys::reboot::set_cad_enabled(false); // ctrl-alt-del becomes SIGINT

    let mut supervisor = Supervisor::new(Config {
        service_dirs: vec![
            PathBuf::from("/usr/lib/llamabox/services"),
            PathBuf::from("/etc/llamabox/services"),
            PathBuf::from("/etc/llamabox/local/services"),
        ],
        log_dir: PathBuf::from("/var/log/llamabox"),
        run_dir: PathBuf::from("/run/llamabox"),
        state_file: Some(PathBuf::from("/run/llamabox/supervisor.json")),
        log_max_bytes: 1 << 20,
        log_keep: 4,
        cgroup_root,
        watchdog: Some(PathBuf::from("/dev/watchdog")),
        environment: [(
            "DBUS_SYSTEM_BUS_ADDRESS".to_string(),
            SYSTEM_BUS.to_string(),
        )]
        .into(),
        bus: Some(BusConfig {
            address: SYSTEM_BUS.to_string(),
            broker: "dbus".to_string(),
        }),
    });
    if let Some(slot) = slot {
        let (grace, deadline) = health_timing();
        let version = boot.get("version").unwrap_or("unknown").to_string();
        supervisor.set_health_gate(HealthGate {
            grace,
            deadline,
            on_healthy: Box::new(move || bless(slot)),
            on_refused: Box::new(move |reason| record_refusal(slot, &version, reason)),
        });
    }
    let exit = supervisor.run();
    if exit == Exit::PowerOff {
        supervisor.release_watchdog();
    }
    // Closes the supervisor's log files on /var before unmounting it.
    drop(supervisor);
    shutdown(exit)
}

/// Grace period and deadline of the health gate, from /etc/llamabox/health.toml
/// (`grace-ms`, `deadline-ms`).
fn health_timing() -> (Duration, Duration) {
    let text = std::fs::read_to_string(HEALTH_CONFIG).unwrap_or_default();
    let value = |key: &str, default: u64| {
        text.parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get(key).and_then(|v| v.as_integer()))
            .map(|v| v.max(0) as u64)
            .unwrap_or(default)
    };
    (
        Duration::from_millis(value("grace-ms", 10_000)),
        Duration::from_millis(value("deadline-ms", 300_000)),
    )
}

fn report_root_read_only() {
    let probe = "/.llamabox-write-probe";
    match std::fs::File::create(probe) {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => info!("root filesystem is read-only"),
        Err(e) => info!("root filesystem refused a write: {e}"),
        Ok(_) => {
            let _ = std::fs::remove_file(probe);
            info!("WARNING: root filesystem is writable");
        }
    }
    if !fs::is_read_only(std::path::Path::new("/")) {
        info!("WARNING: / is not mounted read-only");
    }
}

/// Loads the default-deny ruleset (docs/privacy.md) with nft. A box whose firewall
/// cannot load still boots, with the reason on the console: the services themselves
/// send nothing but update GETs (the egress test), and an unreachable box helps no one.
fn load_firewall() {
    const RULESET: &str = llamabox_format::paths::FIREWALL_RULESET;
    if !std::path::Path::new(RULESET).exists() {
        info!("no firewall ruleset in this image");
        return;
    }
    match std::process::Command::new("/usr/sbin/nft")
        .args(["-f", RULESET])
        .output()
    {
        Ok(out) if out.status.success() => info!("firewall loaded ({RULESET})"),
        Ok(out) => info!(
            "WARNING: firewall not loaded: nft {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => info!("WARNING: firewall not loaded: cannot run nft: {e}"),
    }
}

/// Gives the sound devices to the `audio` group (mode 0660): the voice service runs as its
/// own user in that group. Without udev, the kernel creates them root's alone; devices
/// plugged in later stay so until the next boot.
fn open_sound_devices_to_audio() {
    const SOUND: &str = "/dev/snd";
    let Ok(Some(audio)) = nix::unistd::Group::from_name("audio") else {
        info!("no `audio` group: sound devices stay root's");
        return;
    };
    let Ok(entries) = std::fs::read_dir(SOUND) else {
        return; // no sound card
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let opened = nix::unistd::chown(&path, None, Some(audio.gid)).and_then(|()| {
            nix::sys::stat::fchmodat(
                None,
                &path,
                nix::sys::stat::Mode::from_bits_truncate(0o660),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
        });
        if let Err(e) = opened {
            info!("cannot give {} to the audio group: {e}", path.display());
        }
    }
}

/// Increments the persistent boot counter and makes it durable before going on.
fn record_boot() -> std::io::Result<u64> {
    let previous: u64 = std::fs::read_to_string(BOOT_COUNT)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let n = previous + 1;
    fs::write_durably(
        std::path::Path::new(BOOT_COUNT),
        format!("{n}\n").as_bytes(),
    )?;
    Ok(n)
}

/// Mounts cgroup v2 and prepares `/sys/fs/cgroup/llamabox` with the memory and CPU
/// controllers delegated, for services' limits. None when that is not possible.
fn mount_cgroups() -> Option<PathBuf> {
    let root = "/sys/fs/cgroup";
    if let Err(e) = fs::mount_fs(
        "cgroup2",
        root,
        "cgroup2",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    ) {
        info!("{e}; services run without resource limits");
        return None;
    }
    let ours = PathBuf::from(root).join("llamabox");
    let setup = std::fs::write(format!("{root}/cgroup.subtree_control"), "+memory +cpu")
        .and_then(|_| std::fs::create_dir_all(&ours))
        .and_then(|_| std::fs::write(ours.join("cgroup.subtree_control"), "+memory +cpu"));
    if let Err(e) = setup {
        info!("cannot delegate cgroup controllers: {e}");
    }
    Some(ours)
}

/// Tells the bootloader this slot is good: its entry loses the boot counter.
fn bless(slot: Slot) -> Result<String, String> {
    let esp = MountedEsp::mount("/efi")?;
    let result = match esp.entry(slot) {
        Some(entry) if entry.is_on_trial() => {
            let blessed = entry.blessed();
            esp.rename(&entry, &blessed).map(|()| {
                format!(
                    "slot {slot} blessed: {} -> {}",
                    entry.file_name(),
                    blessed.file_name()
                )
            })
        }
        Some(entry) => Ok(format!(
            "slot {slot} already blessed ({})",
            entry.file_name()
        )),
        None => Err(format!("no boot entry for slot {slot} on the ESP")),
    };
    esp.unmount();
    result
}

/// Keeps why this slot was refused on the data partition, durably, before the reboot:
/// the update service reads it after the fallback (`llamabox update status`, the phone).
fn record_refusal(slot: Slot, version: &str, reason: &str) {
    let verdict = llamabox_format::health::Verdict {
        slot: slot.name().to_string(),
        version: version.to_string(),
        reason: reason.to_string(),
    };
    let path = std::path::Path::new(llamabox_format::health::VERDICT);
    if let Err(e) = fs::write_durably(path, verdict.to_json().as_bytes()) {
        info!(
            "cannot record why slot {slot} was refused in {}: {e}",
            path.display()
        );
    }
}

fn shutdown(exit: Exit) -> ! {
    info!(
        "{}",
        if exit == Exit::Reboot {
            "rebooting"
        } else {
            "powering off"
        }
    );
    nix::unistd::sync();
    let mut clean = true;
    for target in ["/etc/llamabox/local", "/var", "/data"] {
        match nix::mount::umount(target) {
            Ok(()) => {}
            Err(e) => {
                clean = false;
                info!("cannot unmount {target}: {e}; remounting it read-only");
                let _ = nix::mount::mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
            }
        }
    }
    if clean {
        info!("data partition unmounted");
    }
    match exit {
        Exit::Reboot => power::reboot_now(),
        Exit::PowerOff => power::power_off_now(),
    }
}
