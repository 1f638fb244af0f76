//! Host set-up: the Debian packages and Rust targets the build needs. Missing pieces
//! are installed when we can (root with apt-get), otherwise the error says what to run.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::config::Arch;

/// (command that must exist, Debian package providing it)
const HOST_TOOLS: &[(&str, &str)] = &[
    ("mkfs.erofs", "erofs-utils"),
    ("veritysetup", "cryptsetup-bin"),
    ("objcopy", "binutils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    // llama.cpp (the inference service): llama-cpp-sys-2 builds it with CMake and a C++
    // compiler and generates its bindings with bindgen, which loads libclang.
    ("cmake", "cmake"),
    ("c++", "g++"),
    ("clang", "clang"),
    // The voice service captures through ALSA (cpal links libasound, found by pkg-config);
    // its tests and benchmark speak their sentences with espeak-ng.
    ("pkg-config", "pkg-config"),
    ("espeak-ng", "espeak-ng"),
    // The USB link test (xtask/tests/phone_link.rs) plays a tethering phone: a TAP device
    // in a network namespace (ip) with dnsmasq as the phone's DHCP server.
    ("ip", "iproute2"),
    ("dnsmasq", "dnsmasq-base"),
    // ... and resolves the box's mDNS services there with avahi-browse, through an
    // avahi-daemon on a private D-Bus bus.
    ("avahi-daemon", "avahi-daemon"),
    ("avahi-browse", "avahi-utils"),
    ("dbus-daemon", "dbus"),
    // The web app's end-to-end test drives headless Chromium through chromedriver.
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];
/// (glob that must match a file, Debian package providing it)
const FILES: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ("/usr/lib/llvm-*/lib/libclang.so*", "libclang-dev"),
    ("/usr/lib/*/libasound.so", "libasound2-dev"),
];

fn have_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(name).is_file())
}

pub fn missing_packages() -> Vec<&'static str> {
    let mut missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(c, _)| !have_command(c))
        .map(|(_, p)| *p)
        .collect();
    missing.extend(
        FILES
            .iter()
            .filter(|(f, _)| !glob::glob(f).is_ok_and(|mut m| m.any(|p| p.is_ok())))
            .map(|(_, p)| *p),
    );
    missing.dedup();
    missing
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn ensure_host_tools(arch: Arch) -> Result<()> {
    let missing = missing_packages();
    if !missing.is_empty() {
        let cmd = format!(
            "apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        let sudo = if is_root() { "" } else { "sudo " };
        if have_command("apt-get") && (is_root() || have_command("sudo")) {
            eprintln!("==> installing host packages: {}", missing.join(" "));
            let install = format!("{sudo}env DEBIAN_FRONTEND=noninteractive {cmd}");
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!("{install} || ({sudo}apt-get update && {install})"))
                .status()?;
            if !status.success() {
                bail!("installing host packages failed; run `sudo {cmd}` yourself");
            }
        } else {
            bail!(
                "missing host packages: {}\n  run: sudo {cmd}",
                missing.join(" ")
            );
        }
    }
    ensure_rust_target(arch.rust_target(true))?;
    // The web app's pairing code (services/gateway/pairing) runs in the browser.
    ensure_rust_target(crate::build::WASM_TARGET)
}

fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == target) =>
        {
            Ok(())
        }
        Ok(_) => {
            eprintln!("==> rustup target add {target}");
            let status = Command::new("rustup")
                .args(["target", "add", target])
                .status()?;
            if !status.success() {
                bail!("`rustup target add {target}` failed");
            }
            Ok(())
        }
        // No rustup: the toolchain may still have the target; cargo will say if not.
        Err(_) => Ok(()),
    }
}
