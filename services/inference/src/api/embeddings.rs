//! `POST /v1/embeddings`: mean-pooled, L2-normalized vectors from the loaded model.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use llama_cpp_2::token::LlamaToken;
use serde_json::json;

use llamabox_inference_protocol::embeddings::{EmbeddingsRequest, Input, MAX_INPUTS};

use super::{parse_json, resolve_model, respond, ApiError};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::models::Models;

pub async fn embeddings(State(models): State<Arc<Models>>, body: Bytes) -> Response {
    let engine = match super::engine_for_body(&models, &body).await {
        Ok(engine) => engine,
        Err(response) => return response,
    };
    Metrics::add(&engine.metrics.embedding_requests, 1);
    respond(&engine, run(&engine, &body).await)
}

async fn run(engine: &Engine, body: &Bytes) -> Result<Response, ApiError> {
    let request: EmbeddingsRequest = parse_json(body)?;
    let model = resolve_model(engine, request.model.as_deref()).await?;
    let base64 = request.base64()?;
    let n_embd = model.model.n_embd() as u32;
    if request.dimensions.is_some_and(|d| d != n_embd) {
        return Err(ApiError::invalid(
            "dimensions",
            format!("this model's embeddings have {n_embd} dimensions"),
        ));
    }
    let n_vocab = model.model.n_vocab();
    let check_tokens = |tokens: Vec<i32>| -> Result<Vec<LlamaToken>, ApiError> {
        match tokens.iter().find(|t| **t < 0 || **t >= n_vocab) {
            Some(t) => Err(ApiError::invalid(
                "input",
                format!("token {t} is outside the vocabulary (0..{n_vocab})"),
            )),
            None => Ok(tokens.into_iter().map(LlamaToken::new).collect()),
        }
    };
    let inputs: Vec<Vec<LlamaToken>> = match request.input {
        Input::Text(t) => vec![model.tokenize(&t)],
        Input::Texts(v) => v.iter().map(|t| model.tokenize(t)).collect(),
        Input::Tokens(t) => vec![check_tokens(t)?],
        Input::TokenLists(v) => v.into_iter().map(check_tokens).collect::<Result<_, _>>()?,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!(
                "between 1 and {MAX_INPUTS} inputs are allowed, not {}",
                inputs.len()
            ),
        ));
    }
    for (i, tokens) in inputs.iter().enumerate() {
        if tokens.is_empty() {
            return Err(ApiError::invalid("input", format!("input {i} is empty")));
        }
        if tokens.len() > model.n_ctx_seq as usize {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "input {i} is {} tokens, but at most {} fit in the context",
                    tokens.len(),
                    model.n_ctx_seq
                ),
            )
            .with_code("context_length_exceeded"));
        }
    }
    let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = engine
        .embed(inputs)
        .await
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let data: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model.id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response())
}
