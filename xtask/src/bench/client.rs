//! The OpenAI chat API as the benchmark uses it: streamed, greedy requests whose chunks
//! are timed as they arrive. Both servers are measured by this same client code.

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One streamed completion, timed on arrival.
#[derive(Debug, Clone)]
pub struct Reply {
    pub sent: Instant,
    /// Arrival of the first chunk carrying generated text (or the end, if none did).
    pub first_token: Instant,
    /// Arrival of the last chunk carrying generated text.
    pub last_token: Instant,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub text: String,
}

impl Reply {
    pub fn ttft(&self) -> Duration {
        self.first_token - self.sent
    }

    /// Tokens per second after the first token: its time includes the prompt, the
    /// rest is decoding.
    pub fn decode_rate(&self) -> Result<f64> {
        let window = (self.last_token - self.first_token).as_secs_f64();
        if self.completion_tokens < 2 || window <= 0.0 {
            bail!(
                "only {} tokens generated: too few to time decoding",
                self.completion_tokens
            );
        }
        Ok((self.completion_tokens - 1) as f64 / window)
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    base_url: String,
    model: String,
}

impl Client {
    /// Asks the server for its model id (`GET /v1/models`), which requests then name.
    pub fn connect(base_url: &str) -> Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()?;
        let url = format!("{base_url}/v1/models");
        let body = http
            .get(&url)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .with_context(|| format!("GET {url}"))?;
        let models: Value =
            serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON: {body}"))?;
        let model = models["data"][0]["id"]
            .as_str()
            .with_context(|| format!("GET {url}: no data[0].id in {models}"))?
            .to_string();
        Ok(Client {
            http,
            base_url: base_url.to_string(),
            model,
        })
    }

    /// `POST /v1/chat/completions`, streamed, temperature 0 (greedy).
    pub fn chat(&self, messages: &[Message], max_tokens: u32) -> Result<Reply> {
        let url = format!("{}/v1/chat/completions", self.base_url);
        let body = request_body(&self.model, messages, max_tokens);
        let sent = Instant::now();
        let response = self
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .with_context(|| format!("POST {url}"))?;
        if !response.status().is_success() {
            let status = response.status();
            bail!(
                "POST {url}: {status}: {}",
                response.text().unwrap_or_default()
            );
        }
        let mut reader = std::io::BufReader::new(response);
        let (mut first, mut last, mut usage) = (None, None, None);
        let mut text = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if reader
                .read_line(&mut line)
                .with_context(|| format!("reading the stream of {url}"))?
                == 0
            {
                bail!("POST {url}: the stream ended without `data: [DONE]`");
            }
            let now = Instant::now();
            match parse_event(&line).with_context(|| format!("POST {url}"))? {
                None => {}
                Some(Event::Done) => break,
                Some(Event::Chunk(chunk)) => {
                    if !chunk.content.is_empty() || chunk.finished {
                        first.get_or_insert(now);
                    }
                    if !chunk.content.is_empty() {
                        last = Some(now);
                        text.push_str(&chunk.content);
                    }
                    if chunk.usage.is_some() {
                        usage = chunk.usage;
                    }
                }
            }
        }
        let (prompt_tokens, completion_tokens) = usage.with_context(|| {
            format!("POST {url}: no `usage` in the stream (asked for with stream_options.include_usage)")
        })?;
        let first_token = first
            .with_context(|| format!("POST {url}: no token and no finish_reason in the stream"))?;
        Ok(Reply {
            sent,
            first_token,
            last_token: last.unwrap_or(first_token),
            prompt_tokens,
            completion_tokens,
            text,
        })
    }
}

fn request_body(model: &str, messages: &[Message], max_tokens: u32) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            json!({ "role": role, "content": m.content })
        })
        .collect();
    json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": { "include_usage": true },
        "temperature": 0.0,
        "max_tokens": max_tokens,
    })
}

#[derive(Debug, PartialEq)]
enum Event {
    Chunk(Chunk),
    Done,
}

#[derive(Debug, PartialEq, Default)]
struct Chunk {
    content: String,
    finished: bool,
    /// (prompt_tokens, completion_tokens)
    usage: Option<(u64, u64)>,
}

/// One line of a server-sent event stream: `data: {json}` chunks, `data: [DONE]` at the
/// end; blank lines, comments and other fields carry nothing the benchmark needs.
fn parse_event(line: &str) -> Result<Option<Event>> {
    let Some(data) = line.trim_end().strip_prefix("data:") else {
        return Ok(None);
    };
    let data = data.trim_start();
    if data == "[DONE]" {
        return Ok(Some(Event::Done));
    }
    let value: Value =
        serde_json::from_str(data).with_context(|| format!("not a JSON chunk: {data}"))?;
    if let Some(error) = value.get("error") {
        bail!("the server sent an error: {error}");
    }
    let choice = &value["choices"][0];
    let usage = value.get("usage").filter(|u| !u.is_null()).map(|u| {
        (
            u["prompt_tokens"].as_u64().unwrap_or(0),
            u["completion_tokens"].as_u64().unwrap_or(0),
        )
    });
    Ok(Some(Event::Chunk(Chunk {
        content: choice["delta"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        finished: !choice["finish_reason"].is_null(),
        usage,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(line: &str) -> Chunk {
        match parse_event(line).unwrap() {
            Some(Event::Chunk(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_openai_stream_lines() {
        assert_eq!(parse_event("\n").unwrap(), None);
        assert_eq!(parse_event(": keep-alive\n").unwrap(), None);
        assert_eq!(parse_event("data: [DONE]\n").unwrap(), Some(Event::Done));
        assert_eq!(parse_event("data:[DONE]\r\n").unwrap(), Some(Event::Done));
        let role = chunk(
            r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}"#,
        );
        assert_eq!(role, Chunk::default());
        let token =
            chunk(r#"data: {"choices":[{"delta":{"content":" Once"},"finish_reason":null}]}"#);
        assert_eq!(token.content, " Once");
        assert!(!token.finished);
        let end =
            chunk(r#"data: {"choices":[{"delta":{},"finish_reason":"length"}],"usage":null}"#);
        assert!(end.finished && end.usage.is_none());
        let usage = chunk(
            r#"data: {"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":128,"total_tokens":159}}"#,
        );
        assert_eq!(usage.usage, Some((31, 128)));
    }

    #[test]
    fn stream_errors_are_errors() {
        assert!(parse_event(r#"data: {"error":{"message":"context full"}}"#).is_err());
        assert!(parse_event("data: {not json").is_err());
    }

    #[test]
    fn decode_rate_excludes_the_first_token() {
        let t0 = Instant::now();
        let reply = Reply {
            sent: t0,
            first_token: t0 + Duration::from_millis(500),
            last_token: t0 + Duration::from_millis(1500),
            prompt_tokens: 10,
            completion_tokens: 101,
            text: String::new(),
        };
        assert_eq!(reply.ttft(), Duration::from_millis(500));
        assert!((reply.decode_rate().unwrap() - 100.0).abs() < 1e-9);
        let short = Reply {
            completion_tokens: 1,
            ..reply
        };
        assert!(short.decode_rate().is_err());
    }
}
