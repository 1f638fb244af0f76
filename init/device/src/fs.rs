//! Mount helpers with errors that name what failed, and durable file writes.

use std::path::Path;

use nix::mount::{mount, MsFlags};

pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| format!("cannot mount {source} ({fstype}) on {target}: {e}"))
}

pub fn bind(source: &str, target: &str) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("cannot bind {source} on {target}: {e}"))
}

pub fn move_mount(source: &str, target: &str) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot move mount {source} to {target}: {e}"))
}

/// Is the filesystem holding `path` mounted read-only?
pub fn is_read_only(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// Replaces `path` with `bytes` so that a power cut leaves the old file or the new one,
/// never a mix: a temporary file beside it, fsynced, renamed over it, then the directory
/// fsynced. Creates the directory if needed.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
