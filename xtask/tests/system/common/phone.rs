//! The phone's side of the box's HTTP API, for tests that pair like a phone does.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use llamabox_pairing::{PhoneHandshake, SetupCode};
use serde_json::{json, Value};

/// The phone's side of pairing (docs/pairing.md): returns the credential.
pub fn pair(http: &reqwest::blocking::Client, base: &str, code: &str) -> Value {
    let code = SetupCode::parse(code).unwrap();
    let (phone, message) = PhoneHandshake::start(&code, &mut rand_core::OsRng);
    let started = post_json(
        http,
        &format!("{base}/v1/pairing/start"),
        json!({"name": "QEMU test", "message": B64.encode(message)}),
    );
    let session = started["session"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"));
    let keys = phone
        .finish(&B64.decode(started["message"].as_str().unwrap()).unwrap())
        .unwrap();
    let finished = post_json(
        http,
        &format!("{base}/v1/pairing/finish"),
        json!({"session": session, "proof": B64.encode(keys.phone_proof(session.as_bytes()))}),
    );
    let proof = B64
        .decode(
            finished["proof"]
                .as_str()
                .unwrap_or_else(|| panic!("{finished}")),
        )
        .unwrap();
    keys.verify_box_proof(session.as_bytes(), &proof).unwrap();
    let sealed = B64.decode(finished["sealed"].as_str().unwrap()).unwrap();
    serde_json::from_slice(&keys.open(session.as_bytes(), &sealed).unwrap()).unwrap()
}

pub fn post_json(http: &reqwest::blocking::Client, url: &str, body: Value) -> Value {
    let text = http
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap()
        .text()
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}
