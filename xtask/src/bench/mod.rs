//! Benchmarks of our services against the reference implementations they build on
//! (`voice`: the voice service's).
//!
//! `cargo xtask bench inference`: our inference service against llama.cpp's own
//! `llama-server`, same model, threads and context, measured alternately in one run
//! (ours, reference, reference, ours, … request by request) so both see the same
//! machine state; then the same decode while a busy thread competes for the cores. The
//! engine's ceilings run between the servers' turns: `llama-bench` tg128 beside the
//! single-stream decode, `llama-batched-bench` beside the concurrent streams. Two model
//! sizes. A benchmark, not a test: missed
//! targets are printed, only errors fail the command.

mod assets;
mod baseline;
mod client;
mod cpu;
mod llama_bench;
mod load;
mod measure;
mod prompts;
mod reference;
mod report;
mod server;
mod voice;
mod whisper_cli;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::project::Project;
use baseline::CpuBaseline;
use server::{Kind, Server, Settings, Side};

pub use assets::PYPI_DISTS;
pub use voice::{voice, VoiceOptions};

/// KV cache per sequence, in tokens, on both sides and in both configurations: the
/// longest request (the prompt-processing one) needs about 870.
const CTX_PER_SEQUENCE: u32 = 2048;
/// Streams decoded together for the aggregate measurement.
const STREAMS: u32 = 4;
/// The share of the CPU other processes may take before the report calls its
/// figures noisy (kernel threads and the like take about 1%).
const OTHERS_NOISE: f64 = 0.05;

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
    pub baseline: CpuBaseline,
}

pub fn inference(project: &Project, options: &Options) -> Result<()> {
    let tools = reference::tools(project, &options.baseline)?;
    let reference = Side {
        label: "llama-server",
        kind: Kind::LlamaServer,
        binary: tools.server.clone(),
        nice: 0,
    };
    let nice = shipped_nice(project)?;
    let ours = match &options.ours {
        Ours::Build => Side {
            label: "ours",
            kind: Kind::Ours,
            binary: build_release(project, "llamabox-inference", &options.baseline)?,
            nice,
        },
        Ours::Binary(path) => {
            check_exists(path)?;
            Side {
                label: "ours",
                kind: Kind::Ours,
                binary: path.clone(),
                nice,
            }
        }
        Ours::Reference => Side {
            label: "llama-server as ours",
            ..reference.clone()
        },
    };
    let logs = project.build_dir().join("bench").join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let sides = [&ours, &reference];
    let mut reports = Vec::new();
    for (index, model) in assets::MODELS.iter().enumerate() {
        let file = model.file(project)?;
        let template = model.chat_template(project);
        let logs = logs.join(model.recipe);
        std::fs::create_dir_all(&logs)?;
        eprintln!(
            "==> {} vs llama-server: {}, {} threads, {} repetitions; logs in {}",
            ours.label,
            model.label,
            options.threads,
            options.repetitions,
            logs.display()
        );
        let single = Settings {
            model: &file,
            threads: options.threads,
            ctx_size: CTX_PER_SEQUENCE,
            parallel: 1,
            chat_template: template.as_deref(),
        };
        let mut samples = [report::Samples::default(), report::Samples::default()];
        // llama-batched-bench at STREAMS sequences, one run per repetition.
        let mut engine_streams = Vec::new();
        let engine_log = logs.join("llama-bench.log");
        let _ = std::fs::remove_file(&engine_log);
        let mut engine_decode = Vec::new();
        let mut noise = vec![(
            "one stream",
            one_stream(
                sides,
                &single,
                &logs,
                options.repetitions,
                &mut samples,
                &mut || llama_bench::decode_once(&tools.bench, &file, options.threads, &engine_log),
                &mut engine_decode,
            )?,
        )];
        // Concurrent streams on the image's own model only: the figure the product
        // needs, without doubling the benchmark's length.
        if index == 0 {
            let concurrent = Settings {
                ctx_size: CTX_PER_SEQUENCE * STREAMS,
                parallel: STREAMS,
                ..single
            };
            noise.push((
                "4 streams",
                streams(
                    sides,
                    &concurrent,
                    &logs,
                    options.repetitions,
                    &mut samples,
                    &mut |log| {
                        llama_bench::batched(
                            &tools.batched_bench,
                            &file,
                            options.threads,
                            STREAMS,
                            concurrent.ctx_size,
                            log,
                        )
                    },
                    &mut engine_streams,
                )?,
            ));
        }
        eprintln!("==> the same decode with {CONTENDING_THREADS} busy thread(s) competing");
        contended(sides, &single, &logs, options.repetitions, &mut samples)?;
        eprintln!(
            "==> llama-bench pp{} (the engine's prompt ceiling), {} threads",
            llama_bench::PROMPT,
            options.threads
        );
        let ceiling = llama_bench::Ceiling {
            prompt: llama_bench::prompt(&tools.bench, &file, options.threads, &engine_log)?,
            decode: engine_decode,
        };
        eprintln!(
            "    llama-bench tg{} {:.1} tok/s (median of {}), pp{} {:.1} tok/s",
            llama_bench::GENERATE,
            report::median(&ceiling.decode),
            ceiling.decode.len(),
            llama_bench::PROMPT,
            ceiling.prompt
        );
        reports.push((model, samples, ceiling, engine_streams, noise));
    }

    for (model, [ours_samples, reference_samples], ceiling, engine_streams, noise) in &reports {
        println!(
            "\n{}, {} threads, {CTX_PER_SEQUENCE} tokens of context per sequence, {} at nice {} and llama-server at nice 0, both built for {}, medians of {} repetitions [min–max]:\n",
            model.label, options.threads, ours.label, ours.nice, options.baseline.name(), options.repetitions
        );
        println!(
            "{}",
            report::render(ours.label, ours_samples, reference_samples)
        );
        println!(
            "{}",
            report::render_engine(ours.label, ours_samples, reference_samples, ceiling)
        );
        println!(
            "{}",
            report::render_work(&ours_samples.work, &reference_samples.work)
        );
        if !engine_streams.is_empty() {
            let engine = report::median(engine_streams);
            println!(
                "the engine at {STREAMS} sequences (llama-batched-bench, tg{}): {engine:.1} tok/s [{:.1}–{:.1}]; ours ÷ it {:.3}, llama-server ÷ it {:.3}\n",
                llama_bench::GENERATE,
                engine_streams.iter().copied().fold(f64::INFINITY, f64::min),
                engine_streams.iter().copied().fold(0.0, f64::max),
                report::median(&ours_samples.aggregate) / engine,
                report::median(&reference_samples.aggregate) / engine,
            );
        }
        println!("targets:");
        for v in report::verdicts(ours_samples, reference_samples, ceiling) {
            println!(
                "  {:<52} {:.3} (want {})  {}",
                v.what,
                v.got,
                v.want,
                if v.met { "met" } else { "MISSED" }
            );
        }
        for (phase, share) in noise {
            match share {
                Some(share) if *share > OTHERS_NOISE => println!(
                    "warning: other processes took {:.0}% of the CPU during the {phase} measurements: the figures are noisy, run again on an idle machine",
                    share * 100.0
                ),
                Some(share) => println!(
                    "other processes took {:.0}% of the CPU during the {phase} measurements",
                    share * 100.0
                ),
                None => {}
            }
        }
    }
    Ok(())
}

/// The inference service file the image ships.
const SERVICE_FILE: &str = "overlays/inference/usr/lib/llamabox/services/inference.toml";

/// The priority the image runs the inference service at (its service file's `nice`):
/// ours runs with it, as shipped. Raising a priority needs root.
fn shipped_nice(project: &Project) -> Result<i32> {
    let path = project.root.join(SERVICE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let service: toml::Table = toml::from_str(&text).with_context(|| path.display().to_string())?;
    // The supervisor's format (docs/services.md): an integer, 0 when absent.
    let nice = match service.get("nice") {
        None => 0,
        Some(value) => value
            .as_integer()
            .and_then(|n| i32::try_from(n).ok())
            .with_context(|| format!("{}: `nice` is not an integer", path.display()))?,
    };
    // SAFETY: geteuid has no preconditions.
    if nice < 0 && unsafe { libc::geteuid() } != 0 {
        bail!(
            "the image runs the inference service at nice {nice} ({SERVICE_FILE}); raising a priority needs root: run the benchmark as root"
        );
    }
    Ok(nice)
}

/// Busy threads in the contended phase: one, a neighbour taking a core of two.
const CONTENDING_THREADS: usize = 1;

/// Single-stream decode while [`load::BusyLoad`] keeps a core busy: how much of its
/// idle speed each server keeps when it shares the machine.
fn contended(
    sides: [&Side; 2],
    settings: &Settings,
    logs: &Path,
    reps: usize,
    samples: &mut [report::Samples; 2],
) -> Result<()> {
    // Its own log directory: the idle phase's logs (same settings, same names) stay.
    let logs = logs.join("contended");
    std::fs::create_dir_all(&logs)?;
    let servers = start_both(sides, settings, &logs)?;
    let load = load::BusyLoad::start(CONTENDING_THREADS);
    for rep in 0..reps {
        for i in abba(rep) {
            let reply = servers[i].measure("contended decode", measure::decode)?;
            samples[i].contended.push(reply.decode_rate()?);
        }
        for (side, s) in sides.iter().zip(samples.iter()) {
            eprintln!(
                "    {}/{reps} {:<22} contended decode {:6.1} tok/s",
                rep + 1,
                side.label,
                s.contended[rep]
            );
        }
    }
    drop(load);
    stop_all(servers)
}

/// Decode, prompt processing and a two-turn conversation, one request at a time.
/// Returns the share of the CPU other processes took meanwhile.
fn one_stream(
    sides: [&Side; 2],
    settings: &Settings,
    logs: &Path,
    reps: usize,
    samples: &mut [report::Samples; 2],
    engine: &mut dyn FnMut() -> Result<f64>,
    engine_rates: &mut Vec<f64>,
) -> Result<Option<f64>> {
    let servers = start_both(sides, settings, logs)?;
    let meter = cpu::Meter::start(&pids(&servers));
    for rep in 0..reps {
        let order = abba(rep);
        for i in order {
            samples[i].add_decode(&servers[i].measure("decode", measure::decode)?)?;
        }
        // The engine's own decode between the two servers' (the meter counts it as the
        // benchmark's: a child process it waited for).
        engine_rates.push(engine()?);
        for i in order {
            let reply = servers[i].measure("prompt", |c| measure::prompt(c, rep))?;
            samples[i].add_prompt(&reply);
        }
        for i in order {
            let (cold, follow_up) =
                servers[i].measure("conversation", |c| measure::conversation(c, rep))?;
            samples[i].add_conversation(&cold, &follow_up);
        }
        for (side, s) in sides.iter().zip(samples.iter()) {
            eprintln!(
                "    {}/{reps} {:<22} decode {:6.1} tok/s  prompt {:6.1} tok/s  TTFT cold {:6.1} ms  follow-up {:6.1} ms",
                rep + 1,
                side.label,
                s.decode[rep],
                s.prompt[rep],
                s.cold_ms[rep],
                s.follow_up_ms[rep]
            );
        }
        eprintln!(
            "    {}/{reps} {:<22} decode {:6.1} tok/s",
            rep + 1,
            "llama-bench tg128",
            engine_rates[rep]
        );
    }
    let others = meter.others_share(&pids(&servers));
    stop_all(servers)?;
    Ok(others)
}

/// `STREAMS` concurrent decodes on each server, then the engine's own decode of
/// `STREAMS` sequences (`engine`, into `engine_rates`) while both servers idle.
/// Returns the share of the CPU other processes took.
fn streams(
    sides: [&Side; 2],
    settings: &Settings,
    logs: &Path,
    reps: usize,
    samples: &mut [report::Samples; 2],
    engine: &mut dyn FnMut(&Path) -> Result<f64>,
    engine_rates: &mut Vec<f64>,
) -> Result<Option<f64>> {
    let servers = start_both(sides, settings, logs)?;
    let meter = cpu::Meter::start(&pids(&servers));
    let engine_log = logs.join("llama-batched-bench.log");
    let _ = std::fs::remove_file(&engine_log);
    for rep in 0..reps {
        for i in abba(rep) {
            let result = servers[i].measure("concurrent streams", |c| {
                measure::aggregate(c, STREAMS as usize)
            })?;
            samples[i].add_aggregate(&result);
        }
        // The engine's own decode of as many sequences, between the servers' turns.
        engine_rates.push(engine(&engine_log)?);
        for (side, s) in sides.iter().zip(samples.iter()) {
            eprintln!(
                "    {}/{reps} {:<22} {STREAMS} streams {:6.1} tok/s",
                rep + 1,
                side.label,
                s.aggregate[rep]
            );
        }
        eprintln!(
            "    {}/{reps} {:<22} {STREAMS} sequences {:6.1} tok/s",
            rep + 1,
            "llama-batched-bench",
            engine_rates[rep]
        );
    }
    let others = meter.others_share(&pids(&servers));
    stop_all(servers)?;
    Ok(others)
}

/// Even repetitions measure ours first, odd ones the reference first (ABBA), so an
/// advantage of going first, or a drift of the machine, falls on both sides alike.
fn abba(rep: usize) -> [usize; 2] {
    if rep.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// A server under test and a client connected to it.
struct Running<'a> {
    side: &'a Side,
    server: Server,
    client: client::Client,
}

impl Running<'_> {
    fn measure<T>(&self, what: &str, f: impl FnOnce(&client::Client) -> Result<T>) -> Result<T> {
        f(&self.client)
            .with_context(|| format!("{}: {what}; {}", self.side.label, self.server.log_tail()))
    }
}

/// Both servers run for a whole phase and are measured in turn, request by request:
/// their samples are seconds apart, so a change in the machine's speed (other work, a
/// neighbour on the host) hits both. An idle server should cost nothing but memory;
/// one whose threads spin while idle slows the other, which this arrangement shows.
fn start_both<'a>(
    sides: [&'a Side; 2],
    settings: &Settings,
    logs: &Path,
) -> Result<[Running<'a>; 2]> {
    let start = |side: &'a Side| -> Result<Running<'a>> {
        let log = logs.join(format!(
            "{}-np{}.log",
            side.label.replace(' ', "-"),
            settings.parallel
        ));
        let server = Server::start(side, settings, log)?;
        let running = Running {
            side,
            client: client::Client::connect(&server.base_url)
                .with_context(|| format!("{}: {}", side.label, server.log_tail()))?,
            server,
        };
        running.measure("warm-up", measure::warm_up)?;
        Ok(running)
    };
    Ok([start(sides[0])?, start(sides[1])?])
}

fn pids(servers: &[Running; 2]) -> [u32; 2] {
    [servers[0].server.pid(), servers[1].server.pid()]
}

fn stop_all(servers: [Running; 2]) -> Result<()> {
    for running in servers {
        running.server.stop()?;
    }
    Ok(())
}

/// `cargo build --release -p <package>` (its binary has the package's name) for the
/// CPU baseline, in that baseline's target directory.
fn build_release(project: &Project, package: &str, baseline: &CpuBaseline) -> Result<PathBuf> {
    eprintln!(
        "==> cargo build --release -p {package} (CPU baseline {})",
        baseline.name()
    );
    let target_dir = baseline.target_dir(project);
    let status = project
        .cargo()
        .args(["build", "--release", "--package", package])
        .env("CARGO_TARGET_DIR", &target_dir)
        .envs(baseline.env())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo build --release -p {package}` failed (see above)");
    }
    let binary = target_dir.join("release").join(package);
    check_exists(&binary)?;
    Ok(binary)
}

fn check_exists(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    Ok(())
}

/// `cargo xtask bench inference`, from its flags.
pub fn inference_command(
    project: &Project,
    repetitions: usize,
    threads: Option<usize>,
    ours: Option<PathBuf>,
    reference_twice: bool,
    cpu_baseline: Option<String>,
) -> Result<()> {
    if repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let ours = match (ours, reference_twice) {
        (_, true) => Ours::Reference,
        (Some(path), false) => Ours::Binary(path),
        (None, false) => Ours::Build,
    };
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    inference(
        project,
        &Options {
            ours,
            repetitions,
            threads,
            baseline: CpuBaseline::for_host(cpu_baseline.as_deref())?,
        },
    )
}

/// `cargo xtask bench voice`, from its flags.
pub fn voice_command(
    project: &Project,
    repetitions: usize,
    threads: Vec<usize>,
    models: Vec<String>,
    ours: Option<PathBuf>,
    cpu_baseline: Option<String>,
) -> Result<()> {
    if repetitions == 0 || threads.contains(&0) {
        bail!("--repetitions and --threads must be at least 1");
    }
    voice(
        project,
        &VoiceOptions {
            ours,
            repetitions,
            threads,
            models,
            baseline: CpuBaseline::for_host(cpu_baseline.as_deref())?,
        },
    )
}
