//! Counters and gauges for `GET /metrics` (Prometheus text format).
//!
//! Written by the engine thread and the HTTP handlers with relaxed atomics: each value is
//! independent and a scrape may see them a moment apart.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub chat_requests: AtomicU64,
    pub completion_requests: AtomicU64,
    pub responses_requests: AtomicU64,
    pub embedding_requests: AtomicU64,
    /// Requests answered with a 4xx for their content.
    pub invalid_requests: AtomicU64,
    /// Requests turned away because the queue was full.
    pub rejected_busy: AtomicU64,
    pub completed: AtomicU64,
    /// Generations stopped because the client went away.
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens whose KV cache was reused instead of computed.
    pub prompt_tokens_cached: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub prompt_micros: AtomicU64,
    pub generation_micros: AtomicU64,
    pub queue_depth: AtomicU64,
    pub active_sequences: AtomicU64,
    pub kv_cache_tokens: AtomicU64,
    pub kv_cache_capacity: AtomicU64,
    pub model_loaded: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP llamabox_inference_{name} {help}");
            let _ = writeln!(out, "# TYPE llamabox_inference_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "llamabox_inference_{name}{labels} {value}");
            }
        };
        metric(
            "requests_total",
            "counter",
            "Requests received, by endpoint.",
            &[
                ("{endpoint=\"chat\"}", get(&self.chat_requests)),
                ("{endpoint=\"completions\"}", get(&self.completion_requests)),
                ("{endpoint=\"responses\"}", get(&self.responses_requests)),
                ("{endpoint=\"embeddings\"}", get(&self.embedding_requests)),
            ],
        );
        metric(
            "requests_rejected_total",
            "counter",
            "Requests refused, by reason.",
            &[
                ("{reason=\"invalid\"}", get(&self.invalid_requests)),
                ("{reason=\"busy\"}", get(&self.rejected_busy)),
            ],
        );
        metric(
            "generations_completed_total",
            "counter",
            "Generations that ran to a stop condition.",
            &[("", get(&self.completed))],
        );
        metric(
            "generations_cancelled_total",
            "counter",
            "Generations stopped because the client disconnected.",
            &[("", get(&self.cancelled))],
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens, including those served from the KV cache.",
            &[("", get(&self.prompt_tokens))],
        );
        metric(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens reused from the KV cache of an earlier request.",
            &[("", get(&self.prompt_tokens_cached))],
        );
        metric(
            "generated_tokens_total",
            "counter",
            "Tokens generated.",
            &[("", get(&self.generated_tokens))],
        );
        metric(
            "prompt_seconds_total",
            "counter",
            "Time spent in prompt processing, summed over requests.",
            &[("", get(&self.prompt_micros) / 1e6)],
        );
        metric(
            "generation_seconds_total",
            "counter",
            "Time spent generating, summed over requests.",
            &[("", get(&self.generation_micros) / 1e6)],
        );
        metric(
            "queue_depth",
            "gauge",
            "Requests waiting for a free sequence.",
            &[("", get(&self.queue_depth))],
        );
        metric(
            "active_sequences",
            "gauge",
            "Sequences being decoded now.",
            &[("", get(&self.active_sequences))],
        );
        metric(
            "kv_cache_tokens",
            "gauge",
            "Tokens held in the KV cache (active and reusable prefixes).",
            &[("", get(&self.kv_cache_tokens))],
        );
        metric(
            "kv_cache_capacity_tokens",
            "gauge",
            "Tokens the KV cache can hold.",
            &[("", get(&self.kv_cache_capacity))],
        );
        metric(
            "model_loaded",
            "gauge",
            "1 once the model is loaded and requests are served.",
            &[("", get(&self.model_loaded))],
        );
        out
    }
}
