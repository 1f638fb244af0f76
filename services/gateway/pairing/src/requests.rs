//! The pairing routes' JSON bodies as the gateway reads them from anyone on the network
//! (`POST /v1/pairing/start`, `POST /v1/pairing/finish`), and their base64 fields.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

/// Step 1: the phone's name and its SPAKE2 message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// What the phone calls itself ("Pixel 8"), shown in the list of phones.
    pub name: String,
    /// SPAKE2 message `A`, base64.
    pub message: String,
}

/// Step 3: the session the box named and the phone's proof of the code.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishRequest {
    pub session: String,
    /// HMAC proof that the phone used the same code, base64.
    pub proof: String,
}

/// A base64 field's bytes, or what is wrong with it, naming the field.
pub fn base64_field(value: &str, field: &str) -> Result<Vec<u8>, String> {
    B64.decode(value)
        .map_err(|e| format!("{field}: not base64 ({e})"))
}

/// What a box answers (step 2), base64 as the routes send it.
pub fn base64(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}
