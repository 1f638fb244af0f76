//! ed25519 key files.
//!
//! A key file is text: `#` comment lines, then one line `ed25519-public:<hex>` or
//! `ed25519-secret:<hex>` (the 32-byte seed). Text keeps them diffable and easy to
//! paste into a secrets store; the comments say what the key is for.

use std::fmt;

use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

const PUBLIC_TAG: &str = "ed25519-public:";
const SECRET_TAG: &str = "ed25519-secret:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no `{0}<64 hex digits>` line found")]
    Missing(&'static str),
    #[error("key is not 32 bytes of hex: {0}")]
    BadHex(String),
    #[error("not a valid ed25519 public key")]
    BadPoint,
}

/// First 8 bytes of the SHA-256 of the public key: short enough for a log line,
/// long enough to tell keys apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

pub struct SecretKey(ed25519_dalek::SigningKey);

fn parse_tagged(text: &str, tag: &'static str) -> Result<[u8; 32], KeyError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(tag))
        .ok_or(KeyError::Missing(tag))?;
    let hex_part = &line[tag.len()..];
    let bytes = hex::decode(hex_part).map_err(|_| KeyError::BadHex(hex_part.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| KeyError::BadHex(hex_part.to_string()))
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = parse_tagged(text, PUBLIC_TAG)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::BadPoint)
    }

    /// The key's 32 bytes in hex, as repository metadata lists it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes: [u8; 32] = hex::decode(text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::BadHex(text.to_string()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::BadPoint)
    }

    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut id = [0; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// The key file's text, with `comment` as its first line.
    pub fn to_file(&self, comment: &str) -> String {
        format!(
            "# {comment}\n{PUBLIC_TAG}{}\n",
            hex::encode(self.0.as_bytes())
        )
    }

    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl SecretKey {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let seed = parse_tagged(text, SECRET_TAG)?;
        Ok(SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    pub fn generate<R: rand_core::CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        SecretKey(ed25519_dalek::SigningKey::generate(rng))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn to_file(&self, comment: &str) -> String {
        format!(
            "# {comment}\n{SECRET_TAG}{}\n",
            hex::encode(self.0.to_bytes())
        )
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_sign() {
        let secret = SecretKey::generate(&mut rand_core::OsRng);
        let again = SecretKey::parse(&secret.to_file("test key")).unwrap();
        let public = PublicKey::parse(&again.public().to_file("test key")).unwrap();
        assert_eq!(public, secret.public());
        let sig = secret.sign(b"hello");
        assert!(public.verify(b"hello", &sig));
        assert!(!public.verify(b"hellp", &sig));
    }

    #[test]
    fn bad_key_files_name_the_problem() {
        let err = PublicKey::parse("# nothing here\n").unwrap_err();
        assert!(err.to_string().contains("ed25519-public:"), "{err}");
        let err = PublicKey::parse("ed25519-public:abcd\n").unwrap_err();
        assert!(matches!(err, KeyError::BadHex(_)), "{err}");
    }
}
