//! Leaving the running system: sync, then reboot or power off.

use nix::sys::reboot::{reboot, RebootMode};

pub fn reboot_now() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on error; PID 1 must not exit, so wait forever.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

pub fn power_off_now() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
