//! `POST /v1/responses`, OpenAI's Responses API, on top of the chat machinery: the request
//! becomes a chat request (instructions → system message, input items → messages, function
//! calls and their outputs → tool turns) and the reply becomes output items.
//!
//! Stateless: nothing is stored (`store` is always false), so `previous_response_id` and
//! `GET /v1/responses/{id}` are not offered; a client sends the whole conversation as
//! `input`, as it does with chat completions.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};

use super::generate::{collect, start, Kind, Out, Started};
use super::{new_id, parse_json, respond, unix_now, ApiError};
use crate::engine::{Engine, Usage};
use crate::metrics::Metrics;
use crate::models::Models;
use llamabox_inference_protocol::responses::{chat_request, ResponsesRequest};
use llamabox_inference_protocol::tools::ToolCall;

pub async fn responses(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = match super::engine_for_body(&models, &body).await {
        Ok(engine) => engine,
        Err(response) => return response,
    };
    Metrics::add(&engine.metrics.responses_requests, 1);
    respond(&engine, run(&engine, &body).await)
}

async fn run(engine: &Engine, body: &Bytes) -> Result<Response, ApiError> {
    let request: ResponsesRequest = parse_json(body)?;
    let chat = chat_request(&request)?;
    let started = start(engine, &chat, Kind::Chat).await?;
    let shell = Shell {
        id: format!("resp_{}", started.meta.id.trim_start_matches("chatcmpl-")),
        created_at: unix_now(),
        model: started.meta.model.clone(),
        echo: echo(&request),
    };
    if request.stream {
        Ok(Sse::new(stream_events(shell, started))
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        let collected = collect(started).await?;
        let choice = collected.choices.into_iter().next().unwrap_or_default();
        let mut output = Vec::new();
        if !choice.text.is_empty() || choice.calls.is_empty() {
            output.push(message_item(&new_id("msg_"), &choice.text, "completed"));
        }
        for call in &choice.calls {
            output.push(call_item(&new_id("fc_"), call, "completed"));
        }
        Ok(
            Json(shell.response(output, Some((&collected.usage, choice.finish_reason))))
                .into_response(),
        )
    }
}

/// The request's settings, echoed in every response object as OpenAI does.
fn echo(r: &ResponsesRequest) -> Value {
    json!({
        "instructions": r.instructions,
        "max_output_tokens": r.max_output_tokens,
        "temperature": r.temperature.unwrap_or(0.8),
        "top_p": r.top_p.unwrap_or(0.95),
        "tools": r.tools.clone().unwrap_or_default(),
        "tool_choice": r.tool_choice.clone().unwrap_or(json!("auto")),
        "parallel_tool_calls": r.parallel_tool_calls.unwrap_or(true),
        "text": {"format": r.text.as_ref().and_then(|t| t.format.clone()).unwrap_or(json!({"type": "text"}))},
        "metadata": r.metadata.clone().unwrap_or(json!({})),
    })
}

/// What every response object of one request shares.
struct Shell {
    id: String,
    created_at: u64,
    model: String,
    echo: Value,
}

impl Shell {
    /// The response object; `end` is None while it is in progress.
    fn response(&self, output: Vec<Value>, end: Option<(&Usage, &str)>) -> Value {
        let mut r = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "in_progress",
            "model": self.model,
            "output": output,
            "error": null,
            "incomplete_details": null,
            "previous_response_id": null,
            "store": false,
            "usage": null,
        });
        for (k, v) in self.echo.as_object().expect("an object") {
            r[k] = v.clone();
        }
        if let Some((usage, finish_reason)) = end {
            if finish_reason == "length" {
                r["status"] = json!("incomplete");
                r["incomplete_details"] = json!({"reason": "max_output_tokens"});
            } else {
                r["status"] = json!("completed");
            }
            r["usage"] = json!({
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            });
        }
        r
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": if status == "in_progress" { json!([]) } else { json!([text_part(text)]) },
    })
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn call_item(id: &str, call: &ToolCall, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call.id,
        "name": call.name,
        "arguments": if status == "in_progress" { "" } else { call.arguments.as_str() },
        "status": status,
    })
}

/// The event stream: `response.created`, `response.in_progress`, then for the text an
/// output item with one `output_text` part and its deltas, for each call an output item
/// with its arguments, and `response.completed` (or `response.incomplete`).
fn stream_events(
    shell: Shell,
    started: Started,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct State {
        shell: Shell,
        started: Started,
        pending: std::collections::VecDeque<Value>,
        sequence: u64,
        /// The text item's id and text so far, once text arrived.
        text: Option<(String, String)>,
        output: Vec<Value>,
        ended: bool,
    }
    let mut pending = std::collections::VecDeque::new();
    let created = shell.response(Vec::new(), None);
    pending.push_back(json!({"type": "response.created", "response": created}));
    pending.push_back(json!({"type": "response.in_progress", "response": created}));
    let state = State {
        shell,
        started,
        pending,
        sequence: 0,
        text: None,
        output: Vec::new(),
        ended: false,
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(mut event) = s.pending.pop_front() {
                event["sequence_number"] = json!(s.sequence);
                s.sequence += 1;
                let kind = event["type"].as_str().unwrap_or_default().to_string();
                let sse = SseEvent::default().event(kind).data(event.to_string());
                return Some((Ok(sse), s));
            }
            if s.ended {
                return None;
            }
            let event = s.started.events.recv().await?;
            for out in s.started.reader.read(event) {
                match out {
                    Out::Text { text, .. } if text.is_empty() => {}
                    Out::Text { text, .. } => {
                        let index = s.output.len();
                        let (id, so_far) = s.text.get_or_insert_with(|| {
                            let id = new_id("msg_");
                            s.pending.push_back(json!({"type": "response.output_item.added", "output_index": index, "item": message_item(&id, "", "in_progress")}));
                            s.pending.push_back(json!({"type": "response.content_part.added", "item_id": id, "output_index": index, "content_index": 0, "part": text_part("")}));
                            (id, String::new())
                        });
                        so_far.push_str(&text);
                        s.pending.push_back(json!({"type": "response.output_text.delta", "item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}));
                    }
                    Out::Calls { calls, .. } => {
                        close_text(&mut s.text, &mut s.output, &mut s.pending);
                        for call in calls {
                            let index = s.output.len();
                            let id = new_id("fc_");
                            s.pending.push_back(json!({"type": "response.output_item.added", "output_index": index, "item": call_item(&id, &call, "in_progress")}));
                            s.pending.push_back(json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": index, "delta": call.arguments}));
                            s.pending.push_back(json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": index, "name": call.name, "arguments": call.arguments}));
                            let item = call_item(&id, &call, "completed");
                            s.pending.push_back(json!({"type": "response.output_item.done", "output_index": index, "item": item}));
                            s.output.push(item);
                        }
                    }
                    Out::Done { reason, last, .. } => {
                        let Some(usage) = last else { continue };
                        if s.output.is_empty() && s.text.is_none() {
                            // An empty reply is still one (empty) message.
                            s.text = Some((new_id("msg_"), String::new()));
                            let (id, _) = s.text.as_ref().expect("set");
                            s.pending.push_back(json!({"type": "response.output_item.added", "output_index": 0, "item": message_item(id, "", "in_progress")}));
                            s.pending.push_back(json!({"type": "response.content_part.added", "item_id": id, "output_index": 0, "content_index": 0, "part": text_part("")}));
                        }
                        close_text(&mut s.text, &mut s.output, &mut s.pending);
                        let response = s.shell.response(s.output.clone(), Some((&usage, reason)));
                        let kind = if response["status"] == "completed" {
                            "response.completed"
                        } else {
                            "response.incomplete"
                        };
                        s.pending
                            .push_back(json!({"type": kind, "response": response}));
                        s.ended = true;
                    }
                    Out::Failed(message) => {
                        let mut response = s.shell.response(s.output.clone(), None);
                        response["status"] = json!("failed");
                        response["error"] = json!({"code": "server_error", "message": message});
                        s.pending
                            .push_back(json!({"type": "response.failed", "response": response}));
                        s.ended = true;
                    }
                }
            }
        }
    })
}

/// Ends the text item, if one is open: its text, part and item are done.
fn close_text(
    text: &mut Option<(String, String)>,
    output: &mut Vec<Value>,
    pending: &mut std::collections::VecDeque<Value>,
) {
    let Some((id, text)) = text.take() else {
        return;
    };
    let index = output.len();
    pending.push_back(json!({"type": "response.output_text.done", "item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
    pending.push_back(json!({"type": "response.content_part.done", "item_id": id, "output_index": index, "content_index": 0, "part": text_part(&text)}));
    let item = message_item(&id, &text, "completed");
    pending.push_back(
        json!({"type": "response.output_item.done", "output_index": index, "item": item}),
    );
    output.push(item);
}
