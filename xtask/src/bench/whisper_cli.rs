//! The voice benchmark's reference: whisper.cpp's own `whisper-cli`, built from the
//! whisper.cpp our service links (the copy vendored in `whisper-rs-sys`, found through
//! `cargo metadata`) with the CLI front end (`examples/cli`, `examples/common*`) of the
//! pinned PyPI sdist, whose vendored copy is the only one that has it. CMake flags are
//! the ones `whisper-rs-sys` builds with plus the CPU baseline of `.cargo/config.toml`;
//! built once per (sources, flags) under `target/llamabox/bench/whisper-cli-<key>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::assets;
use super::baseline::CpuBaseline;
use crate::cache::{self, KeyHasher};
use crate::fetch::pypi::{self, LockedDist};
use crate::project::Project;

/// The crate whose whisper.cpp our service links, and the version `services/voice`
/// pins (whisper.cpp 1.8.3).
const LIBRARY_CRATE: (&str, &str) = ("whisper-rs-sys", "0.15.0");

/// What `whisper-rs-sys`'s build script passes to CMake for a release build without
/// GPU features, and the compiler flags `cmake-rs` adds for x86_64 Linux (as its
/// CMakeCache.txt in target/release/build/whisper-rs-sys-*/ shows). Examples on (the
/// CLI), tests off.
const FIXED_FLAGS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DWHISPER_ALL_WARNINGS=OFF",
    "-DWHISPER_ALL_WARNINGS_3RD_PARTY=OFF",
    "-DWHISPER_BUILD_TESTS=OFF",
    "-DWHISPER_BUILD_EXAMPLES=ON",
    "-DWHISPER_SDL2=OFF",
    "-DWHISPER_CURL=OFF",
    "-DWHISPER_FFMPEG=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_OPENMP=ON",
    "-DCMAKE_C_FLAGS=-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64 -w",
    "-DCMAKE_CXX_FLAGS=-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64 -w",
];

/// The files of the sdist's `examples/` the CLI needs (relative to `examples/`).
const FRONT_END: &[&str] = &[
    "cli",
    "common.h",
    "common.cpp",
    "common-whisper.h",
    "common-whisper.cpp",
    "grammar-parser.h",
    "grammar-parser.cpp",
    "miniaudio.h",
    "stb_vorbis.c",
];

/// `examples/CMakeLists.txt` for the CLI alone: the `common` library as whisper.cpp
/// 1.8.5's examples/CMakeLists.txt declares it (without FFmpeg), less `common-ggml.cpp`,
/// and without the other examples (SDL, servers, …) whose sources are not copied.
/// `common-ggml.cpp` is the quantizer's helper (the CLI uses none of it) and names ggml
/// types newer than 1.8.3's ggml (`GGML_TYPE_NVFP4`, `GGML_TYPE_Q1_0`): the one change
/// the 1.8.5 front end needs to build against the 1.8.3 library.
const EXAMPLES_CMAKE: &str = r#"# Written by cargo xtask bench voice: whisper-cli only.
find_package(Threads REQUIRED)
set(TARGET common)
add_library(${TARGET} STATIC
    common.h
    common.cpp
    common-whisper.h
    common-whisper.cpp
    grammar-parser.h
    grammar-parser.cpp
    )
include(DefaultTargetOptions)
target_link_libraries(${TARGET} PRIVATE whisper ${CMAKE_DL_LIBS})
set_target_properties(${TARGET} PROPERTIES POSITION_INDEPENDENT_CODE ON)
include_directories(${CMAKE_CURRENT_SOURCE_DIR})
add_subdirectory(cli)
"#;

/// The built reference and how it was made.
pub struct WhisperCli {
    pub binary: PathBuf,
    /// `build.txt`: the sources and flags.
    pub provenance: String,
}

/// The path of the built `whisper-cli`, building it first if needed.
pub fn whisper_cli(project: &Project, baseline: &CpuBaseline) -> Result<WhisperCli> {
    let dist = assets::locked(project, assets::WHISPER_CLI_SOURCE)?;
    let library = library_source(project)?;
    let flags = cmake_flags(baseline);
    let mut key = KeyHasher::default();
    key.add_str("sdist", &dist.sha256);
    key.add_tree("library", &library)?;
    key.add_str("examples", EXAMPLES_CMAKE);
    for file in FRONT_END {
        key.add_str("front end", file);
    }
    for flag in &flags {
        key.add_str("flag", flag);
    }
    let dir = project
        .build_dir()
        .join("bench")
        .join(format!("whisper-cli-{}", key.finish()));
    let dir = cache::get_or_build_at(dir, |out| build(project, &dist, &library, &flags, out))?;
    Ok(WhisperCli {
        binary: dir.join("whisper-cli"),
        provenance: std::fs::read_to_string(dir.join("build.txt"))?,
    })
}

/// whisper.cpp's CMake flags: whisper-rs-sys's and the CPU baseline.
pub fn cmake_flags(baseline: &CpuBaseline) -> Vec<String> {
    let mut flags: Vec<String> = FIXED_FLAGS.iter().map(|f| f.to_string()).collect();
    flags.extend(baseline.cmake_flags());
    flags
}

/// `whisper-rs-sys`'s `whisper.cpp/` directory, from `cargo metadata` (the registry's
/// unpacked crate, wherever `CARGO_HOME` is).
fn library_source(project: &Project) -> Result<PathBuf> {
    let output = project
        .cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata's output")?;
    let (name, version) = LIBRARY_CRATE;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name && p["version"] == version)
        .and_then(|p| p["manifest_path"].as_str())
        .with_context(|| {
            format!(
                "{name} {version} is not in the workspace's dependencies (services/voice pins it)"
            )
        })?;
    let dir = Path::new(manifest)
        .parent()
        .context("a manifest path without a directory")?
        .join("whisper.cpp");
    if !dir.join("CMakeLists.txt").is_file() {
        bail!("{}: no whisper.cpp source", dir.display());
    }
    Ok(dir)
}

fn build(
    project: &Project,
    dist: &LockedDist,
    library: &Path,
    flags: &[String],
    out: &Path,
) -> Result<()> {
    let sdist = pypi::fetch(dist, &project.downloads_dir())?;
    let work = out.join("work");
    let (unpacked, src, build) = (work.join("sdist"), work.join("src"), work.join("build"));
    pypi::unpack(&sdist, &unpacked).with_context(|| format!("unpacking {}", sdist.display()))?;
    let examples = find_examples(&unpacked)
        .with_context(|| format!("{}: no whisper.cpp examples/cli/cli.cpp", dist.filename))?;
    copy_tree(library, &src)?;
    std::fs::create_dir_all(src.join("examples"))?;
    for file in FRONT_END {
        let from = examples.join(file);
        if !from.exists() {
            bail!("{}: no examples/{file}", dist.filename);
        }
        copy_tree(&from, &src.join("examples").join(file))?;
    }
    std::fs::write(src.join("examples/CMakeLists.txt"), EXAMPLES_CMAKE)?;

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    eprintln!(
        "==> building whisper-cli: library from {}, front end from {} ({jobs} jobs; a few minutes, done once)",
        library.display(),
        dist.filename
    );
    llamabox_image::tool::run(
        Command::new("cmake")
            .arg("-S")
            .arg(&src)
            .arg("-B")
            .arg(&build)
            .args(flags),
    )
    .context("configuring whisper.cpp")?;
    llamabox_image::tool::run(
        Command::new("cmake")
            .arg("--build")
            .arg(&build)
            .args(["--target", "whisper-cli", "--parallel"])
            .arg(jobs.to_string()),
    )
    .context("building whisper-cli")?;
    std::fs::copy(build.join("bin/whisper-cli"), out.join("whisper-cli"))
        .context("whisper.cpp's build left no bin/whisper-cli")?;
    std::fs::write(
        out.join("build.txt"),
        format!(
            "library: {} (whisper.cpp {})\nfront end: examples/{{{}}} of {} sha256:{}\ncmake: {}\n",
            library.display(),
            version(library).unwrap_or_else(|| "?".into()),
            FRONT_END.join(","),
            dist.filename,
            dist.sha256,
            flags.join(" ")
        ),
    )?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// The `examples/` directory that holds `cli/cli.cpp`, wherever the sdist keeps it.
fn find_examples(root: &Path) -> Option<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .find(|e| e.path().ends_with("examples/cli/cli.cpp"))
        .and_then(|e| Some(e.path().parent()?.parent()?.to_path_buf()))
}

/// whisper.cpp's version, from `project("whisper.cpp" VERSION x.y.z)`.
fn version(source: &Path) -> Option<String> {
    let text = std::fs::read_to_string(source.join("CMakeLists.txt")).ok()?;
    let rest = text.split("project(\"whisper.cpp\" VERSION ").nth(1)?;
    Some(rest.split(')').next()?.trim().to_string())
}

/// Copies a file, or a directory with everything in it.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_file() {
        std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry?;
        let dest = to.join(entry.path().strip_prefix(from)?);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
