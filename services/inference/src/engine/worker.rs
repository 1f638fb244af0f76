//! The engine thread: loads the model, then runs the decode loop.
//!
//! Each step builds one batch: the last sampled token of every generating sequence, then
//! chunks of waiting prompts up to the batch size. Every sequence has its own slot in the
//! KV cache (llama.cpp sequence id); a slot keeps its tokens after the request ends, so the
//! next request that starts with the same tokens (the next turn of a conversation) only
//! computes what is new.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
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

use super::text::{Piece, TextStream};
use super::{sampling, EngineConfig, Event, FinishReason, GenerateJob, Job, LoadedModel, Usage};
use crate::metrics::Metrics;
use crate::template::ChatTemplate;

pub(super) struct Worker {
    pub config: EngineConfig,
    pub jobs: mpsc::Receiver<Job>,
    pub model: Arc<OnceLock<Arc<LoadedModel>>>,
    pub in_flight: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    pub fn run(self, on_ready: impl FnOnce()) {
        if let Err(e) = self.serve(on_ready) {
            // Without a model the service has no purpose: exit, so the supervisor restarts it
            // (with backoff) and its log says why.
            tracing::error!("{e:#}");
            std::process::exit(1);
        }
    }

    fn serve(self, on_ready: impl FnOnce()) -> Result<()> {
        let backend = LlamaBackend::init().context("cannot initialize llama.cpp")?;
        let path = &self.config.model_path;
        let started = Instant::now();
        let model = LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default())
            .with_context(|| format!("cannot load the model {}", path.display()))?;
        let template = match model.chat_template(None) {
            Ok(t) => Some(
                ChatTemplate::new(&t.to_string().unwrap_or_default(), &model)
                    .context("the model's chat template does not compile")?,
            ),
            Err(_) => None,
        };

        let parallel = self.config.parallel.max(1);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let loaded = Arc::new(LoadedModel {
            id: self.config.model_id.clone(),
            model,
            template,
            n_ctx_seq: self.config.ctx_size / parallel,
            created,
        });
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
            .new_context(&backend, ctx_params)
            .context("cannot create the llama.cpp context (is --ctx-size too large?)")?;
        let _ = self.model.set(loaded.clone());
        Metrics::set(&self.metrics.model_loaded, 1);
        Metrics::set(
            &self.metrics.kv_cache_capacity,
            u64::from(n_ctx_seq) * u64::from(parallel),
        );
        tracing::info!(
            model = %path.display(),
            seconds = started.elapsed().as_secs_f32(),
            context_per_sequence = n_ctx_seq,
            parallel,
            threads = self.config.threads,
            "model loaded"
        );
        on_ready();

        let mut state = Decoder {
            model,
            backend: &backend,
            embed_ctx: None,
            batch: LlamaBatch::new(self.config.batch_size as usize, parallel as i32),
            slots: (0..parallel as i32).map(Slot::new).collect(),
            queue: VecDeque::new(),
            n_ctx_seq,
            batch_size: self.config.batch_size as usize,
            clock: 0,
            worker: &self,
        };
        state.run(&mut ctx)
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
    sampler: LlamaSampler,
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
    admitted: Instant,
    prompt_done: Option<Instant>,
}

struct Decoder<'m, 'w> {
    model: &'m LlamaModel,
    backend: &'m LlamaBackend,
    embed_ctx: Option<LlamaContext<'m>>,
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    queue: VecDeque<(GenerateJob, UnboundedSender<Event>)>,
    n_ctx_seq: u32,
    batch_size: usize,
    /// Counts admissions, to find the least recently used slot.
    clock: u64,
    worker: &'w Worker,
}

impl<'m> Decoder<'m, '_> {
    fn run(&mut self, ctx: &mut LlamaContext<'m>) -> Result<()> {
        loop {
            let busy = self.slots.iter().any(|s| s.running.is_some()) || !self.queue.is_empty();
            if !busy {
                // Idle: sleep until a request arrives.
                match self.worker.jobs.recv() {
                    Ok(job) => self.accept(job),
                    Err(_) => return Ok(()),
                }
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
            }
        }
    }

    /// `n` generations left the engine (done, failed or cancelled): room for new requests.
    fn finished(&self, n: usize) {
        self.worker.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    fn drop_cancelled(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|(_, events)| !events.is_closed());
        let mut dropped = before - self.queue.len();
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

    /// Moves queued requests into free slots, reusing the longest cached prefix.
    fn admit(&mut self, ctx: &mut LlamaContext<'m>) {
        while !self.queue.is_empty() {
            let Some(slot_index) = self.pick_slot(&self.queue[0].0.prompt) else {
                return;
            };
            let (job, events) = self.queue.pop_front().expect("queue is not empty");
            let sampler = match sampling::build(self.model, &job.sampling) {
                Ok(s) => s,
                Err(e) => {
                    let _ = events.send(Event::Failed(e));
                    self.finished(1);
                    continue;
                }
            };
            self.clock += 1;
            let slot = &mut self.slots[slot_index];
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
            slot.running = Some(Running {
                events,
                sampler,
                prompt_next: reuse,
                cached_tokens: reuse,
                prompt: job.prompt,
                next: None,
                logits_at: None,
                generated: 0,
                max_tokens: job.max_tokens.map_or(room, |m| m.min(room)),
                text: TextStream::new(job.stop),
                admitted: Instant::now(),
                prompt_done: None,
            });
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

    /// Samples the next token of every sequence that has logits in the decoded batch.
    fn sample(&mut self, ctx: &LlamaContext<'m>) {
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
            let token = run.sampler.sample(ctx, at);
            let finish = if vocab.is_eog(token) {
                Some(FinishReason::Stop)
            } else {
                run.generated += 1;
                Metrics::add(&metrics.generated_tokens, 1);
                let bytes = vocab.token_to_piece(token, false, None);
                match run.text.push(&bytes) {
                    Piece::Stopped(text) => {
                        send_text(&run.events, text);
                        Some(FinishReason::Stop)
                    }
                    Piece::Text(text) => {
                        send_text(&run.events, text);
                        // The next step needs a position for this token.
                        if run.generated >= run.max_tokens || slot.cached.len() + 1 >= n_ctx_seq {
                            send_text(&run.events, run.text.finish());
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
            let ctx = self
                .model
                .new_context(self.backend, params)
                .map_err(|e| format!("cannot create the embeddings context: {e}"))?;
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

fn send_text(events: &UnboundedSender<Event>, text: String) {
    if !text.is_empty() {
        let _ = events.send(Event::Text(text));
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
    Metrics::add(&metrics.completed, 1);
    Metrics::add(
        &metrics.prompt_micros,
        (prompt_done - run.admitted).as_micros() as u64,
    );
    Metrics::add(
        &metrics.generation_micros,
        (now - prompt_done).as_micros() as u64,
    );
    let _ = run.events.send(Event::Done { reason, usage });
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
