//! Chat prompts rendered from the model's own Jinja template (`tokenizer.chat_template` in
//! the GGUF), as llama-server does, so both produce the same prompt token for token.
//! (llama.cpp's built-in template matcher would, for example, drop SmolLM2's default
//! system prompt.)

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

pub use llamabox_inference_protocol::Message;

const NAME: &str = "chat";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    hermes_tools: bool,
}

impl ChatTemplate {
    pub fn new(source: &str, model: &LlamaModel) -> Result<ChatTemplate, Error> {
        let vocab = model.vocab();
        let text = |t: LlamaToken| {
            if t.0 < 0 {
                String::new()
            } else {
                String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
            }
        };
        ChatTemplate::from_source(source, text(vocab.bos()), text(vocab.eos()))
    }

    pub fn from_source(
        source: &str,
        bos_token: String,
        eos_token: String,
    ) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        // Templates written for Hugging Face's Python Jinja call str methods (.strip(), …).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| -> String {
            strftime_now(&format)
        });
        env.add_template_owned(NAME, source.to_string())?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            // Hermes' convention (Qwen 2.5/3, Hermes, SmolLM3): the template lists `tools`
            // and the model answers with `<tool_call>{"name", "arguments"}</tool_call>`.
            hermes_tools: source.contains("tools") && source.contains("<tool_call>"),
        })
    }

    /// Whether the template renders tools itself, in Hermes' `<tool_call>` convention.
    pub fn hermes_tools(&self) -> bool {
        self.hermes_tools
    }

    /// The prompt for these messages, ending with the assistant's turn opener. `tools`
    /// (function schemas in OpenAI's shape) are passed to templates that know them.
    pub fn render(&self, messages: &[Message], tools: Option<&[Json]>) -> Result<String, Error> {
        let template = self.env.get_template(NAME)?;
        template.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
    }
}

/// `strftime_now("%d %b %Y")` for templates that print today's date. The box may not
/// know the time; the template gets whatever the clock says.
fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    format
        .replace("%d", &format!("{d:02}"))
        .replace("%B", month)
        .replace("%b", &month[..3])
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    // SmolLM2-Instruct's template, as in its GGUF.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            ..Message::default()
        }
    }

    #[test]
    fn keeps_the_models_default_system_prompt() {
        let t = ChatTemplate::from_source(SMOLLM2, String::new(), String::new()).unwrap();
        let prompt = t.render(&[msg("user", "Hi")], None).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_exceptions_work() {
        let t = ChatTemplate::from_source(
            "{% if messages[0].role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}{{ messages[0].content.strip() }}",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(t.render(&[msg("user", "  x  ")], None).unwrap(), "x");
        let err = t.render(&[msg("bad", "x")], None).unwrap_err();
        assert!(err.to_string().contains("no bad roles"), "{err}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_517), (2026, 3, 5));
    }
}
