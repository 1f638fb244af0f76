//! The signed slot manifest: what stage 1 needs to open a rootfs slot with dm-verity.
//!
//! A slot partition is laid out as
//!
//! ```text
//! [ EROFS root filesystem | dm-verity hash tree | ... unused ... | manifest (last 4 KiB) ]
//! ```
//!
//! The manifest sits in the partition's last 4 KiB so a writer can fill the slot first
//! and commit it by writing the manifest last. Its block is
//!
//! ```text
//! magic "LLBXSLT\x01" | payload length (u32 LE) | JSON payload | key id (8) | ed25519 signature (64)
//! ```
//!
//! and the signature covers a domain-separation prefix followed by the payload bytes.

use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, PublicKey, SecretKey};

pub const MANIFEST_BLOCK_SIZE: usize = 4096;
const MAGIC: &[u8; 8] = b"LLBXSLT\x01";
const SIGNING_CONTEXT: &[u8] = b"llamabox slot manifest v1\0";
const HEADER_LEN: usize = MAGIC.len() + 4;
const TRAILER_LEN: usize = 8 + 64;
const MAX_PAYLOAD: usize = MANIFEST_BLOCK_SIZE - HEADER_LEN - TRAILER_LEN;
/// dm-verity's block size; the EROFS image and hash tree both use it.
pub const VERITY_BLOCK_SIZE: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SlotManifest {
    /// Board this root filesystem was built for; stage 1 refuses others.
    pub board: String,
    /// Image version, as in `image/llamabox.toml`.
    pub version: String,
    /// Length of the EROFS image in bytes (a multiple of the block size).
    pub data_size: u64,
    /// Byte offset of the hash tree within the slot partition.
    pub hash_offset: u64,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub hash_algorithm: String,
    /// dm-verity root hash, hex.
    pub root_hash: String,
    /// dm-verity salt, hex.
    pub salt: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no slot manifest (the slot is empty or its last 4 KiB are damaged)")]
    NoManifest,
    #[error("manifest payload length {0} exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLong(usize),
    #[error("manifest is signed by key {0}, which is not a trusted key")]
    UntrustedKey(KeyId),
    #[error("manifest signature by key {0} does not verify (the manifest was altered)")]
    BadSignature(KeyId),
    #[error("manifest payload is malformed: {0}")]
    Malformed(String),
    #[error("manifest field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A manifest block as read from a slot: not yet trusted.
#[derive(Debug, Clone)]
pub struct SignedManifest {
    payload: Vec<u8>,
    key_id: KeyId,
    signature: [u8; 64],
}

impl SlotManifest {
    /// Signs the manifest and returns its 4 KiB block.
    pub fn sign(&self, key: &SecretKey) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let payload = serde_json::to_vec(self).expect("manifest serializes");
        if payload.len() > MAX_PAYLOAD {
            return Err(ManifestError::TooLong(payload.len()));
        }
        let signed = SignedManifest {
            signature: key.sign(&signing_message(&payload)),
            key_id: key.public().id(),
            payload,
        };
        Ok(signed.encode())
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |field, reason: &str| ManifestError::Invalid {
            field,
            reason: reason.to_string(),
        };
        if self.data_block_size != VERITY_BLOCK_SIZE || self.hash_block_size != VERITY_BLOCK_SIZE {
            return Err(invalid("data-block-size", "block sizes must be 4096"));
        }
        if self.hash_algorithm != "sha256" {
            return Err(invalid("hash-algorithm", "only sha256 is supported"));
        }
        if self.data_size == 0 || !self.data_size.is_multiple_of(u64::from(VERITY_BLOCK_SIZE)) {
            return Err(invalid("data-size", "must be a non-zero multiple of 4096"));
        }
        if self.hash_offset < self.data_size
            || !self
                .hash_offset
                .is_multiple_of(u64::from(VERITY_BLOCK_SIZE))
        {
            return Err(invalid(
                "hash-offset",
                "must be block-aligned and after the data",
            ));
        }
        match hex::decode(&self.root_hash) {
            Ok(h) if h.len() == 32 => {}
            _ => return Err(invalid("root-hash", "must be 32 bytes of hex")),
        }
        match hex::decode(&self.salt) {
            Ok(s) if s.len() <= 256 => {}
            _ => return Err(invalid("salt", "must be at most 256 bytes of hex")),
        }
        Ok(())
    }

    /// Size of the dm-verity hash tree (no superblock): every level up to a single block.
    pub fn hash_tree_size(&self) -> u64 {
        let per_block = u64::from(self.hash_block_size / 32).max(2);
        let mut blocks = self.data_size / u64::from(self.data_block_size.max(1));
        let mut total = 0;
        loop {
            blocks = blocks.div_ceil(per_block);
            total += blocks;
            if blocks <= 1 {
                break;
            }
        }
        total * u64::from(self.hash_block_size)
    }

    /// The device-mapper table line for this slot (in 512-byte sectors), with the data
    /// and the hash tree both on `device`.
    pub fn verity_table(&self, device: &str) -> String {
        let block = u64::from(VERITY_BLOCK_SIZE);
        format!(
            "0 {sectors} verity 1 {device} {device} {block} {block} {blocks} {hash_start} sha256 {root} {salt}",
            sectors = self.data_size / 512,
            blocks = self.data_size / block,
            hash_start = self.hash_offset / block,
            root = self.root_hash,
            salt = if self.salt.is_empty() { "-" } else { &self.salt },
        )
    }
}

fn signing_message(payload: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, payload].concat()
}

impl SignedManifest {
    /// Parses a manifest block. Bounds every length; checks no signature yet.
    pub fn decode(block: &[u8]) -> Result<Self, ManifestError> {
        if block.len() < HEADER_LEN || &block[..MAGIC.len()] != MAGIC {
            return Err(ManifestError::NoManifest);
        }
        let len = u32::from_le_bytes(block[8..12].try_into().unwrap()) as usize;
        if len > MAX_PAYLOAD {
            return Err(ManifestError::TooLong(len));
        }
        let end = HEADER_LEN + len;
        if block.len() < end + TRAILER_LEN {
            return Err(ManifestError::NoManifest);
        }
        let mut key_id = [0; 8];
        key_id.copy_from_slice(&block[end..end + 8]);
        let mut signature = [0; 64];
        signature.copy_from_slice(&block[end + 8..end + TRAILER_LEN]);
        Ok(SignedManifest {
            payload: block[HEADER_LEN..end].to_vec(),
            key_id: KeyId(key_id),
            signature,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut block = Vec::with_capacity(MANIFEST_BLOCK_SIZE);
        block.extend_from_slice(MAGIC);
        block.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        block.extend_from_slice(&self.payload);
        block.extend_from_slice(&self.key_id.0);
        block.extend_from_slice(&self.signature);
        block.resize(MANIFEST_BLOCK_SIZE, 0);
        block
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Checks the signature against the trusted keys, then parses and validates the payload.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<SlotManifest, ManifestError> {
        let key = trusted
            .iter()
            .find(|k| k.id() == self.key_id)
            .ok_or(ManifestError::UntrustedKey(self.key_id))?;
        if !key.verify(&signing_message(&self.payload), &self.signature) {
            return Err(ManifestError::BadSignature(self.key_id));
        }
        let manifest: SlotManifest = serde_json::from_slice(&self.payload)
            .map_err(|e| ManifestError::Malformed(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The payload without checking the signature: for tools that re-sign or inspect.
    pub fn unverified_payload(&self) -> Result<SlotManifest, ManifestError> {
        serde_json::from_slice(&self.payload).map_err(|e| ManifestError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SlotManifest {
        SlotManifest {
            board: "qemu-x86_64".into(),
            version: "0.1.0".into(),
            data_size: 8192,
            hash_offset: 8192,
            data_block_size: 4096,
            hash_block_size: 4096,
            hash_algorithm: "sha256".into(),
            root_hash: "11".repeat(32),
            salt: "22".repeat(32),
        }
    }

    #[test]
    fn signed_manifest_round_trips() {
        let key = SecretKey::generate(&mut rand_core::OsRng);
        let block = sample().sign(&key).unwrap();
        assert_eq!(block.len(), MANIFEST_BLOCK_SIZE);
        let parsed = SignedManifest::decode(&block).unwrap();
        assert_eq!(parsed.verify(&[key.public()]).unwrap(), sample());
    }

    #[test]
    fn untrusted_key_is_refused() {
        let key = SecretKey::generate(&mut rand_core::OsRng);
        let other = SecretKey::generate(&mut rand_core::OsRng);
        let block = sample().sign(&key).unwrap();
        let err = SignedManifest::decode(&block)
            .unwrap()
            .verify(&[other.public()])
            .unwrap_err();
        assert!(matches!(err, ManifestError::UntrustedKey(id) if id == key.public().id()));
    }

    #[test]
    fn any_flipped_payload_byte_breaks_the_signature() {
        let key = SecretKey::generate(&mut rand_core::OsRng);
        let block = sample().sign(&key).unwrap();
        let payload_len = u32::from_le_bytes(block[8..12].try_into().unwrap()) as usize;
        for i in HEADER_LEN..HEADER_LEN + payload_len {
            let mut bad = block.clone();
            bad[i] ^= 0x01;
            let err = SignedManifest::decode(&bad)
                .unwrap()
                .verify(&[key.public()])
                .unwrap_err();
            assert!(
                matches!(err, ManifestError::BadSignature(_)),
                "byte {i}: {err}"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_manifest() {
        assert!(matches!(
            SignedManifest::decode(&[0; 4096]),
            Err(ManifestError::NoManifest)
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.resize(4096, 0);
        assert!(matches!(
            SignedManifest::decode(&huge),
            Err(ManifestError::TooLong(_))
        ));
    }

    #[test]
    fn verity_table_uses_blocks_and_sectors() {
        assert_eq!(
            sample().verity_table("/dev/vda2"),
            format!(
                "0 16 verity 1 /dev/vda2 /dev/vda2 4096 4096 2 2 sha256 {} {}",
                "11".repeat(32),
                "22".repeat(32)
            )
        );
    }
}
