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
        put(&fs, path, data)?;
    }
    fs.unmount()?;
    Ok(())
}

/// Writes `data` at `path` (folders separated by `/`, created as needed), replacing
/// what was there.
fn put<IO: fatfs::ReadWriteSeek>(
    fs: &fatfs::FileSystem<IO>,
    path: &str,
    data: &[u8],
) -> Result<()> {
    let parts: Vec<&str> = path.split('/').collect();
    let mut dir = fs.root_dir();
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
        .with_context(|| format!("ESP: writing {path} (is the ESP full?)"))?;
    Ok(())
}

/// Writes one file (creating its folders) into the ESP of an existing disk (image file
/// or block device) whose ESP spans `size` bytes from byte `offset`: how a flashing
/// tool puts a device's own files next to the signed, shared ones.
pub fn write_file(disk: &Path, offset: u64, size: u64, path: &str, data: &[u8]) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| disk.display().to_string())?;
    let fs = open_region(file, offset, size)?;
    put(&fs, path, data)?;
    fs.unmount().context("ESP: unmount")?;
    Ok(())
}

/// Reads one file from the ESP of an existing disk (see `write_file`).
pub fn read_file(disk: &Path, offset: u64, size: u64, path: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(disk).with_context(|| disk.display().to_string())?;
    let fs = open_region(file, offset, size)?;
    let mut data = Vec::new();
    fs.root_dir()
        .open_file(path)
        .with_context(|| format!("ESP: no {path}"))?
        .read_to_end(&mut data)?;
    Ok(data)
}

/// The FAT filesystem in `size` bytes of `file` from byte `offset`.
fn open_region(file: std::fs::File, offset: u64, size: u64) -> Result<fatfs::FileSystem<Region>> {
    let region = Region {
        file,
        offset,
        size,
        pos: 0,
    };
    fatfs::FileSystem::new(region, fatfs::FsOptions::new().time_provider(&FIXED_TIME))
        .context("the ESP is not a FAT filesystem")
}

/// A byte range of a file as a file of its own (one partition of a disk).
struct Region {
    file: std::fs::File,
    offset: u64,
    size: u64,
    pos: u64,
}

impl std::io::Read for Region {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = (buf.len() as u64).min(self.size.saturating_sub(self.pos)) as usize;
        let read = self.file.read_at(&mut buf[..n], self.offset + self.pos)?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl std::io::Write for Region {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = (buf.len() as u64).min(self.size.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let written = self.file.write_at(&buf[..n], self.offset + self.pos)?;
        self.pos += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

impl std::io::Seek for Region {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            std::io::SeekFrom::Start(p) => p as i128,
            std::io::SeekFrom::End(d) => self.size as i128 + d as i128,
            std::io::SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if pos < 0 || pos > self.size as i128 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek outside the partition",
            ));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}
