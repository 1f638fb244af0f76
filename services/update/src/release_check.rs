//! The release check: what the health gate asks of a slot on trial beyond "the services
//! started". The language model must answer a golden prompt (greedy, known answer) and
//! Whisper must transcribe a golden clip (fed as a file, so a box without a microphone
//! passes too). Run as the critical service `release-check`: it says READY=1 once both
//! pass, and on a wrong answer it says why (STATUS=) and exits, which makes PID 1 refuse
//! the slot at once; the bootloader then falls back (docs/updates.md, "Health gate").
//!
//! Only an update on trial is checked, with a blessed release in the other slot to fall
//! back to; otherwise (a blessed slot, a factory image's first boot) it is ready at once
//! and costs nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use serde::Deserialize;

/// Tells the supervisor (`$NOTIFY_SOCKET`); nothing to do without one.
fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(false, states);
}

/// The image's check: /usr/share/llamabox/release-check/check.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// How long each service may take to come up before the check gives up.
    #[serde(default = "default_wait_s")]
    pub wait_s: u64,
    pub llm: LlmCheck,
    pub voice: Option<VoiceCheck>,
}

fn default_wait_s() -> u64 {
    600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LlmCheck {
    /// The inference service (loopback).
    pub url: String,
    /// The release's own model, by the name it is served under (a pulled default
    /// model must not stand in for it).
    pub model: String,
    pub prompt: String,
    /// Must appear in the greedy answer (letter case aside).
    pub answer: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
}

fn default_max_tokens() -> u32 {
    16
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VoiceCheck {
    /// The voice service (loopback).
    pub url: String,
    /// A WAV file in the image.
    pub clip: PathBuf,
    /// Every one of these words must be in the transcript (letter case and punctuation
    /// aside).
    pub words: String,
    /// Boards (`/etc/llamabox/board`) where this part is not run, each for a stated
    /// reason in the file: the model's answer is still checked there.
    #[serde(default)]
    pub skip_boards: Vec<String>,
}

impl Config {
    pub fn read(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Runs both checks; Ok with what was heard, Err with the sentence that refuses the slot.
pub fn run(config: &Config, say: &mut dyn FnMut(&str)) -> Result<String, String> {
    let client = reqwest::blocking::Client::builder()
        // A wrong answer, not a slow one, is what this check is for: the gate's own
        // deadline bounds the whole boot.
        .timeout(Duration::from_secs(config.wait_s))
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let wait = Duration::from_secs(config.wait_s);

    say("waiting for the inference service");
    wait_for_health(&client, &config.llm.url, "the inference service", wait)?;
    say("asking the language model the golden prompt");
    let answer = ask(&client, &config.llm)?;
    if !answer
        .to_lowercase()
        .contains(&config.llm.answer.to_lowercase())
    {
        return Err(format!(
            "the language model answered the golden prompt wrongly: asked {:?}, expected {:?}, got {:?}",
            config.llm.prompt, config.llm.answer, answer
        ));
    }
    let mut heard = format!("the model answered {answer:?}");

    let board = crate::device::board().unwrap_or_default();
    let voice = config
        .voice
        .as_ref()
        .filter(|v| !v.skip_boards.contains(&board));
    if let Some(voice) = voice {
        say("waiting for the voice service");
        wait_for_health(&client, &voice.url, "the voice service", wait)?;
        say("transcribing the golden clip");
        let transcript = transcribe(&client, voice)?;
        let words = normalized_words(&transcript);
        let missing: Vec<String> = normalized_words(&voice.words)
            .into_iter()
            .filter(|w| !words.contains(w))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "Whisper transcribed the golden clip wrongly: expected the words {:?}, got {transcript:?} (missing {})",
                voice.words,
                missing.join(", ")
            ));
        }
        heard.push_str(&format!("; Whisper heard {transcript:?}"));
    }
    Ok(heard)
}

fn wait_for_health(
    client: &reqwest::blocking::Client,
    base: &str,
    what: &str,
    wait: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let url = format!("{}/health", base.trim_end_matches('/'));
    loop {
        let last = match client.get(&url).timeout(Duration::from_secs(10)).send() {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= wait {
            return Err(format!(
                "{what} did not answer {url} within {} s ({last})",
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ask(client: &reqwest::blocking::Client, check: &LlmCheck) -> Result<String, String> {
    let url = format!("{}/v1/chat/completions", check.url.trim_end_matches('/'));
    let body = serde_json::json!({
        "model": check.model,
        "messages": [{"role": "user", "content": check.prompt}],
        "temperature": 0,
        "max_tokens": check.max_tokens,
        "seed": 0,
    });
    let reply = answer_of(client.post(&url).json(&body).send())
        .map_err(|e| format!("the inference service did not answer the golden prompt: {e}"))?;
    reply["choices"][0]["message"]["content"]
        .as_str()
        .map(|s| s.trim().to_string())
        .ok_or_else(|| format!("the inference service's answer has no message: {reply}"))
}

fn transcribe(client: &reqwest::blocking::Client, check: &VoiceCheck) -> Result<String, String> {
    let clip = std::fs::read(&check.clip).map_err(|e| format!("{}: {e}", check.clip.display()))?;
    let form = reqwest::blocking::multipart::Form::new()
        // OpenAI's name for "the service's own Whisper model".
        .text("model", "whisper-1")
        .part(
            "file",
            reqwest::blocking::multipart::Part::bytes(clip)
                .file_name("golden.wav")
                .mime_str("audio/wav")
                .expect("a valid MIME type"),
        );
    let url = format!(
        "{}/v1/audio/transcriptions",
        check.url.trim_end_matches('/')
    );
    let reply = answer_of(client.post(&url).multipart(form).send())
        .map_err(|e| format!("the voice service did not transcribe the golden clip: {e}"))?;
    reply["text"]
        .as_str()
        .map(|s| s.trim().to_string())
        .ok_or_else(|| format!("the voice service's answer has no text: {reply}"))
}

/// A JSON answer, or what went wrong with the service's own words (its error body).
fn answer_of(
    sent: reqwest::Result<reqwest::blocking::Response>,
) -> Result<serde_json::Value, String> {
    let response = sent.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", one_line(body.trim())));
    }
    serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {}", one_line(&body)))
}

fn normalized_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The `release-check` service: checks an update on trial (any slot with `always`),
/// then says READY=1 and stays, or says why not and exits with failure.
pub fn serve(config: &Path, always: bool) -> ! {
    // Stage 1's facts: this slot on trial, the other one blessed (a known-good release
    // to fall back to; a factory image's first boot has none).
    let boot = llamabox_device::boot_info::BootInfo::read().unwrap_or_default();
    let decides = boot.get("trial") == Some("yes") && boot.get("fallback") == Some("blessed");
    if !decides && !always {
        notify(&[
            NotifyState::Status(
                "no update on trial with a good release to fall back to: nothing to check",
            ),
            NotifyState::Ready,
        ]);
        idle()
    }
    let mut say = |what: &str| {
        eprintln!("llamabox-update: release check: {what}");
        notify(&[NotifyState::Status(&one_line(what))]);
    };
    match Config::read(config).and_then(|c| run(&c, &mut say)) {
        Ok(heard) => {
            say(&format!("the release answers as it should: {heard}"));
            notify(&[NotifyState::Ready]);
            idle()
        }
        Err(reason) => {
            say(&reason);
            std::process::exit(1)
        }
    }
}

/// A status line for PID 1: one line, bounded (a model's answer can be anything).
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    line
}

/// Stays alive: the gate counts a critical service as healthy only while it runs.
fn idle() -> ! {
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_compared_without_case_or_punctuation() {
        assert_eq!(
            normalized_words("What is the capital of France? I'm serving one word."),
            ["what", "is", "the", "capital", "of", "france", "i'm", "serving", "one", "word"]
        );
    }

    #[test]
    fn a_status_is_one_bounded_line() {
        assert_eq!(one_line("Paris.\nIt is"), "Paris. It is");
        assert_eq!(one_line(&"x".repeat(5000)).len(), 1000);
    }

    #[test]
    fn the_image_config_parses() {
        let config: Config = toml::from_str(include_str!(
            "../../../overlays/update/usr/share/llamabox/release-check/check.toml"
        ))
        .unwrap();
        assert_eq!(config.llm.answer, "Paris");
        assert!(config.voice.is_some());
    }
}
