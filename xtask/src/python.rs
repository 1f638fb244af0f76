//! The Python environment of the host tests: a venv in `target/llamabox/python` with the
//! official `openai` client and its dependencies, installed by pip from the index the
//! host's pip is configured with, every file checked against a pinned SHA-256.
//!
//! `xtask/python/requirements.in` names the top-level packages (exact versions);
//! `cargo xtask lock` resolves them with pip and writes `xtask/python/requirements.txt`
//! (the whole closure, each pinned with the hashes of all its wheels). `cargo xtask test`
//! creates the venv once per requirements file and Python, and passes its interpreter to
//! the tests as `LLAMABOX_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::fetch::pypi;
use crate::project::Project;

/// The environment variable the tests read the venv's interpreter from.
pub const PYTHON_ENV: &str = "LLAMABOX_PYTHON";

/// The file in the venv that records what it was built from.
const STAMP: &str = "llamabox-requirements.sha256";

/// The venv's interpreter, creating the venv first if it is missing or out of date.
pub fn ensure_venv(project: &Project) -> Result<PathBuf> {
    let requirements = project.python_requirements();
    let text = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let dir = project.build_dir().join("python");
    let python = dir.join("bin").join("python");
    let mut stamp = Sha256::new();
    stamp.update(&text);
    stamp.update(host_python_identity()?);
    let stamp = hex::encode(stamp.finalize());
    if std::fs::read_to_string(dir.join(STAMP)).ok().as_deref() == Some(stamp.as_str())
        && python.exists()
    {
        return Ok(python);
    }
    let step = crate::build::Step::start(format!(
        "Python test environment ({})",
        requirements
            .strip_prefix(&project.root)
            .unwrap_or(&requirements)
            .display()
    ));
    // The stamp is written last: an interrupted install is redone from scratch.
    let _ = std::fs::remove_dir_all(&dir);
    create_venv(&dir)?;
    llamabox_image::tool::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(["--disable-pip-version-check", "--require-hashes"])
            .args(["--no-deps", "--only-binary=:all:", "-r"])
            .arg(&requirements),
    )
    .context("installing the Python test requirements (pinned in xtask/python/requirements.txt; `cargo xtask lock` regenerates it)")?;
    std::fs::write(dir.join(STAMP), &stamp)?;
    step.done();
    Ok(python)
}

/// The host's `python3` (path and version): a venv links to it, so a new Python makes
/// a new venv.
fn host_python_identity() -> Result<String> {
    llamabox_image::tool::run(
        Command::new("python3").args(["-c", "import sys; print(sys.executable, sys.version)"]),
    )
    .context("the host tests need python3")
}

fn create_venv(dir: &Path) -> Result<()> {
    llamabox_image::tool::run(Command::new("python3").arg("-m").arg("venv").arg(dir))
        .context("creating a Python venv (on Debian: apt-get install python3-venv)")?;
    Ok(())
}

#[derive(Deserialize)]
struct Report {
    install: Vec<ReportItem>,
}

#[derive(Deserialize)]
struct ReportItem {
    metadata: ReportMetadata,
}

#[derive(Deserialize)]
struct ReportMetadata {
    name: String,
    version: String,
}

/// `cargo xtask lock`: resolves `requirements.in` with pip (for this host's Python) and
/// pins every package of the closure with the hashes of all its wheels.
pub fn lock(project: &Project) -> Result<()> {
    let input = project.python_requirements().with_extension("in");
    let work = project.build_dir().join("tmp").join("python-lock");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    create_venv(&work.join("venv"))?;
    let report = work.join("report.json");
    llamabox_image::tool::run(
        Command::new(work.join("venv/bin/python"))
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args([
                "--disable-pip-version-check",
                "--dry-run",
                "--ignore-installed",
            ])
            .args(["--only-binary=:all:", "--report"])
            .arg(&report)
            .arg("-r")
            .arg(&input),
    )
    .with_context(|| format!("resolving {} with pip", input.display()))?;
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&report)?)
        .context("reading pip's installation report")?;
    if report.install.is_empty() {
        bail!("{}: pip resolved nothing", input.display());
    }
    let mut packages: Vec<(String, String)> = report
        .install
        .into_iter()
        .map(|i| (i.metadata.name.to_ascii_lowercase(), i.metadata.version))
        .collect();
    packages.sort();
    let index = pypi::index_url()?;
    let mut out = String::from(
        "# Generated by `cargo xtask lock` from requirements.in: the host tests' Python\n\
         # packages, pinned with the SHA-256 of every wheel of each version.\n",
    );
    for (name, version) in &packages {
        out += &format!("{name}=={version}");
        for hash in pypi::wheel_hashes(&index, name, version)? {
            out += &format!(" \\\n    --hash=sha256:{hash}");
        }
        out += "\n";
    }
    std::fs::write(project.python_requirements(), out)?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "wrote {} ({} packages)",
        project.python_requirements().display(),
        packages.len()
    );
    Ok(())
}
