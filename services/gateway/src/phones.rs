//! Paired phones and their credentials.
//!
//! A phone's credential is a random 256-bit bearer token, handed over sealed at the
//! end of pairing. The box keeps only its SHA-256, so the state file does not let
//! anyone act as a phone. Revoking a phone deletes its entry: its token stops working
//! with the next request, and the gateway ends the streams it has open.
//!
//! Who may revoke whom: the **owner**, the phone paired first (the one that set the box
//! up), may revoke any phone; any phone may revoke itself (unpair). When the owner
//! unpairs, the next-oldest phone becomes the owner. So an app on a later phone cannot
//! lock the owner out, and a lost phone is removed from the owner's phone.

use anyhow::{Context, Result};
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the API shows about a phone (never its token or hash).
#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
pub struct Phone {
    pub id: String,
    pub name: String,
    /// Seconds since the Unix epoch.
    pub paired_at: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct StoreFile {
    phones: Vec<Entry>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Entry {
    #[serde(flatten)]
    phone: Phone,
    token_sha256: String,
}

pub struct Phones {
    path: PathBuf,
    entries: Vec<Entry>,
}

/// Longest phone name kept (what people type as "My phone").
const MAX_NAME_CHARS: usize = 64;

impl Phones {
    pub fn open(path: PathBuf) -> Result<Phones> {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<StoreFile>(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?
                    .phones
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Phones { path, entries })
    }

    pub fn list(&self) -> Vec<Phone> {
        self.entries.iter().map(|e| e.phone.clone()).collect()
    }

    /// Adds a phone; returns it and its token (shown once, to the phone).
    pub fn add(&mut self, name: &str) -> Result<(Phone, String)> {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let mut id = [0u8; 6];
        OsRng.fill_bytes(&mut id);
        let name: String = name.trim().chars().take(MAX_NAME_CHARS).collect();
        let phone = Phone {
            id: hex::encode(id),
            name: if name.is_empty() {
                "phone".into()
            } else {
                name
            },
            paired_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        self.entries.push(Entry {
            phone: phone.clone(),
            token_sha256: token_hash(&token),
        });
        self.save()?;
        Ok((phone, token))
    }

    /// The owner: the phone paired first.
    pub fn owner(&self) -> Option<&Phone> {
        self.entries.first().map(|e| &e.phone)
    }

    /// Whether `by` may revoke `id`: the owner may revoke anyone, a phone itself.
    pub fn may_revoke(&self, by: &str, id: &str) -> bool {
        by == id || self.owner().is_some_and(|owner| owner.id == by)
    }

    /// Removes a phone; false if there is no such phone.
    pub fn revoke(&mut self, id: &str) -> Result<bool> {
        let before = self.entries.len();
        self.entries.retain(|e| e.phone.id != id);
        if self.entries.len() == before {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    /// The phone a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<&Phone> {
        // Comparing hashes: timing can at most reveal a prefix of a SHA-256, which
        // says nothing about the token.
        let hash = token_hash(token);
        self.entries
            .iter()
            .find(|e| e.token_sha256 == hash)
            .map(|e| &e.phone)
    }

    fn save(&self) -> Result<()> {
        let file = StoreFile {
            phones: self.entries.clone(),
        };
        crate::files::write_private(&self.path, &serde_json::to_vec_pretty(&file)?)
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
