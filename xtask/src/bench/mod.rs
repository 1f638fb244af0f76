//! `cargo xtask bench inference`: our inference service against llama.cpp's own
//! `llama-server`, same model, threads and context, measured alternately in one run
//! (ours, reference, ours, …) so both see the same machine state. A benchmark, not a
//! test: missed targets are printed, only errors fail the command.

mod assets;
mod client;
mod measure;
mod prompts;
mod reference;
mod report;
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project::Project;
use server::{Kind, Server, Settings, Side};

pub use assets::PYPI_DISTS;

/// KV cache per sequence, in tokens, on both sides and in both configurations: the
/// longest request (the follow-up turn) needs about 700.
const CTX_PER_SEQUENCE: u32 = 2048;
/// Streams decoded together for the aggregate measurement.
const STREAMS: u32 = 4;

/// Which binary plays "ours".
pub enum Ours {
    /// `cargo build --release -p llamabox-inference`.
    Build,
    /// A prebuilt `llamabox-inference`.
    Binary(PathBuf),
    /// llama-server on both sides: checks the harness (ratios should be about 1).
    Reference,
}

pub struct Options {
    pub ours: Ours,
    pub repetitions: usize,
    pub threads: usize,
}

pub fn inference(project: &Project, options: &Options) -> Result<()> {
    let model = assets::model(project)?;
    let reference = Side {
        label: "llama-server",
        kind: Kind::LlamaServer,
        binary: reference::llama_server(project)?,
    };
    let ours = match &options.ours {
        Ours::Build => Side {
            label: "ours",
            kind: Kind::Ours,
            binary: build_ours(project)?,
        },
        Ours::Binary(path) => {
            check_exists(path)?;
            Side {
                label: "ours",
                kind: Kind::Ours,
                binary: path.clone(),
            }
        }
        Ours::Reference => Side {
            label: "llama-server as ours",
            ..reference.clone()
        },
    };
    let logs = project.build_dir().join("bench").join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;

    eprintln!(
        "==> {} vs llama-server: {}, {} threads, {} repetitions; logs in {}",
        ours.label,
        assets::MODEL_LABEL,
        options.threads,
        options.repetitions,
        logs.display()
    );
    let single = Settings {
        model: &model,
        threads: options.threads,
        ctx_size: CTX_PER_SEQUENCE,
        parallel: 1,
    };
    let concurrent = Settings {
        ctx_size: CTX_PER_SEQUENCE * STREAMS,
        parallel: STREAMS,
        ..single
    };
    warn_if_busy();
    let mut samples = [report::Samples::default(), report::Samples::default()];
    for rep in 0..options.repetitions {
        for (side, samples) in [&ours, &reference].into_iter().zip(samples.iter_mut()) {
            let log = logs.join(format!("{rep}-{}-1.log", side_name(side)));
            let server = Server::start(side, &single, log)?;
            let result = client::Client::connect(&server.base_url)
                .and_then(|c| measure::single(&c, rep))
                .with_context(|| format!("{}, one stream; {}", side.label, server.log_tail()))?;
            server.stop()?;
            samples.add_single(&result)?;
            eprintln!(
                "    {}/{} {:<22} decode {:6.1} tok/s  prompt {:6.1} tok/s  TTFT cold {:6.1} ms  follow-up {:6.1} ms",
                rep + 1,
                options.repetitions,
                side.label,
                samples.decode[rep],
                samples.prompt[rep],
                samples.cold_ms[rep],
                samples.follow_up_ms[rep]
            );
        }
        for (side, samples) in [&ours, &reference].into_iter().zip(samples.iter_mut()) {
            let log = logs.join(format!("{rep}-{}-{STREAMS}.log", side_name(side)));
            let server = Server::start(side, &concurrent, log)?;
            let result = client::Client::connect(&server.base_url)
                .and_then(|c| measure::aggregate(&c, STREAMS as usize))
                .with_context(|| {
                    format!("{}, {STREAMS} streams; {}", side.label, server.log_tail())
                })?;
            server.stop()?;
            samples.add_aggregate(&result);
            eprintln!(
                "    {}/{} {:<22} {STREAMS} streams {:6.1} tok/s",
                rep + 1,
                options.repetitions,
                side.label,
                samples.aggregate[rep]
            );
        }
    }

    warn_if_busy();
    let [ours_samples, reference_samples] = &samples;
    println!(
        "\n{}, {} threads, {CTX_PER_SEQUENCE} tokens of context per sequence, medians of {} repetitions [min–max]:\n",
        assets::MODEL_LABEL,
        options.threads,
        options.repetitions
    );
    println!(
        "{}",
        report::render(ours.label, ours_samples, reference_samples)
    );
    println!(
        "{}",
        report::render_work(&ours_samples.work, &reference_samples.work)
    );
    println!("targets:");
    for v in report::verdicts(ours_samples, reference_samples) {
        println!(
            "  {:<52} {:.3} (want {})  {}",
            v.what,
            v.got,
            v.want,
            if v.met { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

/// Both sides are measured alternately, but other work on the machine still adds noise
/// (a compiler on one of two cores halves the figures): say so. Sampled over a second
/// with no server running.
fn warn_if_busy() {
    fn cpu_times() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait …: idle time is idle + iowait.
        let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
        Some((fields.iter().sum(), idle))
    }
    let Some((total0, idle0)) = cpu_times() else {
        return;
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    let Some((total1, idle1)) = cpu_times() else {
        return;
    };
    let busy = 1.0 - (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64;
    if busy > 0.1 {
        eprintln!(
            "    warning: the CPU is {:.0}% busy without the servers: other processes compete with them, figures will be noisy",
            busy * 100.0
        );
    }
}

/// For log file names.
fn side_name(side: &Side) -> String {
    side.label.replace(' ', "-")
}

/// `cargo build --release -p llamabox-inference`, with cargo's `[env]` CPU baseline.
fn build_ours(project: &Project) -> Result<PathBuf> {
    eprintln!("==> cargo build --release -p llamabox-inference");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&project.root)
        .args(["build", "--release", "--package", "llamabox-inference"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo build --release -p llamabox-inference` failed (see above)");
    }
    let binary = project.target_dir().join("release/llamabox-inference");
    check_exists(&binary)?;
    Ok(binary)
}

fn check_exists(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    Ok(())
}
