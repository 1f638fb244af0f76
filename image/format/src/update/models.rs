//! Models as signed updates: the catalog a release publishes beside its OS bundles.
//!
//! The targets metadata names one more target, [`MODELS_TARGET`], whose length and hash
//! pin the **catalog** (JSON): every model the release offers, with what a box needs to
//! decide whether it fits and how to run it. Each catalog entry pins the model's
//! **index** (the file as content-defined chunks, cut like bundles, each with its
//! SHA-256), and the index pins the **blob** (the model file itself). So one chain of
//! signatures covers OS and models, and a box checks every chunk before it writes it
//! and can resume a pull by range after a cut.
//!
//! ```text
//! models/<sha256>.catalog   the catalog (JSON), pinned by the `models` target
//! models/<sha256>.index     one model's chunk list (JSON), pinned by its catalog entry
//! models/<sha256>.blob      the model file, pinned by its index
//! ```
//!
//! Boxes from before this format look only for their board's target and ignore
//! `models`, which is why the catalog is a target of its own and not new fields on
//! [`Target`](super::Target) (those are `deny_unknown_fields` on boxes in the field).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::update::bundle::ChunkRef;
use crate::update::chunk::MAX_CHUNK;

/// The targets entry that pins the catalog.
pub const MODELS_TARGET: &str = "models";
/// The `board` of the models target: models run on every board.
pub const ANY_BOARD: &str = "any";
pub const FORMAT: u32 = 1;
/// A catalog of a few dozen models with their chat templates stays far below this.
pub const MAX_CATALOG_LEN: u64 = 4 << 20;
/// The chunk list of a 64 GiB model at the average chunk size stays below this.
pub const MAX_INDEX_LEN: u64 = 160 << 20;
/// Larger than any model a board of this class can run.
pub const MAX_MODEL_LEN: u64 = 256 << 30;

pub fn catalog_path(sha256: &str) -> String {
    format!("models/{sha256}.catalog")
}
pub fn index_path(sha256: &str) -> String {
    format!("models/{sha256}.index")
}
pub fn blob_path(sha256: &str) -> String {
    format!("models/{sha256}.blob")
}

#[derive(Debug, thiserror::Error)]
pub enum ModelFormatError {
    #[error("{what} is {len} bytes, more than the {limit}-byte limit")]
    TooLong { what: String, len: u64, limit: u64 },
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
}

fn malformed(what: &str, reason: impl ToString) -> ModelFormatError {
    ModelFormatError::Malformed {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// What a model is for: the inference service runs `llm`, the voice service `whisper`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Llm,
    Whisper,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Llm => "llm",
            ModelKind::Whisper => "whisper",
        })
    }
}

/// Length and hash of a file another file names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub length: u64,
    pub sha256: String,
}

/// One model the release offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelEntry {
    /// Ollama-style `family:tag`, lowercase: `gemma3:270m`.
    pub name: String,
    pub kind: ModelKind,
    /// `gguf` (llama.cpp) or `ggml` (whisper.cpp).
    pub format: String,
    /// The model's architecture family (`llama`, `gemma3`, `whisper`).
    pub family: String,
    /// `Q4_1`, `Q4_K_M`, `F16`.
    pub quantization: String,
    /// Parameter count as people write it: `135M`, `268M`, `1.2B`.
    pub parameters: String,
    pub description: String,
    /// The license's name (SPDX id where there is one).
    pub license: String,
    /// The model file: its length and SHA-256 (the blob's name).
    pub length: u64,
    pub sha256: String,
    /// The chunk list.
    pub index: Pin,
    /// A Jinja chat template for a model whose file carries none (as an Ollama
    /// Modelfile's TEMPLATE, in llama.cpp's template language).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Default sampling parameters, by Ollama's option names (`temperature`, `top_k`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
    /// Memory the model needs loaded, weights and a working context, in MiB.
    pub min_memory_mib: u64,
}

/// Everything a release offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCatalog {
    pub format: u32,
    /// The release that published it.
    pub version: String,
    pub models: Vec<ModelEntry>,
}

/// One model file as chunks; the chunks lie end to end in the blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelIndex {
    pub format: u32,
    pub length: u64,
    pub sha256: String,
    pub chunks: Vec<ChunkRef>,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A name a box accepts: `family:tag`, lowercase ASCII letters, digits, `.`, `-`, `_`,
/// at most 80 bytes. It becomes a file name on the box, so nothing else passes.
pub fn is_model_name(name: &str) -> bool {
    let Some((family, tag)) = name.split_once(':') else {
        return false;
    };
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            })
    };
    name.len() <= 80 && part(family) && part(tag)
}

impl ModelCatalog {
    /// Parses a catalog whose hash was checked against the signed target.
    pub fn parse(bytes: &[u8]) -> Result<ModelCatalog, ModelFormatError> {
        const WHAT: &str = "model catalog";
        if bytes.len() as u64 > MAX_CATALOG_LEN {
            return Err(ModelFormatError::TooLong {
                what: WHAT.into(),
                len: bytes.len() as u64,
                limit: MAX_CATALOG_LEN,
            });
        }
        let catalog: ModelCatalog =
            serde_json::from_slice(bytes).map_err(|e| malformed(WHAT, e))?;
        if catalog.format != FORMAT {
            return Err(malformed(
                WHAT,
                format!("format {} (this box reads format {FORMAT})", catalog.format),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for entry in &catalog.models {
            entry.validate().map_err(|reason| malformed(WHAT, reason))?;
            if !names.insert(entry.name.as_str()) {
                return Err(malformed(WHAT, format!("`{}` is listed twice", entry.name)));
            }
        }
        Ok(catalog)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("catalog serializes");
        bytes.push(b'\n');
        bytes
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }
}

impl ModelEntry {
    /// The fields a box turns into paths and sizes are usable.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if !is_model_name(name) {
            return Err(format!(
                "`{name}` is not a model name (family:tag in lowercase letters, digits, `.`, `-`, `_`)"
            ));
        }
        if !is_sha256_hex(&self.sha256) || !is_sha256_hex(&self.index.sha256) {
            return Err(format!("`{name}`: a sha256 is not lowercase hex"));
        }
        if self.length == 0 || self.length > MAX_MODEL_LEN {
            return Err(format!(
                "`{name}`: length {} is outside 1..={MAX_MODEL_LEN}",
                self.length
            ));
        }
        if self.index.length > MAX_INDEX_LEN {
            return Err(format!(
                "`{name}`: its index is {} bytes, more than the {MAX_INDEX_LEN}-byte limit",
                self.index.length
            ));
        }
        Ok(())
    }
}

impl ModelIndex {
    /// Parses an index whose hash was checked against its catalog entry, and checks it
    /// describes `entry`'s file: chunks end to end, bounded, adding up to its length.
    pub fn parse(bytes: &[u8], entry: &ModelEntry) -> Result<ModelIndex, ModelFormatError> {
        let what = format!("index of `{}`", entry.name);
        if bytes.len() as u64 > MAX_INDEX_LEN {
            return Err(ModelFormatError::TooLong {
                what,
                len: bytes.len() as u64,
                limit: MAX_INDEX_LEN,
            });
        }
        let index: ModelIndex = serde_json::from_slice(bytes).map_err(|e| malformed(&what, e))?;
        if index.format != FORMAT {
            return Err(malformed(&what, format!("format {}", index.format)));
        }
        if index.length != entry.length || index.sha256 != entry.sha256 {
            return Err(malformed(
                &what,
                "its length or hash differs from the catalog's",
            ));
        }
        let mut at = 0u64;
        for (i, chunk) in index.chunks.iter().enumerate() {
            if chunk.length == 0 || chunk.length > MAX_CHUNK {
                return Err(malformed(
                    &what,
                    format!(
                        "chunk {i}: length {} is outside 1..={MAX_CHUNK}",
                        chunk.length
                    ),
                ));
            }
            if !is_sha256_hex(&chunk.sha256) {
                return Err(malformed(
                    &what,
                    format!("chunk {i}: sha256 is not lowercase hex"),
                ));
            }
            if chunk.offset != at {
                return Err(malformed(
                    &what,
                    format!("chunk {i} starts at {}, not at {at}", chunk.offset),
                ));
            }
            at += u64::from(chunk.length);
        }
        if at != index.length {
            return Err(malformed(
                &what,
                format!("chunks add up to {at} bytes, the file has {}", index.length),
            ));
        }
        Ok(index)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("index serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// The model store on the box (`paths::MODEL_STORE`): the update service writes it,
/// inference and voice read it. A model is listed once its entry exists; the entry is
/// written only after its blob is complete and verified.
///
/// ```text
/// <store>/blobs/<sha256>          complete, verified model files, named by their hash
/// <store>/partial/<sha256>        a pull in progress: its verified chunks, in order
/// <store>/installed/<name>.json   the catalog entry of an installed model
/// <store>/default                 the model loaded at start, when not the factory one
/// ```
pub mod store {
    use std::path::{Path, PathBuf};
    use std::time::SystemTime;

    use super::ModelEntry;

    pub fn entry_path(root: &Path, name: &str) -> PathBuf {
        root.join("installed").join(format!("{name}.json"))
    }

    pub fn blob_path(root: &Path, sha256: &str) -> PathBuf {
        root.join("blobs").join(sha256)
    }

    /// The model the box loads at start (one line: its name); absent: the factory model.
    pub fn default_path(root: &Path) -> PathBuf {
        root.join("default")
    }

    /// The default model's name, if one is set and it is a valid name.
    pub fn read_default(root: &Path) -> Option<String> {
        let name = std::fs::read_to_string(default_path(root)).ok()?;
        let name = name.trim();
        super::is_model_name(name).then(|| name.to_string())
    }

    /// An installed model: its catalog entry and where its file is.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Installed {
        pub entry: ModelEntry,
        pub path: PathBuf,
        /// When its pull finished (the entry file's time).
        pub modified: SystemTime,
    }

    /// Installed models, by name. An entry that does not parse, or whose blob is missing
    /// or has the wrong length, is not listed (pulls never leave one; a disk can fail).
    pub fn installed(root: &Path) -> std::io::Result<Vec<Installed>> {
        let dir = root.join("installed");
        let files = match std::fs::read_dir(&dir) {
            Ok(files) => files,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut models = Vec::new();
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(entry) = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<ModelEntry>(&bytes).ok())
            else {
                continue;
            };
            if entry.validate().is_err() || path != entry_path(root, &entry.name) {
                continue;
            }
            let blob = blob_path(root, &entry.sha256);
            if std::fs::metadata(&blob).map(|m| m.len()).ok() != Some(entry.length) {
                continue;
            }
            let modified = file
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            models.push(Installed {
                entry,
                path: blob,
                modified,
            });
        }
        models.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        Ok(models)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_cannot_become_paths() {
        for good in [
            "gemma3:270m",
            "smollm2-135m-instruct:q4_1",
            "whisper:base.en",
        ] {
            assert!(is_model_name(good), "{good}");
        }
        for bad in [
            "gemma3",
            "Gemma3:270m",
            "../x:y",
            "a:b/c",
            "a:",
            ":b",
            "a:.hidden",
            "a b:c",
        ] {
            assert!(!is_model_name(bad), "{bad}");
        }
    }

    fn entry(data: &[u8]) -> (ModelEntry, ModelIndex) {
        let chunks = crate::update::chunk::chunk_bytes(data)
            .into_iter()
            .map(|c| ChunkRef {
                offset: c.offset,
                length: c.length,
                sha256: hex::encode(c.sha256),
            })
            .collect();
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
        let index = ModelIndex {
            format: FORMAT,
            length: data.len() as u64,
            sha256: sha256.clone(),
            chunks,
        };
        let bytes = index.to_bytes();
        let entry = ModelEntry {
            name: "tiny:test".into(),
            kind: ModelKind::Llm,
            format: "gguf".into(),
            family: "llama".into(),
            quantization: "Q4_1".into(),
            parameters: "1M".into(),
            description: String::new(),
            license: "MIT".into(),
            length: data.len() as u64,
            sha256,
            index: Pin {
                length: bytes.len() as u64,
                sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            },
            template: None,
            options: BTreeMap::new(),
            min_memory_mib: 1,
        };
        (entry, index)
    }

    #[test]
    fn an_index_must_cover_its_file_end_to_end() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (entry, index) = entry(&data);
        assert!(ModelIndex::parse(&index.to_bytes(), &entry).is_ok());

        let mut gap = index.clone();
        gap.chunks.remove(0);
        let err = ModelIndex::parse(&gap.to_bytes(), &entry).unwrap_err();
        assert!(err.to_string().contains("starts at"), "{err}");

        let mut other = entry.clone();
        other.length += 1;
        let err = ModelIndex::parse(&index.to_bytes(), &other).unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");
    }

    #[test]
    fn a_catalog_refuses_unsafe_names_and_duplicates() {
        let (entry, _) = entry(b"model bytes");
        let mut catalog = ModelCatalog {
            format: FORMAT,
            version: "0.2.0".into(),
            models: vec![entry.clone()],
        };
        assert!(ModelCatalog::parse(&catalog.to_bytes()).is_ok());
        catalog.models.push(entry.clone());
        let err = ModelCatalog::parse(&catalog.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        catalog.models[1].name = "../../etc:passwd".into();
        let err = ModelCatalog::parse(&catalog.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("not a model name"), "{err}");
    }
}
