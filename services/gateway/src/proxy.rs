//! Forwarding authenticated requests to the services on loopback, streaming both ways
//! (token streams and transcript events arrive as they are made).

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Which service answers which paths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Service {
    Inference,
    Voice,
}

/// Every path the services answer, and which one: a new service route is a row here.
/// A prefix ending in `/` covers everything under it; any other covers itself and
/// its sub-paths (`/v1/models` and `/v1/models/x`, not `/v1/modelsx`).
const ROUTES: &[(&str, Service)] = &[
    ("/v1/chat/", Service::Inference),
    ("/v1/completions", Service::Inference),
    ("/v1/responses", Service::Inference),
    ("/v1/embeddings", Service::Inference),
    ("/v1/models", Service::Inference),
    // Ollama's API (docs/models.md): the same model for apps written for Ollama.
    ("/api/", Service::Inference),
    ("/v1/audio/", Service::Voice),
    ("/v1/voice/", Service::Voice),
];

impl Service {
    pub fn for_path(path: &str) -> Option<Service> {
        ROUTES.iter().find_map(|&(prefix, service)| {
            let rest = path.strip_prefix(prefix)?;
            (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')).then_some(service)
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Service::Inference => "the inference service",
            Service::Voice => "the voice service",
        }
    }
}

pub struct Upstreams {
    client: Client<HttpConnector, Body>,
    inference: String,
    voice: String,
}

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1), plus the
/// phone's credential, which the services never see.
const NOT_FORWARDED: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::CONNECTION,
    header::HOST,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl Upstreams {
    pub fn new(inference: &str, voice: &str) -> Upstreams {
        Upstreams {
            client: Client::builder(TokioExecutor::new()).build_http(),
            inference: inference.trim_end_matches('/').to_string(),
            voice: voice.trim_end_matches('/').to_string(),
        }
    }

    pub async fn forward(&self, request: Request) -> Response {
        let path = request.uri().path();
        let Some(service) = Service::for_path(path) else {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such route: {path}"),
            )
            .into_response();
        };
        let base = match service {
            Service::Inference => &self.inference,
            Service::Voice => &self.voice,
        };
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or(path);
        let uri: Uri = match format!("{base}{path_and_query}").parse() {
            Ok(uri) => uri,
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("bad path: {e}"),
                )
                .into_response()
            }
        };
        let (mut parts, body) = request.into_parts();
        parts.uri = uri;
        for name in NOT_FORWARDED {
            parts.headers.remove(name);
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => response.map(Body::new),
            Err(e) => {
                tracing::warn!("{}: {e}", service.describe());
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "service_unavailable",
                    format!(
                        "{} is not answering (starting up, or restarting)",
                        service.describe()
                    ),
                )
                .into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Service;

    #[test]
    fn paths_go_to_their_service() {
        assert_eq!(
            Service::for_path("/v1/chat/completions"),
            Some(Service::Inference)
        );
        assert_eq!(Service::for_path("/v1/models"), Some(Service::Inference));
        assert_eq!(Service::for_path("/v1/responses"), Some(Service::Inference));
        assert_eq!(Service::for_path("/v1/models/x"), Some(Service::Inference));
        assert_eq!(Service::for_path("/v1/modelsx"), None);
        assert_eq!(Service::for_path("/api/chat"), Some(Service::Inference));
        assert_eq!(Service::for_path("/apix"), None);
        assert_eq!(
            Service::for_path("/v1/audio/transcriptions"),
            Some(Service::Voice)
        );
        assert_eq!(Service::for_path("/v1/voice/events"), Some(Service::Voice));
        assert_eq!(Service::for_path("/v1/phones"), None);
        assert_eq!(Service::for_path("/metrics"), None);
    }
}
