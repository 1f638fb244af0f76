//! The OpenAI-compatible HTTP API.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/responses`,
//! `POST /v1/embeddings`,
//! `GET /v1/models[/{id}]`, `GET /health`, `GET /metrics`; and Ollama's API (`ollama`).

mod embeddings;
mod error;
mod generate;
mod ollama;
mod request;
mod responses;
mod tools;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;

pub use error::ApiError;

use crate::engine::{Engine, LoadedModel, ModelCard, SubmitError};
use crate::metrics::Metrics;

/// Largest request body accepted (a long conversation is a few hundred KiB).
const MAX_BODY_BYTES: usize = 8 << 20;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(ollama::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(engine)
}

/// Parses a JSON body, answering 400 with serde's description (what and where) on failure.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let what = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("the request body is not valid: {what}"))
        } else {
            ApiError::bad_request(format!("the request body is not valid: `{path}`: {what}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))?;
    Ok(value)
}

/// The handler's result as a response; client errors are counted in `/metrics`.
fn respond(engine: &Engine, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_client_error() {
                Metrics::add(&engine.metrics.invalid_requests, 1);
            }
            e.into_response()
        }
    }
}

/// The model, checked against the request's `model` field (known once first loaded).
fn resolve_card(engine: &Engine, requested: Option<&str>) -> Result<Arc<ModelCard>, ApiError> {
    let card = engine.card().ok_or_else(loading)?;
    match requested {
        Some(name) if !name.is_empty() && name != card.id => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{name}` does not exist; this box serves `{}`",
                card.id
            ),
            param: Some("model"),
            code: Some("model_not_found"),
        }),
        _ => Ok(card.clone()),
    }
}

/// The loaded model, checked against the request's `model` field, loaded again first if
/// a client had it freed (`keep_alive`).
async fn resolve_model(
    engine: &Engine,
    requested: Option<&str>,
) -> Result<Arc<LoadedModel>, ApiError> {
    resolve_card(engine, requested)?;
    engine.ready().await.map_err(|e| match e {
        SubmitError::Loading | SubmitError::Busy { .. } => loading(),
    })
}

fn loading() -> ApiError {
    ApiError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        "the model is still loading; retry shortly",
    )
    .with_code("model_loading")
}

/// `prefix` and an id unique within this run; the start time in it keeps ids apart
/// across restarts.
fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(unix_now);
    format!(
        "{prefix}{start:x}{:06x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn model_object(card: &ModelCard) -> serde_json::Value {
    json!({
        "id": card.id,
        "object": "model",
        "created": card.created,
        "owned_by": "llamabox",
        "meta": {
            "n_ctx": card.n_ctx_seq,
            "n_ctx_train": card.n_ctx_train,
            "n_params": card.n_params,
            "size": card.size,
        },
    })
}

async fn models(State(engine): State<Arc<Engine>>) -> Result<Json<serde_json::Value>, ApiError> {
    let card = engine.card().ok_or_else(loading)?;
    Ok(Json(
        json!({"object": "list", "data": [model_object(card)]}),
    ))
}

async fn model(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let card = resolve_card(&engine, Some(&id))?;
    Ok(Json(model_object(&card)))
}

/// Ready once the model has loaded the first time; a model freed by `keep_alive` is
/// loaded again by the next request, so the service stays healthy meanwhile.
async fn health(State(engine): State<Arc<Engine>>) -> Response {
    match engine.card() {
        Some(card) => Json(json!({
            "status": "ok",
            "model": card.id,
            "loaded": engine.model().is_some(),
        }))
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        engine.metrics.render(),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}
