//! `cargo xtask fuzz`: runs every fuzz target in `fuzz/` for a bounded time with
//! cargo-fuzz (installed on first use). cargo-fuzz needs nightly flags; on a stable
//! toolchain `RUSTC_BOOTSTRAP=1` lets rustc accept them.
//!
//! The targets are one crate, built once; they then run side by side, one per core,
//! each with its log in `target/fuzz/logs/`. What a run finds new goes to
//! `target/fuzz/corpus/<target>/`; the seeds in `fuzz/corpus/<target>/` stay as they
//! are checked in.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{bail, Context, Result};

use crate::project::Project;

/// The targets in `fuzz/fuzz_targets/`, each a parser of untrusted bytes.
const TARGETS: &[&str] = &[
    "service_file",
    "update_metadata",
    "bundle_index",
    "model_catalog",
    "pairing_message",
    "wav",
    "transcription_upload",
    "inference_request",
    "pairing_request",
];

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn cargo_fuzz(project: &Project) -> Command {
    let mut command = Command::new("cargo");
    command
        .current_dir(&project.root)
        .env("RUSTC_BOOTSTRAP", "1")
        .arg("fuzz");
    command
}

pub fn run(project: &Project, seconds: u64) -> Result<()> {
    if !have_cargo_fuzz() {
        eprintln!("==> cargo install cargo-fuzz --locked");
        let status = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()?;
        if !status.success() {
            bail!("installing cargo-fuzz failed");
        }
    }
    let work = project.root.join("target/fuzz");
    let target_dir = work.join("build");
    // Built apart from the runs, so a failed build (a full disk, a missing toolchain
    // part) is never reported as a crash found by the fuzzer.
    eprintln!("==> building the fuzz targets");
    let status = cargo_fuzz(project)
        .arg("build")
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .context("cannot run cargo fuzz")?;
    if !status.success() {
        bail!("building the fuzz targets failed (see the compiler output above)");
    }

    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "==> fuzzing {} targets for {seconds} s each, {parallel} at a time",
        TARGETS.len()
    );
    let mut waiting: VecDeque<&str> = TARGETS.iter().copied().collect();
    let mut running: Vec<Running> = Vec::new();
    let mut failed = Vec::new();
    while !waiting.is_empty() || !running.is_empty() {
        while running.len() < parallel {
            let Some(target) = waiting.pop_front() else {
                break;
            };
            running.push(Running::start(
                project,
                &work,
                &target_dir,
                target,
                seconds,
            )?);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut still = Vec::new();
        for mut run in running.drain(..) {
            match run.child.try_wait()? {
                None => still.push(run),
                Some(status) => {
                    let summary = run.summary();
                    if status.success() {
                        eprintln!("    {}: {summary}", run.target);
                    } else {
                        eprintln!(
                            "    {}: FAILED ({status}); the crashing input is in fuzz/artifacts/{}/; its log:",
                            run.target, run.target
                        );
                        eprintln!("{}", tail(&run.log, 40));
                        failed.push(run.target);
                    }
                }
            }
        }
        running = still;
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// A fuzz target running in the background, its output in a log file.
struct Running {
    target: &'static str,
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(
        project: &Project,
        work: &Path,
        target_dir: &Path,
        target: &'static str,
        seconds: u64,
    ) -> Result<Running> {
        // libFuzzer adds what it finds to its first corpus directory: a scratch one, so
        // the checked-in seeds (the second) are only read.
        let found = work.join("corpus").join(target);
        let logs = work.join("logs");
        fs::create_dir_all(&found)?;
        fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{target}.log"));
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = cargo_fuzz(project)
            .arg("run")
            .arg("--target-dir")
            .arg(target_dir)
            .arg(target)
            .arg(&found)
            .arg(project.root.join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot run cargo fuzz")?;
        Ok(Running { target, child, log })
    }

    /// libFuzzer's closing line ("Done 363000 runs in 21 second(s)"), or what it said last.
    fn summary(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let last = |pattern: &str| {
            text.lines()
                .rev()
                .find(|l| l.contains(pattern))
                .map(str::to_owned)
        };
        last("Done ")
            .or_else(|| last("#"))
            .unwrap_or_else(|| "no output".into())
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
