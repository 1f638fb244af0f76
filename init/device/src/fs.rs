//! Mount helpers with errors that name what failed.

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
