//! Tool (function) calling: how offered tools reach the prompt, the grammar that makes a
//! required call valid, and finding calls in what the model wrote.
//!
//! Two conventions, chosen by the model's chat template:
//! - **Hermes** (templates that render `tools` and mention `<tool_call>`: Qwen 2.5/3, Hermes,
//!   SmolLM3): the template renders the tools and the history; the model answers
//!   `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, once per call.
//! - **Generic** (every other template, e.g. SmolLM2's): a system message lists the tools
//!   and asks for `{"tool_calls": [{"name": …, "arguments": {…}}]}` as the whole reply;
//!   earlier calls are written back in that form and tool results become user turns
//!   `Tool result (name): …`.
//!
//! When a call is required (`required` or a named function) the reply is decoded under a
//! grammar built from the functions' JSON schemas, so its arguments always parse and match.
//! With `auto` the same grammar is lazy: it starts to bind when the model opens a call.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{ApiError, Message, SchemaToGrammar};

/// A function the client offers, in the chat API's shape
/// (`{"type": "function", "function": {"name", "description", "parameters"}}`).
#[derive(Debug, Clone, Deserialize)]
pub struct ToolDef {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

impl ToolChoice {
    /// `tool_choice` as the chat API sends it: a string or `{"type": "function",
    /// "function": {"name"}}` (the Responses API's `{"type": "function", "name"}` too).
    pub fn parse(value: Option<&Value>) -> Result<ToolChoice, ApiError> {
        let bad = || {
            ApiError::invalid(
                "tool_choice",
                "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}",
            )
        };
        match value {
            None | Some(Value::Null) => Ok(ToolChoice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "none" => Ok(ToolChoice::None),
                "auto" => Ok(ToolChoice::Auto),
                "required" => Ok(ToolChoice::Required),
                _ => Err(bad()),
            },
            Some(Value::Object(o)) => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| o.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(bad)?;
                Ok(ToolChoice::Named(name.to_string()))
            }
            Some(_) => Err(bad()),
        }
    }
}

/// How calls look in this model's prompts and replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    Hermes,
    Generic,
}

/// A request's tools, checked.
#[derive(Debug, Clone)]
pub struct Tools {
    pub functions: Vec<FunctionDef>,
    pub choice: ToolChoice,
    pub parallel: bool,
    pub convention: Convention,
}

/// Most functions one request may offer.
const MAX_TOOLS: usize = 64;

/// Most calls in one reply. Small models that are made to call tend to repeat a call until
/// the reply runs out of tokens; a bound makes them stop.
pub const MAX_CALLS: usize = 4;

impl Tools {
    /// None when the request offers no tools.
    pub fn new(
        defs: &[ToolDef],
        choice: ToolChoice,
        parallel: bool,
        convention: Convention,
    ) -> Result<Option<Tools>, ApiError> {
        if defs.is_empty() {
            return match choice {
                ToolChoice::Required | ToolChoice::Named(_) => Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice asks for a call but the request offers no tools",
                )),
                _ => Ok(None),
            };
        }
        if defs.len() > MAX_TOOLS {
            return Err(ApiError::invalid(
                "tools",
                format!("at most {MAX_TOOLS} tools are allowed, not {}", defs.len()),
            ));
        }
        let mut functions = Vec::with_capacity(defs.len());
        for (i, def) in defs.iter().enumerate() {
            if def.kind != "function" {
                return Err(ApiError::invalid(
                    "tools",
                    format!(
                        "tools[{i}] is of type `{}`; only `function` tools are supported",
                        def.kind
                    ),
                ));
            }
            let f = &def.function;
            if f.name.is_empty()
                || !f
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ApiError::invalid(
                    "tools",
                    format!(
                        "tools[{i}].function.name `{}` must be letters, digits, _ or -",
                        f.name
                    ),
                ));
            }
            if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
                return Err(ApiError::invalid(
                    "tools",
                    format!("tools[{i}].function.parameters must be a JSON schema object"),
                ));
            }
            functions.push(f.clone());
        }
        if let ToolChoice::Named(name) = &choice {
            if !functions.iter().any(|f| &f.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not among the tools"),
                ));
            }
        }
        Ok(Some(Tools {
            functions,
            choice,
            parallel,
            convention,
        }))
    }

    /// No tools offered, but a history that holds calls and results to write back.
    pub fn history_only(convention: Convention) -> Tools {
        Tools {
            functions: Vec::new(),
            choice: ToolChoice::None,
            parallel: false,
            convention,
        }
    }

    /// The tools in the shape chat templates expect.
    pub fn template_tools(&self) -> Vec<Value> {
        self.functions
            .iter()
            .map(|f| {
                json!({"type": "function", "function": {
                    "name": f.name,
                    "description": f.description.clone().unwrap_or_default(),
                    "parameters": parameters(f),
                }})
            })
            .collect()
    }

    /// The system text that teaches the generic convention.
    pub fn generic_instructions(&self) -> String {
        let list: Vec<Value> = self
            .functions
            .iter()
            .map(|f| {
                json!({"name": f.name, "description": f.description.clone().unwrap_or_default(), "parameters": parameters(f)})
            })
            .collect();
        let must = match &self.choice {
            ToolChoice::Required => "You must call at least one function.\n".to_string(),
            ToolChoice::Named(name) => format!("You must call the function `{name}`.\n"),
            _ => "If no function is needed, or a function's result is already given, answer the user in plain text.\n".to_string(),
        };
        format!(
            "You can call these functions:\n{}\n\nTo call functions, reply with only this JSON and nothing else:\n{{\"tool_calls\": [{{\"name\": \"<function name>\", \"arguments\": {{<arguments>}}}}]}}\n{must}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        )
    }

    /// GBNF for one call's object, `{"name": "f", "arguments": {…}}`, name first (so the
    /// model picks the function before writing its arguments) for each function a reply
    /// may call. llama.cpp's converter would order the keys alphabetically, so the object
    /// is written here and only each function's arguments come from the converter.
    fn call_grammar(&self, to_grammar: SchemaToGrammar) -> Result<String, ApiError> {
        let allowed: Vec<&FunctionDef> = match &self.choice {
            ToolChoice::Named(name) => self.functions.iter().filter(|f| &f.name == name).collect(),
            _ => self.functions.iter().collect(),
        };
        let mut rules = String::new();
        let mut alternatives = Vec::new();
        for (i, f) in allowed.iter().enumerate() {
            let args = rename_rules(
                &function_grammar(&parameters(f), to_grammar)?,
                &format!("f{i}-"),
            );
            alternatives.push(format!(
                "\"{{\" ws \"\\\"name\\\"\" ws \":\" ws \"\\\"{}\\\"\" ws \",\" ws \"\\\"arguments\\\"\" ws \":\" ws f{i}-root ws \"}}\"",
                f.name
            ));
            rules.push_str(&args);
            rules.push('\n');
        }
        Ok(format!(
            // One space at most between tokens of the call: nothing to wander off into.
            "call ::= {}\nws ::= | \" \"\n{rules}",
            alternatives.join(" | ")
        ))
    }

    /// The grammar for this request's replies and the words that switch it on (empty: it
    /// binds from the first token). None when the model may answer freely. Each function's
    /// parameters become rules through `to_grammar`.
    pub fn grammar(
        &self,
        to_grammar: SchemaToGrammar,
    ) -> Result<Option<(String, Vec<String>)>, ApiError> {
        let lazy = match self.choice {
            ToolChoice::None => return Ok(None),
            ToolChoice::Auto => true,
            ToolChoice::Required | ToolChoice::Named(_) => false,
        };
        let several = self.parallel && !matches!(self.choice, ToolChoice::Named(_));
        let call = self.call_grammar(to_grammar)?;
        let (root, trigger) = match self.convention {
            Convention::Generic => {
                let more = if several {
                    format!(r#" (ws "," ws call){{0,{}}}"#, MAX_CALLS - 1)
                } else {
                    String::new()
                };
                (
                    format!(
                        r#"root ::= "{{" ws "\"tool_calls\"" ws ":" ws "[" ws call{more} ws "]" ws "}}""#
                    ),
                    "{\"tool_calls\"",
                )
            }
            Convention::Hermes => {
                let repeat = if several {
                    format!("{{1,{MAX_CALLS}}}")
                } else {
                    String::new()
                };
                (
                    format!(
                        r#"root ::= ("<tool_call>\n" call "\n</tool_call>" [ \n]{{0,2}}){repeat}"#
                    ),
                    "<tool_call>",
                )
            }
        };
        let triggers = if lazy {
            vec![trigger.to_string()]
        } else {
            Vec::new()
        };
        Ok(Some((format!("{root}\n{call}"), triggers)))
    }

    /// Messages rewritten for the generic convention: instructions in the system message,
    /// assistant calls as the JSON the model is asked to write. Tool results stay `tool`
    /// turns if `tool_role` (templates that print any role: small models then answer from
    /// the result instead of repeating the call), else become user turns.
    pub fn generic_messages(&self, messages: Vec<Message>, tool_role: bool) -> Vec<Message> {
        let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
        let mut names = std::collections::HashMap::new();
        for mut m in messages {
            if let Some(calls) = m.tool_calls.take() {
                // Written in the order the instructions show: name, then arguments.
                let written: Vec<String> = calls
                    .iter()
                    .map(|c| {
                        let f = &c["function"];
                        if let (Some(id), Some(name)) = (c["id"].as_str(), f["name"].as_str()) {
                            names.insert(id.to_string(), name.to_string());
                        }
                        format!(
                            r#"{{"name": {}, "arguments": {}}}"#,
                            f["name"], f["arguments"]
                        )
                    })
                    .collect();
                let call_text = format!(r#"{{"tool_calls": [{}]}}"#, written.join(", "));
                m.content = if m.content.is_empty() {
                    call_text
                } else {
                    format!("{}\n{call_text}", m.content)
                };
            }
            if m.role == "tool" && tool_role {
                m.tool_calls = None;
            } else if m.role == "tool" {
                let name = m
                    .name
                    .clone()
                    .or_else(|| {
                        m.tool_call_id
                            .as_ref()
                            .and_then(|id| names.get(id).cloned())
                    })
                    .unwrap_or_else(|| "function".into());
                m = Message {
                    role: "user".into(),
                    content: format!("Result of {name}: {}", m.content),
                    ..Message::default()
                };
            }
            out.push(m);
        }
        if self.choice != ToolChoice::None {
            let text = self.generic_instructions();
            match out.first_mut() {
                Some(first) if first.role == "system" => {
                    first.content = format!("{}\n\n{text}", first.content);
                }
                _ => out.insert(
                    0,
                    Message {
                        role: "system".into(),
                        content: text,
                        ..Message::default()
                    },
                ),
            }
        }
        out
    }
}

fn parameters(f: &FunctionDef) -> Value {
    f.parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}))
}

/// Prefixes every rule name of a GBNF grammar (definitions and references), so several
/// converted grammars can live in one.
fn rename_rules(gbnf: &str, prefix: &str) -> String {
    let names: std::collections::HashSet<&str> = gbnf
        .lines()
        .filter_map(|l| l.split_once("::=").map(|(name, _)| name.trim()))
        .collect();
    let mut out = String::with_capacity(gbnf.len() + 64);
    let mut chars = gbnf.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            // Literals and character classes are copied as they are.
            '"' | '[' => {
                let close = if c == '"' { '"' } else { ']' };
                out.push(c);
                while let Some((_, d)) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some((_, e)) = chars.next() {
                            out.push(e);
                        }
                    } else if d == close {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let mut end = at + c.len_utf8();
                while let Some(&(i, d)) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '-' || d == '_' {
                        end = i + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &gbnf[at..end];
                if names.contains(word) {
                    out.push_str(prefix);
                }
                out.push_str(word);
            }
            c => out.push(c),
        }
    }
    out
}

fn function_grammar(schema: &Value, to_grammar: SchemaToGrammar) -> Result<String, ApiError> {
    to_grammar(&schema.to_string()).map_err(|e| {
        ApiError::invalid(
            "tools",
            format!("a function's parameters cannot be turned into a grammar: {e}"),
        )
    })
}

/// What a chat's tools mean for its prompt and its decoding
/// (`GenerateRequest::chat_tools`).
#[derive(Debug, Default)]
pub struct ChatTools {
    /// The offered tools, to find calls in the reply with.
    pub tools: Option<Tools>,
    /// The reply's grammar and the words that switch it on.
    pub grammar: Option<(String, Vec<String>)>,
    /// Tools the model's template renders itself (Hermes).
    pub template_tools: Option<Vec<Value>>,
    /// Generic: the messages are rewritten with these (instructions, and calls and
    /// results as text) before the template renders them.
    pub rewrite: Option<Tools>,
}

/// A call found in a reply: the function's name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Reads one choice's text as it is generated and separates calls from text. Text that may
/// still turn out to be a call is held back (never sent as content and then taken back).
#[derive(Debug)]
pub struct CallParser {
    tools: Option<Tools>,
    held: String,
    /// Everything from here on is a call (the model opened one).
    in_call: bool,
    /// Text has been released: the reply is text (generic convention).
    texting: bool,
}

const HERMES_OPEN: &str = "<tool_call>";

impl CallParser {
    pub fn new(tools: Option<Tools>) -> CallParser {
        CallParser {
            tools: tools.filter(|t| t.choice != ToolChoice::None),
            held: String::new(),
            in_call: false,
            texting: false,
        }
    }

    /// Text that is safe to send as content now.
    pub fn push(&mut self, text: &str) -> String {
        let Some(tools) = &self.tools else {
            return text.to_string();
        };
        if self.in_call {
            self.held.push_str(text);
            return String::new();
        }
        let forced = tools.choice != ToolChoice::Auto;
        match tools.convention {
            Convention::Generic => {
                if self.texting {
                    return text.to_string();
                }
                self.held.push_str(text);
                let start = self.held.trim_start();
                if forced || start.is_empty() || start.starts_with('{') || start.starts_with("```")
                {
                    String::new()
                } else {
                    self.texting = true;
                    std::mem::take(&mut self.held)
                }
            }
            Convention::Hermes => {
                self.held.push_str(text);
                if forced {
                    self.in_call = true;
                    return String::new();
                }
                if let Some(at) = self.held.find(HERMES_OPEN) {
                    self.in_call = true;
                    let before = self.held[..at].to_string();
                    self.held.drain(..at);
                    return before;
                }
                // Hold a suffix that may be the start of `<tool_call>`.
                let keep = (1..HERMES_OPEN.len())
                    .rev()
                    .find(|&n| self.held.ends_with(&HERMES_OPEN[..n]))
                    .unwrap_or(0);
                let send = self.held.len() - keep;
                self.held.drain(..send).collect()
            }
        }
    }

    /// At the end of the reply: the rest of the text and the calls found.
    pub fn finish(&mut self) -> (String, Vec<ToolCall>) {
        let held = std::mem::take(&mut self.held);
        let Some(tools) = &self.tools else {
            return (held, Vec::new());
        };
        let calls = match tools.convention {
            Convention::Generic => parse_generic(&held),
            Convention::Hermes => parse_hermes(&held),
        };
        match calls {
            Some(calls) if !calls.is_empty() && calls.iter().all(|c| tools.offers(&c.name)) => {
                (String::new(), calls)
            }
            _ => (held, Vec::new()),
        }
    }
}

impl Tools {
    fn offers(&self, name: &str) -> bool {
        self.functions.iter().any(|f| f.name == name)
    }
}

fn call(name: &Value, arguments: &Value) -> Option<ToolCall> {
    Some(ToolCall {
        id: crate::new_id("call_"),
        name: name.as_str()?.to_string(),
        arguments: match arguments {
            Value::String(s) => s.clone(),
            Value::Null => "{}".into(),
            other => other.to_string(),
        },
    })
}

fn parse_generic(text: &str) -> Option<Vec<ToolCall>> {
    let text = text.trim();
    let text = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .map(|t| t.trim_end().trim_end_matches("```"))
        .unwrap_or(text);
    let value: Value = serde_json::from_str(text.trim()).ok()?;
    let calls = value.get("tool_calls")?.as_array()?;
    calls
        .iter()
        .map(|c| call(&c["name"], &c["arguments"]))
        .collect()
}

fn parse_hermes(text: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(HERMES_OPEN) {
        let body = &rest[at + HERMES_OPEN.len()..];
        let end = body.find("</tool_call>").unwrap_or(body.len());
        let value: Value = serde_json::from_str(body[..end].trim()).ok()?;
        calls.push(call(&value["name"], &value["arguments"])?);
        rest = &body[end..];
    }
    Some(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: ToolChoice, convention: Convention) -> Tools {
        let defs: Vec<ToolDef> = serde_json::from_value(json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time"}},
        ]))
        .unwrap();
        Tools::new(&defs, choice, true, convention)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn generic_auto_releases_plain_text_and_finds_calls() {
        let mut p = CallParser::new(Some(tools(ToolChoice::Auto, Convention::Generic)));
        assert_eq!(p.push(" Hel"), " Hel");
        assert_eq!(p.push("lo"), "lo");
        assert_eq!(p.finish(), (String::new(), vec![]));

        let mut p = CallParser::new(Some(tools(ToolChoice::Auto, Convention::Generic)));
        assert_eq!(p.push("{\"tool_calls\": [{\"name\": \"get_weather\", "), "");
        assert_eq!(p.push("\"arguments\": {\"city\": \"Paris\"}}]}"), "");
        let (text, calls) = p.finish();
        assert_eq!(text, "");
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn json_that_is_not_a_call_of_an_offered_function_is_text() {
        let mut p = CallParser::new(Some(tools(ToolChoice::Auto, Convention::Generic)));
        p.push(r#"{"tool_calls": [{"name": "rm_rf", "arguments": {}}]}"#);
        let (text, calls) = p.finish();
        assert!(calls.is_empty());
        assert!(text.contains("rm_rf"));
    }

    #[test]
    fn hermes_text_then_calls() {
        let mut p = CallParser::new(Some(tools(ToolChoice::Auto, Convention::Hermes)));
        assert_eq!(p.push("Let me check. <tool"), "Let me check. ");
        assert_eq!(
            p.push("_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"),
            ""
        );
        let (text, calls) = p.finish();
        assert_eq!(text, "");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_time");
    }

    /// What llama.cpp's converter gives for any object schema, near enough for composing.
    fn object_grammar(_: &str) -> Result<String, String> {
        Ok("root ::= \"{\" space \"}\" space\nspace ::= \" \"?\n".into())
    }

    #[test]
    fn grammars_are_composed_for_each_convention_and_choice() {
        for convention in [Convention::Generic, Convention::Hermes] {
            for choice in [
                ToolChoice::Auto,
                ToolChoice::Required,
                ToolChoice::Named("get_weather".into()),
            ] {
                let (gbnf, triggers) = tools(choice.clone(), convention)
                    .grammar(&object_grammar)
                    .unwrap()
                    .unwrap();
                assert!(gbnf.contains("root ::="), "{gbnf}");
                assert!(gbnf.contains("f0-root ::="), "{gbnf}");
                assert_eq!(triggers.is_empty(), choice != ToolChoice::Auto);
            }
        }
        assert!(tools(ToolChoice::None, Convention::Generic)
            .grammar(&object_grammar)
            .unwrap()
            .is_none());
    }

    #[test]
    fn rule_names_are_prefixed_but_literals_are_not() {
        let g = "root ::= \"{\" space \"root\" [a-z] space\nspace ::= \" \"?\n";
        assert_eq!(
            rename_rules(g, "f0-"),
            "f0-root ::= \"{\" f0-space \"root\" [a-z] f0-space\nf0-space ::= \" \"?\n"
        );
    }

    #[test]
    fn a_named_function_must_be_offered() {
        let defs: Vec<ToolDef> =
            serde_json::from_value(json!([{"type": "function", "function": {"name": "a"}}]))
                .unwrap();
        let e = Tools::new(
            &defs,
            ToolChoice::Named("b".into()),
            true,
            Convention::Generic,
        )
        .unwrap_err();
        assert_eq!(e.param, Some("tool_choice"));
    }

    #[test]
    fn generic_history_writes_calls_and_results_back() {
        let t = tools(ToolChoice::Auto, Convention::Generic);
        let messages = vec![
            Message {
                role: "user".into(),
                content: "Weather in Paris?".into(),
                ..Message::default()
            },
            Message {
                role: "assistant".into(),
                content: String::new(),
                tool_calls: Some(vec![
                    json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}),
                ]),
                ..Message::default()
            },
            Message {
                role: "tool".into(),
                content: "18 C".into(),
                tool_call_id: Some("call_1".into()),
                ..Message::default()
            },
        ];
        let out = t.generic_messages(messages.clone(), false);
        assert_eq!(out[0].role, "system");
        assert!(out[0].content.contains("get_weather"));
        assert_eq!(
            out[2].content,
            r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city":"Paris"}}]}"#
        );
        assert_eq!(out[3].role, "user");
        assert_eq!(out[3].content, "Result of get_weather: 18 C");
        let out = t.generic_messages(messages, true);
        assert_eq!(
            (out[3].role.as_str(), out[3].content.as_str()),
            ("tool", "18 C")
        );
    }
}
