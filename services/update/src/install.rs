//! Installing a bundle into the inactive slot.
//!
//! Order matters for power cuts (every step may be the last):
//! 1. the inactive slot's boot entry is removed and its manifest block zeroed, so the
//!    half-written slot can never boot (the active slot stays the default);
//! 2. the slot file is written chunk by chunk — chunks already in place (a resumed
//!    install) are kept, chunks the box has (active slot, active boot entry) are copied,
//!    the rest are downloaded with range requests; every chunk is hashed against the
//!    signed index before it is written;
//! 3. the manifest block is written last at the partition's end;
//! 4. the new boot entry is written under a temporary name and renamed into place,
//!    with the next install generation and the board's tries (boot counting).
//!
//! The active slot's partition is opened read-only and nothing writes to it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use llamabox_format::boot_entry::{BootEntry, DIRECTORY};
use llamabox_format::update::bundle::ChunkRef;
use llamabox_format::update::chunk::chunk_stream;
use llamabox_format::update::{BundleFile, BundleIndex};
use llamabox_format::{SignedManifest, Slot, MANIFEST_BLOCK_SIZE};
use sha2::{Digest, Sha256};

use crate::fetch::Fetcher;
use crate::{io, Error};

/// Where the slots and boot entries are.
#[derive(Debug, Clone)]
pub struct Layout {
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    /// The mounted ESP.
    pub esp: PathBuf,
    pub active: Slot,
    /// Boot attempts a new slot gets (the board's `tries`).
    pub tries: u32,
}

impl Layout {
    pub fn partition(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }
}

/// How the bytes of an install were obtained.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub slot: Option<Slot>,
    pub entry: String,
    /// Already in the inactive slot (resumed install).
    pub in_place: u64,
    /// Copied from the active slot or boot entry.
    pub copied: u64,
    /// Downloaded (data bytes, not counting the metadata and index).
    pub downloaded: u64,
    pub total: u64,
}

/// Progress for status displays: bytes done of total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A local copy of a chunk: file and offset.
#[derive(Clone)]
struct Local {
    source: usize,
    offset: u64,
}

/// Ranges of one request are merged up to this size.
const MAX_RANGE: u64 = 16 << 20;
/// Attempts per range before giving up (each resumes after the last verified chunk).
const ATTEMPTS: usize = 6;

pub fn install(
    fetcher: &Fetcher,
    index: &BundleIndex,
    layout: &Layout,
    progress: Progress,
) -> Result<Report, Error> {
    let target = layout.active.other();
    let entries_dir = layout.esp.join(DIRECTORY);
    let entries = boot_entries(&entries_dir)?;
    let generation = entries.iter().map(|e| e.generation).max().unwrap_or(0) + 1;
    // The other slot is the fallback while the running one is on trial: never
    // overwrite the only release known to be good.
    if let Some(running) = entries.iter().find(|e| e.slot == layout.active) {
        if running.counter.is_some() {
            return Err(Error::RunningOnTrial {
                slot: layout.active,
                entry: running.file_name(),
            });
        }
    }

    // 1. Make the inactive slot unbootable before touching it.
    for entry in entries.iter().filter(|e| e.slot == target) {
        let path = entries_dir.join(entry.file_name());
        std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
    }
    sync_dir(&entries_dir)?;
    let partition_path = layout.partition(target);
    let partition = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(partition_path)
        .map_err(io(format!(
            "opening the inactive slot {}",
            partition_path.display()
        )))?;
    let size = device_size(&partition, partition_path)?;
    let slot_file = index.slot();
    let needed = slot_file.length + MANIFEST_BLOCK_SIZE as u64;
    if size < needed {
        return Err(Error::SlotTooSmall {
            needed,
            available: size,
        });
    }
    let manifest_at = size - MANIFEST_BLOCK_SIZE as u64;
    partition
        .write_all_at(&[0; MANIFEST_BLOCK_SIZE], manifest_at)
        .and_then(|()| partition.sync_all())
        .map_err(io("clearing the inactive slot's manifest"))?;

    // 2. What this box already has.
    let active_entry = entries
        .iter()
        .find(|e| e.slot == layout.active)
        .map(|e| entries_dir.join(e.file_name()));
    let mut sources: Vec<File> = Vec::new();
    let mut local: HashMap<String, Local> = HashMap::new();
    index_active_slot(layout, &mut sources, &mut local)?;
    if let Some(path) = active_entry {
        index_file(&path, None, &mut sources, &mut local)?;
    }

    let uki = index.uki(target);
    let total = slot_file.length + uki.length;
    let mut writer = Writer {
        fetcher,
        index,
        sources,
        local,
        report: Report {
            slot: Some(target),
            total,
            ..Report::default()
        },
        done: 0,
        progress,
    };
    writer.write_file("slot", slot_file, &partition)?;
    partition
        .sync_all()
        .map_err(io("flushing the inactive slot"))?;

    // 3. Commit the slot: its manifest, last.
    let manifest = hex::decode(&index.manifest).expect("validated by BundleIndex::parse");
    SignedManifest::decode(&manifest).map_err(|e| Error::ManifestMismatch(e.to_string()))?;
    partition
        .write_all_at(&manifest, manifest_at)
        .and_then(|()| partition.sync_all())
        .map_err(io("writing the inactive slot's manifest"))?;

    // 4. The boot entry, under a temporary name until complete.
    let tmp = entries_dir.join("llamabox-new.tmp");
    let file = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let uki_name = llamabox_format::update::bundle::uki_file(target);
    writer.write_file(&uki_name, uki, &file)?;
    file.sync_all().map_err(io("flushing the new boot entry"))?;
    drop(file);
    let entry = BootEntry::new_trial(generation, target, layout.tries);
    std::fs::rename(&tmp, entries_dir.join(entry.file_name()))
        .map_err(io("installing the new boot entry"))?;
    sync_dir(&entries_dir)?;
    let mut report = writer.report;
    report.entry = entry.file_name();
    Ok(report)
}

fn boot_entries(dir: &Path) -> Result<Vec<BootEntry>, Error> {
    let read = std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))?;
    let mut entries = Vec::new();
    for item in read {
        let item = item.map_err(io(format!("reading {}", dir.display())))?;
        if let Some(entry) = BootEntry::parse(&item.file_name().to_string_lossy()) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("flushing {}", dir.display())))
}

fn device_size(file: &File, path: &Path) -> Result<u64, Error> {
    // Seeking to the end works for block devices and regular files alike.
    let mut file = file;
    file.seek(SeekFrom::End(0))
        .map_err(io(format!("sizing {}", path.display())))
}

/// Chunks the active slot's EROFS and hash tree, as far as its manifest says they go.
fn index_active_slot(
    layout: &Layout,
    sources: &mut Vec<File>,
    local: &mut HashMap<String, Local>,
) -> Result<(), Error> {
    let path = layout.partition(layout.active);
    let file =
        File::open(path).map_err(io(format!("opening the active slot {}", path.display())))?;
    let size = device_size(&file, path)?;
    let mut block = vec![0; MANIFEST_BLOCK_SIZE];
    file.read_exact_at(&mut block, size - MANIFEST_BLOCK_SIZE as u64)
        .map_err(io("reading the active slot's manifest"))?;
    // Unverified is fine: every chunk found here is hashed again before use.
    let length = match SignedManifest::decode(&block).and_then(|m| m.unverified_payload()) {
        Ok(manifest) => manifest.hash_offset + manifest.hash_tree_size(),
        Err(_) => return Ok(()),
    };
    index_file(path, Some(length.min(size)), sources, local)
}

fn index_file(
    path: &Path,
    length: Option<u64>,
    sources: &mut Vec<File>,
    local: &mut HashMap<String, Local>,
) -> Result<(), Error> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let source = sources.len();
    let reader: Box<dyn Read> = match length {
        Some(n) => Box::new(std::io::BufReader::new(&file).take(n)),
        None => Box::new(std::io::BufReader::new(&file)),
    };
    chunk_stream(reader, |chunk, _| {
        local.entry(hex::encode(chunk.sha256)).or_insert(Local {
            source,
            offset: chunk.offset,
        });
    })
    .map_err(io(format!("reading {}", path.display())))?;
    sources.push(file);
    Ok(())
}

/// Writes the bundle's files, chunk by verified chunk, and counts where the bytes came from.
struct Writer<'a> {
    fetcher: &'a Fetcher,
    index: &'a BundleIndex,
    /// Files of this box that hold chunks (`local` points into them).
    sources: Vec<File>,
    local: HashMap<String, Local>,
    report: Report,
    done: u64,
    progress: Progress<'a>,
}

impl Writer<'_> {
    /// Writes `file` into `out`: chunks in place are kept, chunks this box has are copied,
    /// the rest are downloaded.
    fn write_file(&mut self, name: &str, file: &BundleFile, out: &File) -> Result<(), Error> {
        // Where each chunk goes in `out`.
        let mut positions = Vec::with_capacity(file.chunks.len());
        let mut at = 0;
        for chunk in &file.chunks {
            positions.push(at);
            at += u64::from(chunk.length);
        }
        let mut missing: Vec<usize> = Vec::new();
        let mut buf = Vec::new();
        for (i, chunk) in file.chunks.iter().enumerate() {
            buf.resize(chunk.length as usize, 0);
            // Already in place (an install resumed after a power cut)?
            if out.read_exact_at(&mut buf, positions[i]).is_ok() && hash_matches(&buf, chunk) {
                self.report.in_place += u64::from(chunk.length);
            } else if let Some(found) = self.local.get(&chunk.sha256) {
                let read = self.sources[found.source].read_exact_at(&mut buf, found.offset);
                if read.is_ok() && hash_matches(&buf, chunk) {
                    out.write_all_at(&buf, positions[i])
                        .map_err(io(format!("writing `{name}`")))?;
                    self.report.copied += u64::from(chunk.length);
                } else {
                    missing.push(i);
                    continue;
                }
            } else {
                missing.push(i);
                continue;
            }
            self.done += u64::from(chunk.length);
            (self.progress)(self.done, self.report.total);
        }
        self.download(name, file, &missing, &positions, out)
    }

    /// Downloads the `missing` chunks of `file`, merging neighbours in the data file into
    /// one range request, and resuming after the last verified chunk when a transfer breaks.
    fn download(
        &mut self,
        name: &str,
        file: &BundleFile,
        missing: &[usize],
        positions: &[u64],
        out: &File,
    ) -> Result<(), Error> {
        let Writer {
            fetcher,
            index,
            report,
            done,
            progress,
            ..
        } = self;
        // Unique chunks in data-file order, each with every position it is written to.
        let mut by_offset: Vec<(u64, Vec<usize>)> = Vec::new();
        {
            let mut seen: HashMap<u64, usize> = HashMap::new();
            for &i in missing {
                let offset = file.chunks[i].offset;
                match seen.get(&offset) {
                    Some(&at) => by_offset[at].1.push(i),
                    None => {
                        seen.insert(offset, by_offset.len());
                        by_offset.push((offset, vec![i]));
                    }
                }
            }
            by_offset.sort_by_key(|(offset, _)| *offset);
        }
        let data_path = format!("bundles/{}.data", index.data_sha256);
        let mut next = 0;
        while next < by_offset.len() {
            // One run of chunks adjacent in the data file.
            let start = by_offset[next].0;
            let mut end = next;
            let mut run_end = start + u64::from(file.chunks[by_offset[next].1[0]].length);
            while end + 1 < by_offset.len()
                && by_offset[end + 1].0 == run_end
                && run_end - start < MAX_RANGE
            {
                end += 1;
                run_end += u64::from(file.chunks[by_offset[end].1[0]].length);
            }
            let mut attempt = 0;
            loop {
                let first = next;
                let range_start = by_offset[first].0;
                let mut current = first;
                let mut pending: Vec<u8> = Vec::new();
                let mut sink = |mut bytes: &[u8]| -> Result<(), Error> {
                    while !bytes.is_empty() {
                        let (_, targets) = &by_offset[current];
                        let chunk = &file.chunks[targets[0]];
                        let want = chunk.length as usize - pending.len();
                        let take = want.min(bytes.len());
                        pending.extend_from_slice(&bytes[..take]);
                        bytes = &bytes[take..];
                        if pending.len() == chunk.length as usize {
                            if !hash_matches(&pending, chunk) {
                                return Err(Error::TamperedChunk {
                                    file: name.to_string(),
                                    index: targets[0],
                                });
                            }
                            for &i in targets {
                                out.write_all_at(&pending, positions[i])
                                    .map_err(io(format!("writing `{name}`")))?;
                            }
                            report.downloaded += u64::from(chunk.length);
                            *done += u64::from(chunk.length) * targets.len() as u64;
                            progress(*done, report.total);
                            pending.clear();
                            current += 1;
                        }
                    }
                    Ok(())
                };
                let result = fetcher.get_range(
                    attempt,
                    &data_path,
                    range_start,
                    run_end - range_start,
                    &mut sink,
                );
                next = current;
                match result {
                    Ok(()) => break,
                    // Wrong bytes and oversized answers are attacks: no retry.
                    Err(e @ (Error::TamperedChunk { .. } | Error::Io { .. })) => return Err(e),
                    Err(Error::Fetch(e @ crate::fetch::FetchError::TooMuchData { .. })) => {
                        return Err(e.into())
                    }
                    Err(e) => {
                        attempt += 1;
                        if attempt >= ATTEMPTS * fetcher.mirror_count() {
                            return Err(e);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(200 * attempt as u64));
                    }
                }
            }
            next = end + 1;
        }
        Ok(())
    }
}

fn hash_matches(bytes: &[u8], chunk: &ChunkRef) -> bool {
    hex::encode(Sha256::digest(bytes)) == chunk.sha256
}
