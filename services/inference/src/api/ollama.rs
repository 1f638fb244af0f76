//! Ollama's API over the same engine, so apps written for Ollama (Enchanted, Open WebUI,
//! the `ollama` client libraries) work unchanged.
//!
//! Routes: `GET /`, `GET /api/version`, `GET /api/tags`, `GET /api/ps`, `POST /api/show`,
//! `POST /api/chat`, `POST /api/generate`, `POST /api/embed`, `POST /api/embeddings`.
//! Chat and generate requests are translated into the OpenAI-shaped [`GenerateRequest`]
//! and run by the same code as `/v1/chat/completions` (templates, tools, grammars, checks);
//! only the wire format is Ollama's: NDJSON streams (streaming is the default), durations
//! in nanoseconds, RFC 3339 times, errors as `{"error": "..."}`. docs/models.md has the
//! route-by-route compatibility table.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::generate::{self, Kind, Out, Started};
use llamabox_inference_protocol::ollama::{
    chat_messages, check_capabilities, parse_keep_alive, translate, ChatBody, EmbedBody,
    EmbedInput, GenerateBody, LegacyEmbedBody, NameBody,
};
use llamabox_inference_protocol::openai::{ChatMessage, Content, PromptInput};

use super::{loading, parse_json, resolve_model, ApiError};
use crate::engine::{Engine, KeepAlive, ModelCard, TokenLogprob, Usage};
use crate::metrics::Metrics;
use crate::models::{self, Model, Models};

/// The Ollama release whose API this follows; clients read it from `/api/version`.
pub const OLLAMA_VERSION: &str = "0.13.0";

pub fn routes() -> Router<Arc<Models>> {
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate_route))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings_legacy))
        .route("/api/delete", delete(delete_model))
        .route("/api/pull", post(not_here))
        .route("/api/push", post(not_here))
        .route("/api/create", post(not_here))
        .route("/api/copy", post(not_here))
}

/// A handler's result in Ollama's shape; client errors are counted in `/metrics`.
fn reply(engine: &Engine, result: Result<Response, ApiError>) -> Response {
    reply_metrics(&engine.metrics, result)
}

fn reply_metrics(metrics: &Metrics, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_client_error() {
                Metrics::add(&metrics.invalid_requests, 1);
            }
            e.into_ollama_response()
        }
    }
}

/// A catalog entry's default options as Ollama's `parameters` text (a Modelfile's
/// PARAMETER lines without the keyword).
fn parameters_text(entry: &llamabox_format::update::models::ModelEntry) -> String {
    let lines: Vec<String> = entry
        .options
        .iter()
        .map(|(k, v)| format!("{k:<30}{v}"))
        .collect();
    lines.join("\n")
}

/// `/api/show` of a pulled model that has not been loaded: from its signed entry.
fn show_pulled(models: &Models, model: &Model) -> Response {
    let Model::Pulled(m) = model else {
        unreachable!("only pulled models are shown from their entry")
    };
    let e = &m.entry;
    let mut capabilities = vec!["completion"];
    if e.template.is_some() {
        capabilities.push("tools");
    }
    Json(json!({
        "license": e.license,
        "modelfile": format!("# {}\nFROM {}\n", e.description, m.path.display()),
        "parameters": parameters_text(e),
        "template": e.template.as_deref().unwrap_or_default(),
        "details": pulled_details(m),
        "model_info": {
            "general.architecture": e.family,
            "general.quantization": e.quantization,
        },
        "capabilities": capabilities,
        "modified_at": humantime::format_rfc3339_nanos(models.modified(model)).to_string(),
    }))
    .into_response()
}

/// The engine of the model a request's body names, or the answer that it has none.
async fn engine_for_body(models: &Models, body: &Bytes) -> Result<Arc<Engine>, Response> {
    models
        .engine_for(super::requested_model(body).as_deref())
        .await
        .map_err(ApiError::into_ollama_response)
}

async fn version() -> Json<Value> {
    Json(json!({"version": OLLAMA_VERSION}))
}

async fn not_here(uri: axum::http::Uri) -> Response {
    let message = format!(
        "{} is not offered: models reach the box only as signed updates (docs/models.md)",
        uri.path()
    );
    (StatusCode::NOT_IMPLEMENTED, Json(json!({"error": message}))).into_response()
}

/// The name Ollama clients see: theirs are `family:tag`, and a name without a tag means
/// `:latest`.
fn ollama_name(card: &ModelCard) -> String {
    if card.id.contains(':') {
        card.id.clone()
    } else {
        format!("{}:latest", card.id)
    }
}

/// The model a request names, loaded or not. Ollama's names are case-insensitive, and
/// `x` is `x:latest`.
fn find_model(engine: &Engine, name: &str) -> Result<Arc<ModelCard>, ApiError> {
    let model = engine.card().ok_or_else(loading)?;
    if name.is_empty() {
        return Err(ApiError::invalid("model", "model is required"));
    }
    if models::same_name(name, &model.id) {
        Ok(model.clone())
    } else {
        Err(ApiError::status(
            StatusCode::NOT_FOUND,
            format!(
                "model '{name}' not found; this box has '{}'",
                ollama_name(model)
            ),
        ))
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// SHA-256 of the model's file, computed once (a few hundred MB take about a second).
async fn digest(model: &Arc<ModelCard>) -> Result<String, ApiError> {
    if let Some(d) = model.digest.get() {
        return Ok(d.clone());
    }
    let m = model.clone();
    let computed = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(&m.path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(m.digest
            .get_or_init(|| hex::encode(hasher.finalize()))
            .clone())
    })
    .await;
    match computed {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the model file {}: {e}", model.path.display()),
        )),
        Err(e) => Err(ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

/// The file's size and modification time (the time it was installed).
fn file_facts(model: &ModelCard) -> (u64, String) {
    let meta = std::fs::metadata(&model.path).ok();
    let size = meta.as_ref().map_or(model.size, |m| m.len());
    let modified = meta
        .and_then(|m| m.modified().ok())
        .unwrap_or_else(|| SystemTime::UNIX_EPOCH + Duration::from_secs(model.created));
    (size, humantime::format_rfc3339_nanos(modified).to_string())
}

fn details(model: &ModelCard) -> Value {
    let family = model.meta("general.architecture").unwrap_or_default();
    let quantization = model
        .meta("general.file_type")
        .and_then(|t| t.parse().ok())
        .map_or("unknown", file_type_name);
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size(model.n_params),
        "quantization_level": quantization,
    })
}

/// Ollama's way of writing a parameter count: `134.52M`, `8.0B`.
fn parameter_size(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else {
        format!("{:.2}K", n / 1e3)
    }
}

/// llama.cpp's `llama_ftype`, as GGUF's `general.file_type` stores it.
fn file_type_name(file_type: u32) -> &'static str {
    match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        25 => "IQ4_NL",
        30 => "IQ4_XS",
        32 => "BF16",
        38 => "MXFP4",
        _ => "unknown",
    }
}

/// A pulled model as Ollama lists it, from its signed catalog entry (no need to load
/// or hash it: the entry carries its size and SHA-256).
fn pulled_listing(models: &Models, model: &Model) -> Value {
    let Model::Pulled(m) = model else {
        unreachable!("only pulled models are listed from their entry")
    };
    let e = &m.entry;
    let name = if e.name.contains(':') {
        e.name.clone()
    } else {
        format!("{}:latest", e.name)
    };
    json!({
        "name": name,
        "model": name,
        "modified_at": humantime::format_rfc3339_nanos(models.modified(model)).to_string(),
        "size": e.length,
        "digest": e.sha256,
        "details": pulled_details(m),
    })
}

fn pulled_details(m: &models::Installed) -> Value {
    let e = &m.entry;
    json!({
        "parent_model": "",
        "format": e.format,
        "family": e.family,
        "families": [e.family],
        "parameter_size": e.parameters,
        "quantization_level": e.quantization,
    })
}

async fn tags(State(models): State<Arc<Models>>) -> Response {
    let result = async {
        let Some(model) = models.factory_card() else {
            // Still loading: nothing to list yet.
            return Ok(Json(json!({"models": []})).into_response());
        };
        let (size, modified_at) = file_facts(&model);
        let mut list = vec![json!({
            "name": ollama_name(&model),
            "model": ollama_name(&model),
            "modified_at": modified_at,
            "size": size,
            "digest": digest(&model).await?,
            "details": details(&model),
        })];
        for m in models.pulled() {
            list.push(pulled_listing(&models, &Model::Pulled(Box::new(m))));
        }
        Ok(Json(json!({ "models": list })).into_response())
    }
    .await;
    reply_metrics(&models.metrics, result)
}

async fn ps(State(models): State<Arc<Models>>) -> Response {
    let engine = models.resident();
    let result = async {
        // Only a loaded model is listed: one freed by `keep_alive` is not.
        let Some(loaded) = engine.model() else {
            return Ok(Json(json!({"models": []})).into_response());
        };
        let model = &loaded.card;
        // Without a `keep_alive` the box's model stays loaded: it never expires.
        let expires = engine
            .expires_at()
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        Ok(Json(json!({"models": [{
            "name": ollama_name(model),
            "model": ollama_name(model),
            "size": model.size,
            "digest": digest(model).await?,
            "details": details(model),
            "expires_at": humantime::format_rfc3339_nanos(expires).to_string(),
            "size_vram": 0,
            "context_length": model.n_ctx_seq,
        }]}))
        .into_response())
    }
    .await;
    reply(&engine, result)
}

async fn show(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let request: NameBody = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_ollama_response(),
    };
    // A pulled model not loaded since the service started: its signed entry answers.
    // Loaded or not, its default parameters are the catalog's.
    let mut parameters = String::new();
    if let Some((id, model @ Model::Pulled(_))) = models.find(request.name()) {
        if models.card(&id).is_none() {
            return show_pulled(&models, &model);
        }
        if let Model::Pulled(m) = &model {
            parameters = parameters_text(&m.entry);
        }
    }
    let engine = match models.engine_for(Some(request.name())).await {
        Ok(engine) => engine,
        Err(e) => return e.into_ollama_response(),
    };
    let result = async {
        let request: NameBody = parse_json(&body)?;
        let model = find_model(&engine, request.name())?;
        let (_, modified_at) = file_facts(&model);
        let mut capabilities = vec!["completion"];
        if model.template.is_some() {
            capabilities.push("tools");
        }
        Ok(Json(json!({
            "license": model.meta("general.license").unwrap_or_default(),
            "modelfile": format!("# The box's model\nFROM {}\n", model.path.display()),
            "parameters": parameters,
            "template": model.template.as_deref().unwrap_or_default(),
            "details": details(&model),
            "model_info": model_info(&model),
            "capabilities": capabilities,
            "modified_at": modified_at,
        }))
        .into_response())
    }
    .await;
    reply(&engine, result)
}

/// The GGUF metadata, values as JSON numbers where they are numbers; the tokenizer's
/// long arrays are left out (null), as Ollama does unless asked to be verbose.
fn model_info(model: &ModelCard) -> Value {
    let mut info = Map::new();
    for (key, v) in &model.metadata {
        if key == "tokenizer.chat_template" {
            continue;
        }
        let value = if key.starts_with("tokenizer.ggml.") && v.starts_with("arr[") {
            Value::Null
        } else {
            v.parse::<i64>()
                .map(Value::from)
                .or_else(|_| v.parse::<f64>().map(Value::from))
                .unwrap_or_else(|_| Value::String(v.clone()))
        };
        info.insert(key.clone(), value);
    }
    info.insert("general.parameter_count".into(), json!(model.n_params));
    Value::Object(info)
}

async fn chat(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = match engine_for_body(&models, &body).await {
        Ok(engine) => engine,
        Err(response) => return response,
    };
    Metrics::add(&engine.metrics.chat_requests, 1);
    let result = async {
        let received = Instant::now();
        let request: ChatBody = parse_json(&body)?;
        let model = find_model(&engine, &request.model)?;
        let keep_alive = parse_keep_alive(request.keep_alive.as_ref())?;
        check_capabilities(&request.model, request.think.as_ref(), false)?;
        let reply = Reply {
            shape: Shape::Chat,
            model: ollama_name(&model),
            received,
            logprobs: request.logprobs == Some(true),
        };
        if request.messages.is_empty() {
            return reply.load_or_unload(&engine, keep_alive).await;
        }
        let mut openai = translate(
            &model.id,
            request.options,
            request.format.as_ref(),
            request.logprobs,
            request.top_logprobs,
        )?;
        openai.messages = Some(chat_messages(request.messages)?);
        openai.tools = request.tools;
        let started = generate::start(&engine, &openai, Kind::Chat).await?;
        // After the request is queued, so that it is answered before the model is freed.
        engine.keep_alive(keep_alive);
        reply.send(started, request.stream.unwrap_or(true)).await
    }
    .await;
    reply(&engine, result)
}

async fn generate_route(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = match engine_for_body(&models, &body).await {
        Ok(engine) => engine,
        Err(response) => return response,
    };
    Metrics::add(&engine.metrics.completion_requests, 1);
    let result = async {
        let received = Instant::now();
        let request: GenerateBody = parse_json(&body)?;
        let model = find_model(&engine, &request.model)?;
        let keep_alive = parse_keep_alive(request.keep_alive.as_ref())?;
        request.check_supported()?;
        let reply = Reply {
            shape: Shape::Generate,
            model: ollama_name(&model),
            received,
            logprobs: request.logprobs == Some(true),
        };
        let prompt = request.prompt.unwrap_or_default();
        if prompt.is_empty() {
            return reply.load_or_unload(&engine, keep_alive).await;
        }
        let mut openai = translate(
            &model.id,
            request.options,
            request.format.as_ref(),
            request.logprobs,
            request.top_logprobs,
        )?;
        // Without raw, the prompt is a user turn in the model's chat template (as Ollama's
        // default TEMPLATE does); a model without a template takes it as it is.
        let kind = if request.raw || model.template.is_none() {
            let text = match request.system {
                Some(system) if !request.raw => format!("{system}\n\n{prompt}"),
                _ => prompt,
            };
            openai.prompt = Some(PromptInput::One(text));
            Kind::Completion
        } else {
            let mut messages = Vec::new();
            if let Some(system) = request.system {
                messages.push(ChatMessage {
                    role: "system".into(),
                    content: Some(Content::Text(system)),
                    tool_calls: None,
                    tool_call_id: None,
                    name: None,
                });
            }
            messages.push(ChatMessage {
                role: "user".into(),
                content: Some(Content::Text(prompt)),
                tool_calls: None,
                tool_call_id: None,
                name: None,
            });
            openai.messages = Some(messages);
            Kind::Chat
        };
        let started = generate::start(&engine, &openai, kind).await?;
        engine.keep_alive(keep_alive);
        reply.send(started, request.stream.unwrap_or(true)).await
    }
    .await;
    reply(&engine, result)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// `/api/chat`: text in `message.content`.
    Chat,
    /// `/api/generate`: text in `response`.
    Generate,
}

/// How one chat or generate request is answered.
struct Reply {
    shape: Shape,
    model: String,
    received: Instant,
    logprobs: bool,
}

impl Reply {
    fn line(&self, text: &str, calls: Option<Value>, done: bool) -> Value {
        let mut line = json!({"model": self.model, "created_at": now_rfc3339()});
        match self.shape {
            Shape::Chat => {
                let mut message = json!({"role": "assistant", "content": text});
                if let Some(calls) = calls {
                    message["tool_calls"] = calls;
                }
                line["message"] = message;
            }
            Shape::Generate => line["response"] = json!(text),
        }
        line["done"] = json!(done);
        line
    }

    /// The answer to a request with nothing to generate: Ollama's way to load a model,
    /// or with `keep_alive: 0` to free it.
    async fn load_or_unload(
        &self,
        engine: &Engine,
        keep_alive: KeepAlive,
    ) -> Result<Response, ApiError> {
        let reason = if keep_alive == KeepAlive::For(Duration::ZERO) {
            "unload"
        } else {
            resolve_model(engine, None).await?;
            "load"
        };
        engine.keep_alive(keep_alive);
        let mut line = self.line("", None, true);
        line["done_reason"] = json!(reason);
        Ok(Json(line).into_response())
    }

    /// The last line's reason and figures (durations in nanoseconds).
    fn finish(&self, line: &mut Value, reason: &str, usage: &Usage) {
        let ns = |ms: f64| (ms * 1e6) as u64;
        line["done_reason"] = json!(match reason {
            // Ollama ends a reply with calls as any other.
            "tool_calls" => "stop",
            other => other,
        });
        line["total_duration"] = json!(self.received.elapsed().as_nanos() as u64);
        line["load_duration"] = json!(0);
        line["prompt_eval_count"] = json!(usage.prompt_tokens);
        line["prompt_eval_duration"] = json!(ns(usage.prompt_ms));
        line["eval_count"] = json!(usage.completion_tokens);
        line["eval_duration"] = json!(ns(usage.generation_ms));
    }

    async fn send(self, started: Started, stream: bool) -> Result<Response, ApiError> {
        if !stream {
            let collected = generate::collect(started).await?;
            let choice = &collected.choices[0];
            let mut line = self.line(&choice.text, calls_json(&choice.calls), true);
            if self.logprobs {
                line["logprobs"] = logprobs_json(&choice.logprobs);
            }
            self.finish(&mut line, choice.finish_reason, &collected.usage);
            return Ok(Json(line).into_response());
        }
        let Started { events, reader, .. } = started;
        let lines = stream::unfold(Some((self, events, reader)), |state| async move {
            let (reply, mut events, mut reader) = state?;
            let mut lines = Vec::new();
            let mut ended = false;
            while lines.is_empty() && !ended {
                let Some(event) = events.recv().await else {
                    lines
                        .push(json!({"error": "the engine stopped before the reply was complete"}));
                    ended = true;
                    break;
                };
                for out in reader.read(event) {
                    match out {
                        Out::Text { text, logprobs, .. } => {
                            let mut line = reply.line(&text, None, false);
                            if reply.logprobs {
                                line["logprobs"] = logprobs_json(&logprobs);
                            }
                            lines.push(line);
                        }
                        Out::Calls { calls, .. } => {
                            lines.push(reply.line("", calls_json(&calls), false));
                        }
                        Out::Done {
                            reason,
                            last: Some(usage),
                            ..
                        } => {
                            let mut line = reply.line("", None, true);
                            reply.finish(&mut line, reason, &usage);
                            lines.push(line);
                            ended = true;
                        }
                        Out::Done { last: None, .. } => {}
                        Out::Failed(message) => {
                            lines.push(json!({"error": message}));
                            ended = true;
                        }
                    }
                }
            }
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            Some((
                Ok::<_, Infallible>(Bytes::from(text)),
                (!ended).then_some((reply, events, reader)),
            ))
        })
        .boxed();
        Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(lines),
        )
            .into_response())
    }
}

fn calls_json(calls: &[llamabox_inference_protocol::tools::ToolCall]) -> Option<Value> {
    (!calls.is_empty()).then(|| {
        json!(calls
            .iter()
            .map(|c| {
                let arguments: Value =
                    serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                json!({"function": {"name": c.name, "arguments": arguments}})
            })
            .collect::<Vec<_>>())
    })
}

/// Ollama's logprobs are OpenAI chat's `logprobs.content` list, entry for entry.
fn logprobs_json(entries: &[TokenLogprob]) -> Value {
    generate::logprobs_json(Kind::Chat, entries, 0)["content"].take()
}

/// Mean-pooled, normalized embeddings, cut to the context or refused, and to
/// `dimensions` (renormalized) when asked.
async fn embed_texts(
    engine: &Engine,
    texts: Vec<String>,
    truncate: bool,
    dimensions: Option<u32>,
    keep_alive: KeepAlive,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let model = resolve_model(engine, None).await?;
    let n_embd = model.card.n_embd;
    if let Some(d) = dimensions {
        if d == 0 || d > n_embd {
            return Err(ApiError::invalid(
                "dimensions",
                format!("dimensions must be between 1 and {n_embd} (this model's size), not {d}"),
            ));
        }
    }
    let limit = model.n_ctx_seq as usize;
    let mut inputs: Vec<Vec<LlamaToken>> = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let mut tokens = model.tokenize(text);
        if tokens.is_empty() {
            return Err(ApiError::invalid("input", format!("input {i} is empty")));
        }
        if tokens.len() > limit {
            if !truncate {
                return Err(ApiError::invalid(
                    "input",
                    format!(
                        "input {i} is {} tokens, but at most {limit} fit in the context; send truncate: true to cut it",
                        tokens.len()
                    ),
                ));
            }
            tokens.truncate(limit);
        }
        inputs.push(tokens);
    }
    let counted = inputs.iter().map(Vec::len).sum();
    if inputs.is_empty() {
        engine.keep_alive(keep_alive);
        return Ok((Vec::new(), 0));
    }
    let embedded = engine.embed(inputs).await;
    engine.keep_alive(keep_alive);
    let mut vectors =
        embedded.map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    if let Some(d) = dimensions {
        for v in &mut vectors {
            v.truncate(d as usize);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    Ok((vectors, counted))
}

async fn embed(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = match engine_for_body(&models, &body).await {
        Ok(engine) => engine,
        Err(response) => return response,
    };
    Metrics::add(&engine.metrics.embedding_requests, 1);
    let result = async {
        let received = Instant::now();
        let request: EmbedBody = parse_json(&body)?;
        let model = find_model(&engine, &request.model)?;
        let keep_alive = parse_keep_alive(request.keep_alive.as_ref())?;
        let texts = match request.input {
            EmbedInput::One(t) => vec![t],
            EmbedInput::Many(v) => v,
        };
        let (vectors, counted) = embed_texts(
            &engine,
            texts,
            request.truncate.unwrap_or(true),
            request.dimensions,
            keep_alive,
        )
        .await?;
        Ok(Json(json!({
            "model": ollama_name(&model),
            "embeddings": vectors,
            "total_duration": received.elapsed().as_nanos() as u64,
            "load_duration": 0,
            "prompt_eval_count": counted,
        }))
        .into_response())
    }
    .await;
    reply(&engine, result)
}

/// The older single-input route: `{"embedding": [...]}`.
async fn embeddings_legacy(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = match engine_for_body(&models, &body).await {
        Ok(engine) => engine,
        Err(response) => return response,
    };
    Metrics::add(&engine.metrics.embedding_requests, 1);
    let result = async {
        let request: LegacyEmbedBody = parse_json(&body)?;
        find_model(&engine, &request.model)?;
        let keep_alive = parse_keep_alive(request.keep_alive.as_ref())?;
        if request.prompt.is_empty() {
            return Ok(Json(json!({"embedding": []})).into_response());
        }
        let (mut vectors, _) =
            embed_texts(&engine, vec![request.prompt], true, None, keep_alive).await?;
        Ok(Json(json!({"embedding": vectors.pop().unwrap_or_default()})).into_response())
    }
    .await;
    reply(&engine, result)
}

/// The box's own model is part of its signed image: it cannot be deleted.
async fn delete_model(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = models.resident();
    let result = async {
        let request: NameBody = parse_json(&body)?;
        let Some(factory) = models.factory_card() else {
            return Err(loading());
        };
        if !models::same_name(request.name(), &factory.id) {
            // Pulled models are deleted through the update service (the gateway sends
            // their deletes there); anything else is not on this box.
            return Err(ApiError::status(
                StatusCode::NOT_FOUND,
                format!(
                    "model '{}' not found; this box has {}",
                    request.name(),
                    models.names()
                ),
            ));
        }
        let model = factory;
        Err(ApiError::status(
            StatusCode::FORBIDDEN,
            format!(
                "'{}' is the box's own model, part of its signed system image: it cannot be deleted",
                ollama_name(&model)
            ),
        ))
    }
    .await;
    reply(&engine, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_are_written_as_ollama_writes_them() {
        assert_eq!(parameter_size(134_515_008), "134.52M");
        assert_eq!(parameter_size(8_030_261_248), "8.0B");
        assert_eq!(parameter_size(268_098_176), "268.10M");
    }
}
