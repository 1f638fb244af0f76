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
    // The USB link test (xtask/tests/system/phone_link.rs) plays a tethering phone: a TAP device
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

/// A command name, or an absolute path (a glob) for a file.
fn present(what: &str) -> bool {
    if what.starts_with('/') {
        glob::glob(what).is_ok_and(|mut m| m.any(|p| p.is_ok()))
    } else {
        have_command(what)
    }
}

/// The Debian packages missing for building (and booting in QEMU) for `arches`.
pub fn missing_packages(arches: &[Arch]) -> Vec<&'static str> {
    let wanted = HOST_TOOLS
        .iter()
        .chain(FILES)
        .chain(arches.iter().flat_map(|a| a.host_packages()));
    let mut missing: Vec<&str> = wanted
        .filter(|(what, _)| !present(what))
        .map(|(_, p)| *p)
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs what building for `arches` needs: Debian packages (arm64 libraries through
/// Debian multiarch) and Rust targets. Only missing pieces are installed.
pub fn ensure_host_tools(arches: &[Arch]) -> Result<()> {
    let missing = missing_packages(arches);
    if !missing.is_empty() {
        install_packages(&missing)?;
    }
    for arch in arches {
        ensure_rust_target(arch.rust_target(true))?;
        if *arch != Arch::X86_64 {
            ensure_rust_target(arch.rust_target(false))?;
        }
    }
    // The web app's pairing code (services/gateway/pairing) runs in the browser.
    ensure_rust_target(crate::config::WASM_TARGET)
}

fn install_packages(missing: &[&str]) -> Result<()> {
    let mut packages: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
    // QEMU's system emulators must match qemu-utils' version; a machine may come with a
    // newer qemu-utils than its configured suites carry, so take the suite's own.
    if packages.iter().any(|p| p.starts_with("qemu-system")) && have_command("qemu-img") {
        if let Some(codename) = os_codename() {
            packages.push(format!("qemu-utils/{codename}"));
        }
    }
    let foreign: Vec<&str> = packages
        .iter()
        .filter_map(|p| p.split_once(':').map(|(_, a)| a))
        .collect();
    let install = format!(
        "apt-get install -y --allow-downgrades --no-install-recommends {}",
        packages.join(" ")
    );
    let sudo = if is_root() { "" } else { "sudo " };
    if !(have_command("apt-get") && (is_root() || have_command("sudo"))) {
        bail!(
            "missing host packages: {}\n  run: sudo {install}",
            missing.join(" ")
        );
    }
    eprintln!("==> installing host packages: {}", missing.join(" "));
    let mut script = String::new();
    for arch in foreign {
        script += &format!("{sudo}dpkg --add-architecture {arch} && ");
    }
    let install = format!("{sudo}env DEBIAN_FRONTEND=noninteractive {install}");
    if script.is_empty() {
        script = format!("{install} || ({sudo}apt-get update && {install})");
    } else {
        // A new architecture has no package lists until the next update.
        script += &format!("{sudo}apt-get update && {install}");
    }
    let status = Command::new("sh").arg("-c").arg(&script).status()?;
    if !status.success() {
        bail!("installing host packages failed; run `{script}` yourself");
    }
    Ok(())
}

/// The Debian/Ubuntu release codename (`bookworm`), from os-release.
fn os_codename() -> Option<String> {
    std::fs::read_to_string("/etc/os-release")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
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
