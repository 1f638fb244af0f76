//! `cargo xtask test`: builds each test board's image and runs the test suite against
//! it. x86_64 runs everything; arm64 runs the scenarios that prove an architecture.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build::{self, BuildOptions};
use crate::config::{self, Arch};
use crate::project::Project;
use crate::python;

/// The boards `cargo xtask test` runs without `--board`: the two QEMU test vehicles,
/// one per architecture (docs/boards.md).
pub const TEST_BOARDS: &[&str] = &["qemu-x86_64", "qemu-aarch64"];

/// The model `cargo xtask test` hands the host tests (`LLAMABOX_TEST_MODEL`): the
/// image's default model, from the build cache.
const TEST_MODEL: &str = "/usr/share/llamabox/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TEST_MODEL_ENV: &str = "LLAMABOX_TEST_MODEL";

/// The Whisper models (converted by their recipes) `cargo xtask test` hands the host
/// tests: (recipe, path in the image, environment variable). From the image's root
/// filesystem when the image has them, else from the recipe staged on its own; both
/// are the same cache entry.
const TEST_WHISPER_MODELS: &[(&str, &str, &str)] = &[
    (
        "whisper-base",
        "/usr/share/llamabox/models/whisper/ggml-base.bin",
        "LLAMABOX_TEST_WHISPER_MODEL",
    ),
    (
        "whisper-tiny-en",
        "/usr/share/llamabox/models/whisper/ggml-tiny.en.bin",
        "LLAMABOX_TEST_WHISPER_MODEL_EN",
    ),
];

/// The arm64 suite: the scenarios that prove an architecture (boot, fallback, trust,
/// the API through the gateway, an update), the arm64 board checks and
/// reproducibility. The rest is architecture-independent and runs on x86_64.
const ARM64_SUITE: &[&str] = &[
    "--test",
    "boot",
    "--test",
    "inference",
    "--test",
    "update",
    "--test",
    "boards",
    "--test",
    "reproducible",
];
const ARM64_TESTS: &[&str] = &[
    "boots_to_stage_2_from_slot_a",
    "corrupt_slot_a_fails_verification_and_slot_b_boots",
    "root_hash_signed_by_an_untrusted_key_is_refused",
    "inference_answers_a_paired_phone_through_the_gateway",
    "updates_install_into_the_other_slot_and_the_next_one_comes_back",
    "arm64_",
    "two_clean_builds_are_byte_identical",
];

/// Builds `board`'s image and runs its suite; `args` go to the test harness (a name
/// filter replaces the arm64 suite's list).
pub fn run(project: &Project, board: &str, soak: bool, args: &[String]) -> Result<()> {
    let arch = config::board::load(&project.boards_dir(), board)?.arch;
    let output = build::build(project, &BuildOptions::for_board(board))?;
    let python = python::ensure_venv(project)?;
    eprintln!(
        "==> cargo test on {board} (boot tests use {})",
        output.image.display()
    );
    let mut cmd = project.cargo();
    cmd.args(["test", "--locked"]);
    match arch {
        // Everything, except the arm64 board checks (they cross-build arm64 code).
        Arch::X86_64 => {
            cmd.args(["--workspace", "--"]).args(["--skip", "arm64_"]);
        }
        Arch::Aarch64 => {
            cmd.args(["--package", "xtask"]).args(ARM64_SUITE).arg("--");
            if args.is_empty() {
                cmd.args(ARM64_TESTS);
            }
        }
    }
    cmd.args(args)
        .env("LLAMABOX_TEST_IMAGE", &output.image)
        .env("LLAMABOX_TEST_BOARD", board)
        .env("LLAMABOX_SOAK", if soak { "1" } else { "0" })
        .env(python::PYTHON_ENV, &python);
    // The model the image ships, so host tests of the inference service load the same bytes.
    match output.rootfs_file(TEST_MODEL) {
        Some(model) => {
            cmd.env(TEST_MODEL_ENV, model);
        }
        None => eprintln!("    the image has no {TEST_MODEL}: {TEST_MODEL_ENV} is not set"),
    }
    for (recipe, path, env) in TEST_WHISPER_MODELS {
        let model = match output.rootfs_file(path) {
            Some(model) => Ok(model),
            None => build::stage_one(project, board, recipe)
                .map(|tree| tree.join(path.trim_start_matches('/'))),
        };
        match model {
            Ok(model) => {
                cmd.env(env, model);
            }
            Err(e) => eprintln!("    recipe {recipe}: {e:#}: {env} is not set"),
        }
    }
    timed(board, cmd)
}

fn timed(board: &str, mut cmd: Command) -> Result<()> {
    let started = std::time::Instant::now();
    let status = cmd.status().context("cannot run cargo test")?;
    eprintln!(
        "    tests on {board} took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("tests on {board} failed");
    }
    Ok(())
}
