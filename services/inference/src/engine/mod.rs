//! The engine: one thread that owns the llama.cpp context and decodes every running
//! request together in one batch per step (continuous batching).
//!
//! HTTP handlers talk to it through [`Engine`]: they tokenize on their own thread (the model
//! is shareable), submit a [`GenerateJob`] and read [`Event`]s from a channel. Dropping that
//! channel's receiver (a client that went away) cancels the generation at the next step.
//!
//! The model is loaded at start and stays loaded unless a client asks otherwise
//! ([`KeepAlive`], Ollama's `keep_alive`): then the engine frees it once it has been idle
//! that long, and loads it again for the next request that needs it ([`Engine::ready`]).
//! What is known about the model ([`ModelCard`]) outlives the unloading.

mod kv_override;
pub mod sampling;
pub mod text;
mod threadpool;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc as tokio_mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::template::ChatTemplate;
pub use kv_override::KvOverride;
pub use llamabox_inference_protocol::ollama::KeepAlive;
pub use sampling::{schema_to_grammar, SamplingParams};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    /// The name clients use in `model` fields.
    pub model_id: String,
    /// A chat template that replaces the model's own (`--chat-template-file`).
    pub chat_template: Option<String>,
    pub threads: i32,
    /// KV cache size in tokens for all sequences together (each gets `ctx_size / parallel`).
    pub ctx_size: u32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// Most tokens in one decode step.
    pub batch_size: u32,
    /// Requests that may wait for a free sequence before new ones are refused.
    pub queue_limit: usize,
    /// Sampling for what a request leaves out (a pulled model's catalog options).
    pub sampling_defaults: SamplingParams,
    /// GGUF metadata replaced at load time (`--override-kv`).
    pub kv_overrides: Vec<KvOverride>,
    /// A model that fails to load ends the process (the factory model: the supervisor
    /// restarts the service); otherwise the engine reports why ([`Engine::first_load`]).
    pub exit_on_load_failure: bool,
}

/// What is known about the model from its first load on, loaded or not: what model
/// lists and `/api/show` report.
pub struct ModelCard {
    /// The name clients use in `model` fields.
    pub id: String,
    /// The GGUF file.
    pub path: PathBuf,
    /// Unix time of the first load (the `created` field of `/v1/models`).
    pub created: u64,
    pub n_params: u64,
    /// Bytes of the model's tensors.
    pub size: u64,
    pub n_ctx_train: u32,
    pub n_embd: u32,
    /// Context (prompt + generated tokens) available to one request.
    pub n_ctx_seq: u32,
    /// The GGUF metadata as llama.cpp writes it out, key by key.
    pub metadata: Vec<(String, String)>,
    /// The chat template in use (the model's own or `--chat-template-file`), if any.
    pub template: Option<String>,
    /// SHA-256 of the file in hex, computed the first time it is asked for.
    pub digest: OnceLock<String>,
}

impl ModelCard {
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The loaded model and what the HTTP side needs to know about it.
pub struct LoadedModel {
    pub id: String,
    pub model: LlamaModel,
    pub template: Option<ChatTemplate>,
    /// Context (prompt + generated tokens) available to one request.
    pub n_ctx_seq: u32,
    pub card: Arc<ModelCard>,
}

impl LoadedModel {
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        // As llama-server: add BOS/EOS if the model asks for them, and parse special tokens
        // written by the chat template.
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }
}

pub struct GenerateJob {
    pub prompt: Vec<LlamaToken>,
    pub sampling: SamplingParams,
    /// None: until the context is full.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// Sequences generated from the prompt (1 to `parallel`). The prompt is decoded once
    /// and its KV cache copied to the others; each has its own sampler (seed + choice).
    pub choices: u32,
    /// Report each token's log-probability and this many alternatives (0 to 20).
    pub logprobs: Option<u32>,
}

/// One alternative at a sampling step: a token and its log-probability under the model's
/// distribution (log-softmax of the raw logits, before any sampler).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenProb {
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The token that was chosen and the most likely alternatives, most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub chosen: TokenProb,
    pub top: Vec<TokenProb>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of generation token or a stop string.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV cache came from an earlier request.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub prompt_ms: f64,
    pub generation_ms: f64,
}

/// What the engine reports about a job. `choice` is 0 to `choices - 1`; every choice ends
/// with its own `Done` (its usage repeats the shared prompt's figures).
#[derive(Debug)]
pub enum Event {
    Text {
        choice: u32,
        text: String,
        /// One entry per token behind this text (and any held back before it).
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        choice: u32,
        reason: FinishReason,
        usage: Usage,
    },
    Failed(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    Loading,
    /// Every sequence is busy and the queue is full.
    Busy {
        limit: usize,
    },
}

enum Job {
    Generate {
        job: GenerateJob,
        events: tokio_mpsc::UnboundedSender<Event>,
    },
    Embed {
        inputs: Vec<Vec<LlamaToken>>,
        reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
    },
    /// Load the model if it is not loaded.
    Load,
    KeepAlive(KeepAlive),
}

/// How long [`Engine::ready`] waits for the model to load again.
const RELOAD_WAIT: Duration = Duration::from_secs(300);

pub struct Engine {
    config: EngineConfig,
    jobs: mpsc::Sender<Job>,
    /// The model while it is loaded.
    loaded: watch::Receiver<Option<Arc<LoadedModel>>>,
    card: Arc<OnceLock<Arc<ModelCard>>>,
    /// When an idle engine frees the model; None: it stays loaded.
    expires: Arc<Mutex<Option<SystemTime>>>,
    /// Generations submitted and not yet finished (running or queued).
    in_flight: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    failed: Arc<OnceLock<String>>,
}

impl Engine {
    /// Starts the engine thread, which loads the model. `on_ready` runs once it is loaded.
    /// The thread ends, freeing the model, once the `Engine` is dropped.
    pub fn start(
        config: EngineConfig,
        metrics: Arc<Metrics>,
        on_ready: impl FnOnce() + Send + 'static,
    ) -> Engine {
        let (jobs, rx) = mpsc::channel();
        let (publish, loaded) = watch::channel(None);
        let card = Arc::new(OnceLock::new());
        let expires = Arc::new(Mutex::new(None));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(OnceLock::new());
        let worker = worker::Worker {
            config: config.clone(),
            jobs: rx,
            loaded: publish,
            card: card.clone(),
            keep_alive: std::cell::Cell::new(KeepAlive::Forever),
            expires: expires.clone(),
            in_flight: in_flight.clone(),
            metrics: metrics.clone(),
            failed: failed.clone(),
        };
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || worker.run(on_ready))
            .expect("cannot start the engine thread");
        Engine {
            config,
            jobs,
            loaded,
            card,
            expires,
            in_flight,
            metrics,
            failed,
        }
    }

    /// The name clients use for this engine's model.
    pub fn id(&self) -> &str {
        &self.config.model_id
    }

    /// Sampling for what a request leaves out.
    pub fn sampling_defaults(&self) -> &SamplingParams {
        &self.config.sampling_defaults
    }

    /// Generations submitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits for the first load to finish: Err with the reason if it failed.
    pub async fn first_load(&self) -> Result<(), String> {
        loop {
            if self.card.get().is_some() {
                return Ok(());
            }
            if let Some(reason) = self.failed.get() {
                return Err(reason.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sequences decoded together: the most choices one request may ask for.
    pub fn parallel(&self) -> u32 {
        self.config.parallel.max(1)
    }

    /// The model, while it is loaded.
    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        self.loaded.borrow().clone()
    }

    /// What is known about the model, once it has been loaded the first time.
    pub fn card(&self) -> Option<&Arc<ModelCard>> {
        self.card.get()
    }

    /// The loaded model, loading it again first if it was freed.
    pub async fn ready(&self) -> Result<Arc<LoadedModel>, SubmitError> {
        let mut loaded = self.loaded.clone();
        if let Some(model) = loaded.borrow_and_update().clone() {
            return Ok(model);
        }
        // Never loaded yet: the first load is under way (or failed, and the process exits).
        if self.card.get().is_none() {
            return Err(SubmitError::Loading);
        }
        self.jobs
            .send(Job::Load)
            .map_err(|_| SubmitError::Loading)?;
        let model = match tokio::time::timeout(RELOAD_WAIT, loaded.wait_for(Option::is_some)).await
        {
            Ok(Ok(model)) => model.clone(),
            _ => None,
        };
        model.ok_or(SubmitError::Loading)
    }

    /// How long the model stays loaded once idle, from now on.
    pub fn keep_alive(&self, keep_alive: KeepAlive) {
        let _ = self.jobs.send(Job::KeepAlive(keep_alive));
    }

    /// When an idle engine frees the model; None: it stays loaded.
    pub fn expires_at(&self) -> Option<SystemTime> {
        *self.expires.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn generate(
        &self,
        job: GenerateJob,
    ) -> Result<tokio_mpsc::UnboundedReceiver<Event>, SubmitError> {
        if self.card.get().is_none() {
            return Err(SubmitError::Loading);
        }
        let limit = self.config.parallel as usize + self.config.queue_limit;
        // Every choice holds a sequence, so choices count against the limit one by one.
        let choices = job.choices.max(1) as usize;
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + choices <= limit).then_some(n + choices)
            });
        if admitted.is_err() {
            Metrics::add(&self.metrics.rejected_busy, 1);
            return Err(SubmitError::Busy { limit });
        }
        let (events, rx) = tokio_mpsc::unbounded_channel();
        if self.jobs.send(Job::Generate { job, events }).is_err() {
            // The engine thread is gone; the process is about to exit.
            self.in_flight.fetch_sub(choices, Ordering::AcqRel);
            return Err(SubmitError::Loading);
        }
        Ok(rx)
    }

    /// Mean-pooled, L2-normalized embeddings of each input.
    pub async fn embed(&self, inputs: Vec<Vec<LlamaToken>>) -> Result<Vec<Vec<f32>>, String> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Embed { inputs, reply })
            .map_err(|_| "the engine has stopped".to_string())?;
        rx.await.map_err(|_| "the engine has stopped".to_string())?
    }
}
