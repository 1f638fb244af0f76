//! Pairing a phone with the box: SPAKE2 over the box's 8-digit setup code.
//!
//! The exchange (docs/pairing.md has the threat model):
//!
//! 1. phone → box: `A`, the phone's SPAKE2 message (a curve point blinded by the code).
//! 2. box → phone: `B`, the box's message, and a session id.
//! 3. phone → box: `phone proof` = HMAC(K_phone, "phone" ‖ session).
//! 4. box → phone (only if the proof is right): `box proof` = HMAC(K_box, "box" ‖
//!    session) and `sealed`: the phone's credential, encrypted with K_seal.
//!
//! K_phone, K_box and K_seal come from HKDF over the SPAKE2 key, which both sides get
//! only if they used the same code. Neither the code nor anything that lets a listener
//! test guesses offline crosses the link: an attacker learns one yes/no per online try,
//! and the box allows 20 wrong tries (`llamabox-gateway`'s pairing window).
//!
//! This crate has no I/O so the gateway, the tests and the browser (built to
//! WebAssembly, `wasm` module) run the very same code. `requests` holds the routes'
//! JSON bodies as the gateway reads them, so the fuzz target reads them the same way.
//! `phone_storage` seals what the web app keeps on the phone with a key the box holds.

// The browser build's exports take raw pointers (wasm module); nothing else may.
#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};

pub mod phone_storage;
#[cfg(not(target_arch = "wasm32"))]
pub mod requests;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

/// Both sides' SPAKE2 identities: fixed, so a message from one protocol version or
/// role cannot be replayed as the other.
const PHONE_IDENTITY: &[u8] = b"llamabox pairing v1: phone";
const BOX_IDENTITY: &[u8] = b"llamabox pairing v1: box";
const HKDF_SALT: &[u8] = b"llamabox pairing v1";

/// Digits in a setup code: 10^8 codes, minus the weak ones.
pub const CODE_DIGITS: usize = 8;

/// A device's setup code: eight decimal digits, never a weak one.
#[derive(Clone, PartialEq, Eq)]
pub struct SetupCode(String);

impl std::fmt::Debug for SetupCode {
    /// The code is a secret: it stays out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetupCode(********)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeError {
    /// Not exactly eight digits (spaces and dashes are allowed between them).
    Format,
    /// A code anyone would try first (12345678, 11111111, …).
    Weak,
}

impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeError::Format => write!(f, "a setup code is {CODE_DIGITS} digits"),
            CodeError::Weak => write!(
                f,
                "weak setup code (repeated digits or a run like 12345678)"
            ),
        }
    }
}

impl std::error::Error for CodeError {}

impl SetupCode {
    /// A fresh code, uniform over the codes that are not weak.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> SetupCode {
        loop {
            // Rejection sampling keeps the distribution uniform: 4_200_000_000 is the
            // largest multiple of 10^8 below 2^32.
            let n = rng.next_u32();
            if n >= 4_200_000_000 {
                continue;
            }
            let digits = format!("{:08}", n % 100_000_000);
            if !is_weak(&digits) {
                return SetupCode(digits);
            }
        }
    }

    /// Reads a code as people type it: "1234 5678", "1234-5678" and "12345678" are
    /// the same code.
    pub fn parse(text: &str) -> Result<SetupCode, CodeError> {
        let digits: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.len() != CODE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeError::Format);
        }
        if is_weak(&digits) {
            return Err(CodeError::Weak);
        }
        Ok(SetupCode(digits))
    }

    /// The eight digits (to print on a label or in a QR code).
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// "1234-5678": how the code is shown to people.
    pub fn display(&self) -> String {
        format!("{}-{}", &self.0[..4], &self.0[4..])
    }
}

/// Weak codes are refused both when generating and when a code is configured: all one
/// digit, and runs up or down by one (Matter's list of invalid passcodes, generalised).
fn is_weak(digits: &str) -> bool {
    let d: Vec<i32> = digits.bytes().map(|b| i32::from(b - b'0')).collect();
    let steps: Vec<i32> = d.windows(2).map(|w| w[1] - w[0]).collect();
    steps.iter().all(|s| *s == 0) || steps.iter().all(|s| *s == 1) || steps.iter().all(|s| *s == -1)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingError {
    /// The peer's SPAKE2 message is not a valid message.
    BadMessage,
    /// A proof did not verify: the two sides used different codes.
    WrongCode,
    /// The sealed credential did not decrypt (tampered with, or another session's).
    BadSeal,
}

impl std::fmt::Display for PairingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PairingError::BadMessage => "malformed pairing message",
            PairingError::WrongCode => "wrong setup code",
            PairingError::BadSeal => "the sealed credential did not decrypt",
        })
    }
}

impl std::error::Error for PairingError {}

/// The keys both sides derive from a finished SPAKE2 exchange.
pub struct SessionKeys {
    phone_proof: [u8; 32],
    box_proof: [u8; 32],
    seal: [u8; 32],
}

impl SessionKeys {
    fn derive(shared: &[u8]) -> SessionKeys {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), shared);
        let mut keys = SessionKeys {
            phone_proof: [0; 32],
            box_proof: [0; 32],
            seal: [0; 32],
        };
        // Infallible: 32 bytes is far below HKDF-SHA256's output limit.
        hkdf.expand(b"phone proof", &mut keys.phone_proof).unwrap();
        hkdf.expand(b"box proof", &mut keys.box_proof).unwrap();
        hkdf.expand(b"seal", &mut keys.seal).unwrap();
        keys
    }

    /// Step 3: what the phone sends to show it used the same code.
    pub fn phone_proof(&self, session: &[u8]) -> Vec<u8> {
        proof(&self.phone_proof, b"phone", session)
    }

    /// The box's check of step 3 (constant time).
    pub fn verify_phone_proof(&self, session: &[u8], proof: &[u8]) -> Result<(), PairingError> {
        verify(&self.phone_proof, b"phone", session, proof)
    }

    /// Step 4: the box's proof that it knows the code too (the phone is not talking to
    /// an impostor that only relays).
    pub fn box_proof(&self, session: &[u8]) -> Vec<u8> {
        proof(&self.box_proof, b"box", session)
    }

    pub fn verify_box_proof(&self, session: &[u8], proof: &[u8]) -> Result<(), PairingError> {
        verify(&self.box_proof, b"box", session, proof)
    }

    /// Encrypts the credential for the phone. The key is used once per session, so a
    /// fixed nonce is safe; the session id is bound in as associated data.
    pub fn seal(&self, session: &[u8], plaintext: &[u8]) -> Vec<u8> {
        ChaCha20Poly1305::new((&self.seal).into())
            .encrypt(
                Nonce::from_slice(&[0; 12]),
                Payload {
                    msg: plaintext,
                    aad: session,
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail for short messages")
    }

    pub fn open(&self, session: &[u8], sealed: &[u8]) -> Result<Vec<u8>, PairingError> {
        ChaCha20Poly1305::new((&self.seal).into())
            .decrypt(
                Nonce::from_slice(&[0; 12]),
                Payload {
                    msg: sealed,
                    aad: session,
                },
            )
            .map_err(|_| PairingError::BadSeal)
    }
}

fn proof(key: &[u8; 32], role: &[u8], session: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(role);
    mac.update(session);
    mac.finalize().into_bytes().to_vec()
}

fn verify(key: &[u8; 32], role: &[u8], session: &[u8], proof: &[u8]) -> Result<(), PairingError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(role);
    mac.update(session);
    mac.verify_slice(proof).map_err(|_| PairingError::WrongCode)
}

/// The phone's side, between sending `A` and receiving `B`.
pub struct PhoneHandshake {
    spake: Spake2<Ed25519Group>,
}

impl PhoneHandshake {
    /// Step 1: returns the handshake and `A`, the message to send.
    pub fn start(code: &SetupCode, rng: &mut (impl RngCore + CryptoRng)) -> (Self, Vec<u8>) {
        let (spake, message) = Spake2::<Ed25519Group>::start_a_with_rng(
            &Password::new(code.digits().as_bytes()),
            &Identity::new(PHONE_IDENTITY),
            &Identity::new(BOX_IDENTITY),
            rng,
        );
        (PhoneHandshake { spake }, message)
    }

    /// Step 2 received: the session keys (right only if both used the same code; the
    /// proofs tell).
    pub fn finish(self, box_message: &[u8]) -> Result<SessionKeys, PairingError> {
        let shared = self
            .spake
            .finish(box_message)
            .map_err(|_| PairingError::BadMessage)?;
        Ok(SessionKeys::derive(&shared))
    }
}

/// The box's side: it has `A` when it starts, so it answers and derives its keys at once.
pub fn box_respond(
    code: &SetupCode,
    phone_message: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(SessionKeys, Vec<u8>), PairingError> {
    let (spake, message) = Spake2::<Ed25519Group>::start_b_with_rng(
        &Password::new(code.digits().as_bytes()),
        &Identity::new(PHONE_IDENTITY),
        &Identity::new(BOX_IDENTITY),
        rng,
    );
    let shared = spake
        .finish(phone_message)
        .map_err(|_| PairingError::BadMessage)?;
    Ok((SessionKeys::derive(&shared), message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn code(s: &str) -> SetupCode {
        SetupCode::parse(s).unwrap()
    }

    #[test]
    fn codes_are_eight_digits_and_never_weak() {
        for _ in 0..10_000 {
            let c = SetupCode::generate(&mut OsRng);
            assert_eq!(c.digits().len(), 8);
            assert!(!is_weak(c.digits()));
        }
        for weak in [
            "12345678", "87654321", "00000000", "99999999", "23456789", "01234567",
        ] {
            assert_eq!(SetupCode::parse(weak), Err(CodeError::Weak), "{weak}");
        }
        assert_eq!(SetupCode::parse("1234567"), Err(CodeError::Format));
        assert_eq!(SetupCode::parse("1234567a"), Err(CodeError::Format));
        assert_eq!(code("2718-2818").digits(), "27182818");
        assert_eq!(code("2718 2818").display(), "2718-2818");
        assert_eq!(format!("{:?}", code("27182818")), "SetupCode(********)");
    }

    #[test]
    fn same_code_pairs_and_opens_the_seal() {
        let (phone, a) = PhoneHandshake::start(&code("27182818"), &mut OsRng);
        let (box_keys, b) = box_respond(&code("27182818"), &a, &mut OsRng).unwrap();
        let phone_keys = phone.finish(&b).unwrap();
        let session = b"s1";
        box_keys
            .verify_phone_proof(session, &phone_keys.phone_proof(session))
            .unwrap();
        phone_keys
            .verify_box_proof(session, &box_keys.box_proof(session))
            .unwrap();
        let sealed = box_keys.seal(session, b"credential");
        assert_eq!(phone_keys.open(session, &sealed).unwrap(), b"credential");
        assert_eq!(phone_keys.open(b"s2", &sealed), Err(PairingError::BadSeal));
    }

    #[test]
    fn a_different_code_fails_both_proofs() {
        let (phone, a) = PhoneHandshake::start(&code("27182818"), &mut OsRng);
        let (box_keys, b) = box_respond(&code("27182819"), &a, &mut OsRng).unwrap();
        let phone_keys = phone.finish(&b).unwrap();
        assert_eq!(
            box_keys.verify_phone_proof(b"s", &phone_keys.phone_proof(b"s")),
            Err(PairingError::WrongCode)
        );
        assert_eq!(
            phone_keys.verify_box_proof(b"s", &box_keys.box_proof(b"s")),
            Err(PairingError::WrongCode)
        );
    }

    #[test]
    fn garbage_messages_are_refused() {
        assert_eq!(
            box_respond(&code("27182818"), b"short", &mut OsRng).err(),
            Some(PairingError::BadMessage)
        );
    }
}
