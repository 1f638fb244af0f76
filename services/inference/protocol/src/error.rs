//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use http::StatusCode;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// OpenAI's name for the error (`type`): what kind of failure a client sees.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 if self.param.is_none() => "not_found_error",
            429 | 503 => "server_busy",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

/// Answers in OpenAI's shape (the service enables the `axum` feature; fuzzing does not).
#[cfg(feature = "axum")]
mod response {
    use axum::response::{IntoResponse, Response};
    use axum::Json;
    use http::StatusCode;
    use serde_json::json;

    use super::ApiError;

    impl IntoResponse for ApiError {
        fn into_response(self) -> Response {
            let body = json!({
                "error": {
                    "message": self.message,
                    "type": self.kind(),
                    "param": self.param,
                    "code": self.code,
                }
            });
            with_retry_after((self.status, Json(body)).into_response())
        }
    }

    impl ApiError {
        /// The same error in Ollama's shape, `{"error": "…"}` (its routes, `ollama.rs`).
        pub fn into_ollama_response(self) -> Response {
            with_retry_after((self.status, Json(json!({"error": self.message}))).into_response())
        }
    }

    /// A busy or loading service says when to come back: clients (the openai and ollama
    /// packages among them) wait this long before retrying.
    fn with_retry_after(mut response: Response) -> Response {
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
        }
        response
    }
}
