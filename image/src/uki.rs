//! Unified kernel images: systemd's EFI stub with the kernel, initramfs, command line
//! and os-release as PE sections, so one signed file describes a whole boot of a slot.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::tool::run;

pub struct UkiParts<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub os_release: &'a str,
}

/// Section addresses as systemd 252's stub expects them (see systemd-stub(7)): the
/// kernel goes high enough that a 16 MiB kernel fits below the initrd.
pub fn build(parts: &UkiParts, work_dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(work_dir)?;
    let osrel = work_dir.join("os-release");
    let cmdline = work_dir.join("cmdline");
    std::fs::write(&osrel, parts.os_release)?;
    std::fs::write(&cmdline, format!("{}\0", parts.cmdline))?;
    let section = |name: &str, file: &Path, vma: &str| {
        [
            "--add-section".to_string(),
            format!("{name}={}", file.display()),
            "--change-section-vma".to_string(),
            format!("{name}={vma}"),
        ]
    };
    let mut cmd = Command::new("objcopy");
    cmd.args(section(".osrel", &osrel, "0x20000"))
        .args(section(".cmdline", &cmdline, "0x30000"))
        .args(section(".linux", parts.kernel, "0x2000000"))
        .args(section(".initrd", parts.initrd, "0x3000000"))
        .arg(parts.stub)
        .arg(out);
    run(&mut cmd).context("assembling the unified kernel image with objcopy")?;
    Ok(())
}
