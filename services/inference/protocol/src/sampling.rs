//! The sampling parameters a request asks for, checked; the engine builds its sampler
//! chain from them.

/// Validated sampling parameters. Defaults are llama-server's, so the same request gives
/// the same kind of output from either server.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (always the most likely token).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: i32,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1.0 = off.
    pub repeat_penalty: f32,
    /// How many of the latest tokens the penalties look at.
    pub penalty_last_n: i32,
    /// None: a fresh random seed per request.
    pub seed: Option<u32>,
    /// A GBNF grammar (root rule `root`) that every generated token must follow.
    pub grammar: Option<String>,
    /// If any: the grammar binds only from the first of these words on (a tool call that
    /// the model may or may not open).
    pub grammar_triggers: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_penalty: 1.0,
            penalty_last_n: 64,
            seed: None,
            grammar: None,
            grammar_triggers: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy with nothing before the pick: the next token is the largest logit, which the
    /// engine finds without the sampler chain's copy of the whole vocabulary into
    /// candidates (1 ms a token for Gemma 3's 262,144 entries, docs/perf.md).
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0
            && self.grammar.is_none()
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.repeat_penalty == 1.0
    }
}
