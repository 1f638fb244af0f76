//! Spoken questions answered by the box's LLM: each transcript goes to the inference
//! service's OpenAI API as a chat message and the reply streams back as events.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::events::{Event, Events};

/// Tells the model it is being spoken to: short answers read well on a phone.
const SYSTEM_PROMPT: &str =
    "You are Llama Box, a private voice assistant. Answer the spoken question briefly.";

pub struct Answerer {
    client: reqwest::blocking::Client,
    url: String,
}

impl Answerer {
    /// `base` is the inference service's address, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Result<Self> {
        Ok(Self {
            client: reqwest::blocking::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(None)
                .build()
                .context("HTTP client")?,
            url: format!("{}/v1/chat/completions", base.trim_end_matches('/')),
        })
    }

    /// Streams the answer to `question` as events; returns the whole answer.
    pub fn answer(&self, utterance: u64, question: &str, events: &Events) -> Result<String> {
        let body = json!({
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
            ],
            "stream": true,
            "max_tokens": 256,
        });
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .with_context(|| format!("cannot reach the inference service at {}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().unwrap_or_default();
            bail!("the inference service answered {status}: {}", text.trim());
        }
        let mut answer = String::new();
        for line in BufReader::new(response).lines() {
            let line = line.context("the answer stream broke off")?;
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(data).context("a malformed answer chunk")?;
            if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                if !text.is_empty() {
                    answer.push_str(text);
                    events.publish(Event::AnswerDelta {
                        utterance,
                        text: text.to_string(),
                    });
                }
            }
        }
        events.publish(Event::AnswerDone {
            utterance,
            text: answer.clone(),
        });
        Ok(answer)
    }
}
