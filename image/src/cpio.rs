//! A reproducible `newc` cpio archive, the format the kernel unpacks as an initramfs.
//! Entries are written in path order with zero timestamps and root ownership.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

enum Entry {
    Directory { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn directory(&mut self, path: &str) {
        // Parents first: the kernel does not create missing directories.
        let mut prefix = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries
                .entry(prefix.clone())
                .or_insert(Entry::Directory { mode: 0o755 });
        }
    }

    fn parent_of(&mut self, path: &str) -> String {
        let path = path.trim_matches('/').to_string();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.directory(parent);
        }
        path
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = self.parent_of(path);
        self.entries.insert(path, Entry::File { mode, data });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = self.parent_of(path);
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        );
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let path = self.parent_of(path);
        self.entries
            .insert(path, Entry::CharDevice { mode, major, minor });
    }

    /// Adds every file under `dir` (a staged tree) at the archive's root.
    pub fn add_tree(&mut self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name().min_depth(1) {
            let entry = entry?;
            let rel = entry
                .path()
                .strip_prefix(dir)?
                .to_string_lossy()
                .into_owned();
            let meta = entry.path().symlink_metadata()?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                self.symlink(&rel, &target.to_string_lossy());
            } else if meta.is_dir() {
                self.directory(&rel);
            } else {
                let data = std::fs::read(entry.path())
                    .with_context(|| entry.path().display().to_string())?;
                self.file(&rel, meta.permissions().mode() & 0o7777, data);
            }
        }
        Ok(())
    }

    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Directory { mode } => (0o040000 | mode, &[], (0, 0)),
                Entry::File { mode, data } => (0o100000 | mode, data, (0, 0)),
                Entry::Symlink { target } => (0o120777, target.as_bytes(), (0, 0)),
                Entry::CharDevice { mode, major, minor } => {
                    (0o020000 | mode, &[], (*major, *minor))
                }
            };
            push_entry(&mut out, ino as u32 + 1, mode, path, data, rdev);
        }
        push_entry(&mut out, 0, 0, "TRAILER!!!", &[], (0, 0));
        out
    }
}

fn push_entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8], rdev: (u32, u32)) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_deterministic_and_has_parents() {
        let mut a = Archive::default();
        a.file("etc/llamabox/board", 0o644, b"qemu".to_vec());
        a.char_device("dev/console", 0o600, 5, 1);
        let bytes = a.write();
        assert_eq!(bytes, a.write());
        let text = String::from_utf8_lossy(&bytes);
        let etc = text.find("etc\0").unwrap();
        let board = text.find("etc/llamabox/board\0").unwrap();
        assert!(etc < board);
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!"));
        assert_eq!(bytes.len() % 4, 0);
    }
}
