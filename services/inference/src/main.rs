//! `llamabox-inference`: the box's LLM behind an OpenAI-compatible HTTP API.
//!
//! Runs as a supervised service in the image and standalone on any Linux host:
//! `llamabox-inference --model SmolLM2-135M-Instruct.Q4_1.gguf --listen 127.0.0.1:8080`.

mod api;
mod engine;
mod metrics;
mod models;
mod template;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use engine::{Engine, EngineConfig};

#[derive(Parser)]
#[command(
    name = "llamabox-inference",
    version,
    about = "An OpenAI-compatible LLM server on llama.cpp",
    long_about = "An OpenAI-compatible LLM server on llama.cpp.\n\n\
        Serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health \
        and /metrics. Several requests decode together in one batch (--parallel); more wait \
        in a bounded queue (--queue), beyond which requests get 503 with Retry-After."
)]
struct Cli {
    /// The GGUF model file.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Name clients use for the model (default: the file name without `.gguf`).
    #[arg(long)]
    model_id: Option<String>,
    /// A Jinja chat template file that replaces the model's own (as llama-server's
    /// option of that name): for a model whose GGUF carries none.
    #[arg(long, value_name = "FILE")]
    chat_template_file: Option<PathBuf>,
    /// Compute threads (default: the CPUs this process may run on). More threads than
    /// dedicated cores make every thread wait for the slowest.
    #[arg(long, short = 't')]
    threads: Option<i32>,
    /// KV cache size in tokens, shared out equally among the --parallel sequences
    /// (as llama-server's -c with -np).
    #[arg(long, short = 'c', default_value_t = 4096)]
    ctx_size: u32,
    /// Requests decoded together (continuous batching).
    #[arg(long, short = 'n', default_value_t = 4)]
    parallel: u32,
    /// Requests that may wait for a free sequence.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Most tokens decoded in one step (prompt chunks and generated tokens together).
    #[arg(long, short = 'b', default_value_t = 2048)]
    batch_size: u32,
    /// The model store the update service pulls models into (read only here): its LLMs
    /// can be named in requests beside --model (docs/models.md).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Replaces a value of the model's GGUF metadata, as llama-server's option of that
    /// name: KEY=TYPE:VALUE, TYPE one of int, float, bool, str (repeatable).
    #[arg(long, value_name = "KEY=TYPE:VALUE", value_parser = engine::KvOverride::parse)]
    override_kv: Vec<engine::KvOverride>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LLAMABOX_LOG")
                // llama.cpp explains every tensor at info level; keep its warnings.
                .unwrap_or_else(|_| "info,llama-cpp-2=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("llamabox-inference: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if !cli.model.is_file() {
        anyhow::bail!("the model file {} does not exist", cli.model.display());
    }
    if cli.parallel == 0 || cli.ctx_size / cli.parallel.max(1) < 16 {
        anyhow::bail!(
            "--ctx-size {} shared by --parallel {} leaves too little context per request",
            cli.ctx_size,
            cli.parallel
        );
    }
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    let model_id = cli.model_id.clone().unwrap_or_else(|| {
        cli.model
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .trim_end_matches(".gguf")
            .to_string()
    });
    let chat_template = match &cli.chat_template_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the chat template {}", path.display()))?,
        ),
        None => None,
    };
    let config = EngineConfig {
        model_path: cli.model.clone(),
        model_id,
        chat_template,
        threads,
        ctx_size: cli.ctx_size,
        parallel: cli.parallel,
        batch_size: cli.batch_size.max(cli.parallel),
        queue_limit: cli.queue,
        exit_on_load_failure: true,
        sampling_defaults: Default::default(),
        kv_overrides: cli.override_kv.clone(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Listen first, so /health answers "loading" while the model loads.
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cli.listen))?;
        tracing::info!(address = %cli.listen, "listening");
        let metrics = Arc::new(metrics::Metrics::default());
        let engine = Arc::new(Engine::start(config.clone(), metrics.clone(), || {
            // Readiness for the supervisor: only now can requests be answered.
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }));
        let models = Arc::new(models::Models::new(config, cli.models_dir, engine, metrics));
        // The owner's choice of model (docs/models.md), once the factory model answers.
        tokio::spawn({
            let models = models.clone();
            async move { models.load_default().await }
        });
        axum::serve(listener, api::router(models))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the HTTP server failed")
    })?;
    // Open streams would hold a graceful shutdown forever; the engine thread is not joined.
    std::process::exit(0)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot watch SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("cannot watch SIGINT");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
}
