//! `cargo xtask bench voice`: our voice service's transcription against whisper.cpp's
//! own `whisper-cli` (built from the whisper.cpp our service links), on the same
//! espeak-ng audio, models, threads and decoding, run alternately in one run; then the
//! latency from the end of a spoken command to its transcript event, through the
//! service's streaming path. A benchmark, not a test: missed targets are printed, only
//! errors fail the command.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::baseline::CpuBaseline;
use super::report::median;
use super::{build_release, check_exists, cpu, whisper_cli};
use crate::project::Project;
use llamabox_speech::{self as speech, RATE};

/// The board whose recipes stage the models (they are architecture-independent files).
const BOARD: &str = "qemu-x86_64";

pub struct Model {
    pub label: &'static str,
    /// The recipe that installs it (and says where).
    recipe: &'static str,
}

/// The English-only tiny model and the image's default, base.
pub const MODELS: &[Model] = &[
    Model {
        label: "tiny.en",
        recipe: "whisper-tiny-en",
    },
    Model {
        label: "base",
        recipe: "whisper-base",
    },
];

/// The spoken command: about 5 s in espeak-ng's American voice.
const COMMAND: &str =
    "Set a timer for the pasta and remind me to water the plants in the garden before dinner tonight.";
const COMMAND_VOICE: &str = "en-us";
/// Silence around the command in the file both sides transcribe (about what the
/// end-pointer hands over: 0.3 s of pre-roll, a little trailing silence).
const COMMAND_PAD: f32 = 0.3;
/// The streamed file: silence before the command (time to subscribe to the events; the
/// service starts reading its source as soon as it has loaded the model), and after it.
const STREAM_LEAD: f32 = 2.0;
const STREAM_TAIL: f32 = 2.0;
/// Pause between the sentences of the long clip.
const SENTENCE_PAUSE: f32 = 0.9;
/// End of a spoken command → its transcript: the speed issue's target (was 1 s).
const LATENCY_TARGET_MS: f64 = 500.0;
/// A frame is speech when its RMS is above this (-40 dBFS): where espeak's voice ends.
const SPEECH_RMS: f32 = 0.01;

/// The service's audio-context rule for clips under 30 s (services/voice transcribe.rs):
/// 50 encoder positions per second plus a margin of 96, at most 1500.
fn audio_ctx(samples: usize) -> Option<u32> {
    let seconds = samples as f32 / RATE as f32;
    (seconds < 30.0).then(|| ((seconds * 50.0).ceil() as u32 + 96).min(1500))
}

pub struct VoiceOptions {
    /// A prebuilt `llamabox-voice` instead of `cargo build --release`.
    pub ours: Option<PathBuf>,
    pub repetitions: usize,
    /// Thread counts to compare at; the first is also the latency run's.
    pub threads: Vec<usize>,
    /// Model labels ([`MODELS`]); empty: all.
    pub models: Vec<String>,
    pub baseline: CpuBaseline,
}

/// One WAV both sides transcribe.
struct Clip {
    label: &'static str,
    path: PathBuf,
    samples: usize,
    reference: String,
}

impl Clip {
    fn seconds(&self) -> f64 {
        self.samples as f64 / RATE as f64
    }
}

pub fn voice(project: &Project, options: &VoiceOptions) -> Result<()> {
    require_tool("espeak-ng", "--version", "it speaks the test audio")?;
    require_tool("cmake", "--version", "it builds whisper-cli")?;
    let models: Vec<&Model> = MODELS
        .iter()
        .filter(|m| options.models.is_empty() || options.models.iter().any(|l| l == m.label))
        .collect();
    if models.is_empty() {
        bail!(
            "no such model; choose from {}",
            MODELS
                .iter()
                .map(|m| m.label)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let cli = whisper_cli::whisper_cli(project, &options.baseline)?;
    let ours = match &options.ours {
        Some(path) => {
            check_exists(path)?;
            path.clone()
        }
        None => build_release(project, "llamabox-voice", &options.baseline)?,
    };
    let mut model_paths = Vec::new();
    for model in &models {
        let tree = crate::build::stage_one(project, BOARD, model.recipe)?;
        let path =
            tree.join(crate::build::recipe_file(project, model.recipe)?.trim_start_matches('/'));
        check_exists(&path)?;
        model_paths.push(path);
    }

    let dir = project.build_dir().join("bench").join("voice");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "==> speaking the test audio (espeak-ng) into {}",
        dir.display()
    );
    let (clips, stream) = write_audio(&dir)?;

    let mut tables = Vec::new();
    let mut verdicts = Vec::new();
    for (model, path) in models.iter().zip(&model_paths) {
        let mut rows = Vec::new();
        for &threads in &options.threads {
            for clip in &clips {
                eprintln!(
                    "==> {}, {} ({:.1} s), {threads} threads, {} repetitions",
                    model.label,
                    clip.label,
                    clip.seconds(),
                    options.repetitions
                );
                let row = compare(&ours, &cli.binary, path, clip, threads, options.repetitions)?;
                verdicts.push(Verdict {
                    what: format!(
                        "{}, {}, {threads} threads: speed ours / whisper-cli",
                        model.label, clip.label
                    ),
                    want: "≥ 0.95".into(),
                    got: format!("{:.3}", row.speed_ratio()),
                    met: row.speed_ratio() >= 0.95,
                });
                rows.push(row);
            }
        }
        let threads = options.threads[0];
        eprintln!(
            "==> {}: latency of the streaming path, {threads} threads, {} commands",
            model.label, options.repetitions
        );
        let meter = cpu::Meter::start(&[]);
        let latency = latency(&ours, path, &stream, threads, options.repetitions, &dir)?;
        let latency_others = meter.others_share(&[]);
        let total = median(&latency.iter().map(|l| l.total_ms).collect::<Vec<_>>());
        verdicts.push(Verdict {
            what: format!(
                "{}: end of a {:.1} s command → transcript (median)",
                model.label, stream.speech_seconds
            ),
            want: format!("≤ {LATENCY_TARGET_MS:.0} ms"),
            got: format!("{total:.0} ms"),
            met: total <= LATENCY_TARGET_MS,
        });
        tables.push((model.label, rows, latency, latency_others));
    }

    println!(
        "\nboth sides built for the CPU baseline {}",
        options.baseline.name()
    );
    println!("whisper-cli: {}", cli.binary.display());
    for line in cli.provenance.lines() {
        println!("  {line}");
    }
    println!(
        "\nTranscription time, model load excluded; medians of {} repetitions [min–max]; RTF = time / audio length (lower is faster); speed ratio = whisper-cli's time / ours (≥ 1: ours is faster). whisper-cli's time is its `total − load` minus its state set-up (measured on an unreadable input), which our service does at load time.\n",
        options.repetitions
    );
    for (model, rows, latency, others) in &tables {
        println!("{model}:\n");
        println!("{}", render_rtf(rows));
        println!("{}", render_work(rows));
        println!("{}", render_latency(latency, &stream));
        println!(
            "latency runs{}\n",
            others_note(*others).replacen(';', ":", 1)
        );
    }
    println!("targets:");
    for v in &verdicts {
        println!(
            "  {:<62} {} (want {})  {}",
            v.what,
            v.got,
            v.want,
            if v.met { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

fn require_tool(tool: &str, arg: &str, why: &str) -> Result<()> {
    match Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "the voice benchmark needs {tool} ({why}) and cannot run it: {e}; install it with `apt-get install {tool}` (or `cargo xtask setup`)"
        ),
    }
}

/// The streamed file and where the speech in it ends.
struct Stream {
    path: PathBuf,
    speech_seconds: f64,
    /// Seconds from the file's start to the end of the speech.
    speech_end: f64,
}

/// The long clip, the command clip, and the stream file for the latency measurement.
fn write_audio(dir: &Path) -> Result<(Vec<Clip>, Stream)> {
    let long = speech::clip(speech::SENTENCES, SENTENCE_PAUSE)?;
    let command = trim(&speech::speak(COMMAND, COMMAND_VOICE)?);
    let silence = |s: f32| vec![0.0f32; (s * RATE as f32) as usize];

    let long_path = dir.join("sentences.wav");
    speech::write_wav(&long_path, &long)?;
    let padded: Vec<f32> = [silence(COMMAND_PAD), command.clone(), silence(COMMAND_PAD)].concat();
    let command_path = dir.join("command.wav");
    speech::write_wav(&command_path, &padded)?;
    let streamed: Vec<f32> = [silence(STREAM_LEAD), command.clone(), silence(STREAM_TAIL)].concat();
    let stream_path = dir.join("stream.wav");
    speech::write_wav(&stream_path, &streamed)?;

    let clips = vec![
        Clip {
            label: "15 sentences",
            path: long_path,
            samples: long.len(),
            reference: speech::SENTENCES.join(" "),
        },
        Clip {
            label: "command",
            path: command_path,
            samples: padded.len(),
            reference: COMMAND.into(),
        },
    ];
    let stream = Stream {
        path: stream_path,
        speech_seconds: command.len() as f64 / RATE as f64,
        speech_end: (silence(STREAM_LEAD).len() + command.len()) as f64 / RATE as f64,
    };
    Ok((clips, stream))
}

/// The speech without espeak's own leading and trailing silence: from the first to the
/// last 10 ms frame louder than [`SPEECH_RMS`].
fn trim(samples: &[f32]) -> Vec<f32> {
    const FRAME: usize = RATE as usize / 100;
    let loud =
        |f: &[f32]| (f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32).sqrt() > SPEECH_RMS;
    let frames: Vec<&[f32]> = samples.chunks(FRAME).collect();
    let first = frames.iter().position(|f| loud(f)).unwrap_or(0);
    let last = frames.iter().rposition(|f| loud(f)).map_or(0, |i| i + 1);
    samples[first * FRAME..(last * FRAME).min(samples.len())].to_vec()
}

/// One (model, clip, threads) comparison: every repetition of both sides.
struct Row {
    clip: &'static str,
    seconds: f64,
    threads: usize,
    audio_ctx: Option<u32>,
    ours_ms: Vec<f64>,
    cli_ms: Vec<f64>,
    /// whisper-cli's own phase counters (mel + sample + encode + decode + batchd +
    /// prompt), for comparison with its wall time.
    cli_phases_ms: Vec<f64>,
    cli_setup_ms: f64,
    ours_wer: f64,
    cli_wer: f64,
    ours_text: String,
    cli_text: String,
    others: Option<f64>,
}

impl Row {
    fn speed_ratio(&self) -> f64 {
        median(&self.cli_ms) / median(&self.ours_ms)
    }
}

fn compare(
    ours: &Path,
    cli: &Path,
    model: &Path,
    clip: &Clip,
    threads: usize,
    reps: usize,
) -> Result<Row> {
    let ctx = audio_ctx(clip.samples);
    let setup = cli_setup_ms(cli, model, threads, &clip.path)?;
    let mut row = Row {
        clip: clip.label,
        seconds: clip.seconds(),
        threads,
        audio_ctx: ctx,
        ours_ms: Vec::new(),
        cli_ms: Vec::new(),
        cli_phases_ms: Vec::new(),
        cli_setup_ms: setup,
        ours_wer: 0.0,
        cli_wer: 0.0,
        ours_text: String::new(),
        cli_text: String::new(),
        others: None,
    };
    let meter = cpu::Meter::start(&[]);
    for rep in 0..reps {
        let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            if side == 0 {
                let (text, ms) = run_ours(ours, model, threads, &clip.path)?;
                row.ours_wer = speech::word_error_rate(&clip.reference, &text);
                row.ours_text = text;
                row.ours_ms.push(ms);
            } else {
                let run = run_cli(cli, model, threads, &clip.path, ctx)?;
                row.cli_wer = speech::word_error_rate(&clip.reference, &run.text);
                row.cli_text = run.text;
                row.cli_ms.push(run.total_ms - run.load_ms - setup);
                row.cli_phases_ms.push(run.phases_ms);
            }
        }
        eprintln!(
            "    {}/{reps} ours {:7.1} ms   whisper-cli {:7.1} ms (phases {:7.1} ms)",
            rep + 1,
            row.ours_ms[rep],
            row.cli_ms[rep],
            row.cli_phases_ms[rep]
        );
    }
    row.others = meter.others_share(&[]);
    Ok(row)
}

/// `llamabox-voice transcribe`: the text, and `transcribe_ms` from its JSON on stderr.
fn run_ours(binary: &Path, model: &Path, threads: usize, wav: &Path) -> Result<(String, f64)> {
    let output = Command::new(binary)
        .arg("transcribe")
        .arg("--model")
        .arg(model)
        .args(["--threads", &threads.to_string(), "--language", "en"])
        .arg(wav)
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "llamabox-voice transcribe failed ({}): {stderr}",
            output.status
        );
    }
    let timings: serde_json::Value = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("llamabox-voice printed no timings: {stderr}"))?;
    let ms = timings["transcribe_ms"]
        .as_f64()
        .with_context(|| format!("no transcribe_ms in {timings}"))?;
    Ok((
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        ms,
    ))
}

struct CliRun {
    text: String,
    load_ms: f64,
    total_ms: f64,
    phases_ms: f64,
}

/// whisper-cli with our service's decoding: greedy with best of 5 for the temperature
/// fallback (`-bs 1 -bo 5`), English, non-speech tokens suppressed, flash attention, and
/// the same audio context. Timestamps are decoded as ours does (no `-nt`, which would
/// also switch timestamp tokens off in the decoder); printing them costs nothing.
fn cli_args(model: &Path, threads: usize, wav: &Path, ctx: Option<u32>) -> Vec<String> {
    let mut args = vec![
        "-m".to_string(),
        model.display().to_string(),
        "-f".into(),
        wav.display().to_string(),
        "-t".into(),
        threads.to_string(),
        "-l".into(),
        "en".into(),
        "-bs".into(),
        "1".into(),
        "-bo".into(),
        "5".into(),
        "-sns".into(),
        "-fa".into(),
    ];
    if let Some(ctx) = ctx {
        args.extend(["-ac".into(), ctx.to_string()]);
    }
    args
}

fn run_cli(
    binary: &Path,
    model: &Path,
    threads: usize,
    wav: &Path,
    ctx: Option<u32>,
) -> Result<CliRun> {
    let output = Command::new(binary)
        .args(cli_args(model, threads, wav, ctx))
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("whisper-cli failed ({}): {stderr}", output.status);
    }
    let timings = parse_timings(&stderr);
    let get = |name: &str| {
        timings
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .with_context(|| format!("whisper-cli printed no `{name}`: {stderr}"))
    };
    let phases = [
        "mel time",
        "sample time",
        "encode time",
        "decode time",
        "batchd time",
        "prompt time",
    ]
    .iter()
    .map(|p| get(p))
    .sum::<Result<f64>>()?;
    Ok(CliRun {
        text: strip_timestamps(&String::from_utf8_lossy(&output.stdout)),
        load_ms: get("load time")?,
        total_ms: get("total time")?,
        phases_ms: phases,
    })
}

/// whisper-cli's `total − load` when it has nothing to transcribe: an existing file it
/// cannot decode makes it skip the transcription after setting up its state (KV caches,
/// compute graphs), which our service does once at load time. Median of three runs.
fn cli_setup_ms(binary: &Path, model: &Path, threads: usize, wav: &Path) -> Result<f64> {
    let dir = wav.parent().context("a clip without a directory")?;
    let empty = dir.join("not-audio.wav");
    std::fs::write(&empty, b"")?;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let output = Command::new(binary)
            .args(cli_args(model, threads, &empty, None))
            .output()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let timings = parse_timings(&stderr);
        let get = |name: &str| timings.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        match (get("total time"), get("load time")) {
            (Some(total), Some(load)) => samples.push(total - load),
            _ => bail!("whisper-cli on an empty file printed no timings: {stderr}"),
        }
    }
    Ok(median(&samples))
}

/// `whisper_print_timings:     load time =   123.45 ms` → ("load time", 123.45).
fn parse_timings(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("whisper_print_timings:"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('=')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_string(), value))
        })
        .collect()
}

/// whisper-cli's segment lines without their `[00:00:00.000 --> 00:00:04.000]`.
fn strip_timestamps(stdout: &str) -> String {
    stdout
        .lines()
        .map(|l| match l.trim().strip_prefix('[') {
            Some(rest) if rest.contains("-->") => rest.split_once(']').map_or(l, |(_, t)| t),
            _ => l,
        })
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One spoken command through the streaming path.
struct Latency {
    /// End of the speech → the transcript event reached us.
    total_ms: f64,
    /// The service's own `latency_ms`: the end-pointer's hand-over → the event.
    transcription_ms: f64,
    /// The rest: the end-pointer waiting for its trailing silence.
    endpointing_ms: f64,
    /// How far our estimate of when the service started its source can be off: the
    /// speech-started event's anchor against the "serving HTTP" line's.
    anchor_spread_ms: f64,
    /// The utterance Whisper got (pre-roll, speech, kept trailing silence).
    utterance_ms: f64,
    text: String,
}

/// Starts `llamabox-voice serve` on the stream file `reps` times (a fresh process each
/// time, as the box's service would be), subscribes to its events and times the
/// transcript against the end of the speech.
///
/// When the service started reading its source is estimated from the speech-started
/// event: it carries `at_ms`, the stream position at which it was published, and a
/// real-time source delivers position p at (start + p); so start ≈ (arrival − at_ms).
fn latency(
    binary: &Path,
    model: &Path,
    stream: &Stream,
    threads: usize,
    reps: usize,
    logs: &Path,
) -> Result<Vec<Latency>> {
    let mut out = Vec::new();
    for rep in 0..reps {
        let log = logs.join(format!(
            "serve-{}-{rep}.log",
            model.file_stem().unwrap_or_default().to_string_lossy()
        ));
        let l = latency_once(binary, model, stream, threads, &log)
            .with_context(|| format!("latency run {}; log in {}", rep + 1, log.display()))?;
        eprintln!(
            "    {}/{reps} end of speech → transcript {:6.0} ms (end-pointing {:4.0} ms, transcription {:4.0} ms of a {:.0} ms utterance) {:?}",
            rep + 1,
            l.total_ms,
            l.endpointing_ms,
            l.transcription_ms,
            l.utterance_ms,
            l.text
        );
        out.push(l);
    }
    Ok(out)
}

/// A server process that is killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn latency_once(
    binary: &Path,
    model: &Path,
    stream: &Stream,
    threads: usize,
    log: &Path,
) -> Result<Latency> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(binary)
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--threads", &threads.to_string(), "--language", "en"])
        .arg("--source")
        .arg(format!("wav:{}", stream.path.display()))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--bus", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    // The service's log, each line with its arrival time; "serving HTTP" comes right
    // after the capture thread (which opens the source) is started.
    let stderr = child.stderr.take().expect("piped");
    let server = Serve(child);
    let (lines_tx, lines) = mpsc::channel::<(Instant, String)>();
    let log_file = log.to_path_buf();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            let _ = std::fs::write(&log_file, &text);
            let _ = lines_tx.send((Instant::now(), line));
        }
    });

    // Subscribe as soon as the HTTP port answers.
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("http://127.0.0.1:{port}/v1/voice/events");
    let deadline = Instant::now() + Duration::from_secs(60);
    let response = loop {
        if let Ok(r) = http.get(&url).send() {
            break r;
        }
        if Instant::now() > deadline {
            bail!("GET {url} did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let subscribed = Instant::now();
    let (events_tx, events) = mpsc::channel::<(Instant, serde_json::Value)>();
    std::thread::spawn(move || {
        for line in BufReader::new(response).lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str(data.trim()) {
                    if events_tx.send((Instant::now(), v)).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let timeout = Duration::from_secs_f64(stream.speech_end + STREAM_TAIL as f64 + 60.0);
    let (mut started, mut transcript) = (None, None);
    while transcript.is_none() {
        let (at, event) = events
            .recv_timeout(timeout)
            .context("no transcript event in time")?;
        match event["type"].as_str() {
            Some("speech-started") if started.is_none() => started = Some((at, event)),
            Some("transcript") => transcript = Some((at, event)),
            _ => {}
        }
    }
    drop(server);
    let (started_at, started) = started.context("a transcript without a speech-started event")?;
    let (transcript_at, transcript) = transcript.expect("loop ends with one");
    let at_ms = started["at_ms"]
        .as_f64()
        .context("speech-started without at_ms")?;
    let anchor = started_at
        .checked_sub(Duration::from_secs_f64(at_ms / 1000.0))
        .context("speech started before the benchmark")?;
    if anchor + Duration::from_secs_f64(STREAM_LEAD as f64) < subscribed {
        bail!("subscribed to the events after the speech had started");
    }
    let serving = lines
        .try_iter()
        .find(|(_, l)| l.starts_with("serving HTTP"))
        .map(|(at, _)| at);
    let anchor_spread_ms = serving.map_or(f64::NAN, |s| {
        (s.max(anchor) - s.min(anchor)).as_secs_f64() * 1000.0
    });
    let speech_end = anchor + Duration::from_secs_f64(stream.speech_end);
    let total_ms = transcript_at
        .checked_duration_since(speech_end)
        .context("a transcript before the speech ended")?
        .as_secs_f64()
        * 1000.0;
    let transcription_ms = transcript["latency_ms"]
        .as_f64()
        .context("transcript without latency_ms")?;
    Ok(Latency {
        total_ms,
        transcription_ms,
        endpointing_ms: total_ms - transcription_ms,
        anchor_spread_ms,
        utterance_ms: transcript["duration_ms"].as_f64().unwrap_or(f64::NAN),
        text: transcript["text"].as_str().unwrap_or_default().to_string(),
    })
}

struct Verdict {
    what: String,
    want: String,
    got: String,
    met: bool,
}

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} [{min:.0}–{max:.0}]", median(values))
}

fn render_rtf(rows: &[Row]) -> String {
    let mut out = String::from(
        "| clip | threads | audio ctx | ours (ms) | whisper-cli (ms) | RTF ours | RTF whisper-cli | speed ours / whisper-cli |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} ({:.1} s) | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |\n",
            r.clip,
            r.seconds,
            r.threads,
            r.audio_ctx.map_or("1500 (full)".into(), |c| c.to_string()),
            spread(&r.ours_ms),
            spread(&r.cli_ms),
            median(&r.ours_ms) / 1000.0 / r.seconds,
            median(&r.cli_ms) / 1000.0 / r.seconds,
            r.speed_ratio()
        ));
    }
    out
}

fn render_work(rows: &[Row]) -> String {
    let mut out = String::from("work (last repetition) and whisper-cli's own figures:\n");
    for r in rows {
        out.push_str(&format!(
            "  {}, {} threads: WER ours {:.3}, whisper-cli {:.3}; whisper-cli phase counters {:.0} ms, state set-up {:.0} ms{}\n",
            r.clip,
            r.threads,
            r.ours_wer,
            r.cli_wer,
            median(&r.cli_phases_ms),
            r.cli_setup_ms,
            match r.others {
                Some(s) if s > super::OTHERS_NOISE => format!(
                    "; WARNING: other processes took {:.0}% of the CPU: noisy",
                    s * 100.0
                ),
                Some(s) => format!("; others took {:.0}% of the CPU", s * 100.0),
                None => String::new(),
            }
        ));
        if r.ours_text != r.cli_text {
            out.push_str(&format!(
                "    texts differ:\n      ours:        {}\n      whisper-cli: {}\n",
                r.ours_text, r.cli_text
            ));
        }
    }
    out
}

fn others_note(others: Option<f64>) -> String {
    match others {
        Some(s) if s > super::OTHERS_NOISE => format!(
            "; WARNING: other processes took {:.0}% of the CPU: noisy",
            s * 100.0
        ),
        Some(s) => format!("; others took {:.0}% of the CPU", s * 100.0),
        None => String::new(),
    }
}

fn render_latency(latency: &[Latency], stream: &Stream) -> String {
    let col = |f: fn(&Latency) -> f64| latency.iter().map(f).collect::<Vec<_>>();
    let mut out = format!(
        "streaming path, a {:.1} s command (`serve --source wav:…`, real-time pace), medians of {} runs [min–max]:\n\n| what | ms |\n| --- | --- |\n",
        stream.speech_seconds,
        latency.len()
    );
    out.push_str(&format!(
        "| end of speech → transcript event | {} |\n| of which end-pointing (the silence that ends the turn) | {} |\n| of which transcription (the service's latency_ms) | {} |\n",
        spread(&col(|l| l.total_ms)),
        spread(&col(|l| l.endpointing_ms)),
        spread(&col(|l| l.transcription_ms)),
    ));
    out.push_str(&format!(
        "\nsource-start estimate (speech-started event) vs the \"serving HTTP\" log line: {:.1} ms apart (median)\ntranscripts: {:?}\n",
        median(&col(|l| l.anchor_spread_ms)),
        latency.iter().map(|l| l.text.as_str()).collect::<Vec<_>>()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_whisper_cli_timings() {
        let stderr = "whisper_print_timings:     load time =    61.27 ms\n\
            whisper_print_timings:     fallbacks =   0 p /   0 h\n\
            whisper_print_timings:   encode time =   912.50 ms /     2 runs (  456.25 ms per run)\n\
            whisper_print_timings:    total time =  2345.00 ms\n";
        let t = parse_timings(stderr);
        assert!(t.contains(&("load time".into(), 61.27)));
        assert!(t.contains(&("encode time".into(), 912.5)));
        assert!(t.contains(&("total time".into(), 2345.0)));
        assert!(t.contains(&("fallbacks".into(), 0.0)));
    }

    #[test]
    fn strips_segment_timestamps() {
        let out = "\n[00:00:00.000 --> 00:00:04.200]   Set a timer.\n[00:00:04.200 --> 00:00:06.000]   Thanks.\n";
        assert_eq!(strip_timestamps(out), "Set a timer. Thanks.");
    }

    #[test]
    fn audio_context_follows_the_service() {
        assert_eq!(audio_ctx(16_000 * 5), Some(346));
        assert_eq!(audio_ctx(16_000 * 29), Some(1500));
        assert_eq!(audio_ctx(16_000 * 60), None);
    }

    #[test]
    fn trims_silence() {
        let mut s = vec![0.0; 1600];
        s.extend(vec![0.5; 3200]);
        s.extend(vec![0.0; 1600]);
        assert_eq!(trim(&s).len(), 3200);
    }
}
