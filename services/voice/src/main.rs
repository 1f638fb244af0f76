//! `llamabox-voice`: the voice service (`serve`) and one-shot transcription of a file
//! (`transcribe`, for benchmarks and debugging).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use llamabox_voice::answer::Answerer;
use llamabox_voice::api::{self, Api};
use llamabox_voice::audio::{decode_wav, to_whisper_rate, SourceSpec};
use llamabox_voice::bus;
use llamabox_voice::events::{Event, Events};
use llamabox_voice::pipeline::Pipeline;
use llamabox_voice::transcribe::{Options, Transcriber};

#[derive(Parser)]
#[command(name = "llamabox-voice", version, about = "Llama Box's voice service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A ggml Whisper model (ggml-base.bin, ggml-tiny.en.bin).
    #[arg(long)]
    model: PathBuf,
    /// Compute threads (default: the CPUs available to the process).
    #[arg(long)]
    threads: Option<usize>,
    /// The spoken language as an ISO 639-1 code, or `auto` to detect it per utterance.
    /// English-only models always use `en`.
    #[arg(long, default_value = "en")]
    language: String,
}

#[derive(Subcommand)]
enum Command {
    /// Listen, transcribe and publish; serve the HTTP API and org.llamabox.Voice1.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        /// Where sound comes from: device:<ALSA PCM> (device:default, device:hw:1,0),
        /// wav:<file> (at real-time pace), wav-fast:<file>, or `none` (uploads only).
        #[arg(long, default_value = "device:default")]
        source: String,
        /// HTTP address.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// D-Bus address to serve org.llamabox.Voice1 on, or `none`.
        #[arg(long, default_value = bus::SYSTEM_BUS)]
        bus: String,
        /// Send each transcript to this inference service (its OpenAI API base URL)
        /// and stream the answer as events.
        #[arg(long)]
        answer_url: Option<String>,
    },
    /// Transcribe one WAV file and print the text, then timings as JSON on stderr.
    Transcribe {
        #[command(flatten)]
        model: ModelArgs,
        file: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            model,
            source,
            listen,
            bus,
            answer_url,
        } => serve(model, &source, listen, &bus, answer_url.as_deref()),
        Command::Transcribe { model, file } => transcribe(model, &file),
    };
    if let Err(e) = result {
        eprintln!("llamabox-voice: {e:#}");
        std::process::exit(1);
    }
}

fn load(args: &ModelArgs) -> Result<Transcriber> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Transcriber::load(&args.model, threads, &args.language)
}

fn transcribe(args: ModelArgs, file: &PathBuf) -> Result<()> {
    let started = std::time::Instant::now();
    let mut transcriber = load(&args)?;
    let loaded = started.elapsed();
    let bytes = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
    let (samples, rate) = decode_wav(&bytes[..]).with_context(|| format!("{}", file.display()))?;
    let audio = to_whisper_rate(&samples, rate)?;
    let transcript = transcriber.transcribe(&audio, &Options::default())?;
    println!("{}", transcript.text);
    eprintln!(
        "{}",
        serde_json::json!({
            "load_ms": loaded.as_millis() as u64,
            "audio_ms": transcript.audio_ms,
            "transcribe_ms": transcript.elapsed.as_millis() as u64,
        })
    );
    Ok(())
}

fn serve(
    args: ModelArgs,
    source: &str,
    listen: SocketAddr,
    bus_address: &str,
    answer_url: Option<&str>,
) -> Result<()> {
    let source_spec = match source {
        "none" => None,
        s => Some(s.parse::<SourceSpec>()?),
    };
    let transcriber = load(&args)?;
    let model = transcriber.model().to_string();
    eprintln!(
        "loaded Whisper {model} ({}); listening to {source}",
        if transcriber.multilingual() {
            "multilingual"
        } else {
            "English"
        }
    );
    let transcriber = Arc::new(Mutex::new(transcriber));
    let events = Events::default();
    let mut pipeline = Pipeline::new(transcriber.clone(), events.clone());
    if let Some(url) = answer_url {
        pipeline.answerer = Some(Answerer::new(url)?);
    }
    let api = Api {
        transcriber,
        model,
        events: events.clone(),
        stats: pipeline.stats.clone(),
        listening: pipeline.listening.clone(),
        source: source.to_string(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("cannot listen on {listen}"))?;
    if bus_address != "none" {
        bus::serve(bus_address, api.clone())?;
    }
    if let Some(spec) = source_spec {
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || listen_forever(&pipeline, &spec))
            .context("cannot start the capture thread")?;
    }
    eprintln!("serving HTTP on {listen}");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    runtime.block_on(async move {
        axum::serve(listener, api::router(api))
            .with_graceful_shutdown(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await
            .context("the HTTP server failed")
    })
}

/// Captures until a file ends; a failing device is reopened every few seconds (a USB
/// microphone may be plugged in later), with the error in the status and the events.
fn listen_forever(pipeline: &Pipeline, spec: &SourceSpec) {
    loop {
        let result = spec.open().and_then(|mut source| {
            pipeline.stats.lock().unwrap().capture_error = None;
            pipeline.run(source.as_mut())
        });
        match result {
            Ok(()) => {
                eprintln!("the audio source ended");
                return;
            }
            Err(e) => {
                let error = format!("{e:#}");
                eprintln!("capture: {error}; retrying in 5 s");
                pipeline.stats.lock().unwrap().capture_error = Some(error.clone());
                pipeline.events.publish(Event::CaptureError { error });
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    }
}
