//! The EFI system partition as a FAT image, written in-process so timestamps and the
//! volume id are fixed (mtools and mkfs.vfat stamp the current time).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Stamps every entry 1980-01-01 00:00:00, the FAT epoch. fatfs's own fallback encodes
/// a zero date (month 0, day 0), which UEFI's FAT driver rejects when systemd-boot
/// renames an entry to count a boot attempt.
#[derive(Debug)]
struct FixedTime;

static FIXED_TIME: FixedTime = FixedTime;

const EPOCH: fatfs::Date = fatfs::Date {
    year: 1980,
    month: 1,
    day: 1,
};

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        EPOCH
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: EPOCH,
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

/// Writes a FAT filesystem of `size` bytes to `out` holding `files` (path on the ESP,
/// contents). Directories are created as needed.
pub fn build(out: &Path, size: u64, volume_id: u32, files: &[(String, Vec<u8>)]) -> Result<()> {
    let mut storage = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| out.display().to_string())?;
    storage.set_len(size)?;
    fatfs::format_volume(
        &mut storage,
        fatfs::FormatVolumeOptions::new()
            .volume_id(volume_id)
            .volume_label(*b"ESP        "),
    )
    .context("formatting the ESP")?;
    let fs = fatfs::FileSystem::new(storage, fatfs::FsOptions::new().time_provider(&FIXED_TIME))?;
    let mut sorted: Vec<_> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, data) in sorted {
        let root = fs.root_dir();
        let mut dir = root.clone();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            dir = match dir.open_dir(part) {
                Ok(d) => d,
                Err(_) => dir
                    .create_dir(part)
                    .with_context(|| format!("ESP: mkdir {part}"))?,
            };
        }
        let mut file = dir
            .create_file(parts[parts.len() - 1])
            .with_context(|| format!("ESP: {path}"))?;
        file.truncate()?;
        file.write_all(data)
            .with_context(|| format!("ESP: writing {path} (is the ESP too small?)"))?;
    }
    fs.unmount()?;
    Ok(())
}
