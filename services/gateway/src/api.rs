//! The HTTP surface (docs/api.md lists every route and its rule).
//!
//! Public: the web app's files, `/health`, and pairing. Everything else under `/v1/`
//! (and Ollama's `/api/`) needs a paired phone's bearer token; without one it is 401,
//! whether or not the route exists.

use crate::error::ApiError;
use crate::net::{plain_http_allowed, Conn};
use crate::pairing::{Pairing, MAX_FAILURES};
use crate::phones::{Phone, Phones};
use crate::proxy::Upstreams;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, delete, get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use llamabox_pairing::requests::{self, FinishRequest, StartRequest};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast::error::RecvError;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

pub struct App {
    pub device_name: String,
    pub fingerprint: String,
    /// Seals what the web app keeps on phones; handed out on plain HTTP only (the USB
    /// link and loopback), never over the LAN (`pairing_status`).
    pub phone_storage_key: [u8; llamabox_pairing::phone_storage::KEY_LEN],
    pub pairing: Mutex<Pairing>,
    pub phones: Mutex<Phones>,
    pub upstreams: Upstreams,
    /// The ids of phones as they are revoked: their open responses end.
    pub revoked: tokio::sync::broadcast::Sender<String>,
}

/// The body of a route anyone may call must say it is JSON: a cross-site form can send
/// `text/plain` or a form encoding without the browser asking first, but not JSON.
fn parse_public<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the body as Content-Type: application/json, not `{content_type}`"),
        ));
    }
    parse(body)
}

/// JSON bodies parsed by hand so a bad one gets a JSON error naming the problem.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("request body: {e}"),
        )
    })
}

fn base64_field(value: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    requests::base64_field(value, field)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e))
}

pub fn router(app: Arc<App>, web: &std::path::Path) -> Router {
    let protected = Router::new()
        .route("/v1/phones", get(list_phones))
        .route("/v1/phones/{id}", delete(revoke_phone))
        .route("/v1/pairing/window", post(open_window))
        .route("/v1/device/status", get(device_status))
        .route("/v1/update/check", post(update_check))
        .route("/v1/update/apply", post(update_apply))
        .route("/v1/device/models", get(crate::models::list))
        .route(
            "/v1/device/models/catalog",
            post(crate::models::refresh_catalog),
        )
        .route("/v1/device/models/cancel", post(crate::models::cancel))
        .route(
            "/v1/device/models/default",
            post(crate::models::set_default),
        )
        .route("/api/pull", post(crate::models::pull))
        .route("/api/delete", delete(crate::models::delete))
        .route("/v1/{*rest}", any(forward))
        .route("/api/{*rest}", any(forward))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_phone));
    let static_files = ServeDir::new(web).fallback(ServeFile::new(web.join("index.html")));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/pairing", get(pairing_status))
        .route("/v1/pairing/start", post(pairing_start))
        .route("/v1/pairing/finish", post(pairing_finish))
        .merge(protected)
        .fallback_service(static_files)
        .layer(middleware::from_fn(crate::error::ollama_shape))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            private_link_or_tls,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), known_host))
        // On every answer: no other site may frame the web app (clickjacking the pairing
        // or revoke buttons), no response is sniffed into another type, and no URL leaks
        // in a Referer.
        .layer(security_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(security_header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(security_header(
            header::CONTENT_SECURITY_POLICY,
            "frame-ancestors 'none'",
        ))
        .layer(security_header(header::REFERRER_POLICY, "no-referrer"))
        .with_state(app)
}

fn security_header(
    name: header::HeaderName,
    value: &'static str,
) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// Requests must name the box: an IP address, `localhost`, or its own mDNS name. A page
/// on another site whose name an attacker re-points at the box (DNS rebinding) sends
/// that site's name, and gets 421 instead of the box's answers.
async fn known_host(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string());
    match host {
        Some(host) if !names_this_box(&host, &app.device_name) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            format!(
                "this is {name}: use its address or {name}.local, not `{host}`",
                name = app.device_name
            ),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Whether a Host header (with or without a port) names this box.
fn names_this_box(host: &str, device_name: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        return rest
            .split(']')
            .next()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_end_matches('.');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case(&format!("{device_name}.local"))
}

/// Plain HTTP only over loopback and USB; elsewhere the same URL over HTTPS, on a host
/// that is this box: its mDNS name, else the address the request arrived on (never
/// whatever the Host header says).
async fn private_link_or_tls(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request,
    next: Next,
) -> Response {
    if conn.tls || plain_http_allowed(conn.local.ip()) {
        return next.run(request).await;
    }
    let own_name = format!("{}.local", app.device_name);
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map(|(name, _)| name).unwrap_or(h))
        .filter(|name| name.eq_ignore_ascii_case(&own_name))
        .map(str::to_string)
        .unwrap_or_else(|| match conn.local.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    Redirect::permanent(&format!("https://{host}{path}")).into_response()
}

async fn require_phone(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let phone = bearer(request.headers())
        .and_then(|token| app.phones.lock().unwrap().authenticate(token).cloned());
    match phone {
        Some(phone) => {
            let revoked = until_revoked(app.clone(), phone.id.clone());
            request.extensions_mut().insert(phone);
            let response = next.run(request).await;
            // A body of known length is already complete (its framing stays as it is).
            if response.body().size_hint().exact().is_some() {
                return response;
            }
            // A revoked phone hears no more: its streams (a chat's tokens, live voice
            // transcripts) end with the revocation, not when the stream would have.
            let (parts, body) = response.into_parts();
            let body = body.into_data_stream().take_until(Box::pin(revoked));
            Response::from_parts(parts, Body::from_stream(body))
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs a paired phone's credential (Authorization: Bearer <token>); pair with the box's setup code first",
        )
        .into_response(),
    }
}

/// Resolves when phone `id` is revoked (subscribed now, so a revocation during the
/// request is not missed).
fn until_revoked(app: Arc<App>, id: String) -> impl std::future::Future<Output = ()> {
    let mut revoked = app.revoked.subscribe();
    async move {
        loop {
            match revoked.recv().await {
                Ok(gone) if gone == id => return,
                Ok(_) => {}
                // Missed some: still paired?
                Err(RecvError::Lagged(_)) => {
                    if app.phones.lock().unwrap().list().iter().all(|p| p.id != id) {
                        return;
                    }
                }
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn forward(State(app): State<Arc<App>>, request: Request) -> Response {
    app.upstreams.forward(request).await
}

/// Who the box is and whether pairing is open. On plain HTTP (the USB link, loopback:
/// `private_link_or_tls` lets nothing else through) also the key the web app seals its
/// storage with: every box's USB link is the same origin, and this keeps another page
/// there from reading this box's credential and conversations (docs/web-app.md). Over
/// HTTPS the origin is the box's own and the key is never sent: a LAN neighbour cannot
/// ask for it.
async fn pairing_status(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
) -> Response {
    let status = app.pairing.lock().unwrap().status();
    let mut body = json!({
        "device": app.device_name,
        "fingerprint": app.fingerprint,
        "open": status.open,
        "closes_in_s": status.closes_in_s,
        "failures": status.failures,
        "attempts_left": status.attempts_left,
        "max_failures": MAX_FAILURES,
    });
    if !conn.tls && plain_http_allowed(conn.local.ip()) {
        body["storage_key"] = requests::base64(app.phone_storage_key).into();
    }
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}

async fn pairing_start(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: StartRequest = parse_public(&headers, &body)?;
    let message = base64_field(&request.message, "message")?;
    let (session, reply) = app.pairing.lock().unwrap().start(&request.name, &message)?;
    Ok(Json(
        json!({"session": session, "message": requests::base64(reply)}),
    ))
}

async fn pairing_finish(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: FinishRequest = parse_public(&headers, &body)?;
    let proof = base64_field(&request.proof, "proof")?;
    let result = app.pairing.lock().unwrap().finish(&request.session, &proof);
    let (keys, name) = match result {
        Ok(ok) => ok,
        Err(refusal) => {
            tracing::warn!("pairing from {} refused: {refusal}", conn.remote);
            return Err(refusal.into());
        }
    };
    let (phone, token) = app
        .phones
        .lock()
        .unwrap()
        .add(&name)
        .map_err(ApiError::internal)?;
    tracing::info!(
        "paired phone {} ({:?}) from {}",
        phone.id,
        phone.name,
        conn.remote
    );
    let credential = json!({
        "phone_id": phone.id,
        "token": token,
        "device": app.device_name,
        "fingerprint": app.fingerprint,
    });
    let session = request.session.as_bytes();
    Ok(Json(json!({
        "proof": requests::base64(keys.box_proof(session)),
        "sealed": requests::base64(keys.seal(session, credential.to_string().as_bytes())),
    })))
}

async fn list_phones(
    State(app): State<Arc<App>>,
    Extension(me): Extension<Phone>,
) -> Json<serde_json::Value> {
    let phones = app.phones.lock().unwrap();
    let owner = phones.owner().map(|p| p.id.clone());
    Json(json!({"phones": phones.list(), "you": me.id, "owner": owner}))
}

async fn revoke_phone(
    State(app): State<Arc<App>>,
    Extension(me): Extension<Phone>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    {
        let mut phones = app.phones.lock().unwrap();
        if !phones.list().iter().any(|p| p.id == id) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no paired phone {id}"),
            ));
        }
        if !phones.may_revoke(&me.id, &id) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the box's owner (the phone paired first) may remove other phones; a phone may remove itself",
            ));
        }
        phones.revoke(&id).map_err(ApiError::internal)?;
    }
    // No receivers (no open requests) is not an error.
    let _ = app.revoked.send(id.clone());
    tracing::info!("phone {id} revoked by {}", me.id);
    Ok(StatusCode::NO_CONTENT)
}

async fn open_window(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut pairing = app.pairing.lock().unwrap();
    pairing.reopen()?;
    let status = pairing.status();
    Ok(Json(
        json!({"open": status.open, "closes_in_s": status.closes_in_s}),
    ))
}

async fn device_status(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    let name = app.device_name.clone();
    tokio::task::spawn_blocking(move || crate::status::collect(&name))
        .await
        .map(Json)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("device status: {e}")))
}

/// Update actions go to the update service over D-Bus; its refusal (no repository,
/// nothing to install, already busy) comes back as a 409 with its own words.
async fn update_check() -> Result<Json<serde_json::Value>, ApiError> {
    match tokio::task::spawn_blocking(crate::status::update_check).await {
        Ok(Ok(result)) => Ok(Json(json!({ "result": result }))),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::CONFLICT, "update_failed", e)),
        Err(e) => Err(ApiError::internal(anyhow::anyhow!("update check: {e}"))),
    }
}

async fn update_apply() -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    match tokio::task::spawn_blocking(crate::status::update_apply).await {
        Ok(Ok(())) => Ok((StatusCode::ACCEPTED, Json(json!({ "started": true })))),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::CONFLICT, "update_failed", e)),
        Err(e) => Err(ApiError::internal(anyhow::anyhow!("update: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::names_this_box;

    #[test]
    fn hosts_that_name_the_box() {
        for host in [
            "10.55.0.1",
            "127.0.0.1:8443",
            "[::1]:443",
            "[fe80::1]",
            "localhost",
            "LlamaBox-1a2b.local",
            "llamabox-1a2b.local.:443",
        ] {
            assert!(names_this_box(host, "llamabox-1a2b"), "{host}");
        }
        for host in [
            "attacker.example",
            "llamabox-ffff.local",
            "127.0.0.1.nip.io",
            "[not-an-ip]",
            "llamabox-1a2b.local.evil",
        ] {
            assert!(!names_this_box(host, "llamabox-1a2b"), "{host}");
        }
    }
}
