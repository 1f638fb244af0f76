//! What anyone on the network may POST to the pairing routes: the JSON bodies of
//! `/v1/pairing/start` and `/v1/pairing/finish`, read as the gateway reads them
//! (`llamabox_pairing::requests`), then the box's answer to the message and the check of
//! the proof. Any bytes give a refusal or an exchange — never a panic — and a proof the
//! fuzzer made up never verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabox_pairing::requests::{base64_field, FinishRequest, StartRequest};
use llamabox_pairing::{box_respond, SetupCode};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

fuzz_target!(|data: &[u8]| {
    let code = SetupCode::parse("27182818").expect("a valid code");
    // The box's random numbers, seeded so that a crash reproduces.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut keys = None;
    // One body per line, starts and finishes in any order, as a LAN guesser sends them.
    for body in data.split(|&b| b == b'\n') {
        if let Ok(start) = serde_json::from_slice::<StartRequest>(body) {
            if let Ok(message) = base64_field(&start.message, "message") {
                if let Ok((k, reply)) = box_respond(&code, &message, &mut rng) {
                    assert!(!reply.is_empty());
                    keys = Some(k);
                }
            }
        } else if let Ok(finish) = serde_json::from_slice::<FinishRequest>(body) {
            if let (Some(k), Ok(proof)) = (&keys, base64_field(&finish.proof, "proof")) {
                assert!(k
                    .verify_phone_proof(finish.session.as_bytes(), &proof)
                    .is_err());
            }
        }
    }
});
