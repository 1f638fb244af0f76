//! The bodies of Ollama's API (`/api/chat`, `/api/generate`, `/api/embed`, …), and the
//! OpenAI-shaped requests they mean.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::openai::{
    ChatMessage, Content, FunctionCallIn, GenerateRequest, JsonSchemaFormat, ResponseFormat, Stop,
    ToolCallIn,
};
use crate::tools::ToolDef;
use crate::ApiError;

/// How long the model stays loaded once the engine is idle: Ollama's `keep_alive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepAlive {
    /// The box's default: the model stays loaded.
    #[default]
    Forever,
    /// Freed after this long without work (zero: as soon as the engine is idle).
    For(Duration),
}

/// The body of `/api/show` and `/api/delete`: a model's name.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NameBody {
    pub model: String,
    /// Older clients send `name`.
    pub name: String,
}

impl NameBody {
    pub fn name(&self) -> &str {
        if self.model.is_empty() {
            &self.name
        } else {
            &self.model
        }
    }
}

/// Ollama's `options`: the sampling fields this engine has. Others (GPU layers, mmap, …)
/// are about how Ollama runs a model and are ignored, as Ollama ignores ones it lacks.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Options {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<i64>,
    /// -1: until the end of the context; -2: fill the context; 0 or more: that many.
    pub num_predict: Option<i64>,
    pub stop: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Message {
    pub role: String,
    pub content: Option<String>,
    pub images: Option<Vec<String>>,
    pub tool_calls: Option<Vec<CallIn>>,
    pub tool_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CallIn {
    pub function: FunctionIn,
}

#[derive(Debug, Deserialize)]
pub struct FunctionIn {
    pub name: String,
    /// An object, not OpenAI's JSON text.
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChatBody {
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Option<Vec<ToolDef>>,
    pub format: Option<Value>,
    pub options: Option<Options>,
    pub stream: Option<bool>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerateBody {
    pub model: String,
    pub prompt: Option<String>,
    pub suffix: Option<String>,
    pub system: Option<String>,
    pub template: Option<String>,
    pub raw: bool,
    pub format: Option<Value>,
    pub options: Option<Options>,
    pub stream: Option<bool>,
    pub keep_alive: Option<Value>,
    pub images: Option<Vec<String>>,
    pub context: Option<Vec<i64>>,
    pub think: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

impl GenerateBody {
    /// Refuses, by name, what this box does not do for `/api/generate`: images, thinking,
    /// insert (`suffix`), a request's own template, token context from earlier replies.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        let images = self.images.as_ref().is_some_and(|v| !v.is_empty());
        check_capabilities(&self.model, self.think.as_ref(), images)?;
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix",
                format!("'{}' does not support insert (suffix)", self.model),
            ));
        }
        if self.template.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid(
                "template",
                "a request's own template is not supported; send raw: true with the prompt already formatted",
            ));
        }
        if self.context.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(ApiError::invalid(
                "context",
                "context (token lists from earlier replies) is not supported; use /api/chat for conversations",
            ));
        }
        Ok(())
    }
}

/// `keep_alive`: seconds as a number, or a duration such as `"5m"`, `"1h"`, `"0"`;
/// negative means forever. Absent: the box's default, which keeps the model loaded.
pub fn parse_keep_alive(value: Option<&Value>) -> Result<KeepAlive, ApiError> {
    let seconds = |s: f64| {
        if s < 0.0 {
            KeepAlive::Forever
        } else {
            KeepAlive::For(Duration::from_secs_f64(s.min(1e9)))
        }
    };
    let parsed = match value {
        None | Some(Value::Null) => Some(KeepAlive::Forever),
        Some(Value::Number(n)) => n.as_f64().map(seconds),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.starts_with('-') {
                Some(KeepAlive::Forever)
            } else if let Ok(n) = s.parse::<f64>() {
                Some(seconds(n))
            } else {
                humantime::parse_duration(s).ok().map(KeepAlive::For)
            }
        }
        Some(_) => None,
    };
    parsed.ok_or_else(|| {
        ApiError::invalid(
            "keep_alive",
            format!(
                "keep_alive must be seconds or a duration such as \"5m\", not {}",
                value.unwrap_or(&Value::Null)
            ),
        )
    })
}

pub fn check_capabilities(name: &str, think: Option<&Value>, images: bool) -> Result<(), ApiError> {
    if matches!(think, Some(v) if !v.is_null() && *v != Value::Bool(false)) {
        return Err(ApiError::invalid(
            "think",
            format!("'{name}' does not support thinking"),
        ));
    }
    if images {
        return Err(ApiError::invalid(
            "images",
            format!("'{name}' does not support images"),
        ));
    }
    Ok(())
}

pub fn response_format(format: Option<&Value>) -> Result<Option<ResponseFormat>, ApiError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(ResponseFormat::JsonObject)),
        Some(schema @ Value::Object(_)) => Ok(Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                schema: schema.clone(),
            },
        })),
        Some(other) => Err(ApiError::invalid(
            "format",
            format!("format must be \"json\" or a JSON schema object, not {other}"),
        )),
    }
}

/// The OpenAI-shaped request the rest of the service understands.
pub fn translate(
    model: &str,
    options: Option<Options>,
    format: Option<&Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
) -> Result<GenerateRequest, ApiError> {
    let o = options.unwrap_or_default();
    Ok(GenerateRequest {
        model: Some(model.to_string()),
        temperature: o.temperature,
        top_p: o.top_p,
        top_k: o.top_k,
        min_p: o.min_p,
        presence_penalty: o.presence_penalty,
        frequency_penalty: o.frequency_penalty,
        repeat_penalty: o.repeat_penalty,
        seed: o.seed,
        // Negative values mean "until the context is full", which is the engine's default.
        max_tokens: o.num_predict.filter(|n| *n >= 0),
        stop: o.stop.map(Stop::Many),
        response_format: response_format(format)?,
        logprobs: logprobs.map(Value::Bool),
        top_logprobs: top_logprobs.filter(|_| logprobs == Some(true)),
        ..GenerateRequest::default()
    })
}

/// Ollama's messages as OpenAI's: call arguments become JSON text, and a tool result,
/// which Ollama ties to its call by the tool's name, gets that call's id.
pub fn chat_messages(messages: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut open_calls: Vec<(String, String)> = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        if m.images.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::invalid(
                "messages",
                format!("messages[{i}] has images, and this model does not support images"),
            ));
        }
        let tool_calls = m.tool_calls.map(|calls| {
            open_calls.clear();
            calls
                .into_iter()
                .enumerate()
                .map(|(j, c)| {
                    let id = format!("call_{i}_{j}");
                    open_calls.push((c.function.name.clone(), id.clone()));
                    ToolCallIn {
                        id: Some(id),
                        function: FunctionCallIn {
                            name: c.function.name,
                            arguments: Some(c.function.arguments.to_string()),
                        },
                    }
                })
                .collect()
        });
        let tool_call_id = (m.role == "tool").then(|| {
            let at = m
                .tool_name
                .as_ref()
                .and_then(|name| open_calls.iter().position(|(n, _)| n == name))
                .unwrap_or(0);
            if at < open_calls.len() {
                open_calls.remove(at).1
            } else {
                format!("call_{i}")
            }
        });
        out.push(ChatMessage {
            role: m.role,
            content: m.content.map(Content::Text),
            tool_calls,
            tool_call_id,
            name: m.tool_name,
        });
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbedBody {
    #[serde(default)]
    pub model: String,
    pub input: EmbedInput,
    /// Cut inputs longer than the context (Ollama's default) instead of refusing them.
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub keep_alive: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LegacyEmbedBody {
    pub model: String,
    pub prompt: String,
    pub keep_alive: Option<Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keep_alive_takes_seconds_and_durations_and_refuses_the_rest() {
        let after = |s| KeepAlive::For(Duration::from_secs(s));
        for (given, want) in [
            (json!(0), after(0)),
            (json!("0"), after(0)),
            (json!(300), after(300)),
            (json!("5m"), after(300)),
            (json!("1h"), after(3600)),
            (json!(-1), KeepAlive::Forever),
            (json!("-1"), KeepAlive::Forever),
            (json!("-1m"), KeepAlive::Forever),
            (Value::Null, KeepAlive::Forever),
        ] {
            assert_eq!(parse_keep_alive(Some(&given)).unwrap(), want, "{given}");
        }
        assert_eq!(parse_keep_alive(None).unwrap(), KeepAlive::Forever);
        for bad in [json!("soon"), json!(true), json!([1])] {
            let e = parse_keep_alive(Some(&bad)).unwrap_err();
            assert!(e.message.contains("keep_alive"), "{}", e.message);
        }
    }

    #[test]
    fn a_tool_result_gets_the_id_of_the_call_with_its_name() {
        let messages: Vec<Message> = serde_json::from_value(json!([
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "time", "arguments": {}}},
            ]},
            {"role": "tool", "content": "12:00", "tool_name": "time"},
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ]))
        .unwrap();
        let out = chat_messages(messages).unwrap();
        let calls = out[1].tool_calls.as_ref().unwrap();
        assert_eq!(
            calls[0].function.arguments.as_deref(),
            Some(r#"{"city":"Paris"}"#)
        );
        assert_eq!(out[2].tool_call_id, calls[1].id);
        assert_eq!(out[3].tool_call_id, calls[0].id);
    }

    #[test]
    fn format_is_json_or_a_schema() {
        assert!(matches!(
            response_format(Some(&json!("json"))),
            Ok(Some(ResponseFormat::JsonObject))
        ));
        assert!(matches!(
            response_format(Some(&json!({"type": "object"}))),
            Ok(Some(ResponseFormat::JsonSchema { .. }))
        ));
        assert!(matches!(response_format(Some(&json!(""))), Ok(None)));
        assert!(response_format(Some(&json!("yaml"))).is_err());
    }
}
