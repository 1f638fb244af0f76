//! The body of OpenAI's `/v1/embeddings`.

use serde::Deserialize;

use crate::ApiError;

/// Inputs per request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
pub struct EmbeddingsRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub input: Input,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i32>),
    TokenLists(Vec<Vec<i32>>),
}

impl EmbeddingsRequest {
    /// Whether vectors go back as base64 (`encoding_format`) rather than as numbers.
    pub fn base64(&self) -> Result<bool, ApiError> {
        match self.encoding_format.as_deref() {
            None | Some("float") => Ok(false),
            Some("base64") => Ok(true),
            Some(other) => Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be `float` or `base64`, not `{other}`"),
            )),
        }
    }
}
