//! Unified kernel images: systemd's EFI stub with the kernel, initramfs, command line
//! and os-release as PE sections, so one signed file describes a whole boot of a slot.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::tool::run;

pub struct UkiParts<'a> {
    /// An objcopy that writes the stub's PE format (x86 or arm64).
    pub objcopy: &'a str,
    pub stub: &'a Path,
    pub kernel: &'a Path,
    /// A flattened device tree systemd-stub installs before starting the kernel.
    pub device_tree: Option<&'a Path>,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub os_release: &'a str,
}

/// Section addresses as systemd 252's stub expects them (see systemd-stub(7)): small
/// sections low, the kernel at 32 MiB and the initrd above it (at 48 MiB when the
/// kernel fits below that, as an x86 one does; an uncompressed arm64 `Image` is ~32 MB).
pub fn build(parts: &UkiParts, work_dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(work_dir)?;
    let osrel = work_dir.join("os-release");
    let cmdline = work_dir.join("cmdline");
    std::fs::write(&osrel, parts.os_release)?;
    std::fs::write(&cmdline, format!("{}\0", parts.cmdline))?;
    let section = |name: &str, file: &Path, vma: u64| {
        [
            "--add-section".to_string(),
            format!("{name}={}", file.display()),
            "--change-section-vma".to_string(),
            format!("{name}={vma:#x}"),
        ]
    };
    const LINUX_AT: u64 = 0x200_0000;
    let kernel_size = std::fs::metadata(parts.kernel)?.len();
    let initrd_at = (LINUX_AT + kernel_size)
        .next_multiple_of(0x20_0000)
        .max(0x300_0000);
    let mut cmd = Command::new(parts.objcopy);
    cmd.args(section(".osrel", &osrel, 0x20000))
        .args(section(".cmdline", &cmdline, 0x30000));
    if let Some(dtb) = parts.device_tree {
        cmd.args(section(".dtb", dtb, 0x40000));
    }
    cmd.args(section(".linux", parts.kernel, LINUX_AT))
        .args(section(".initrd", parts.initrd, initrd_at))
        .arg(parts.stub)
        .arg(out);
    run(&mut cmd).context("assembling the unified kernel image with objcopy")?;
    let mut pe = std::fs::read(out)?;
    make_reproducible(&mut pe)?;
    std::fs::write(out, pe)?;
    Ok(())
}

/// objcopy stamps PE output with the current time (it ignores SOURCE_DATE_EPOCH):
/// zero the COFF timestamp and recompute the optional header's checksum.
fn make_reproducible(pe: &mut [u8]) -> Result<()> {
    let field = |pe: &[u8], at: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            pe.get(at..at + 4)
                .context("truncated PE file")?
                .try_into()?,
        ))
    };
    let coff = field(pe, 0x3c)? as usize + 4;
    if pe.get(coff - 4..coff) != Some(b"PE\0\0") {
        anyhow::bail!("objcopy did not produce a PE file");
    }
    pe[coff + 4..coff + 8].fill(0);
    let checksum_at = coff + 20 + 64;
    field(pe, checksum_at)?;
    pe[checksum_at..checksum_at + 4].fill(0);
    let checksum = pe_checksum(pe);
    pe[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
    Ok(())
}

/// The PE image checksum: 16-bit one's-complement-style sum plus the file length.
fn pe_checksum(pe: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    for chunk in pe.chunks(2) {
        let word = u64::from(chunk[0]) | u64::from(*chunk.get(1).unwrap_or(&0)) << 8;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32) + pe.len() as u32
}
