//! What a phone (or anyone on the LAN) sends the box while pairing: the SPAKE2 message,
//! the proof of the setup code, and the setup code as text. Any bytes give a typed
//! error or a session — never a panic — and a proof the fuzzer made up never verifies.
//! Also what the web app reads back from the phone's storage (`phone_storage::open`:
//! any page at the USB link's origin could have written it): made-up bytes never open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabox_pairing::{box_respond, phone_storage, SetupCode};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input: the SPAKE2 message, then the proof.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (message, proof) = rest.split_at(usize::from(split).min(rest.len()));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SetupCode::parse(text);
    }
    assert!(phone_storage::open(&[7; phone_storage::KEY_LEN], data).is_err());
    let code = SetupCode::parse("27182818").expect("a valid code");
    // The box's random numbers, seeded so that a crash reproduces.
    if let Ok((keys, reply)) = box_respond(&code, message, &mut ChaCha8Rng::seed_from_u64(7)) {
        assert!(!reply.is_empty());
        assert!(keys.verify_phone_proof(b"session", proof).is_err());
        assert!(keys.open(b"session", proof).is_err());
    }
});
