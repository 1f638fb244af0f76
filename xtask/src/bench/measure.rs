//! The measurements, each one request (or one set of concurrent requests) against a
//! running server. Times are the client's: chunk arrival on the benchmark's side, the
//! same code for both servers.

use std::sync::Barrier;

use anyhow::{Context, Result};

use super::client::{Client, Reply};
use super::prompts;

/// Tokens generated for the decode measurements (single stream and each of the
/// concurrent streams). The prompts ask for much longer answers, so the server stops
/// at this limit, not at an end-of-text token.
pub const DECODE_TOKENS: u32 = 128;
/// Tokens of the first turn's reply, which the follow-up turn sends back.
const REPLY_TOKENS: u32 = 64;
const FOLLOW_UP_TOKENS: u32 = 8;

/// A short request before anything is timed: the first one pays for lazy set-up.
pub fn warm_up(client: &Client) -> Result<()> {
    client
        .chat(&prompts::warm_up(), 8)
        .map(drop)
        .context("warm-up request")
}

/// One stream writing at length: its decode rate.
pub fn decode(client: &Client) -> Result<Reply> {
    client
        .chat(&prompts::story(0), DECODE_TOKENS)
        .context("decode request")
}

/// A long new prompt and one token: the time to first token is the prompt's.
pub fn prompt(client: &Client, repetition: usize) -> Result<Reply> {
    client
        .chat(&prompts::long_document(repetition), 1)
        .context("prompt-processing request")
}

/// A new conversation's first turn, then a follow-up turn that repeats it (with the
/// reply) and adds a short question: a server that keeps the conversation's prefix
/// only processes the new tokens.
pub fn conversation(client: &Client, repetition: usize) -> Result<(Reply, Reply)> {
    let conversation = prompts::conversation(repetition);
    let cold = client
        .chat(&conversation, REPLY_TOKENS)
        .context("first turn of the conversation")?;
    let follow_up = client
        .chat(
            &prompts::follow_up(conversation, &cold.text),
            FOLLOW_UP_TOKENS,
        )
        .context("follow-up turn of the conversation")?;
    Ok((cold, follow_up))
}

/// Several streams decoding together.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub streams: Vec<Reply>,
}

impl Aggregate {
    /// Tokens per second over the window in which streams were decoding: from the
    /// first stream's first token to the last stream's last token. Each stream's first
    /// token is left out, as its time is the prompt's.
    pub fn rate(&self) -> f64 {
        let start = self.streams.iter().map(|r| r.first_token).min();
        let end = self.streams.iter().map(|r| r.last_token).max();
        let tokens: u64 = self
            .streams
            .iter()
            .map(|r| r.completion_tokens.saturating_sub(1))
            .sum();
        match (start, end) {
            (Some(start), Some(end)) if end > start => tokens as f64 / (end - start).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// `streams` requests sent at once, each from its own thread.
pub fn aggregate(client: &Client, streams: usize) -> Result<Aggregate> {
    let start = Barrier::new(streams);
    let replies = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..streams)
            .map(|i| {
                let (client, start) = (client.clone(), &start);
                scope.spawn(move || {
                    start.wait();
                    client
                        .chat(&prompts::story(i), DECODE_TOKENS)
                        .with_context(|| format!("stream {i}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a stream thread panicked"))
            .collect::<Result<Vec<Reply>>>()
    })?;
    Ok(Aggregate { streams: replies })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn reply(t0: Instant, first_ms: u64, last_ms: u64, tokens: u64) -> Reply {
        Reply {
            sent: t0,
            first_token: t0 + Duration::from_millis(first_ms),
            last_token: t0 + Duration::from_millis(last_ms),
            prompt_tokens: 20,
            completion_tokens: tokens,
            text: String::new(),
        }
    }

    #[test]
    fn aggregate_rate_spans_all_streams() {
        let t0 = Instant::now();
        let aggregate = Aggregate {
            streams: vec![reply(t0, 100, 1100, 51), reply(t0, 200, 2100, 151)],
        };
        // 50 + 150 tokens between 0.1 s and 2.1 s.
        assert!((aggregate.rate() - 100.0).abs() < 1e-9);
    }
}
