//! The gateway's errors, in the OpenAI shape the services use too, so a phone parses
//! one shape whichever side refused: `{"error": {"message", "type", …}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::pairing::Refusal;

/// Errors in the OpenAI shape the services use too: `{"error": {"message", "type"}}`.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    extra: Option<(&'static str, serde_json::Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            extra: None,
        }
    }

    pub fn internal(e: anyhow::Error) -> ApiError {
        tracing::error!("{e:#}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("{e:#}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"message": self.message, "type": self.kind});
        if let Some((key, value)) = self.extra {
            error[key] = value;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        // Marks the answer as the gateway's own, for `ollama_shape`.
        response.extensions_mut().insert(OwnError(self.message));
        if self.status == StatusCode::UNAUTHORIZED && self.kind == "unauthorized" {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The message of an error the gateway answered itself (not a service's answer).
#[derive(Clone)]
pub struct OwnError(pub String);

/// Ollama's clients read `{"error": "…"}`: on Ollama's routes (`/api/…`) the gateway's
/// own errors (401, 502, …) take that shape; the inference service's answers pass as
/// they are (they have it already).
pub async fn ollama_shape(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ollama = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    let Some(OwnError(message)) = ollama
        .then(|| response.extensions().get::<OwnError>().cloned())
        .flatten()
    else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = Json(json!({ "error": message }))
        .into_response()
        .into_body();
    Response::from_parts(parts, body)
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        let (status, kind) = match refusal {
            Refusal::WindowClosed | Refusal::TooManyFailures => {
                (StatusCode::FORBIDDEN, "pairing_closed")
            }
            Refusal::Busy => (StatusCode::TOO_MANY_REQUESTS, "pairing_busy"),
            Refusal::UnknownSession => (StatusCode::NOT_FOUND, "unknown_session"),
            Refusal::BadMessage => (StatusCode::BAD_REQUEST, "invalid_request"),
            Refusal::WrongCode { .. } => (StatusCode::UNAUTHORIZED, "wrong_code"),
        };
        let mut error = ApiError::new(status, kind, refusal.to_string());
        if let Refusal::WrongCode { attempts_left } = refusal {
            error.extra = Some(("attempts_left", json!(attempts_left)));
        }
        error
    }
}
