//! Llama Box's voice service: always-on listening (capture → voice activity →
//! end-pointing → Whisper), transcripts as events on D-Bus and HTTP, optional answers
//! from the inference service, and OpenAI's transcription endpoint. See docs/voice.md.

pub mod answer;
pub mod api;
pub mod audio;
pub mod bus;
pub mod events;
pub mod pipeline;
pub mod transcribe;
pub mod vad;
