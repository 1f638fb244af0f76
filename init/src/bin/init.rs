//! Stage 2: `/sbin/init`, PID 1 in the verified root.
//!
//! For now it reports that the system came up, records the boot on the data partition,
//! blesses the booted slot, then reaps children and waits for power-off (SIGTERM) or
//! reboot (SIGINT, ctrl-alt-del). The supervisor (services, health gate) grows here.

use std::io::Write;

use llamabox_format::Slot;
use llamabox_init::boot_info::BootInfo;
use llamabox_init::esp::MountedEsp;
use llamabox_init::{cmdline, fs, info, power};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

const BOOT_COUNT: &str = "/var/lib/llamabox/boot-count";

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
    if let Some(slot) = slot {
        bless(slot);
    }
    info!("ready");
    supervise();
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

/// Increments the persistent boot counter and makes it durable before going on.
fn record_boot() -> std::io::Result<u64> {
    let previous: u64 = std::fs::read_to_string(BOOT_COUNT)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let n = previous + 1;
    std::fs::create_dir_all("/var/lib/llamabox")?;
    let tmp = format!("{BOOT_COUNT}.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{n}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, BOOT_COUNT)?;
    std::fs::File::open("/var/lib/llamabox")?.sync_all()?;
    Ok(n)
}

/// Tells the bootloader this slot is good: its entry loses the boot counter.
fn bless(slot: Slot) {
    let esp = match MountedEsp::mount("/efi") {
        Ok(esp) => esp,
        Err(e) => return info!("cannot bless slot {slot}: {e}"),
    };
    match esp.entry(slot) {
        Some(entry) if entry.is_on_trial() => {
            let blessed = entry.blessed();
            match esp.rename(&entry, &blessed) {
                Ok(()) => info!(
                    "slot {slot} blessed: {} -> {}",
                    entry.file_name(),
                    blessed.file_name()
                ),
                Err(e) => info!("cannot bless slot {slot}: {e}"),
            }
        }
        Some(entry) => info!("slot {slot} already blessed ({})", entry.file_name()),
        None => info!("no boot entry for slot {slot} on the ESP"),
    }
    esp.unmount();
}

fn supervise() -> ! {
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        info!("cannot block signals: {e}");
    }
    // Ctrl-alt-del becomes SIGINT to PID 1 instead of an immediate reboot.
    let _ = nix::sys::reboot::set_cad_enabled(false);
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(Signal::SIGTERM) => shutdown(false),
            Ok(Signal::SIGINT) => shutdown(true),
            Ok(_) => {}
            Err(e) => info!("sigwait: {e}"),
        }
    }
}

fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn shutdown(reboot: bool) -> ! {
    info!("{}", if reboot { "rebooting" } else { "powering off" });
    nix::unistd::sync();
    for target in ["/etc/llamabox/local", "/var", "/data"] {
        if let Err(e) = nix::mount::umount(target) {
            info!("cannot unmount {target}: {e}; remounting read-only");
            let _ = nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
    if reboot {
        power::reboot_now()
    } else {
        power::power_off_now()
    }
}
