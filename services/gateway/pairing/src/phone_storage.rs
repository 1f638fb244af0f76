//! What the web app keeps on the phone (its credential, conversations, settings),
//! sealed with a key the box holds.
//!
//! Every box's USB link is the same plain-HTTP origin, `http://10.55.0.1`, so any page
//! served there (another box, or a rogue gadget the phone is plugged into) can read
//! that origin's storage. The app therefore keeps only sealed values there. The key
//! lives on the box and is handed out on its USB link and loopback only
//! (`GET /v1/pairing`), never kept on the phone: a page at the same origin that is not
//! this box reads ciphertext it cannot open.
//!
//! A sealed value is `nonce (24 bytes) ‖ XChaCha20-Poly1305(key, nonce, value)`, with
//! a fixed associated-data label. Nonces are random (the browser's
//! `crypto.getRandomValues`), which 24 bytes make safe without a counter.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::PairingError;

/// Bytes in the box's key.
pub const KEY_LEN: usize = 32;
/// Bytes of nonce at the start of a sealed value.
pub const NONCE_LEN: usize = 24;
/// Bound into every seal, so a sealed value from another use of the cipher never opens.
const LABEL: &[u8] = b"llamabox phone storage v1";

/// Seals `value` under `key` with `nonce` (random, never reused with the same key).
pub fn seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], value: &[u8]) -> Vec<u8> {
    let sealed = XChaCha20Poly1305::new(key.into())
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: value,
                aad: LABEL,
            },
        )
        .expect("XChaCha20-Poly1305 encryption cannot fail for values held in memory");
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a value `seal` made with the same key; any other key, a changed byte or a
/// truncated value is `BadSeal`.
pub fn open(key: &[u8; KEY_LEN], sealed: &[u8]) -> Result<Vec<u8>, PairingError> {
    if sealed.len() < NONCE_LEN {
        return Err(PairingError::BadSeal);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: LABEL,
            },
        )
        .map_err(|_| PairingError::BadSeal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_key_opens_an_unchanged_value() {
        let (key, other) = ([7; KEY_LEN], [8; KEY_LEN]);
        let sealed = seal(&key, &[1; NONCE_LEN], b"{\"token\":\"secret\"}");
        assert_eq!(open(&key, &sealed).unwrap(), b"{\"token\":\"secret\"}");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(open(&other, &sealed), Err(PairingError::BadSeal));
        for i in 0..sealed.len() {
            let mut changed = sealed.clone();
            changed[i] ^= 1;
            assert_eq!(open(&key, &changed), Err(PairingError::BadSeal), "byte {i}");
        }
        assert_eq!(open(&key, &sealed[..NONCE_LEN]), Err(PairingError::BadSeal));
        assert_eq!(open(&key, b"short"), Err(PairingError::BadSeal));
    }

    #[test]
    fn nonces_make_equal_values_look_different() {
        let key = [7; KEY_LEN];
        assert_ne!(
            seal(&key, &[1; NONCE_LEN], b"same"),
            seal(&key, &[2; NONCE_LEN], b"same")
        );
    }
}
