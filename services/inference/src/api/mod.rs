//! The OpenAI-compatible HTTP API.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/responses`,
//! `POST /v1/embeddings`,
//! `GET /v1/models[/{id}]`, `GET /health`, `GET /metrics`; and Ollama's API (`ollama`).

mod embeddings;
mod generate;
mod ollama;
mod responses;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use llamabox_inference_protocol::ApiError;
use llamabox_inference_protocol::{new_id, parse_json, unix_now};

use crate::engine::{Engine, LoadedModel, ModelCard, SubmitError};
use crate::metrics::Metrics;
use crate::models::{Model, Models};

/// Largest request body accepted (a long conversation is a few hundred KiB).
const MAX_BODY_BYTES: usize = 8 << 20;

pub fn router(models: Arc<Models>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(ollama::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(models)
}

/// The `model` a request body names (Ollama's older clients: `name`), read before the
/// request is parsed for real: it decides which engine parses and runs it.
fn requested_model(body: &Bytes) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
        name: Option<String>,
    }
    serde_json::from_slice::<Named>(body)
        .ok()
        .and_then(|n| n.model.filter(|m| !m.is_empty()).or(n.name))
}

/// The engine of the model a request's body names, or the (OpenAI-shaped) answer that
/// it has none.
async fn engine_for_body(models: &Models, body: &Bytes) -> Result<Arc<Engine>, Response> {
    models
        .engine_for(requested_model(body).as_deref())
        .await
        .map_err(|e| respond_metrics(&models.metrics, Err(e)))
}

/// The handler's result as a response; client errors are counted in `/metrics`.
fn respond(engine: &Engine, result: Result<Response, ApiError>) -> Response {
    respond_metrics(&engine.metrics, result)
}

fn respond_metrics(metrics: &Metrics, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_client_error() {
                Metrics::add(&metrics.invalid_requests, 1);
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

/// A pulled model that has not been loaded yet: what its catalog entry says.
fn pulled_object(models: &Models, model: &Model) -> serde_json::Value {
    let Model::Pulled(m) = model else {
        unreachable!("only pulled models are listed from their entry")
    };
    let created = models
        .modified(model)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "id": m.entry.name,
        "object": "model",
        "created": created,
        "owned_by": "llamabox",
        "meta": {"size": m.entry.length},
    })
}

/// Every model the box can run: the factory model first, then the pulled ones.
async fn list_models(
    State(models): State<Arc<Models>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let factory = models.factory_card().ok_or_else(loading)?;
    let mut data = vec![model_object(&factory)];
    for m in models.pulled() {
        data.push(match models.card(&m.entry.name) {
            Some(card) => model_object(&card),
            None => pulled_object(&models, &Model::Pulled(Box::new(m))),
        });
    }
    // The default model first: clients that take the first model take the owner's.
    if let Some(default) = models.default_model() {
        if let Some(at) = data.iter().position(|m| m["id"] == default.as_str()) {
            let model = data.remove(at);
            data.insert(0, model);
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn model(
    State(models): State<Arc<Models>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    models.factory_card().ok_or_else(loading)?;
    match models.find(&id) {
        Some((id, model)) => Ok(Json(match models.card(&id) {
            Some(card) => model_object(&card),
            None => pulled_object(&models, &model),
        })),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{id}` does not exist; this box has {}",
                models.names()
            ),
            param: Some("model"),
            code: Some("model_not_found"),
        }),
    }
}

/// Ready once the factory model has loaded the first time; a model freed by
/// `keep_alive` is loaded again by the next request, so the service stays healthy.
async fn health(State(models): State<Arc<Models>>) -> Response {
    let engine = models.resident();
    match models.factory_card() {
        Some(_) => Json(json!({
            "status": "ok",
            "model": engine.id(),
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

async fn metrics(State(models): State<Arc<Models>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        models.metrics.render(),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}
