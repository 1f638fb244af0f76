//! The bodies of OpenAI's `/v1/chat/completions` and `/v1/completions`, and their
//! validation.
//!
//! Unknown fields are ignored (clients send many optional extras); known fields with values
//! out of range are refused with the parameter's name, never clamped silently.

use serde::Deserialize;
use serde_json::Value;

use crate::tools::{ChatTools, Convention, ToolChoice, ToolDef, Tools};
use crate::{ApiError, Message, SamplingParams, SchemaToGrammar};

/// The body of `/v1/chat/completions` and `/v1/completions` (each uses its own input field).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerateRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub prompt: Option<PromptInput>,
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub n: Option<i64>,
    pub response_format: Option<ResponseFormat>,
    /// Chat: a boolean (with `top_logprobs`); completions: the number of alternatives.
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<ToolDef>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A tool result's call.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallIn {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCallIn {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    #[serde(default)]
    pub arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    pub schema: Value,
}

/// Longest list of stop strings a request may give.
const MAX_STOPS: usize = 16;

/// Most alternatives per token `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// What the engine needs, checked.
#[derive(Debug)]
pub struct Generation {
    pub sampling: SamplingParams,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub choices: u32,
    /// Alternatives per token; None: no logprobs.
    pub logprobs: Option<u32>,
}

impl GenerateRequest {
    /// The checked parameters; `max_choices` is the most `n` may be (the engine's sequences).
    #[cfg(test)]
    pub fn generation(&self, max_choices: u32) -> Result<Generation, ApiError> {
        let to_grammar = |_: &str| Ok("root ::= \"{}\"".to_string());
        self.generation_from(max_choices, &SamplingParams::default(), &to_grammar)
    }

    /// The same, with what the request leaves out taken from `defaults` (the model's), and
    /// a `response_format` schema turned into a grammar by `to_grammar`.
    pub fn generation_from(
        &self,
        max_choices: u32,
        defaults: &SamplingParams,
        to_grammar: SchemaToGrammar,
    ) -> Result<Generation, ApiError> {
        let mut s = defaults.clone();
        if let Some(t) = self.temperature {
            range("temperature", t, 0.0, 2.0)?;
            s.temperature = t;
        }
        if let Some(p) = self.top_p {
            range("top_p", p, 0.0, 1.0)?;
            s.top_p = p;
        }
        if let Some(k) = self.top_k {
            if k < 0 {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("top_k must be 0 (off) or more, not {k}"),
                ));
            }
            s.top_k = k;
        }
        if let Some(p) = self.min_p {
            range("min_p", p, 0.0, 1.0)?;
            s.min_p = p;
        }
        if let Some(p) = self.presence_penalty {
            range("presence_penalty", p, -2.0, 2.0)?;
            s.presence_penalty = p;
        }
        if let Some(p) = self.frequency_penalty {
            range("frequency_penalty", p, -2.0, 2.0)?;
            s.frequency_penalty = p;
        }
        if let Some(p) = self.repeat_penalty {
            range("repeat_penalty", p, 0.0, 10.0)?;
            if p == 0.0 {
                return Err(ApiError::invalid(
                    "repeat_penalty",
                    "repeat_penalty must be above 0 (1.0 is off)",
                ));
            }
            s.repeat_penalty = p;
        }
        // OpenAI allows any 64-bit seed; llama.cpp takes 32 bits.
        s.seed = self.seed.map(|seed| seed as u32);

        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some(positive("max_completion_tokens", m)?),
            (None, Some(m)) => Some(positive("max_tokens", m)?),
            (None, None) => None,
        };
        let choices = match self.n {
            None => 1,
            Some(n) if (1..=i64::from(max_choices)).contains(&n) => n as u32,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("n must be between 1 and {max_choices} (the sequences this service decodes together), not {n}"),
                ))
            }
        };
        let logprobs = self.logprobs()?;
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "suffix is not supported"));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "at most {MAX_STOPS} stop strings are allowed, not {}",
                    stop.len()
                ),
            ));
        }
        s.grammar = match &self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(schema_grammar(
                &serde_json::json!({"type": "object"}),
                to_grammar,
            )?),
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                Some(schema_grammar(&json_schema.schema, to_grammar)?)
            }
        };
        Ok(Generation {
            sampling: s,
            max_tokens,
            stop,
            choices,
            logprobs,
        })
    }

    /// Chat sends `logprobs: true` and `top_logprobs: k`; completions send `logprobs: k`.
    fn logprobs(&self) -> Result<Option<u32>, ApiError> {
        let top = |param: &'static str, k: i64| {
            if (0..=MAX_TOP_LOGPROBS).contains(&k) {
                Ok(k as u32)
            } else {
                Err(ApiError::invalid(
                    param,
                    format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, not {k}"),
                ))
            }
        };
        let wanted =
            match &self.logprobs {
                None | Some(Value::Null) | Some(Value::Bool(false)) => None,
                Some(Value::Bool(true)) => Some(0),
                Some(Value::Number(n)) => Some(top("logprobs", n.as_i64().unwrap_or(-1))?),
                Some(_) => return Err(ApiError::invalid(
                    "logprobs",
                    "logprobs must be a boolean (chat) or a number of alternatives (completions)",
                )),
            };
        match (wanted, self.top_logprobs) {
            (Some(_), Some(k)) => Ok(Some(top("top_logprobs", k)?)),
            (None, Some(k)) if k > 0 => Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            )),
            (wanted, _) => Ok(wanted),
        }
    }

    /// What the chat's tools mean for a model whose template follows `convention`: the
    /// grammar of the reply, the tools the template renders (Hermes), or the tools the
    /// messages are rewritten with (generic, also for a history with calls when none are
    /// offered now).
    pub fn chat_tools(
        &self,
        messages: &[Message],
        convention: Convention,
        to_grammar: SchemaToGrammar,
    ) -> Result<ChatTools, ApiError> {
        let tools = self.tools(convention)?;
        let mut chat = ChatTools::default();
        match &tools {
            Some(t) => {
                chat.grammar = t.grammar(to_grammar)?;
                match t.convention {
                    Convention::Generic => chat.rewrite = Some(t.clone()),
                    Convention::Hermes if t.choice != ToolChoice::None => {
                        chat.template_tools = Some(t.template_tools())
                    }
                    Convention::Hermes => {}
                }
            }
            None if convention == Convention::Generic
                && messages
                    .iter()
                    .any(|m| m.tool_calls.is_some() || m.role == "tool") =>
            {
                chat.rewrite = Some(Tools::history_only(convention));
            }
            None => {}
        }
        chat.tools = tools;
        Ok(chat)
    }

    /// The request's tools for a model whose template follows `convention`; None if it
    /// offers none.
    pub fn tools(&self, convention: Convention) -> Result<Option<Tools>, ApiError> {
        let choice = ToolChoice::parse(self.tool_choice.as_ref())?;
        let defs = self.tools.as_deref().unwrap_or_default();
        let tools = Tools::new(
            defs,
            choice,
            self.parallel_tool_calls.unwrap_or(true),
            convention,
        )?;
        if tools.is_some()
            && self
                .response_format
                .as_ref()
                .is_some_and(|f| !matches!(f, ResponseFormat::Text))
        {
            return Err(ApiError::invalid(
                "response_format",
                "response_format cannot be combined with tools: both constrain the reply",
            ));
        }
        Ok(tools)
    }

    /// The chat's messages in template form.
    pub fn chat_messages(&self) -> Result<Vec<Message>, ApiError> {
        let messages = self
            .messages
            .as_ref()
            .ok_or_else(|| ApiError::invalid("messages", "`messages` is required"))?;
        if messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must hold at least one message",
            ));
        }
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match m.role.as_str() {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    "tool" => "tool",
                    other => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!(
                                "messages[{i}].role `{other}` is not one of system, developer, user, assistant, tool"
                            ),
                        ))
                    }
                };
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for part in parts {
                            match (part.kind.as_str(), &part.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::invalid(
                                        "messages",
                                        format!(
                                            "messages[{i}] has a `{kind}` part; only text parts are supported"
                                        ),
                                    ))
                                }
                            }
                        }
                        text
                    }
                };
                let tool_calls = match (&m.tool_calls, role) {
                    (None, _) => None,
                    (Some(calls), "assistant") => Some(
                        calls
                            .iter()
                            .map(|c| {
                                let text = c.function.arguments.as_deref().unwrap_or("{}");
                                // Templates (Hugging Face's convention) expect an object.
                                let arguments = serde_json::from_str::<Value>(text).map_err(|e| {
                                    ApiError::invalid(
                                        "messages",
                                        format!("messages[{i}].tool_calls: arguments of `{}` are not JSON: {e}", c.function.name),
                                    )
                                })?;
                                Ok(serde_json::json!({
                                    "id": c.id,
                                    "type": "function",
                                    "function": {"name": c.function.name, "arguments": arguments},
                                }))
                            })
                            .collect::<Result<Vec<_>, ApiError>>()?,
                    ),
                    (Some(_), _) => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("messages[{i}] has tool_calls but only assistant messages may"),
                        ))
                    }
                };
                if role == "tool" && m.tool_call_id.is_none() {
                    return Err(ApiError::invalid(
                        "messages",
                        format!("messages[{i}] is a tool result without tool_call_id"),
                    ));
                }
                Ok(Message {
                    role: role.into(),
                    content,
                    tool_calls,
                    tool_call_id: m.tool_call_id.clone(),
                    name: m.name.clone(),
                })
            })
            .collect()
    }

    /// The completion's prompt.
    pub fn prompt_text(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            Some(PromptInput::One(p)) => Ok(p),
            Some(PromptInput::Many(v)) if v.len() == 1 => Ok(&v[0]),
            Some(PromptInput::Many(v)) => Err(ApiError::invalid(
                "prompt",
                format!("one prompt per request is supported, not {}", v.len()),
            )),
            None => Err(ApiError::invalid("prompt", "`prompt` is required")),
        }
    }
}

fn range(param: &'static str, value: f32, min: f32, max: f32) -> Result<(), ApiError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            param,
            format!("{param} must be between {min} and {max}, not {value}"),
        ))
    }
}

fn positive(param: &'static str, value: i64) -> Result<u32, ApiError> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::invalid(param, format!("{param} must be at least 1, not {value}")))
}

fn schema_grammar(schema: &Value, to_grammar: SchemaToGrammar) -> Result<String, ApiError> {
    if !schema.is_object() {
        return Err(ApiError::invalid(
            "response_format",
            "response_format.json_schema.schema must be a JSON object",
        ));
    }
    // llama.cpp's converter (the one llama-server uses) aborts on schemas it cannot
    // express; it reports that as an error here.
    to_grammar(&schema.to_string()).map_err(|e| {
        ApiError::invalid(
            "response_format",
            format!("the JSON schema cannot be turned into a grammar: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> GenerateRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn out_of_range_values_name_the_parameter() {
        let e = parse(r#"{"temperature": 3}"#).generation(4).unwrap_err();
        assert_eq!(e.param, Some("temperature"));
        assert!(e.message.contains("between 0 and 2"), "{}", e.message);
        let e = parse(r#"{"max_tokens": 0}"#).generation(4).unwrap_err();
        assert_eq!(e.param, Some("max_tokens"));
        let e = parse(r#"{"n": 5}"#).generation(4).unwrap_err();
        assert_eq!(e.param, Some("n"));
        assert_eq!(parse(r#"{"n": 4}"#).generation(4).unwrap().choices, 4);
        let e = parse(r#"{"logprobs": true, "top_logprobs": 21}"#)
            .generation(4)
            .unwrap_err();
        assert_eq!(e.param, Some("top_logprobs"));
        let g = parse(r#"{"logprobs": true, "top_logprobs": 3}"#)
            .generation(4)
            .unwrap();
        assert_eq!(g.logprobs, Some(3));
        assert_eq!(
            parse(r#"{"logprobs": 2}"#).generation(4).unwrap().logprobs,
            Some(2)
        );
    }

    #[test]
    fn defaults_are_llama_servers() {
        let g = parse("{}").generation(4).unwrap();
        assert_eq!(g.sampling, SamplingParams::default());
        assert_eq!(g.max_tokens, None);
    }

    #[test]
    fn content_parts_are_joined_and_roles_checked() {
        let r = parse(
            r#"{"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        );
        let m = r.chat_messages().unwrap();
        assert_eq!(m[0].role, "system");
        assert_eq!(m[0].content, "ab");
        let r = parse(r#"{"messages": [{"role": "robot", "content": "x"}]}"#);
        assert!(r.chat_messages().unwrap_err().message.contains("robot"));
    }
}
