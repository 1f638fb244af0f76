//! The references: llama.cpp's own `llama-server`, `llama-bench` (the engine's
//! ceiling) and `llama-batched-bench` (its ceiling with several sequences), built from the pinned source with the CPU baseline our side is built with
//! ([`CpuBaseline`]), once per (source, flags): a second run reuses the binaries. Everything else is llama.cpp's defaults, as its users build
//! it (OpenMP on).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::assets;
use super::baseline::CpuBaseline;
use crate::cache::{self, KeyHasher};
use crate::fetch::pypi::{self, LockedDist};
use crate::project::Project;

/// Flags besides the CPU baseline. Release and static like `llama-cpp-sys-2` builds it;
/// no web UI (the prebuilt one would be downloaded), no HTTPS; OpenMP stays on (default).
const FIXED_FLAGS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DGGML_NATIVE=OFF",
];

/// The tools the reference build makes.
const TOOLS: &[&str] = &["llama-server", "llama-bench", "llama-batched-bench"];

/// The built reference tools.
pub struct Tools {
    pub server: PathBuf,
    pub bench: PathBuf,
    pub batched_bench: PathBuf,
}

/// The built reference tools, building them first if needed.
pub fn tools(project: &Project, baseline: &CpuBaseline) -> Result<Tools> {
    let dist = assets::locked(project, assets::REFERENCE_SOURCE)?;
    let flags = cmake_flags(baseline);
    let mut key = KeyHasher::default();
    key.add_str("sdist", &dist.sha256);
    for flag in &flags {
        key.add_str("flag", flag);
    }
    for tool in TOOLS {
        key.add_str("tool", tool);
    }
    let dir = project
        .build_dir()
        .join("bench")
        .join(format!("llama-server-{}", key.finish()));
    let dir = cache::get_or_build_at(dir, |out| build(project, &dist, &flags, out))?;
    Ok(Tools {
        server: dir.join("llama-server"),
        bench: dir.join("llama-bench"),
        batched_bench: dir.join("llama-batched-bench"),
    })
}

/// llama.cpp's CMake flags: the fixed ones and the CPU baseline.
pub fn cmake_flags(baseline: &CpuBaseline) -> Vec<String> {
    let mut flags: Vec<String> = FIXED_FLAGS.iter().map(|f| f.to_string()).collect();
    flags.extend(baseline.cmake_flags());
    flags
}

fn build(project: &Project, dist: &LockedDist, flags: &[String], out: &Path) -> Result<()> {
    let sdist = pypi::fetch(dist, &project.downloads_dir())?;
    let work = out.join("work");
    let (src, build) = (work.join("src"), work.join("build"));
    pypi::unpack(&sdist, &src).with_context(|| format!("unpacking {}", sdist.display()))?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    eprintln!(
        "==> building {} from {} ({jobs} jobs; several minutes, done once)",
        TOOLS.join(" and "),
        dist.filename
    );
    llamabox_image::tool::run(
        Command::new("cmake")
            .arg("-S")
            .arg(src.join("llama.cpp"))
            .arg("-B")
            .arg(&build)
            .args(flags),
    )
    .context("configuring llama.cpp")?;
    llamabox_image::tool::run(
        Command::new("cmake")
            .arg("--build")
            .arg(&build)
            .arg("--target")
            .args(TOOLS)
            .arg("--parallel")
            .arg(jobs.to_string()),
    )
    .context("building llama.cpp's tools")?;
    for tool in TOOLS {
        std::fs::copy(build.join("bin").join(tool), out.join(tool))
            .with_context(|| format!("llama.cpp's build left no bin/{tool}"))?;
    }
    // The artefact says what it was built from.
    std::fs::write(
        out.join("build.txt"),
        format!(
            "source: {} sha256:{}\ncmake: {}\n",
            dist.filename,
            dist.sha256,
            flags.join(" ")
        ),
    )?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
