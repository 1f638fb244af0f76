//! `cargo xtask fuzz`: runs the fuzz targets for a bounded time with cargo-fuzz
//! (installed on first use). cargo-fuzz needs nightly flags; on a stable toolchain
//! `RUSTC_BOOTSTRAP=1` lets rustc accept them.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project::Project;

/// (crate directory holding `fuzz/`, target)
const TARGETS: &[(&str, &str)] = &[("init/supervisor", "service_file")];

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
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
        eprintln!("==> fuzzing {target} for {seconds} s");
        let corpus = format!("fuzz/corpus/{target}");
        let status = Command::new("cargo")
            .current_dir(project.root.join(dir))
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target, &corpus, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .status()
            .context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {target} failed: the crashing input is in {dir}/fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}
