//! Finding block devices by GPT partition label through sysfs (no udev in the initramfs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Partition {
    /// e.g. `/dev/vda2`
    pub device: PathBuf,
    pub size_bytes: u64,
}

/// Looks the label up once.
pub fn find_by_label(label: &str) -> Option<Partition> {
    let entries = std::fs::read_dir("/sys/class/block").ok()?;
    for entry in entries.flatten() {
        let uevent = std::fs::read_to_string(entry.path().join("uevent")).unwrap_or_default();
        let field = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key).map(str::to_string))
        };
        if field("PARTNAME=").as_deref() != Some(label) {
            continue;
        }
        let devname = field("DEVNAME=")?;
        let sectors: u64 = std::fs::read_to_string(entry.path().join("size"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        return Some(Partition {
            device: PathBuf::from("/dev").join(devname),
            size_bytes: sectors * 512,
        });
    }
    None
}

/// Waits for the label to appear: disks are probed asynchronously after their driver loads.
pub fn wait_for_label(label: &str, timeout: Duration) -> Option<Partition> {
    let start = Instant::now();
    loop {
        if let Some(p) = find_by_label(label) {
            if p.device.exists() {
                return Some(p);
            }
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The whole disk a partition is on (`/dev/vda5` → `/dev/vda`) and its size, from sysfs
/// (`/sys/class/block/vda5` lives in the disk's directory).
pub fn disk_of(partition: &std::path::Path) -> Option<Partition> {
    let name = partition.file_name()?;
    let real = std::fs::canonicalize(std::path::Path::new("/sys/class/block").join(name)).ok()?;
    let disk = real.parent()?;
    let sectors: u64 = std::fs::read_to_string(disk.join("size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Partition {
        device: PathBuf::from("/dev").join(disk.file_name()?),
        size_bytes: sectors * 512,
    })
}
