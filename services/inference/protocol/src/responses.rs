//! The body of OpenAI's `/v1/responses`, and the chat request it means.

use serde::Deserialize;
use serde_json::Value;

use crate::openai::{
    ChatMessage, Content, FunctionCallIn, GenerateRequest, JsonSchemaFormat, ResponseFormat,
    ToolCallIn,
};
use crate::tools::{FunctionDef, ToolDef};
use crate::ApiError;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    pub input: Option<Input>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stream: bool,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    pub previous_response_id: Option<String>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub format: Option<Value>,
}

/// The chat request this Responses request means.
pub fn chat_request(r: &ResponsesRequest) -> Result<GenerateRequest, ApiError> {
    if r.previous_response_id.is_some() {
        return Err(ApiError::invalid(
            "previous_response_id",
            "this box stores no responses (store is false): send the whole conversation as `input`",
        ));
    }
    let mut messages = Vec::new();
    if let Some(instructions) = &r.instructions {
        messages.push(text_message("system", instructions.clone()));
    }
    match &r.input {
        None => return Err(ApiError::invalid("input", "`input` is required")),
        Some(Input::Text(text)) => messages.push(text_message("user", text.clone())),
        Some(Input::Items(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, &mut messages)?;
            }
        }
    }
    let tools = r
        .tools
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| {
            let kind = t["type"].as_str().unwrap_or_default();
            let name = t["name"].as_str();
            match (kind, name) {
                ("function", Some(name)) => Ok(ToolDef {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: name.to_string(),
                        description: t["description"].as_str().map(String::from),
                        parameters: t.get("parameters").filter(|p| !p.is_null()).cloned(),
                    },
                }),
                _ => Err(ApiError::invalid(
                    "tools",
                    format!("tools[{i}] must be a function tool with a name (type `{kind}` is not supported)"),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let response_format = match r.text.as_ref().and_then(|t| t.format.as_ref()) {
        None => None,
        Some(f) => Some(match f["type"].as_str() {
            Some("text") => ResponseFormat::Text,
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => ResponseFormat::JsonSchema {
                json_schema: JsonSchemaFormat {
                    schema: f["schema"].clone(),
                },
            },
            _ => {
                return Err(ApiError::invalid(
                    "text",
                    "text.format.type must be text, json_object or json_schema",
                ))
            }
        }),
    };
    Ok(GenerateRequest {
        model: r.model.clone(),
        messages: Some(messages),
        temperature: r.temperature.map(|t| t as f32),
        top_p: r.top_p.map(|p| p as f32),
        max_completion_tokens: r.max_output_tokens,
        tools: Some(tools),
        tool_choice: r.tool_choice.clone(),
        parallel_tool_calls: r.parallel_tool_calls,
        response_format,
        ..GenerateRequest::default()
    })
}

fn text_message(role: &str, text: String) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: Some(Content::Text(text)),
        tool_calls: None,
        tool_call_id: None,
        name: None,
    }
}

/// One `input` item: a message, a function call the model made, or its output.
fn input_item(i: usize, item: &Value, messages: &mut Vec<ChatMessage>) -> Result<(), ApiError> {
    let bad = |what: &str| ApiError::invalid("input", format!("input[{i}]: {what}"));
    match item["type"].as_str().unwrap_or("message") {
        "message" => {
            let role = item["role"]
                .as_str()
                .ok_or_else(|| bad("a message needs a role"))?;
            let text = match &item["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part["type"].as_str(), part["text"].as_str()) {
                            (Some("input_text" | "output_text" | "text"), Some(t)) => {
                                text.push_str(t)
                            }
                            (kind, _) => {
                                return Err(bad(&format!(
                                    "a `{}` part; only text parts are supported",
                                    kind.unwrap_or("?")
                                )))
                            }
                        }
                    }
                    text
                }
                _ => return Err(bad("content must be text or a list of text parts")),
            };
            messages.push(text_message(role, text));
        }
        "function_call" => {
            let call = ToolCallIn {
                id: item["call_id"].as_str().map(String::from),
                function: FunctionCallIn {
                    name: item["name"]
                        .as_str()
                        .ok_or_else(|| bad("a function_call needs a name"))?
                        .to_string(),
                    arguments: item["arguments"].as_str().map(String::from),
                },
            };
            // Calls made in one turn belong to one assistant message.
            match messages.last_mut() {
                Some(last) if last.role == "assistant" && last.tool_calls.is_some() => {
                    last.tool_calls.as_mut().expect("checked").push(call)
                }
                _ => messages.push(ChatMessage {
                    role: "assistant".into(),
                    content: None,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                    name: None,
                }),
            }
        }
        "function_call_output" => {
            let output = match &item["output"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            messages.push(ChatMessage {
                role: "tool".into(),
                content: Some(Content::Text(output)),
                tool_calls: None,
                tool_call_id: Some(
                    item["call_id"]
                        .as_str()
                        .ok_or_else(|| bad("a function_call_output needs a call_id"))?
                        .to_string(),
                ),
                name: None,
            });
        }
        other => return Err(bad(&format!("items of type `{other}` are not supported"))),
    }
    Ok(())
}
