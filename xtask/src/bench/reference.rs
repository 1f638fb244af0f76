//! The references: llama.cpp's own `llama-server` and `llama-bench` (the engine's
//! ceiling), built from the pinned source with the CPU baseline our Rust build uses (read
//! from `.cargo/config.toml`, so the two cannot drift), once per (source, flags): a second
//! run reuses the binaries. Everything else is llama.cpp's defaults, as its users build
//! it (OpenMP on).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::assets;
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
const TOOLS: &[&str] = &["llama-server", "llama-bench"];

/// The built reference tools.
pub struct Tools {
    pub server: PathBuf,
    pub bench: PathBuf,
}

/// The built `llama-server` and `llama-bench`, building them first if needed.
pub fn tools(project: &Project) -> Result<Tools> {
    let dist = assets::locked(project, assets::REFERENCE_SOURCE)?;
    let flags = cmake_flags(project)?;
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
    })
}

pub fn cmake_flags(project: &Project) -> Result<Vec<String>> {
    let mut flags: Vec<String> = FIXED_FLAGS.iter().map(|f| f.to_string()).collect();
    for (name, value) in ggml_baseline(&project.root.join(".cargo/config.toml"))? {
        flags.push(format!("-D{name}={value}"));
    }
    Ok(flags)
}

/// The `GGML_*` variables of `[env]` in cargo's configuration: what `llama-cpp-sys-2`
/// passes to llama.cpp's CMake when it builds our service.
pub(super) fn ggml_baseline(config: &Path) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let mut vars = Vec::new();
    if let Some(env) = table.get("env").and_then(|e| e.as_table()) {
        for (name, value) in env.iter().filter(|(n, _)| n.starts_with("GGML_")) {
            // `[env]` values are strings or `{ value = "…", … }` tables.
            let value = value
                .as_str()
                .or_else(|| value.get("value").and_then(|v| v.as_str()))
                .with_context(|| format!("{}: [env] {name} is not a string", config.display()))?;
            vars.push((name.clone(), value.to_string()));
        }
    }
    if vars.is_empty() {
        bail!(
            "{}: no GGML_* variables in [env], so the reference's CPU baseline is unknown",
            config.display()
        );
    }
    Ok(vars)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_comes_from_cargo_env() {
        let dir = std::env::temp_dir().join(format!("xtask-ggml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            "[alias]\nx = \"y\"\n[env]\nGGML_AVX2 = \"ON\"\nGGML_FMA = { value = \"OFF\" }\nOTHER = \"1\"\n",
        )
        .unwrap();
        let vars = ggml_baseline(&config).unwrap();
        assert_eq!(
            vars,
            [
                ("GGML_AVX2".to_string(), "ON".to_string()),
                ("GGML_FMA".to_string(), "OFF".to_string())
            ]
        );
        std::fs::write(&config, "[env]\nOTHER = \"1\"\n").unwrap();
        assert!(ggml_baseline(&config).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
