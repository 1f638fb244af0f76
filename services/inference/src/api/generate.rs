//! `POST /v1/chat/completions` and `POST /v1/completions`, streaming (SSE) or not.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::request::GenerateRequest;
use super::{parse_json, resolve_model, respond, unix_now, ApiError};
use crate::engine::{Engine, Event, FinishReason, GenerateJob, SubmitError, Usage};
use crate::metrics::Metrics;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

pub async fn chat(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    Metrics::add(&engine.metrics.chat_requests, 1);
    respond(&engine, run(&engine, &body, Kind::Chat).await)
}

pub async fn completions(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    Metrics::add(&engine.metrics.completion_requests, 1);
    respond(&engine, run(&engine, &body, Kind::Completion).await)
}

/// Everything a response carries besides the generated text.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

async fn run(engine: &Engine, body: &Bytes, kind: Kind) -> Result<Response, ApiError> {
    let request: GenerateRequest = parse_json(body)?;
    let model = resolve_model(engine, request.model.as_deref())?;
    let generation = request.generation()?;
    let prompt_text = match kind {
        Kind::Chat => {
            let messages = request.chat_messages()?;
            let template = model.template.as_ref().ok_or_else(|| {
                ApiError::bad_request(
                    "this model has no chat template; use /v1/completions with a raw prompt",
                )
            })?;
            template.render(&messages).map_err(|e| {
                ApiError::invalid(
                    "messages",
                    format!("the model's chat template refused these messages: {e}"),
                )
            })?
        }
        Kind::Completion => request.prompt_text()?.to_string(),
    };
    let prompt = model.tokenize(&prompt_text);
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            if kind == Kind::Chat {
                "messages"
            } else {
                "prompt"
            },
            "the prompt is empty",
        ));
    }
    // Never cut a prompt silently: say how much is too much.
    if prompt.len() >= model.n_ctx_seq as usize {
        return Err(ApiError::invalid(
            if kind == Kind::Chat { "messages" } else { "prompt" },
            format!(
                "the prompt is {} tokens, but the context holds {} tokens per request (prompt and reply together); shorten the conversation or start the service with a larger --ctx-size",
                prompt.len(),
                model.n_ctx_seq
            ),
        )
        .with_code("context_length_exceeded"));
    }

    let events = engine
        .generate(GenerateJob {
            prompt,
            sampling: generation.sampling,
            max_tokens: generation.max_tokens,
            stop: generation.stop,
        })
        .map_err(|e| match e {
            SubmitError::Loading => super::loading(),
            SubmitError::Busy { limit } => ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the box is busy: {limit} requests are already running or waiting; retry shortly"),
            )
            .with_code("server_busy"),
        })?;

    let meta = Meta {
        id: new_id(kind),
        created: unix_now(),
        model: model.id.clone(),
        kind,
    };
    if request.stream {
        let include_usage = request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        Ok(Sse::new(stream_events(meta, events, include_usage))
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        collect(meta, events).await
    }
}

fn new_id(kind: Kind) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    // Unique within this process run; the start time keeps ids apart across restarts.
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(unix_now);
    format!(
        "{prefix}-{start:x}{:06x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn collect(meta: Meta, mut events: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done { reason, usage } => {
                let choice = match meta.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": reason.as_str(),
                        "logprobs": null,
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": text,
                        "finish_reason": reason.as_str(),
                        "logprobs": null,
                    }),
                };
                let mut body = envelope(&meta, false);
                body["choices"] = json!([choice]);
                body["usage"] = usage_json(&usage);
                body["timings"] = timings_json(&usage);
                return Ok(Json(body).into_response());
            }
            Event::Failed(message) => {
                return Err(ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, message))
            }
        }
    }
    Err(ApiError::status(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the engine stopped before the reply was complete",
    ))
}

/// The SSE stream: a role chunk (chat), text chunks, a final chunk with the finish reason,
/// usage and timings, an optional usage-only chunk, then `[DONE]`.
fn stream_events(
    meta: Meta,
    events: UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    enum Phase {
        Start,
        Body,
        End,
    }
    let state = (meta, events, Phase::Start, Vec::<SseEvent>::new());
    stream::unfold(
        state,
        move |(meta, mut events, phase, mut pending)| async move {
            if let Some(next) = pending.pop() {
                return Some((Ok(next), (meta, events, phase, pending)));
            }
            match phase {
                Phase::Start => {
                    let first = match meta.kind {
                        Kind::Chat => {
                            chunk(&meta, json!({"role": "assistant", "content": ""}), None)
                        }
                        Kind::Completion => chunk(&meta, json!(""), None),
                    };
                    Some((Ok(data(&first)), (meta, events, Phase::Body, pending)))
                }
                Phase::Body => match events.recv().await {
                    Some(Event::Text(t)) => {
                        let delta = match meta.kind {
                            Kind::Chat => json!({"content": t}),
                            Kind::Completion => json!(t),
                        };
                        let c = chunk(&meta, delta, None);
                        Some((Ok(data(&c)), (meta, events, Phase::Body, pending)))
                    }
                    Some(Event::Done { reason, usage }) => {
                        let delta = match meta.kind {
                            Kind::Chat => json!({}),
                            Kind::Completion => json!(""),
                        };
                        let mut last = chunk(&meta, delta, Some(reason));
                        last["usage"] = usage_json(&usage);
                        last["timings"] = timings_json(&usage);
                        // `pending` is a stack: push in reverse order of sending.
                        pending.push(SseEvent::default().data("[DONE]"));
                        if include_usage {
                            let mut u = envelope(&meta, true);
                            u["choices"] = json!([]);
                            u["usage"] = usage_json(&usage);
                            pending.push(data(&u));
                        }
                        Some((Ok(data(&last)), (meta, events, Phase::End, pending)))
                    }
                    Some(Event::Failed(message)) => {
                        let e = json!({"error": {"message": message, "type": "server_error"}});
                        pending.push(SseEvent::default().data("[DONE]"));
                        Some((Ok(data(&e)), (meta, events, Phase::End, pending)))
                    }
                    None => None,
                },
                Phase::End => None,
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

fn chunk(meta: &Meta, delta: Value, finish: Option<FinishReason>) -> Value {
    let mut c = envelope(meta, true);
    let finish_reason = finish.map(FinishReason::as_str);
    c["choices"] = match meta.kind {
        Kind::Chat => {
            json!([{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}])
        }
        Kind::Completion => {
            json!([{"index": 0, "text": delta, "finish_reason": finish_reason, "logprobs": null}])
        }
    };
    c
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

fn usage_json(u: &Usage) -> Value {
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
