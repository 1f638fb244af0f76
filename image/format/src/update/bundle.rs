//! The bundle: one release of the OS for one board, as chunks.
//!
//! The **index** (JSON, pinned by length and hash in the targets metadata) lists the
//! files to install — `slot` (EROFS ‖ dm-verity hash tree, written from the slot
//! partition's start) and one boot entry per slot (`uki-a`, `uki-b`: the kernel command
//! line names the slot) — each as a sequence of chunks with their SHA-256. The chunks'
//! bytes are in the **data** file, each unique chunk once; a device fetches only the
//! chunks it does not already have, with HTTP range requests. The slot's signed manifest
//! block is in the index and is written last: until then the slot does not boot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::{SignedManifest, MANIFEST_BLOCK_SIZE};
use crate::update::chunk::MAX_CHUNK;
use crate::Slot;

pub const FORMAT: u32 = 1;
/// An index for a 4 GiB slot at the minimum chunk size stays well under this.
pub const MAX_INDEX_LEN: u64 = 64 << 20;
pub const SLOT_FILE: &str = "slot";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle index is {0} bytes, more than the {MAX_INDEX_LEN}-byte limit")]
    TooLong(u64),
    #[error("bundle index is malformed: {0}")]
    Malformed(String),
    #[error("bundle is for board `{found}`, this box is a `{expected}`")]
    WrongBoard { expected: String, found: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// Where the chunk's bytes are in the data file.
    pub offset: u64,
    pub length: u32,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub length: u64,
    pub sha256: String,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleIndex {
    pub format: u32,
    pub board: String,
    pub version: String,
    /// The slot's signed manifest block, hex.
    pub manifest: String,
    /// `slot`, `uki-a`, `uki-b`.
    pub files: BTreeMap<String, BundleFile>,
    /// The data file: `bundles/<data-sha256>.data`.
    pub data_length: u64,
    pub data_sha256: String,
}

pub fn uki_file(slot: Slot) -> String {
    format!("uki-{slot}")
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl BundleIndex {
    /// Parses and checks an index: every length bounded and consistent. Its hash was
    /// checked against the signed targets metadata before this is called.
    pub fn parse(bytes: &[u8]) -> Result<BundleIndex, BundleError> {
        if bytes.len() as u64 > MAX_INDEX_LEN {
            return Err(BundleError::TooLong(bytes.len() as u64));
        }
        let index: BundleIndex =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
        index.validate()?;
        Ok(index)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("index serializes");
        bytes.push(b'\n');
        bytes
    }

    fn validate(&self) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::Malformed(reason));
        if self.format != FORMAT {
            return bad(format!(
                "format {} (this updater reads format {FORMAT})",
                self.format
            ));
        }
        if !is_sha256_hex(&self.data_sha256) {
            return bad("data-sha256 is not a SHA-256 in lowercase hex".into());
        }
        match hex::decode(&self.manifest) {
            Ok(block) if block.len() == MANIFEST_BLOCK_SIZE => {}
            _ => {
                return bad(format!(
                    "manifest is not a {MANIFEST_BLOCK_SIZE}-byte block in hex"
                ))
            }
        }
        for name in [SLOT_FILE.to_string(), uki_file(Slot::A), uki_file(Slot::B)] {
            if !self.files.contains_key(&name) {
                return bad(format!("file `{name}` is missing"));
            }
        }
        for (name, file) in &self.files {
            if !is_sha256_hex(&file.sha256) {
                return bad(format!("file `{name}`: sha256 is not lowercase hex"));
            }
            let mut total: u64 = 0;
            for (i, chunk) in file.chunks.iter().enumerate() {
                if chunk.length == 0 || chunk.length > MAX_CHUNK {
                    return bad(format!(
                        "file `{name}` chunk {i}: length {} is outside 1..={MAX_CHUNK}",
                        chunk.length
                    ));
                }
                if !is_sha256_hex(&chunk.sha256) {
                    return bad(format!(
                        "file `{name}` chunk {i}: sha256 is not lowercase hex"
                    ));
                }
                let end = chunk.offset.checked_add(u64::from(chunk.length));
                if end.is_none_or(|end| end > self.data_length) {
                    return bad(format!(
                        "file `{name}` chunk {i} lies outside the data file"
                    ));
                }
                total += u64::from(chunk.length);
            }
            if total != file.length {
                return bad(format!(
                    "file `{name}`: chunks add up to {total} bytes, the file has {}",
                    file.length
                ));
            }
        }
        Ok(())
    }

    /// Refuses an index built for another board.
    pub fn check_board(&self, board: &str) -> Result<(), BundleError> {
        if self.board != board {
            return Err(BundleError::WrongBoard {
                expected: board.to_string(),
                found: self.board.clone(),
            });
        }
        Ok(())
    }

    /// The manifest block (validated as hex of the right size by `parse`).
    pub fn manifest_block(&self) -> Result<SignedManifest, BundleError> {
        let block =
            hex::decode(&self.manifest).map_err(|e| BundleError::Malformed(e.to_string()))?;
        SignedManifest::decode(&block).map_err(|e| BundleError::Malformed(format!("manifest: {e}")))
    }

    pub fn slot(&self) -> &BundleFile {
        &self.files[SLOT_FILE]
    }

    pub fn uki(&self, slot: Slot) -> &BundleFile {
        &self.files[&uki_file(slot)]
    }
}
