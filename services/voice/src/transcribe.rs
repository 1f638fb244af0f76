//! Speech to text with whisper.cpp (whisper-rs). One [`Transcriber`] owns the model;
//! callers take turns (on a 2-core box two decodes at once would
//! only slow both down).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

/// Whisper's encoder sees at most 30 s: 1500 positions, 50 per second.
const POSITIONS_PER_SECOND: f32 = 50.0;
const MAX_AUDIO_CTX: i32 = 1500;
/// Extra encoder positions beyond the audio itself (1.9 s): a context cut too tight
/// makes Whisper drop the last word or the full stop that tells the end-pointer a
/// sentence is finished (at 64, 5 of 15 test sentences lost theirs; at 96, 1). Each 16
/// positions cost about 15 ms of a 5 s command's transcription (docs/perf.md).
const AUDIO_CTX_MARGIN: i32 = 96;
/// Whisper's own rule (and openai-whisper's defaults) for "this was not speech": a
/// no-speech probability above `NO_SPEECH` while the words' mean log-probability is
/// below `LOW_LOGPROB`. Noise the voice detector let through ends here.
const NO_SPEECH: f32 = 0.6;
const LOW_LOGPROB: f32 = -1.0;
/// A word sequence repeated more often than this in a row is a decoding loop.
const MAX_REPEATS: usize = 2;
/// The same sentence twice in a row within one utterance is a loop too.
const MIN_SENTENCE_WORDS: usize = 6;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// ISO 639-1 code, or `None` for the transcriber's default.
    pub language: Option<String>,
    /// Text that conditions the decoder (names, spelling).
    pub prompt: Option<String>,
    /// 0 is greedy; higher values sample.
    pub temperature: Option<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    /// The whole text, trimmed; empty when nothing was said.
    pub text: String,
    pub segments: Vec<Segment>,
    pub language: String,
    pub audio_ms: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

pub struct Transcriber {
    context: WhisperContext,
    threads: i32,
    language: String,
    model: String,
    /// A fresh state made ahead of time ([`Self::prepare`]): making one takes ~20 ms
    /// that a transcription waited for.
    spare: Option<WhisperState>,
}

impl Transcriber {
    /// Loads a ggml Whisper model. `language` is the default spoken language (`auto`
    /// detects it per utterance; an English-only model always uses `en`).
    pub fn load(model: &Path, threads: usize, language: &str) -> Result<Self> {
        whisper_rs::install_logging_hooks();
        let mut params = WhisperContextParameters::default();
        // whisper.cpp's own default (and its CLI's): the benchmark compares like with like.
        params.flash_attn(true);
        let context = WhisperContext::new_with_params(model, params)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot load the Whisper model {}", model.display()))?;
        let language = if context.is_multilingual() {
            language.to_string()
        } else {
            "en".to_string()
        };
        Ok(Self {
            context,
            threads: threads.max(1) as i32,
            language,
            model: model
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .trim_start_matches("ggml-")
                .to_string(),
            spare: None,
        })
    }

    /// Makes the state the next transcription will use, so it need not wait for it:
    /// for callers with a moment to spare (the pipeline, after publishing).
    pub fn prepare(&mut self) {
        if self.spare.is_none() {
            self.spare = self.context.create_state().ok();
        }
    }

    /// The model's name (`base`, `tiny.en`).
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn multilingual(&self) -> bool {
        self.context.is_multilingual()
    }

    /// Transcribes 16 kHz mono audio of any length.
    pub fn transcribe(&mut self, audio: &[f32], options: &Options) -> Result<Transcript> {
        let never = || false;
        self.transcribe_unless(audio, options, &never)?
            .context("Whisper stopped without being asked to")
    }

    /// Like [`Self::transcribe`], but gives up (returning `None`) as soon as `give_up`
    /// says so: Whisper asks between its steps, so a transcription nobody wants any more
    /// (a draft that speech made stale) frees the CPU within milliseconds.
    pub fn transcribe_unless(
        &mut self,
        audio: &[f32],
        options: &Options,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Option<Transcript>> {
        let started = Instant::now();
        let audio_ms = audio.len() as u64 * 1000 / 16_000;
        let language = match options.language.as_deref() {
            Some(l) if self.multilingual() => l.to_string(),
            _ => self.language.clone(),
        };
        if language != "auto" && whisper_rs::get_lang_id(&language).is_none() {
            anyhow::bail!("`{language}` is not a language Whisper knows (ISO 639-1 code, or auto)");
        }

        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 5 });
        params.set_n_threads(self.threads);
        params.set_language(Some(&language));
        params.set_translate(false);
        params.set_no_context(true);
        params.set_suppress_nst(true);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        if let Some(t) = options.temperature {
            params.set_temperature(t);
        }
        if let Some(prompt) = options.prompt.as_deref() {
            params.set_initial_prompt(prompt);
        }
        /// whisper.cpp's abort callback: `data` is the `&dyn Fn() -> bool` below.
        unsafe extern "C" fn asked_to_give_up(data: *mut std::ffi::c_void) -> bool {
            // SAFETY: `data` points at `give_up`, which outlives `state.full` (the only
            // caller), and is only read.
            let give_up = unsafe { &*(data as *const &dyn Fn() -> bool) };
            give_up()
        }
        // SAFETY: the callback only reads through the pointer, which stays valid for the
        // whole of `state.full` below (`give_up` is borrowed for this function's body).
        unsafe {
            params.set_abort_callback(Some(asked_to_give_up));
            params.set_abort_callback_user_data(
                &give_up as *const &dyn Fn() -> bool as *mut std::ffi::c_void,
            );
        }
        // Short audio: encode only the positions it fills (the encoder's cost is linear in
        // them), the latency win that makes a 5 s command come back in well under a second.
        let seconds = audio.len() as f32 / 16_000.0;
        if seconds < 30.0 {
            let ctx = (seconds * POSITIONS_PER_SECOND).ceil() as i32 + AUDIO_CTX_MARGIN;
            params.set_audio_ctx(ctx.min(MAX_AUDIO_CTX));
        }

        // whisper.cpp wants at least one second; pad short clips with silence.
        let padded;
        let input = if audio.len() < 16_000 + 1600 {
            let mut p = audio.to_vec();
            p.resize(16_000 + 1600, 0.0);
            padded = p;
            &padded[..]
        } else {
            audio
        };
        // A fresh state per utterance (~20 ms): a state reused after a call with another
        // audio_ctx decodes worse (measured: 20 % instead of 10 % word errors on the
        // test sentences), so nothing may carry over from one utterance to the next.
        let mut state = match self.spare.take() {
            Some(state) => state,
            None => self
                .context
                .create_state()
                .map_err(|e| anyhow!("cannot allocate Whisper's state: {e}"))?,
        };
        let result = state.full(params, input);
        if give_up() {
            return Ok(None);
        }
        result.map_err(|e| anyhow!("Whisper failed: {e}"))?;

        let eot = self.context.token_eot();
        let mut segments = Vec::new();
        for segment in state.as_iter() {
            let text = segment
                .to_str_lossy()
                .map_err(|e| anyhow!("Whisper's output: {e}"))?
                .trim()
                .to_string();
            if text.is_empty() || is_non_speech(&text) {
                continue;
            }
            let logprobs: Vec<f32> = (0..segment.n_tokens())
                .filter_map(|i| segment.get_token(i))
                .filter(|t| t.token_id() < eot)
                .map(|t| t.token_data().plog)
                .collect();
            let mean_logprob = logprobs.iter().sum::<f32>() / logprobs.len().max(1) as f32;
            if std::env::var_os("LLAMABOX_VOICE_DEBUG").is_some() {
                eprintln!(
                    "segment {text:?}: no-speech {:.2}, mean logprob {mean_logprob:.2}",
                    segment.no_speech_probability()
                );
            }
            if segment.no_speech_probability() > NO_SPEECH && mean_logprob < LOW_LOGPROB {
                continue;
            }
            // A segment repeating the one before it word for word is a decoding loop.
            if segments.last().is_some_and(|s: &Segment| s.text == text) {
                continue;
            }
            segments.push(Segment {
                // whisper.cpp's timestamps are in 10 ms units.
                start_ms: segment.start_timestamp().max(0) as u64 * 10,
                end_ms: segment.end_timestamp().max(0) as u64 * 10,
                text: collapse_repeats(&text),
            });
        }
        let language = if language == "auto" {
            whisper_rs::get_lang_str(state.full_lang_id_from_state())
                .unwrap_or("auto")
                .to_string()
        } else {
            language
        };
        let text = collapse_repeats(
            &segments
                .iter()
                .map(|s| s.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        );
        Ok(Some(Transcript {
            text,
            segments,
            language,
            audio_ms,
            elapsed: started.elapsed(),
        }))
    }
}

/// Whisper's annotations for what is not speech: `[BLANK_AUDIO]`, `(music)`, `[Applause]`, `*coughs*`.
fn is_non_speech(text: &str) -> bool {
    let t = text.trim();
    let bracketed = |open: char, close: char| t.starts_with(open) && t.ends_with(close);
    bracketed('[', ']')
        || bracketed('(', ')')
        || bracketed('*', '*')
        || t.chars().all(|c| !c.is_alphanumeric())
}

/// Cuts a run of the same word sequence (1 to 24 words) repeated more than
/// [`MAX_REPEATS`] times (a sequence of [`MIN_SENTENCE_WORDS`] or more: repeated at all)
/// down to one: the signature of a decoder stuck in a loop.
pub fn collapse_repeats(text: &str) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    let key = |w: &str| {
        w.trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
    };
    for n in 1..=24 {
        let mut i = 0;
        while i + n <= words.len() {
            let mut repeats = 1;
            while i + (repeats + 1) * n <= words.len()
                && (0..n).all(|k| key(words[i + k]) == key(words[i + repeats * n + k]))
            {
                repeats += 1;
            }
            let allowed = if n >= MIN_SENTENCE_WORDS {
                1
            } else {
                MAX_REPEATS
            };
            if repeats > allowed {
                words.drain(i + n..i + repeats * n);
            }
            i += 1;
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_cut_and_ordinary_repetition_is_kept() {
        assert_eq!(
            collapse_repeats("thank you thank you thank you thank you thank you"),
            "thank you"
        );
        assert_eq!(collapse_repeats("no, no, no, no, no, no!"), "no,");
        assert_eq!(collapse_repeats("very very good"), "very very good");
        assert_eq!(
            collapse_repeats(
                "We planted tomatoes in the garden. We planted tomatoes in the garden."
            ),
            "We planted tomatoes in the garden."
        );
        assert_eq!(
            collapse_repeats("the cat sat on the mat"),
            "the cat sat on the mat"
        );
    }

    #[test]
    fn annotations_are_not_speech() {
        for t in [
            "[BLANK_AUDIO]",
            "(upbeat music)",
            "*coughs*",
            "...",
            " [ Silence ] ",
        ] {
            assert!(is_non_speech(t), "{t}");
        }
        assert!(!is_non_speech("Turn on the lights."));
    }
}
