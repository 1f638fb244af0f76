//! What the voice service tells the world: one stream of events, fanned out to the
//! HTTP event stream (the phone) and to D-Bus signals (the other services).

use serde::Serialize;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// Voice began; a transcript with the same `utterance` follows.
    SpeechStarted { utterance: u64, at_ms: u64 },
    /// An utterance, transcribed. `text` is empty when Whisper heard no words in it.
    Transcript {
        utterance: u64,
        text: String,
        language: String,
        start_ms: u64,
        duration_ms: u64,
        /// Time from the end of the utterance to this event.
        latency_ms: u64,
    },
    /// A piece of the LLM's answer to an utterance, as it streams.
    AnswerDelta { utterance: u64, text: String },
    /// The whole answer.
    AnswerDone { utterance: u64, text: String },
    /// The answer could not be had (the inference service is down, busy, …).
    AnswerFailed { utterance: u64, error: String },
    /// Capture failed; the service retries.
    CaptureError { error: String },
}

/// The event hub. Publishing never blocks; a subscriber that falls too far behind loses
/// the oldest events (and is told how many).
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(256).0,
        }
    }
}

impl Events {
    pub fn publish(&self, event: Event) {
        // No subscribers is fine: nobody is listening yet.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
