//! A chat message as the model's template sees it.

use serde::Serialize;
use serde_json::Value as Json;

/// One message as the template sees it: text content, and for templates that know tools,
/// the assistant's calls (Hugging Face's shape: `function.arguments` is an object) or the
/// tool result's call id and function name.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
