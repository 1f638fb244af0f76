//! The engine thread: loads the model, then runs the decode loop.
//!
//! Each step builds one batch: the last sampled token of every generating sequence, then
//! chunks of waiting prompts up to the batch size. Every sequence has its own slot in the
//! KV cache (llama.cpp sequence id); a slot keeps its tokens after the request ends, so the
//! next request that starts with the same tokens (the next turn of a conversation) only
//! computes what is new.

use std::cell::Cell;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use super::text::{Piece, TextStream};
use super::threadpool::Threadpool;
use super::{
    sampling, EngineConfig, Event, FinishReason, GenerateJob, Job, KeepAlive, LoadedModel,
    ModelCard, TokenLogprob, TokenProb, Usage,
};
use crate::metrics::Metrics;
use crate::template::ChatTemplate;

pub(super) struct Worker {
    pub config: EngineConfig,
    pub jobs: mpsc::Receiver<Job>,
    pub loaded: watch::Sender<Option<Arc<LoadedModel>>>,
    pub card: Arc<OnceLock<Arc<ModelCard>>>,
    /// The latest `keep_alive` a client gave (only this thread reads or writes it).
    pub keep_alive: Cell<KeepAlive>,
    pub expires: Arc<Mutex<Option<SystemTime>>>,
    pub in_flight: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    /// Why the model could not be loaded, for an engine that does not exit on it.
    pub failed: Arc<OnceLock<String>>,
}

/// llama.cpp's backend: one per process (it refuses a second while one lives), shared
/// by the engines of every model the service switches between.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    if let Some(backend) = BACKEND.get() {
        return Ok(backend);
    }
    let backend = LlamaBackend::init().context("cannot initialize llama.cpp")?;
    Ok(BACKEND.get_or_init(|| backend))
}

/// Why the decode loop returned.
#[derive(Debug, PartialEq)]
enum Stop {
    /// Idle for the `keep_alive` time: free the model.
    Unload,
    /// The engine is gone: the process is exiting.
    Exit,
}

impl Worker {
    pub fn run(self, on_ready: impl FnOnce()) {
        let failed = self.failed.clone();
        let exit = self.config.exit_on_load_failure;
        if let Err(e) = self.serve(on_ready) {
            tracing::error!("{e:#}");
            if exit {
                // Without its factory model the service has no purpose: exit, so the
                // supervisor restarts it (with backoff) and its log says why.
                std::process::exit(1);
            }
            // A model switched to at run time: the request that asked for it hears why.
            let _ = failed.set(format!("{e:#}"));
        }
    }

    /// Loads the model, decodes until told to free it, waits for work, and again.
    fn serve(self, on_ready: impl FnOnce()) -> Result<()> {
        let backend = backend()?;
        // Started once and kept: decoding contexts come and go with the model.
        let threadpool = Threadpool::new(self.config.threads)?;
        let mut on_ready = Some(on_ready);
        let mut waiting: Option<Job> = None;
        loop {
            let loaded = self.load(backend)?;
            if self.decode(backend, &threadpool, &loaded, waiting.take(), &mut on_ready)?
                == Stop::Exit
            {
                return Ok(());
            }
            self.loaded.send_replace(None);
            drop(loaded);
            Metrics::set(&self.metrics.model_loaded, 0);
            self.set_expiry(None);
            tracing::info!("model unloaded (keep_alive)");
            // Unloaded until something needs the model.
            loop {
                match self.jobs.recv() {
                    Err(_) => return Ok(()),
                    Ok(Job::KeepAlive(k)) => self.keep_alive.set(k),
                    Ok(Job::Load) => break,
                    Ok(job) => {
                        waiting = Some(job);
                        break;
                    }
                }
            }
        }
    }

    fn load(&self, backend: &LlamaBackend) -> Result<Arc<LoadedModel>> {
        let path = &self.config.model_path;
        let started = Instant::now();
        let mut params = std::pin::pin!(LlamaModelParams::default());
        for kv in &self.config.kv_overrides {
            kv.apply(params.as_mut());
        }
        let model = LlamaModel::load_from_file(backend, path, &params)
            .with_context(|| format!("cannot load the model {}", path.display()))?;
        let template_source = match (&self.config.chat_template, model.chat_template(None)) {
            (Some(given), _) => Some(given.clone()),
            (None, Ok(t)) => Some(t.to_string().unwrap_or_default()),
            (None, Err(_)) => None,
        };
        let template = match &template_source {
            Some(source) => Some(ChatTemplate::new(source, &model).with_context(|| {
                if self.config.chat_template.is_some() {
                    "the chat template file does not compile"
                } else {
                    "the model's chat template does not compile"
                }
            })?),
            None => None,
        };
        let parallel = self.config.parallel.max(1);
        let card = self
            .card
            .get_or_init(|| {
                let metadata = (0..model.meta_count())
                    .filter_map(|i| {
                        Some((
                            model.meta_key_by_index(i).ok()?,
                            model.meta_val_str_by_index(i).ok()?,
                        ))
                    })
                    .collect();
                Arc::new(ModelCard {
                    id: self.config.model_id.clone(),
                    path: path.clone(),
                    created: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    n_params: model.n_params(),
                    size: model.size(),
                    n_ctx_train: model.n_ctx_train(),
                    n_embd: model.n_embd().max(0) as u32,
                    n_ctx_seq: self.config.ctx_size / parallel,
                    metadata,
                    template: template_source,
                    digest: OnceLock::new(),
                })
            })
            .clone();
        tracing::info!(
            model = %path.display(),
            seconds = started.elapsed().as_secs_f32(),
            context_per_sequence = card.n_ctx_seq,
            parallel,
            threads = self.config.threads,
            "model loaded"
        );
        Ok(Arc::new(LoadedModel {
            id: card.id.clone(),
            model,
            template,
            n_ctx_seq: card.n_ctx_seq,
            card,
        }))
    }

    /// Decodes with `loaded` until the engine stops or the model is to be freed.
    fn decode(
        &self,
        backend: &LlamaBackend,
        threadpool: &Threadpool,
        loaded: &Arc<LoadedModel>,
        waiting: Option<Job>,
        on_ready: &mut Option<impl FnOnce()>,
    ) -> Result<Stop> {
        let parallel = self.config.parallel.max(1);
        let model = &loaded.model;
        let n_ctx_seq = loaded.n_ctx_seq;
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.config.ctx_size))
            .with_n_batch(self.config.batch_size)
            .with_n_ubatch(self.config.batch_size.min(512))
            .with_n_seq_max(parallel)
            // One KV stream per sequence: a request's attention never depends on what else
            // is in the batch, so batching does not change results.
            .with_kv_unified(false)
            .with_n_threads(self.config.threads)
            .with_n_threads_batch(self.config.threads);
        let mut ctx = model
            .new_context(backend, ctx_params)
            .context("cannot create the llama.cpp context (is --ctx-size too large?)")?;
        // SAFETY: `threadpool` outlives `ctx` (it lives for the whole engine thread).
        unsafe { ctx.attach_threadpool(threadpool.as_ptr(), threadpool.as_ptr()) };
        self.loaded.send_replace(Some(loaded.clone()));
        Metrics::set(&self.metrics.model_loaded, 1);
        Metrics::set(
            &self.metrics.kv_cache_capacity,
            u64::from(n_ctx_seq) * u64::from(parallel),
        );
        if let Some(on_ready) = on_ready.take() {
            on_ready();
        }

        let mut decoder = Decoder {
            model,
            backend,
            threadpool,
            embed_ctx: None,
            batch: LlamaBatch::new(self.config.batch_size as usize, parallel as i32),
            slots: (0..parallel as i32).map(Slot::new).collect(),
            queue: VecDeque::new(),
            n_ctx_seq,
            batch_size: self.config.batch_size as usize,
            clock: 0,
            idle_since: None,
            worker: self,
        };
        if let Some(job) = waiting {
            decoder.accept(job);
        }
        Ok(decoder.run(&mut ctx))
    }

    /// Publishes when the model will be freed (`/api/ps`'s `expires_at`).
    fn set_expiry(&self, at: Option<SystemTime>) {
        *self.expires.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

/// A KV cache sequence and the request using it, if any.
struct Slot {
    seq: i32,
    /// Tokens whose keys and values are in this sequence's cache, in position order.
    cached: Vec<LlamaToken>,
    last_used: u64,
    running: Option<Running>,
}

impl Slot {
    fn new(seq: i32) -> Slot {
        Slot {
            seq,
            cached: Vec::new(),
            last_used: 0,
            running: None,
        }
    }
}

struct Running {
    events: UnboundedSender<Event>,
    /// Which of the request's choices this sequence is.
    choice: u32,
    /// Waiting for the prompt decoded in this slot, whose KV cache it will copy.
    fork_from: Option<usize>,
    sampler: LlamaSampler,
    /// The sampler is greedy alone: pick the largest logit directly.
    greedy: bool,
    prompt: Vec<LlamaToken>,
    /// Index of the next prompt token to decode.
    prompt_next: usize,
    cached_tokens: usize,
    /// Sampled and sent, to be decoded in the next step.
    next: Option<LlamaToken>,
    /// Where this sequence's logits are in the batch just decoded.
    logits_at: Option<i32>,
    generated: u32,
    max_tokens: u32,
    text: TextStream,
    /// Alternatives to report per token; None: no logprobs.
    logprobs: Option<u32>,
    /// Log-probabilities of tokens whose text is not sent yet.
    pending_logprobs: Vec<TokenLogprob>,
    admitted: Instant,
    prompt_done: Option<Instant>,
}

struct Decoder<'m, 'w> {
    model: &'m LlamaModel,
    backend: &'m LlamaBackend,
    threadpool: &'m Threadpool,
    embed_ctx: Option<LlamaContext<'m>>,
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    queue: VecDeque<(GenerateJob, UnboundedSender<Event>)>,
    n_ctx_seq: u32,
    batch_size: usize,
    /// Counts admissions, to find the least recently used slot.
    clock: u64,
    /// When the engine last ran out of work; None while it works.
    idle_since: Option<Instant>,
    worker: &'w Worker,
}

impl<'m> Decoder<'m, '_> {
    fn run(&mut self, ctx: &mut LlamaContext<'m>) -> Stop {
        loop {
            let busy = self.slots.iter().any(|s| s.running.is_some()) || !self.queue.is_empty();
            if busy {
                self.idle_since = None;
            } else {
                // Idle: sleep until a request arrives, or until the model is to be freed.
                let since = *self.idle_since.get_or_insert_with(Instant::now);
                let job = match self.worker.keep_alive.get() {
                    KeepAlive::Forever => {
                        self.worker.set_expiry(None);
                        self.worker
                            .jobs
                            .recv()
                            .map_err(|_| RecvTimeoutError::Disconnected)
                    }
                    KeepAlive::For(keep) => {
                        self.worker.set_expiry(Some(
                            SystemTime::now() + keep.saturating_sub(since.elapsed()),
                        ));
                        self.worker
                            .jobs
                            .recv_timeout(keep.saturating_sub(since.elapsed()))
                    }
                };
                match job {
                    Ok(job) => self.accept(job),
                    Err(RecvTimeoutError::Timeout) => return Stop::Unload,
                    Err(RecvTimeoutError::Disconnected) => return Stop::Exit,
                }
                continue;
            }
            while let Ok(job) = self.worker.jobs.try_recv() {
                self.accept(job);
            }
            self.drop_cancelled();
            self.admit(ctx);
            self.publish_gauges();
            if self.fill_batch() {
                if let Err(e) = ctx.decode(&mut self.batch) {
                    self.fail_all(&format!("decoding failed: {e}"));
                    continue;
                }
                self.sample(ctx);
            }
        }
    }

    fn accept(&mut self, job: Job) {
        match job {
            Job::Generate { job, events } => self.queue.push_back((job, events)),
            Job::Embed { inputs, reply } => {
                let _ = reply.send(self.embed(&inputs));
                // Work: the keep-alive time counts from here.
                self.idle_since = None;
            }
            Job::Load => {}
            Job::KeepAlive(keep_alive) => {
                self.worker.keep_alive.set(keep_alive);
                // A client's new keep-alive time counts from its request.
                self.idle_since = None;
            }
        }
    }

    /// `n` generations left the engine (done, failed or cancelled): room for new requests.
    fn finished(&self, n: usize) {
        self.worker.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    fn drop_cancelled(&mut self) {
        let mut dropped = 0;
        self.queue.retain(|(job, events)| {
            let gone = events.is_closed();
            if gone {
                dropped += job.choices.max(1) as usize;
            }
            !gone
        });
        for slot in &mut self.slots {
            if slot.running.as_ref().is_some_and(|r| r.events.is_closed()) {
                slot.running = None;
                dropped += 1;
            }
        }
        if dropped > 0 {
            Metrics::add(&self.worker.metrics.cancelled, dropped as u64);
            self.finished(dropped);
        }
    }

    /// Moves queued requests into free slots, reusing the longest cached prefix. A request
    /// with several choices waits until it has a slot for each.
    fn admit(&mut self, ctx: &mut LlamaContext<'m>) {
        while let Some((job, _)) = self.queue.front() {
            let choices = job.choices.max(1) as usize;
            let Some(first) = self.pick_slot(&job.prompt) else {
                return;
            };
            let mut slots = vec![first];
            slots.extend(self.spare_slots(first, choices - 1));
            if slots.len() < choices {
                return;
            }
            let (job, events) = self.queue.pop_front().expect("queue is not empty");
            let mut samplers = Vec::with_capacity(choices);
            for choice in 0..choices as u32 {
                let mut params = job.sampling.clone();
                params.seed = params.seed.map(|s| s.wrapping_add(choice));
                match sampling::build(self.model, &params) {
                    Ok(s) => samplers.push(s),
                    Err(e) => {
                        let _ = events.send(Event::Failed(e));
                        break;
                    }
                }
            }
            if samplers.len() < choices {
                self.finished(choices);
                continue;
            }
            self.clock += 1;
            let slot = &mut self.slots[first];
            slot.last_used = self.clock;
            // Keep the common prefix, but always compute at least the last prompt token:
            // its logits give the first generated token.
            let common = common_prefix(&slot.cached, &job.prompt);
            let reuse = common.min(job.prompt.len().saturating_sub(1));
            if ctx
                .clear_kv_cache_seq(Some(slot.seq as u32), Some(reuse as u32), None)
                .ok()
                != Some(true)
            {
                ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None)
                    .ok();
                slot.cached.clear();
            }
            slot.cached.truncate(reuse);
            let reuse = slot.cached.len();

            let metrics = &self.worker.metrics;
            Metrics::add(&metrics.prompt_tokens, job.prompt.len() as u64);
            Metrics::add(&metrics.prompt_tokens_cached, reuse as u64);
            let room = self.n_ctx_seq.saturating_sub(job.prompt.len() as u32);
            let admitted = Instant::now();
            for (choice, (slot_index, sampler)) in slots.iter().zip(samplers).enumerate() {
                let slot = &mut self.slots[*slot_index];
                let fork_from = (choice > 0).then(|| {
                    // The first choice's slot decodes the prompt; this one receives a copy
                    // of its KV cache in the step the prompt completes.
                    ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None)
                        .ok();
                    slot.cached.clear();
                    slot.last_used = self.clock;
                    first
                });
                slot.running = Some(Running {
                    events: events.clone(),
                    choice: choice as u32,
                    fork_from,
                    sampler,
                    greedy: job.sampling.is_plain_greedy(),
                    prompt_next: if fork_from.is_some() {
                        job.prompt.len()
                    } else {
                        reuse
                    },
                    cached_tokens: reuse,
                    prompt: job.prompt.clone(),
                    next: None,
                    logits_at: None,
                    generated: 0,
                    max_tokens: job.max_tokens.map_or(room, |m| m.min(room)),
                    text: TextStream::new(job.stop.clone()),
                    logprobs: job.logprobs,
                    pending_logprobs: Vec::new(),
                    admitted,
                    prompt_done: None,
                });
            }
        }
    }

    /// A free slot for this prompt: the one whose cache shares the longest prefix with it,
    /// else the one used longest ago.
    fn pick_slot(&self, prompt: &[LlamaToken]) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running.is_none())
            .max_by_key(|(_, s)| (common_prefix(&s.cached, prompt), u64::MAX - s.last_used))
            .map(|(i, _)| i)
    }

    /// Up to `n` free slots other than `taken`, least recently used first.
    fn spare_slots(&self, taken: usize, n: usize) -> Vec<usize> {
        let mut free: Vec<usize> = (0..self.slots.len())
            .filter(|&i| i != taken && self.slots[i].running.is_none())
            .collect();
        free.sort_by_key(|&i| self.slots[i].last_used);
        free.truncate(n);
        free
    }

    /// Fills the batch for one step; false if there is nothing to decode.
    fn fill_batch(&mut self) -> bool {
        self.batch.clear();
        let mut n = 0usize;
        for slot in &mut self.slots {
            let Some(run) = slot.running.as_mut() else {
                continue;
            };
            run.logits_at = None;
            if let Some(token) = run.next.take() {
                let pos = slot.cached.len() as i32;
                self.batch
                    .add(token, pos, &[slot.seq], true)
                    .expect("the batch has room for one token per sequence");
                slot.cached.push(token);
                run.logits_at = Some(n as i32);
                n += 1;
            }
        }
        for slot in &mut self.slots {
            let Some(run) = slot.running.as_mut() else {
                continue;
            };
            let remaining = run.prompt.len() - run.prompt_next;
            if remaining == 0 || n >= self.batch_size {
                continue;
            }
            let take = remaining.min(self.batch_size - n);
            for i in run.prompt_next..run.prompt_next + take {
                let last = i + 1 == run.prompt.len();
                let pos = slot.cached.len() as i32;
                self.batch
                    .add(run.prompt[i], pos, &[slot.seq], last)
                    .expect("the batch was sized for batch_size tokens");
                slot.cached.push(run.prompt[i]);
                if last {
                    run.logits_at = Some(n as i32);
                }
                n += 1;
            }
            run.prompt_next += take;
        }
        n > 0
    }

    /// Choices waiting for a prompt that completed in this step take a copy of its KV cache
    /// and its logits (llama.cpp copies the cache before the next decode).
    fn fork(&mut self, ctx: &mut LlamaContext<'m>) {
        for i in 0..self.slots.len() {
            let Some(parent) = self.slots[i].running.as_ref().and_then(|r| r.fork_from) else {
                continue;
            };
            let Some(from) = self.slots[parent].running.as_ref() else {
                continue;
            };
            if from.logits_at.is_none() || from.prompt_next < from.prompt.len() {
                continue;
            }
            let (at, cached) = (from.logits_at, self.slots[parent].cached.clone());
            let (src, dst) = (self.slots[parent].seq, self.slots[i].seq);
            if ctx.copy_kv_cache_seq(src, dst, None, None).is_err() {
                continue;
            }
            let slot = &mut self.slots[i];
            slot.cached = cached;
            let run = slot.running.as_mut().expect("checked above");
            run.fork_from = None;
            run.logits_at = at;
        }
    }

    /// Samples the next token of every sequence that has logits in the decoded batch.
    fn sample(&mut self, ctx: &mut LlamaContext<'m>) {
        self.fork(ctx);
        let vocab = self.model.vocab();
        let n_ctx_seq = self.n_ctx_seq as usize;
        let metrics = self.worker.metrics.clone();
        let mut done = 0;
        for slot in &mut self.slots {
            let Some(run) = slot.running.as_mut() else {
                continue;
            };
            let Some(at) = run.logits_at else {
                continue;
            };
            if run.prompt_done.is_none() {
                run.prompt_done = Some(Instant::now());
            }
            let token = if run.greedy {
                LlamaToken(sampling::argmax(ctx.get_logits_ith(at)) as i32)
            } else {
                run.sampler.sample(ctx, at)
            };
            let finish = if vocab.is_eog(token) {
                Some(FinishReason::Stop)
            } else {
                run.generated += 1;
                Metrics::add(&metrics.generated_tokens, 1);
                let bytes = vocab.token_to_piece(token, false, None);
                if let Some(top) = run.logprobs {
                    let logits = ctx.get_logits_ith(at);
                    run.pending_logprobs
                        .push(token_logprob(self.model, logits, token, &bytes, top));
                }
                match run.text.push(&bytes) {
                    Piece::Stopped(text) => {
                        send_text(run, text);
                        Some(FinishReason::Stop)
                    }
                    Piece::Text(text) => {
                        send_text(run, text);
                        // The next step needs a position for this token.
                        if run.generated >= run.max_tokens || slot.cached.len() + 1 >= n_ctx_seq {
                            let rest = run.text.finish();
                            send_text(run, rest);
                            Some(FinishReason::Length)
                        } else {
                            run.next = Some(token);
                            None
                        }
                    }
                }
            };
            if let Some(reason) = finish {
                let run = slot.running.take().expect("checked above");
                finish_run(run, reason, &metrics);
                done += 1;
            }
        }
        self.finished(done);
    }

    fn fail_all(&mut self, message: &str) {
        tracing::error!("{message}");
        let mut failed = 0;
        for slot in &mut self.slots {
            if let Some(run) = slot.running.take() {
                let _ = run.events.send(Event::Failed(message.to_string()));
                failed += 1;
            }
            // The cache content is unknown after a failed decode: start over.
            slot.cached.clear();
        }
        self.finished(failed);
    }

    fn publish_gauges(&self) {
        let m = &self.worker.metrics;
        Metrics::set(&m.queue_depth, self.queue.len() as u64);
        Metrics::set(
            &m.active_sequences,
            self.slots.iter().filter(|s| s.running.is_some()).count() as u64,
        );
        Metrics::set(
            &m.kv_cache_tokens,
            self.slots.iter().map(|s| s.cached.len() as u64).sum(),
        );
    }

    /// Embeddings run in their own context (mean pooling), between decode steps.
    fn embed(&mut self, inputs: &[Vec<LlamaToken>]) -> Result<Vec<Vec<f32>>, String> {
        let n_ctx = self.n_ctx_seq;
        if self.embed_ctx.is_none() {
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(n_ctx))
                // A pooled sequence must fit in one micro-batch.
                .with_n_batch(n_ctx)
                .with_n_ubatch(n_ctx)
                .with_n_seq_max(1)
                .with_embeddings(true)
                .with_pooling_type(LlamaPoolingType::Mean)
                .with_n_threads(self.worker.config.threads)
                .with_n_threads_batch(self.worker.config.threads);
            let mut ctx = self
                .model
                .new_context(self.backend, params)
                .map_err(|e| format!("cannot create the embeddings context: {e}"))?;
            let pool = self.threadpool.as_ptr();
            // SAFETY: the threadpool outlives the decoder, which owns this context.
            unsafe { ctx.attach_threadpool(pool, pool) };
            self.embed_ctx = Some(ctx);
        }
        let ctx = self.embed_ctx.as_mut().expect("created above");
        let mut batch = LlamaBatch::new(n_ctx as usize, 1);
        let mut out = Vec::with_capacity(inputs.len());
        for tokens in inputs {
            ctx.clear_kv_cache();
            batch.clear();
            batch
                .add_sequence(tokens, 0, true)
                .map_err(|e| format!("input too long for the embeddings context: {e}"))?;
            ctx.decode(&mut batch)
                .map_err(|e| format!("embedding failed: {e}"))?;
            let embedding = ctx
                .embeddings_seq_ith(0)
                .map_err(|e| format!("embedding failed: {e}"))?;
            let norm = embedding
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(1e-12);
            out.push(embedding.iter().map(|x| x / norm).collect());
        }
        Ok(out)
    }
}

/// Sends text with the log-probabilities of the tokens behind it; log-probabilities of
/// held-back text wait for the text.
fn send_text(run: &mut Running, text: String) {
    if !text.is_empty() {
        let _ = run.events.send(Event::Text {
            choice: run.choice,
            text,
            logprobs: std::mem::take(&mut run.pending_logprobs),
        });
    }
}

/// The chosen token's log-probability and the `top` most likely tokens, from the raw logits
/// (log-softmax over the whole vocabulary, as OpenAI reports them).
fn token_logprob(
    model: &LlamaModel,
    logits: &[f32],
    chosen: LlamaToken,
    chosen_bytes: &[u8],
    top: u32,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(top as usize + 1);
    for (id, &l) in logits.iter().enumerate() {
        if best.len() < top as usize || best.last().is_some_and(|&(b, _)| l > b) {
            let at = best.partition_point(|&(b, _)| b >= l);
            best.insert(at, (l, id));
            best.truncate(top as usize);
        }
    }
    let vocab = model.vocab();
    TokenLogprob {
        chosen: TokenProb {
            bytes: chosen_bytes.to_vec(),
            logprob: logits[chosen.0 as usize] - log_sum,
        },
        top: best
            .into_iter()
            .map(|(l, id)| TokenProb {
                bytes: vocab.token_to_piece(LlamaToken(id as i32), false, None),
                logprob: l - log_sum,
            })
            .collect(),
    }
}

fn finish_run(run: Running, reason: FinishReason, metrics: &Metrics) {
    let now = Instant::now();
    let prompt_done = run.prompt_done.unwrap_or(now);
    let usage = Usage {
        prompt_tokens: run.prompt.len() as u32,
        cached_tokens: run.cached_tokens as u32,
        completion_tokens: run.generated,
        prompt_ms: (prompt_done - run.admitted).as_secs_f64() * 1e3,
        generation_ms: (now - prompt_done).as_secs_f64() * 1e3,
    };
    let mut run = run;
    if !run.pending_logprobs.is_empty() {
        let _ = run.events.send(Event::Text {
            choice: run.choice,
            text: String::new(),
            logprobs: std::mem::take(&mut run.pending_logprobs),
        });
    }
    Metrics::add(&metrics.completed, 1);
    Metrics::add(
        &metrics.prompt_micros,
        (prompt_done - run.admitted).as_micros() as u64,
    );
    Metrics::add(
        &metrics.generation_micros,
        (now - prompt_done).as_micros() as u64,
    );
    let _ = run.events.send(Event::Done {
        choice: run.choice,
        reason,
        usage,
    });
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
