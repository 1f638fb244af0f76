//! Models as signed updates on the box (docs/models.md): the catalog the verified
//! metadata walk pins, and the store on the data partition that pulls land in.
//!
//! The store's layout is `llamabox_format::update::models::store`. A model is listed
//! only once its entry is written, and the entry is written only after its blob is
//! complete, verified and renamed into place, so a power cut at any point never lists
//! half a model.
//!
//! A pull resumes where it stopped: the partial file is checked chunk by chunk against
//! the signed index, cut at the first chunk that is not whole and right, and the rest
//! is fetched by range, each chunk hashed before it is written.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use llamabox_format::update::metadata::check_pinned;
use llamabox_format::update::models::{
    blob_path, catalog_path, index_path, store, ModelCatalog, ModelEntry, ModelIndex,
    MAX_CATALOG_LEN,
};
use llamabox_format::update::Target;
use sha2::{Digest, Sha256};

use crate::fetch::Fetcher;
use crate::repository::fetch;
use crate::state::write_atomically;
use crate::{io, Error};

/// Bytes fetched in one range request at most (several chunks, end to end).
const MAX_RANGE: u64 = 16 << 20;
/// Attempts per range before a pull gives up (each resumes after the last good chunk).
const ATTEMPTS: usize = 4;
/// Space left free on the data partition after a pull: logs, chats and the update
/// state must still fit.
pub const RESERVE_BYTES: u64 = 32 << 20;

/// Fetches the catalog the signed `models` target pins.
pub fn fetch_catalog(fetcher: &Fetcher, target: &Target) -> Result<ModelCatalog, Error> {
    let name = catalog_path(&target.sha256);
    let bytes = fetch(fetcher, &name, target.length.min(MAX_CATALOG_LEN))?;
    check_pinned(&name, target.length, &target.sha256, &bytes)?;
    Ok(ModelCatalog::parse(&bytes)?)
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub name: String,
    pub length: u64,
    /// Bytes of a previous, interrupted pull that were verified and kept.
    pub resumed: u64,
    pub downloaded: u64,
    /// It was already installed: nothing was fetched.
    pub already: bool,
}

pub use llamabox_format::update::models::store::Installed;

/// The models on the data partition.
pub struct ModelStore {
    root: PathBuf,
    /// The most the store's models may take together (config `models-max-mib`), so
    /// models never crowd out chats and logs on a shared partition.
    limit: Option<u64>,
}

impl ModelStore {
    pub fn new(root: impl Into<PathBuf>) -> ModelStore {
        ModelStore {
            root: root.into(),
            limit: None,
        }
    }

    pub fn with_limit(mut self, bytes: Option<u64>) -> ModelStore {
        self.limit = bytes;
        self
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn entry_path(&self, name: &str) -> PathBuf {
        store::entry_path(&self.root, name)
    }

    fn blob(&self, sha256: &str) -> PathBuf {
        store::blob_path(&self.root, sha256)
    }

    /// Installed models, by name.
    pub fn installed(&self) -> Result<Vec<Installed>, Error> {
        store::installed(&self.root).map_err(io(format!(
            "reading {}",
            self.root.join("installed").display()
        )))
    }

    pub fn get(&self, name: &str) -> Result<Option<Installed>, Error> {
        Ok(self.installed()?.into_iter().find(|m| m.entry.name == name))
    }

    /// The model loaded at start; None: the factory model.
    pub fn default_model(&self) -> Option<String> {
        store::read_default(&self.root).filter(|name| self.entry_path(name).exists())
    }

    /// Makes an installed model the one loaded at start (None: the factory model).
    pub fn set_default(&self, name: Option<&str>) -> Result<(), Error> {
        let path = store::default_path(&self.root);
        let Some(name) = name else {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io(format!("removing {}", path.display()))(e))
                }
                _ => sync_dir(&self.root),
            };
        };
        if self.get(name)?.is_none() {
            return Err(Error::UnknownModel {
                name: name.to_string(),
                where_: "is installed",
                known: format!("installed: {}", self.names()?),
            });
        }
        write_atomically(&path, format!("{name}\n").as_bytes())?;
        set_readable(&path)
    }

    /// Removes a model: first from the list, then its blob unless another entry uses it.
    /// The default falls back to the factory model if it was this one.
    pub fn delete(&self, name: &str) -> Result<ModelEntry, Error> {
        let Some(model) = self.get(name)? else {
            return Err(Error::UnknownModel {
                name: name.to_string(),
                where_: "is installed",
                known: format!("installed: {}", self.names()?),
            });
        };
        let entry_path = self.entry_path(name);
        std::fs::remove_file(&entry_path)
            .map_err(io(format!("removing {}", entry_path.display())))?;
        sync_dir(&self.dir("installed"))?;
        if !self
            .installed()?
            .iter()
            .any(|m| m.entry.sha256 == model.entry.sha256)
        {
            let _ = std::fs::remove_file(&model.path);
            sync_dir(&self.dir("blobs"))?;
        }
        Ok(model.entry)
    }

    fn names(&self) -> Result<String, Error> {
        let names: Vec<String> = self
            .installed()?
            .into_iter()
            .map(|m| m.entry.name)
            .collect();
        Ok(if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        })
    }

    /// Bytes free for pulls on the store's filesystem, after the reserve.
    pub fn free_bytes(&self) -> Result<u64, Error> {
        std::fs::create_dir_all(&self.root)
            .map_err(io(format!("creating {}", self.root.display())))?;
        let stat = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| io(format!("reading free space of {}", self.root.display()))(e.into()))?;
        let free = (stat.blocks_available() as u64 * stat.fragment_size() as u64)
            .saturating_sub(RESERVE_BYTES);
        Ok(match self.limit {
            Some(limit) => free.min(limit.saturating_sub(self.used_bytes()?)),
            None => free,
        })
    }

    /// What the store's files take: blobs and partial pulls.
    pub fn used_bytes(&self) -> Result<u64, Error> {
        let mut used = 0;
        for dir in ["blobs", "partial"] {
            let Ok(files) = std::fs::read_dir(self.dir(dir)) else {
                continue;
            };
            used += files
                .flatten()
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>();
        }
        Ok(used)
    }

    /// Refuses a pull that cannot fit, before anything is fetched: it needs the model's
    /// length less what an earlier pull already holds.
    fn check_space(&self, entry: &ModelEntry, partial: &Path) -> Result<(), Error> {
        let held = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let needed = entry.length - held.min(entry.length);
        // What the partial file holds is already counted as used under a limit.
        let free = self.free_bytes()?;
        if needed > free {
            return Err(Error::NoSpace {
                model: entry.name.clone(),
                needed,
                free,
            });
        }
        Ok(())
    }

    /// Pulls `entry` from the repository: fetches its signed index, then every chunk not
    /// already in the partial file, each verified before it is written; the whole file
    /// is verified before it is renamed into place and listed. `progress` gets (bytes
    /// verified, total); `cancel` stops the pull between chunks (what it has is kept).
    pub fn pull(
        &self,
        fetcher: &Fetcher,
        entry: &ModelEntry,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &AtomicBool,
    ) -> Result<Pulled, Error> {
        entry.validate().map_err(Error::ModelCatalog)?;
        if let Some(installed) = self.get(&entry.name)? {
            if installed.entry.sha256 == entry.sha256 {
                progress(entry.length, entry.length);
                return Ok(Pulled {
                    name: entry.name.clone(),
                    length: entry.length,
                    resumed: 0,
                    downloaded: 0,
                    already: true,
                });
            }
        }
        for dir in ["blobs", "partial", "installed"] {
            let dir = self.dir(dir);
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let blob = self.blob(&entry.sha256);
        let already_blob = std::fs::metadata(&blob).map(|m| m.len()).ok() == Some(entry.length);
        let partial_path = self.dir("partial").join(&entry.sha256);
        if !already_blob {
            self.check_space(entry, &partial_path)?;
        }

        let index_name = index_path(&entry.index.sha256);
        let index_bytes = fetch(fetcher, &index_name, entry.index.length)?;
        check_pinned(
            &index_name,
            entry.index.length,
            &entry.index.sha256,
            &index_bytes,
        )?;
        let index = ModelIndex::parse(&index_bytes, entry)?;

        let mut pulled = Pulled {
            name: entry.name.clone(),
            length: entry.length,
            resumed: 0,
            downloaded: 0,
            already: false,
        };
        if !already_blob {
            let mut partial = Partial::open(&partial_path, &index)?;
            pulled.resumed = partial.verified;
            progress(partial.verified, entry.length);
            let path = blob_path(&entry.sha256);
            partial.download(fetcher, &path, &entry.name, progress, cancel, &mut pulled)?;
            let sha256 = hex::encode(partial.hasher.clone().finalize());
            if sha256 != entry.sha256 {
                // Every chunk matched its signed hash, so only a wrong index can get
                // here; start over rather than keep bytes that cannot become the model.
                drop(partial);
                let _ = std::fs::remove_file(&partial_path);
                return Err(Error::TamperedModel {
                    name: entry.name.clone(),
                });
            }
            partial
                .file
                .sync_all()
                .map_err(io(format!("writing {}", partial_path.display())))?;
            drop(partial);
            set_readable(&partial_path)?;
            std::fs::rename(&partial_path, &blob)
                .map_err(io(format!("moving {} into place", partial_path.display())))?;
            sync_dir(&self.dir("blobs"))?;
            sync_dir(&self.dir("partial"))?;
        }
        self.write_entry(entry)?;
        Ok(pulled)
    }

    /// Lists the model: its entry written next to, then renamed over, the old one.
    fn write_entry(&self, entry: &ModelEntry) -> Result<(), Error> {
        let path = self.entry_path(&entry.name);
        let mut bytes = serde_json::to_vec_pretty(entry).expect("an entry serializes");
        bytes.push(b'\n');
        write_atomically(&path, &bytes)?;
        set_readable(&path)
    }
}

/// Other services (inference, voice) read models; only the update service writes them.
fn set_readable(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

/// A pull's file in progress: the verified prefix, and the hash of it so far.
struct Partial<'a> {
    file: File,
    index: &'a ModelIndex,
    /// Chunks `..next` are on disk and verified.
    next: usize,
    verified: u64,
    hasher: Sha256,
}

impl<'a> Partial<'a> {
    /// Opens (or creates) the partial file and keeps its longest verified prefix.
    fn open(path: &Path, index: &'a ModelIndex) -> Result<Partial<'a>, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(format!("opening {}", path.display())))?;
        let mut partial = Partial {
            file,
            index,
            next: 0,
            verified: 0,
            hasher: Sha256::new(),
        };
        let on_disk = partial
            .file
            .metadata()
            .map_err(io(format!("reading {}", path.display())))?
            .len();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &partial.file);
        let mut buf = Vec::new();
        for chunk in &index.chunks {
            let end = chunk.offset + u64::from(chunk.length);
            if end > on_disk {
                break;
            }
            buf.resize(chunk.length as usize, 0);
            if reader.read_exact(&mut buf).is_err() || !chunk_matches(&buf, &chunk.sha256) {
                break;
            }
            partial.hasher.update(&buf);
            partial.next += 1;
            partial.verified = end;
        }
        drop(reader);
        partial
            .file
            .set_len(partial.verified)
            .map_err(io(format!("cutting {}", path.display())))?;
        Ok(partial)
    }

    /// Fetches chunks `next..` by range, verifying and appending each.
    fn download(
        &mut self,
        fetcher: &Fetcher,
        blob: &str,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &AtomicBool,
        pulled: &mut Pulled,
    ) -> Result<(), Error> {
        let chunks = &self.index.chunks;
        let total = self.index.length;
        let mut attempt = 0;
        while self.next < chunks.len() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled {
                    name: name.to_string(),
                    kept: self.verified,
                });
            }
            let start = chunks[self.next].offset;
            let mut end = self.next;
            let mut run_end = start + u64::from(chunks[end].length);
            while end + 1 < chunks.len() && run_end - start < MAX_RANGE {
                end += 1;
                run_end += u64::from(chunks[end].length);
            }
            let before = self.next;
            let mut pending: Vec<u8> = Vec::new();
            let Partial {
                file,
                next,
                verified,
                hasher,
                ..
            } = self;
            let mut sink = |mut bytes: &[u8]| -> Result<(), Error> {
                while !bytes.is_empty() {
                    let chunk = &chunks[*next];
                    let take = (chunk.length as usize - pending.len()).min(bytes.len());
                    pending.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if pending.len() == chunk.length as usize {
                        if !chunk_matches(&pending, &chunk.sha256) {
                            return Err(Error::TamperedChunk {
                                file: name.to_string(),
                                index: *next,
                            });
                        }
                        file.write_all_at(&pending, chunk.offset)
                            .map_err(io(format!("writing the model `{name}`")))?;
                        hasher.update(&pending);
                        *verified += u64::from(chunk.length);
                        pulled.downloaded += u64::from(chunk.length);
                        *next += 1;
                        pending.clear();
                        progress(*verified, total);
                        if cancel.load(Ordering::Relaxed) && *next < chunks.len() {
                            return Err(Error::Cancelled {
                                name: name.to_string(),
                                kept: *verified,
                            });
                        }
                    }
                }
                Ok(())
            };
            let result = fetcher.get_range(attempt, blob, start, run_end - start, &mut sink);
            // What is verified is made durable range by range, so a power cut costs at
            // most the range in flight, not the whole pull.
            self.file
                .sync_data()
                .map_err(io(format!("writing the model `{name}`")))?;
            match result {
                Ok(()) => attempt = 0,
                // Wrong bytes, oversized answers and local failures are not a flaky link.
                Err(
                    e @ (Error::TamperedChunk { .. } | Error::Io { .. } | Error::Cancelled { .. }),
                ) => return Err(e),
                Err(Error::Fetch(e @ crate::fetch::FetchError::TooMuchData { .. })) => {
                    return Err(e.into())
                }
                Err(e) => {
                    if self.next == before {
                        attempt += 1;
                    }
                    if attempt >= ATTEMPTS * fetcher.mirror_count().max(1) {
                        return Err(e);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200 * attempt as u64));
                }
            }
        }
        Ok(())
    }
}

fn chunk_matches(bytes: &[u8], sha256: &str) -> bool {
    hex::encode(Sha256::digest(bytes)) == sha256
}
