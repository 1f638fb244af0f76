//! What clients send the inference service, and how it is checked before the engine sees
//! it: the bodies of OpenAI's chat, completions, Responses and embeddings endpoints and of
//! Ollama's API, the tools they offer and the calls found in the model's replies, and the
//! errors that name what is wrong.
//!
//! Everything here reads untrusted bytes and nothing here runs a model: the crate has no
//! llama.cpp, so the fuzz target `inference_request` (`fuzz/`) builds it in seconds. The
//! one step that needs llama.cpp, turning a JSON schema into a grammar, is handed in by
//! the caller as a [`SchemaToGrammar`].

pub mod embeddings;
mod error;
mod json;
mod message;
pub mod ollama;
pub mod openai;
pub mod responses;
mod sampling;
pub mod tools;

pub use error::ApiError;
pub use json::parse_json;
pub use message::Message;
pub use sampling::SamplingParams;

/// Turns a JSON schema (as JSON text) into a GBNF grammar whose root rule is `root`, or
/// says why it cannot. The service passes llama.cpp's converter, the one llama-server
/// uses; tests and the fuzz target pass their own.
pub type SchemaToGrammar<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// `prefix` and an id unique within this run; the start time in it keeps ids apart
/// across restarts.
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(unix_now);
    format!(
        "{prefix}{start:x}{:06x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Seconds since 1970: OpenAI's `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
