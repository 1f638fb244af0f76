//! `cargo xtask fuzz`: runs the fuzz targets for a bounded time with cargo-fuzz
//! (installed on first use). cargo-fuzz needs nightly flags; on a stable toolchain
//! `RUSTC_BOOTSTRAP=1` lets rustc accept them.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project::Project;

/// (crate directory holding `fuzz/`, target)
const TARGETS: &[(&str, &str)] = &[
    ("init/supervisor", "service_file"),
    ("image/format", "update_metadata"),
    ("image/format", "bundle_index"),
    ("services/gateway/pairing", "pairing_message"),
    ("services/voice", "wav"),
];

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn cargo_fuzz(project: &Project, dir: &str) -> Command {
    let mut command = Command::new("cargo");
    command
        .current_dir(project.root.join(dir))
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
    for (dir, target) in TARGETS {
        // Built apart from the run, so a failed build (a full disk, a missing
        // toolchain part) is never reported as a crash found by the fuzzer.
        eprintln!("==> building fuzz target {target}");
        let status = cargo_fuzz(project, dir)
            .args(["build", target])
            .status()
            .context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!("building fuzz target {target} failed (see the compiler output above)");
        }
        eprintln!("==> fuzzing {target} for {seconds} s");
        let corpus = format!("fuzz/corpus/{target}");
        let status = cargo_fuzz(project, dir)
            .args(["run", target, &corpus, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .status()
            .context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {target} failed: the crashing input is in {dir}/fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}
