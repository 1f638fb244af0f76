//! Llama Box's voice service: always-on listening (capture → voice activity →
//! end-pointing → Whisper), transcripts as events on D-Bus and HTTP, optional answers
//! from the inference service, and OpenAI's transcription endpoint. See docs/voice.md.

/// Capture, WAV decoding and resampling: a crate of its own so the WAV parser can be
/// fuzzed (and reused) without building whisper.cpp.
pub use llamabox_audio as audio;

pub mod answer;
pub mod api;
pub mod bus;
pub mod events;
pub mod pipeline;
pub mod pitch;
pub mod transcribe;
pub mod turn;
pub mod vad;
