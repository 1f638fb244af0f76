//! ggml's compute threads, started once for the life of the engine.
//!
//! A llama.cpp context without a threadpool of its own gets a disposable one from ggml
//! for every graph it computes: each token starts its worker threads and joins them
//! again. On an idle machine that costs little; with a busy neighbour, each newly started
//! thread must win its core back from the neighbour before the token can finish
//! (docs/perf.md, "A persistent threadpool"). A persistent pool keeps its workers: they
//! spin for a moment after each graph (ggml's `poll` level), so the next token finds them
//! awake and on their cores, and then sleep, so an idle service costs nothing.
//! `llama-bench` measures the engine with such a pool.

use std::ptr::NonNull;

use anyhow::{bail, Result};
use llama_cpp_sys_2 as sys;

pub(super) struct Threadpool(NonNull<sys::ggml_threadpool>);

impl Threadpool {
    /// Starts `threads` compute threads (the calling thread is one of them while a graph
    /// runs): ggml's defaults otherwise (poll level 50, no pinning, inherited priority,
    /// so they run at the service's nice value).
    pub fn new(threads: i32) -> Result<Self> {
        if threads < 1 {
            bail!("a threadpool needs at least one thread, not {threads}");
        }
        // SAFETY: plain constructors; ggml copies the parameters it is given.
        let pool = unsafe {
            let mut params = sys::ggml_threadpool_params_default(threads);
            sys::ggml_threadpool_new(&mut params)
        };
        match NonNull::new(pool) {
            Some(pool) => Ok(Self(pool)),
            None => bail!("ggml could not start {threads} compute threads"),
        }
    }

    pub fn as_ptr(&self) -> sys::ggml_threadpool_t {
        self.0.as_ptr()
    }
}

impl Drop for Threadpool {
    fn drop(&mut self) {
        // SAFETY: the pool came from ggml_threadpool_new and is freed once; contexts that
        // use it are dropped before it (see `attach`).
        unsafe { sys::ggml_threadpool_free(self.0.as_ptr()) }
    }
}
