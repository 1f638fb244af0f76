//! `POST /v1/chat/completions` and `POST /v1/completions`, streaming (SSE) or not.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use llamabox_inference_protocol::openai::GenerateRequest;
use llamabox_inference_protocol::tools::{CallParser, Convention, ToolCall, Tools};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{new_id, parse_json, resolve_model, respond, unix_now, ApiError};
use crate::engine::{
    schema_to_grammar, Engine, Event, GenerateJob, SubmitError, TokenLogprob, Usage,
};
use crate::metrics::Metrics;
use crate::models::Models;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Chat,
    Completion,
}

pub async fn chat(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = match super::engine_for_body(&models, &body).await {
        Ok(engine) => engine,
        Err(response) => return response,
    };
    Metrics::add(&engine.metrics.chat_requests, 1);
    respond(&engine, run(&engine, &body, Kind::Chat).await)
}

pub async fn completions(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = match super::engine_for_body(&models, &body).await {
        Ok(engine) => engine,
        Err(response) => return response,
    };
    Metrics::add(&engine.metrics.completion_requests, 1);
    respond(&engine, run(&engine, &body, Kind::Completion).await)
}

/// Everything a response carries besides the generated text.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    kind: Kind,
    /// The request asked for log-probabilities.
    logprobs: bool,
}

async fn run(engine: &Engine, body: &Bytes, kind: Kind) -> Result<Response, ApiError> {
    let request: GenerateRequest = parse_json(body)?;
    let started = start(engine, &request, kind).await?;
    if request.stream {
        let include_usage = request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        Ok(Sse::new(stream_events(started, include_usage))
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        let meta = started.meta.clone();
        let collected = collect(started).await?;
        Ok(Json(completion_body(&meta, &collected)).into_response())
    }
}

/// A generation in flight and what is needed to read its events.
pub(super) struct Started {
    pub meta: Meta,
    pub events: UnboundedReceiver<Event>,
    pub reader: Reader,
}

/// Checks a chat or completion request, renders and tokenizes its prompt and submits it.
pub(super) async fn start(
    engine: &Engine,
    request: &GenerateRequest,
    kind: Kind,
) -> Result<Started, ApiError> {
    let model = resolve_model(engine, request.model.as_deref()).await?;
    let mut generation = request.generation_from(
        engine.parallel(),
        engine.sampling_defaults(),
        &schema_to_grammar,
    )?;
    let input_param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    let mut tools = None;
    let prompt_text = match kind {
        Kind::Chat => {
            let messages = request.chat_messages()?;
            let template = model.template.as_ref().ok_or_else(|| {
                ApiError::bad_request(
                    "this model has no chat template; use /v1/completions with a raw prompt",
                )
            })?;
            let convention = if template.hermes_tools() {
                Convention::Hermes
            } else {
                Convention::Generic
            };
            let chat = request.chat_tools(&messages, convention, &schema_to_grammar)?;
            if let Some((gbnf, triggers)) = chat.grammar {
                generation.sampling.grammar = Some(gbnf);
                generation.sampling.grammar_triggers = triggers;
            }
            tools = chat.tools;
            let rendered = match &chat.rewrite {
                None => template.render(&messages, chat.template_tools.as_deref()),
                // Tool results as `tool` turns if the template prints that role, else as
                // user turns.
                Some(t) => template
                    .render(&t.generic_messages(messages.clone(), true), None)
                    .or_else(|_| template.render(&t.generic_messages(messages, false), None)),
            };
            rendered.map_err(|e| {
                ApiError::invalid(
                    "messages",
                    format!("the model's chat template refused these messages: {e}"),
                )
            })?
        }
        Kind::Completion => {
            if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
                return Err(ApiError::invalid(
                    "tools",
                    "tools belong to /v1/chat/completions",
                ));
            }
            request.prompt_text()?.to_string()
        }
    };
    let prompt = model.tokenize(&prompt_text);
    if prompt.is_empty() {
        return Err(ApiError::invalid(input_param, "the prompt is empty"));
    }
    // Never cut a prompt silently: say how much is too much.
    if prompt.len() >= model.n_ctx_seq as usize {
        return Err(ApiError::invalid(
            input_param,
            format!(
                "the prompt is {} tokens, but the context holds {} tokens per request (prompt and reply together); shorten the conversation or start the service with a larger --ctx-size",
                prompt.len(),
                model.n_ctx_seq
            ),
        )
        .with_code("context_length_exceeded"));
    }

    let choices = generation.choices;
    let logprobs = generation.logprobs.is_some();
    let events = engine
        .generate(GenerateJob {
            prompt,
            sampling: generation.sampling,
            max_tokens: generation.max_tokens,
            stop: generation.stop,
            choices,
            logprobs: generation.logprobs,
        })
        .map_err(|e| match e {
            SubmitError::Loading => super::loading(),
            SubmitError::Busy { limit } => ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the box is busy: {limit} requests are already running or waiting; retry shortly"),
            )
            .with_code("server_busy"),
        })?;

    Ok(Started {
        meta: Meta {
            id: new_id(match kind {
                Kind::Chat => "chatcmpl-",
                Kind::Completion => "cmpl-",
            }),
            created: unix_now(),
            model: model.id.clone(),
            kind,
            logprobs,
        },
        events,
        reader: Reader::new(choices, tools),
    })
}

/// What a reply consists of, choice by choice, after tool calls are told apart from text.
#[derive(Debug)]
pub(super) enum Out {
    Text {
        choice: u32,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Calls {
        choice: u32,
        calls: Vec<ToolCall>,
    },
    /// A choice ended. `usage` totals every choice once the last one ends.
    Done {
        choice: u32,
        reason: &'static str,
        last: Option<Usage>,
    },
    Failed(String),
}

/// Turns engine events into [`Out`]s: one call parser per choice, log-probabilities kept
/// with the text they belong to, usage summed over the choices.
pub(super) struct Reader {
    parsers: Vec<CallParser>,
    held_logprobs: Vec<Vec<TokenLogprob>>,
    remaining: u32,
    usage: Usage,
}

impl Reader {
    fn new(choices: u32, tools: Option<Tools>) -> Reader {
        Reader {
            parsers: (0..choices)
                .map(|_| CallParser::new(tools.clone()))
                .collect(),
            held_logprobs: vec![Vec::new(); choices as usize],
            remaining: choices,
            usage: Usage::default(),
        }
    }

    pub fn read(&mut self, event: Event) -> Vec<Out> {
        match event {
            Event::Text {
                choice,
                text,
                logprobs,
            } => {
                let i = choice as usize;
                self.held_logprobs[i].extend(logprobs);
                let text = self.parsers[i].push(&text);
                if text.is_empty() {
                    return Vec::new();
                }
                vec![Out::Text {
                    choice,
                    text,
                    logprobs: std::mem::take(&mut self.held_logprobs[i]),
                }]
            }
            Event::Done {
                choice,
                reason,
                usage,
            } => {
                let i = choice as usize;
                let mut out = Vec::new();
                let (text, calls) = self.parsers[i].finish();
                let logprobs = std::mem::take(&mut self.held_logprobs[i]);
                if !text.is_empty() || !logprobs.is_empty() {
                    out.push(Out::Text {
                        choice,
                        text,
                        logprobs,
                    });
                }
                let reason = if calls.is_empty() {
                    reason.as_str()
                } else {
                    out.push(Out::Calls { choice, calls });
                    "tool_calls"
                };
                // The prompt is shared: count it once.
                self.usage.prompt_tokens = usage.prompt_tokens;
                self.usage.cached_tokens = usage.cached_tokens;
                self.usage.prompt_ms = self.usage.prompt_ms.max(usage.prompt_ms);
                self.usage.generation_ms = self.usage.generation_ms.max(usage.generation_ms);
                self.usage.completion_tokens += usage.completion_tokens;
                self.remaining = self.remaining.saturating_sub(1);
                out.push(Out::Done {
                    choice,
                    reason,
                    last: (self.remaining == 0).then_some(self.usage),
                });
                out
            }
            Event::Failed(message) => vec![Out::Failed(message)],
        }
    }
}

/// One choice of a finished reply.
#[derive(Debug, Default)]
pub(super) struct Choice {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub calls: Vec<ToolCall>,
    pub finish_reason: &'static str,
}

pub(super) struct Collected {
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

/// Waits for every choice to finish.
pub(super) async fn collect(mut started: Started) -> Result<Collected, ApiError> {
    let n = started.reader.parsers.len();
    let mut choices: Vec<Choice> = (0..n).map(|_| Choice::default()).collect();
    while let Some(event) = started.events.recv().await {
        for out in started.reader.read(event) {
            match out {
                Out::Text {
                    choice,
                    text,
                    logprobs,
                } => {
                    let c = &mut choices[choice as usize];
                    c.text.push_str(&text);
                    c.logprobs.extend(logprobs);
                }
                Out::Calls { choice, calls } => choices[choice as usize].calls = calls,
                Out::Done {
                    choice,
                    reason,
                    last,
                } => {
                    choices[choice as usize].finish_reason = reason;
                    if let Some(usage) = last {
                        return Ok(Collected { choices, usage });
                    }
                }
                Out::Failed(message) => {
                    return Err(ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, message))
                }
            }
        }
    }
    Err(ApiError::status(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the engine stopped before the reply was complete",
    ))
}

fn completion_body(meta: &Meta, collected: &Collected) -> Value {
    let choices: Vec<Value> = collected
        .choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = meta.logprobs.then(|| logprobs_json(meta.kind, &c.logprobs, 0));
            match meta.kind {
                Kind::Chat => {
                    let mut message = json!({"role": "assistant", "content": c.text});
                    if !c.calls.is_empty() {
                        message["content"] = if c.text.is_empty() { Value::Null } else { json!(c.text) };
                        message["tool_calls"] = json!(c
                            .calls
                            .iter()
                            .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}))
                            .collect::<Vec<_>>());
                    }
                    json!({"index": index, "message": message, "finish_reason": c.finish_reason, "logprobs": logprobs})
                }
                Kind::Completion => json!({
                    "index": index,
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "logprobs": logprobs,
                }),
            }
        })
        .collect();
    let mut body = envelope(meta, false);
    body["choices"] = json!(choices);
    body["usage"] = usage_json(&collected.usage);
    body["timings"] = timings_json(&collected.usage);
    body
}

/// Log-probabilities in the endpoint's shape: chat's `{"content": [...]}` or the legacy
/// completions' parallel lists (`text_offset` counts from `offset`).
pub(super) fn logprobs_json(kind: Kind, entries: &[TokenLogprob], offset: usize) -> Value {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match kind {
        Kind::Chat => {
            let content: Vec<Value> = entries
                .iter()
                .map(|e| {
                    json!({
                        "token": text(&e.chosen.bytes),
                        "logprob": e.chosen.logprob,
                        "bytes": e.chosen.bytes,
                        "top_logprobs": e.top.iter().map(|t| json!({
                            "token": text(&t.bytes), "logprob": t.logprob, "bytes": t.bytes,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Kind::Completion => {
            let mut at = offset;
            let mut text_offset = Vec::with_capacity(entries.len());
            for e in entries {
                text_offset.push(at);
                at += text(&e.chosen.bytes).len();
            }
            json!({
                "tokens": entries.iter().map(|e| text(&e.chosen.bytes)).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|e| e.chosen.logprob).collect::<Vec<_>>(),
                "top_logprobs": entries.iter().map(|e| {
                    e.top.iter().map(|t| (text(&t.bytes), json!(t.logprob))).collect::<serde_json::Map<_, _>>()
                }).collect::<Vec<_>>(),
                "text_offset": text_offset,
            })
        }
    }
}

/// The SSE stream: a role chunk per choice (chat), text chunks, tool-call chunks, a chunk
/// with each choice's finish reason (the last one with usage and timings), an optional
/// usage-only chunk, then `[DONE]`.
fn stream_events(
    started: Started,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let Started {
        meta,
        events,
        reader,
    } = started;
    let mut pending = VecDeque::new();
    for choice in 0..reader.parsers.len() as u32 {
        let first = match meta.kind {
            Kind::Chat => chunk(
                &meta,
                choice,
                json!({"role": "assistant", "content": ""}),
                None,
            ),
            Kind::Completion => chunk(&meta, choice, json!(""), None),
        };
        pending.push_back(data(&first));
    }
    // Per choice: bytes of text sent so far (the legacy logprobs' `text_offset`).
    let offsets = vec![0usize; reader.parsers.len()];
    let state = (meta, events, reader, pending, offsets, false);
    stream::unfold(
        state,
        move |(meta, mut events, mut reader, mut pending, mut offsets, mut ended)| async move {
            loop {
                if let Some(next) = pending.pop_front() {
                    return Some((Ok(next), (meta, events, reader, pending, offsets, ended)));
                }
                if ended {
                    return None;
                }
                let event = events.recv().await?;
                for out in reader.read(event) {
                    match out {
                        Out::Text {
                            choice,
                            text,
                            logprobs,
                        } => {
                            let delta = match meta.kind {
                                Kind::Chat => json!({"content": text}),
                                Kind::Completion => json!(text),
                            };
                            let mut c = chunk(&meta, choice, delta, None);
                            if meta.logprobs {
                                let at = &mut offsets[choice as usize];
                                c["choices"][0]["logprobs"] =
                                    logprobs_json(meta.kind, &logprobs, *at);
                                *at += text.len();
                            }
                            pending.push_back(data(&c));
                        }
                        Out::Calls { choice, calls } => {
                            // Each call whole: its id and name, then its arguments.
                            for (index, call) in calls.iter().enumerate() {
                                let head = json!({"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]});
                                pending.push_back(data(&chunk(&meta, choice, head, None)));
                                let args = json!({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]});
                                pending.push_back(data(&chunk(&meta, choice, args, None)));
                            }
                        }
                        Out::Done {
                            choice,
                            reason,
                            last,
                        } => {
                            let delta = match meta.kind {
                                Kind::Chat => json!({}),
                                Kind::Completion => json!(""),
                            };
                            let mut c = chunk(&meta, choice, delta, Some(reason));
                            if let Some(usage) = last {
                                c["usage"] = usage_json(&usage);
                                c["timings"] = timings_json(&usage);
                                pending.push_back(data(&c));
                                if include_usage {
                                    let mut u = envelope(&meta, true);
                                    u["choices"] = json!([]);
                                    u["usage"] = usage_json(&usage);
                                    pending.push_back(data(&u));
                                }
                                pending.push_back(SseEvent::default().data("[DONE]"));
                                ended = true;
                            } else {
                                pending.push_back(data(&c));
                            }
                        }
                        Out::Failed(message) => {
                            let e = json!({"error": {"message": message, "type": "server_error"}});
                            pending.push_back(data(&e));
                            pending.push_back(SseEvent::default().data("[DONE]"));
                            ended = true;
                        }
                    }
                }
            }
        },
    )
}

fn envelope(meta: &Meta, chunk: bool) -> Value {
    let object = match (meta.kind, chunk) {
        (Kind::Chat, false) => "chat.completion",
        (Kind::Chat, true) => "chat.completion.chunk",
        (Kind::Completion, _) => "text_completion",
    };
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": concat!("llamabox-", env!("CARGO_PKG_VERSION")),
    })
}

fn chunk(meta: &Meta, choice: u32, delta: Value, finish_reason: Option<&str>) -> Value {
    let mut c = envelope(meta, true);
    c["choices"] = match meta.kind {
        Kind::Chat => {
            json!([{"index": choice, "delta": delta, "finish_reason": finish_reason, "logprobs": null}])
        }
        Kind::Completion => {
            json!([{"index": choice, "text": delta, "finish_reason": finish_reason, "logprobs": null}])
        }
    };
    c
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

pub(super) fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// llama-server's `timings` object, so tools written for it read ours too.
fn timings_json(u: &Usage) -> Value {
    let evaluated = u.prompt_tokens - u.cached_tokens;
    let per_second = |n: u32, ms: f64| {
        if ms > 0.0 {
            f64::from(n) * 1e3 / ms
        } else {
            0.0
        }
    };
    json!({
        "cache_n": u.cached_tokens,
        "prompt_n": evaluated,
        "prompt_ms": u.prompt_ms,
        "prompt_per_second": per_second(evaluated, u.prompt_ms),
        "predicted_n": u.completion_tokens,
        "predicted_ms": u.generation_ms,
        "predicted_per_second": per_second(u.completion_tokens, u.generation_ms),
    })
}
