//! The build cache: every step's output lives in `<cache>/<kind>/<key>/`, where the key
//! hashes everything the step reads. A step whose key exists is not run again; a step
//! is built in a temporary folder and renamed into place, so an interrupted build never
//! leaves a half-written entry behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The build tool itself is an input of every step: a changed builder rebuilds.
fn builder_identity() -> &'static str {
    static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| llamabox_image::sha256_file(&exe).ok())
            .unwrap_or_else(|| "unknown-builder".into())
    })
}

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    /// Where the entry for `(kind, key)` lives. The build tool's own identity is part of
    /// the entry's name, not of `key`: keys also seed generated ids (UUIDs, salts), and
    /// those must not change with the build tool's binary.
    pub fn entry_dir(&self, kind: &str, key: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(builder_identity());
        h.update(key);
        let builder = hex::encode(&h.finalize()[..4]);
        self.dir.join(kind).join(format!("{key}-{builder}"))
    }

    /// Returns the entry for `(kind, key)`, running `build` into it first if it is missing.
    pub fn get_or_build(
        &self,
        kind: &str,
        key: &str,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        get_or_build_at(self.entry_dir(kind, key), build)
    }
}

/// Returns `dir`, running `build` into a temporary sibling first and renaming it into
/// place if `dir` is missing: a reader never sees a half-built `dir`.
pub fn get_or_build_at(dir: PathBuf, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    if dir.exists() {
        return Ok(dir);
    }
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    if let Err(e) = build(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("cannot move {} into the cache", tmp.display()))?;
    Ok(dir)
}

/// Hashes a step's inputs. Every value is labelled and length-prefixed so that two
/// different input lists never hash alike.
pub struct KeyHasher(Sha256);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(Sha256::new())
    }
}

impl KeyHasher {
    pub fn add(&mut self, label: &str, bytes: &[u8]) -> &mut Self {
        for part in [label.as_bytes(), bytes] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    pub fn add_str(&mut self, label: &str, value: &str) -> &mut Self {
        self.add(label, value.as_bytes())
    }

    pub fn add_file(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let digest = llamabox_image::sha256_file(path)?;
        Ok(self.add(label, digest.as_bytes()))
    }

    /// Paths, modes, symlink targets and contents of every entry below `dir`.
    pub fn add_tree(&mut self, label: &str, dir: &Path) -> Result<&mut Self> {
        use std::os::unix::fs::PermissionsExt;
        self.add("tree", label.as_bytes());
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry = entry?;
            let rel = entry
                .path()
                .strip_prefix(dir)?
                .to_string_lossy()
                .into_owned();
            let meta = entry.path().symlink_metadata()?;
            self.add("path", rel.as_bytes());
            self.add("mode", &meta.permissions().mode().to_le_bytes());
            if meta.file_type().is_symlink() {
                self.add(
                    "link",
                    std::fs::read_link(entry.path())?
                        .to_string_lossy()
                        .as_bytes(),
                );
            } else if meta.is_file() {
                self.add_file("file", entry.path())?;
            }
        }
        Ok(self)
    }

    /// 128 bits of the digest, hex: plenty for a cache key, short in paths.
    pub fn finish(&self) -> String {
        hex::encode(&self.0.clone().finalize()[..16])
    }
}
