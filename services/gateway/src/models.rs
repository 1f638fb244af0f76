//! Models as signed updates, on the phone's side (docs/models.md): the gateway turns
//! Ollama's `POST /api/pull` and `DELETE /api/delete`, and the web app's Models screen
//! (`/v1/device/models`), into calls on the update service (`org.llamabox.Update1`),
//! which alone writes the model store. Everything else on `/api/` goes to inference.
//!
//! A pull streams Ollama's progress lines (`status`, `digest`, `total`, `completed`)
//! while the update service verifies chunk after chunk; a client that goes away
//! cancels it (what was verified is kept, so pulling again resumes).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use llamabox_device::bus::{self, UPDATE};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::App;
use crate::error::ApiError;

const BUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a pull's progress is read from the update service.
const POLL: Duration = Duration::from_millis(250);

async fn call<R>(
    method: &'static str,
    args: impl serde::Serialize + zbus::zvariant::DynamicType + Send + 'static,
) -> Result<R, String>
where
    R: for<'d> zbus::zvariant::DynamicDeserialize<'d> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        bus::proxy(UPDATE, Some(BUS_TIMEOUT))?
            .call(method, &args)
            .map_err(crate::status::bus_message)
    })
    .await
    .map_err(|e| format!("the update service call stopped: {e}"))?
}

async fn models_state() -> Result<Value, String> {
    let text: String = call("Models", ()).await?;
    serde_json::from_str(&text).map_err(|e| format!("the update service's models: {e}"))
}

/// Ollama's rules: a name without a tag means `:latest`; names ignore case.
fn normalize(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    if name.contains(':') {
        name
    } else {
        format!("{name}:latest")
    }
}

#[derive(Deserialize)]
struct NameRequest {
    model: Option<String>,
    name: Option<String>,
    stream: Option<bool>,
    /// Ollama's: pulling from registries without TLS. Not how the box pulls.
    #[serde(default)]
    #[allow(dead_code)]
    insecure: Option<bool>,
}

impl NameRequest {
    fn parse(body: &Bytes) -> Result<NameRequest, ApiError> {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("the request body is not valid: {e}"),
            )
        })
    }

    fn name(&self) -> Result<String, ApiError> {
        match self.model.as_deref().or(self.name.as_deref()) {
            Some(n) if !n.trim().is_empty() => Ok(normalize(n)),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`model` is required",
            )),
        }
    }
}

fn ndjson_line(value: &Value) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("JSON serializes");
    line.push(b'\n');
    line.into()
}

/// The HTTP status of a failed pull, by the update service's kind of error.
fn status_of(kind: Option<&str>) -> StatusCode {
    match kind {
        Some("unknown-model") => StatusCode::NOT_FOUND,
        Some("no-space") => StatusCode::INSUFFICIENT_STORAGE,
        Some("cancelled") => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// Cancels the pull if the client goes away before it ends.
struct CancelOnDrop {
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            tokio::task::spawn(async {
                let _: Result<bool, String> = call("CancelPull", ()).await;
            });
        }
    }
}

/// `POST /api/pull`: from the signed catalog only.
pub async fn pull(body: Bytes) -> Response {
    let request = match NameRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let name = match request.name() {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = call::<()>("PullModel", (name.clone(),)).await {
        return ApiError::new(StatusCode::CONFLICT, "pull_failed", e).into_response();
    }
    let (lines, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let stream = request.stream.unwrap_or(true);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(), (StatusCode, String)>>();
    tokio::spawn(async move {
        let mut guard = CancelOnDrop { armed: true };
        let mut last: Option<(u64, u64)> = None;
        let send = |value: Value| {
            let lines = lines.clone();
            async move { lines.send(Ok(ndjson_line(&value))).await.is_ok() }
        };
        if stream && !send(json!({"status": "pulling manifest"})).await {
            return;
        }
        let result = loop {
            tokio::time::sleep(POLL).await;
            let state = match models_state().await {
                Ok(s) => s,
                Err(e) => break Err((StatusCode::BAD_GATEWAY, e)),
            };
            let pull = &state["pull"];
            if pull["name"].as_str() != Some(name.as_str()) {
                break Err((
                    StatusCode::CONFLICT,
                    "another pull replaced this one".into(),
                ));
            }
            let (done, total) = (
                pull["done-bytes"].as_u64().unwrap_or(0),
                pull["total-bytes"].as_u64().unwrap_or(0),
            );
            if stream && total > 0 && last != Some((done, total)) {
                last = Some((done, total));
                let sha = pull["sha256"].as_str().unwrap_or_default();
                let line = json!({
                    "status": format!("pulling {}", &sha[..sha.len().min(12)]),
                    "digest": format!("sha256:{sha}"),
                    "total": total,
                    "completed": done,
                });
                if !send(line).await {
                    return; // the client went away: the guard cancels the pull
                }
            }
            match pull["phase"].as_str() {
                Some("pulling") => continue,
                Some("done") => break Ok(()),
                _ => {
                    let message = pull["error"]
                        .as_str()
                        .unwrap_or("the pull failed")
                        .to_string();
                    break Err((status_of(pull["error-kind"].as_str()), message));
                }
            }
        };
        guard.armed = false;
        if stream {
            match &result {
                Ok(()) => {
                    for status in ["verifying sha256 digest", "writing manifest", "success"] {
                        send(json!({"status": status})).await;
                    }
                }
                Err((_, message)) => {
                    send(json!({"error": message})).await;
                }
            }
        }
        let _ = done_tx.send(result);
    });
    if stream {
        return (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(tokio_stream_from(rx)),
        )
            .into_response();
    }
    match done_rx.await {
        Ok(Ok(())) => Json(json!({"status": "success"})).into_response(),
        Ok(Err((status, message))) => (status, Json(json!({"error": message}))).into_response(),
        Err(_) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": "the pull stopped without a result"})),
        )
            .into_response(),
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `DELETE /api/delete`: a pulled model is removed by the update service; any other
/// name goes on to inference, which answers for the factory model (403) and unknown
/// names (404).
pub async fn delete(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 10).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
                .into_response()
        }
    };
    let name = match NameRequest::parse(&body).and_then(|r| r.name()) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let installed = match models_state().await {
        Ok(state) => state["installed"]
            .as_array()
            .is_some_and(|models| models.iter().any(|m| m["name"].as_str() == Some(&name))),
        Err(e) => {
            return ApiError::new(StatusCode::BAD_GATEWAY, "update_unavailable", e).into_response()
        }
    };
    if !installed {
        let request = Request::from_parts(parts, Body::from(body));
        return app.upstreams.forward(request).await;
    }
    match call::<()>("DeleteModel", (name,)).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => ApiError::new(StatusCode::CONFLICT, "delete_failed", e).into_response(),
    }
}

/// `GET /v1/device/models`: installed models, the catalog last fetched, the pull in
/// progress and the space left (the update service's `Models()`).
pub async fn list() -> Result<Json<Value>, ApiError> {
    models_state()
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "update_unavailable", e))
}

/// `POST /v1/device/models/catalog`: checks the repository and fetches its signed
/// catalog now.
pub async fn refresh_catalog() -> Result<Json<Value>, ApiError> {
    let text: String = call("Catalog", ())
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "catalog_failed", e))?;
    let catalog: Value = serde_json::from_str(&text)
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "catalog_failed", e.to_string()))?;
    Ok(Json(catalog))
}

/// `POST /v1/device/models/cancel`: stops the pull in progress.
pub async fn cancel() -> Result<Json<Value>, ApiError> {
    let cancelled: bool = call("CancelPull", ())
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "update_unavailable", e))?;
    Ok(Json(json!({ "cancelled": cancelled })))
}

/// `POST /v1/device/models/default` `{"model": "gemma3:270m"}` (or `""`: the factory
/// model): the model the box loads at start, kept across reboots.
pub async fn set_default(body: Bytes) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize)]
    struct DefaultRequest {
        model: String,
    }
    let request: DefaultRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the request body is not valid: {e}"),
        )
    })?;
    let name = if request.model.trim().is_empty() {
        String::new()
    } else {
        normalize(&request.model)
    };
    call::<()>("SetDefaultModel", (name.clone(),))
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "default_failed", e))?;
    Ok(Json(
        json!({ "default": (!name.is_empty()).then_some(name) }),
    ))
}
