//! HTTP: OpenAI's `POST /v1/audio/transcriptions` for audio recorded on the phone, the
//! live event stream, status and health. The gateway (docs/api.md) authenticates
//! callers; this server listens on loopback in the image.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tokio_stream::StreamExt as _;

use crate::audio::to_whisper_rate;
use crate::audio::upload::{read_multipart, Format, Transcription, UploadError};
use crate::events::Events;
use crate::pipeline::Stats;
use crate::transcribe::{Options, Transcriber};

/// OpenAI's upload limit.
const MAX_UPLOAD: usize = 25 * 1024 * 1024;
/// OpenAI's model name, accepted so existing clients work unchanged.
const OPENAI_MODEL: &str = "whisper-1";

#[derive(Clone)]
pub struct Api {
    pub transcriber: Arc<Mutex<Transcriber>>,
    pub model: String,
    pub events: Events,
    pub stats: Arc<Mutex<Stats>>,
    pub listening: Arc<std::sync::atomic::AtomicBool>,
    pub source: String,
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/voice/events", get(events))
        .route("/v1/voice/status", get(status))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(api)
}

/// An error in OpenAI's shape.
struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let body = json!({"error": {
            "message": self.message, "type": kind, "param": self.param, "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.message,
            param: e.param,
            code: None,
        }
    }
}

async fn transcriptions(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let upload = read_multipart(content_type, &body)?;
    let model = upload
        .model
        .clone()
        .ok_or_else(|| ApiError::invalid("model", "`model` is required"))?;
    if model != api.model && model != OPENAI_MODEL {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{model}` does not exist: this box transcribes with `{}` (or say `{OPENAI_MODEL}`)",
                api.model
            ),
            param: Some("model"),
            code: Some("model_not_found"),
        });
    }
    let Transcription {
        samples,
        rate,
        format,
        temperature,
        language,
        prompt,
    } = upload.check()?;
    let options = Options {
        language,
        prompt,
        temperature,
    };
    let transcriber = api.transcriber.clone();
    let transcript = tokio::task::spawn_blocking(move || {
        let audio = to_whisper_rate(&samples, rate)?;
        transcriber
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .transcribe(&audio, &options)
    })
    .await
    .expect("the transcription task does not panic")
    .map_err(|e| {
        let message = format!("{e:#}");
        if message.contains("is not a language") {
            ApiError::invalid("language", message)
        } else {
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message,
                param: None,
                code: None,
            }
        }
    })?;
    Ok(match format {
        Format::Text => format!("{}\n", transcript.text).into_response(),
        Format::VerboseJson => {
            let segments: Vec<Value> = transcript
                .segments
                .iter()
                .enumerate()
                .map(|(id, s)| {
                    json!({"id": id, "start": s.start_ms as f64 / 1000.0,
                           "end": s.end_ms as f64 / 1000.0, "text": s.text})
                })
                .collect();
            Json(json!({
                "task": "transcribe",
                "language": transcript.language,
                "duration": transcript.audio_ms as f64 / 1000.0,
                "text": transcript.text,
                "segments": segments,
            }))
            .into_response()
        }
        Format::Json => Json(json!({"text": transcript.text})).into_response(),
    })
}

/// Server-sent events: one JSON object per event (see `events::Event`).
async fn events(State(api): State<Api>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(api.events.subscribe()).map(|item| {
        Ok(match item {
            Ok(event) => SseEvent::default()
                .json_data(&event)
                .expect("events serialize"),
            Err(BroadcastStreamRecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"missed\":{n}}}")),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn status(State(api): State<Api>) -> Json<Value> {
    Json(status_json(&api))
}

pub fn status_json(api: &Api) -> Value {
    let stats = api.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
    json!({
        "model": api.model,
        "source": api.source,
        "listening": api.listening.load(Ordering::Relaxed),
        "heard-seconds": stats.heard_seconds,
        "level-dbfs": stats.level_dbfs,
        "speech-started": stats.speech_started,
        "utterances": stats.utterances,
        "last-transcript": stats.last_transcript,
        "answers-pending": stats.answers_pending,
        "capture-error": stats.capture_error,
    })
}
