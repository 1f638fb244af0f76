//! What a phone (or anyone on the LAN) sends the box while pairing: the SPAKE2 message,
//! the proof of the setup code, and the setup code as text. Any bytes give a typed
//! error or a session — never a panic — and a proof the fuzzer made up never verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabox_pairing::{box_respond, SetupCode};
use rand_core::{CryptoRng, RngCore};

/// A deterministic stand-in for the box's random numbers, so a crash reproduces.
struct Counter(u64);

impl RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Counter {}

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input: the SPAKE2 message, then the proof.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (message, proof) = rest.split_at(usize::from(split).min(rest.len()));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SetupCode::parse(text);
    }
    let code = SetupCode::parse("27182818").expect("a valid code");
    if let Ok((keys, reply)) = box_respond(&code, message, &mut Counter(7)) {
        assert!(!reply.is_empty());
        assert!(keys.verify_phone_proof(b"session", proof).is_err());
        assert!(keys.open(b"session", proof).is_err());
    }
});
