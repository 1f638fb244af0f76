//! `cargo xtask test`: builds each test board's image and runs the test suite against
//! it. x86_64 runs everything; arm64 runs the scenarios that prove an architecture.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build::{self, BuildOptions};
use crate::config::{self, Arch};
use crate::project::Project;
use crate::python;

/// The boards `cargo xtask test` runs without `--board` (what CI runs), in this order:
/// every QEMU test vehicle, one per architecture (docs/boards.md).
pub const TEST_BOARDS: &[&str] = &["qemu-x86_64", "qemu-aarch64"];

/// The models `cargo xtask test` hands the host tests: (recipe, environment variable).
/// From the image's root filesystem when the image has them (the default LLM, Whisper
/// base), else from the recipe staged on its own (tiny.en); both are the same cache entry.
const TEST_MODELS: &[(&str, &str)] = &[
    ("smollm2", "LLAMABOX_TEST_MODEL"),
    ("whisper-base", "LLAMABOX_TEST_WHISPER_MODEL"),
    ("whisper-tiny-en", "LLAMABOX_TEST_WHISPER_MODEL_EN"),
];

/// The arm64 suite: the scenarios that prove an architecture (boot, fallback, trust,
/// the API through the gateway, an update), the arm64 board checks and
/// reproducibility. The rest is architecture-independent and runs on x86_64. All of it
/// is in xtask's one system-test binary (`xtask/tests/system/`).
const ARM64_SUITE: &[&str] = &["--test", "system"];
const ARM64_TESTS: &[&str] = &[
    "boots_to_stage_2_from_slot_a",
    "corrupt_slot_a_fails_verification_and_slot_b_boots",
    "root_hash_signed_by_an_untrusted_key_is_refused",
    "inference_answers_a_paired_phone_through_the_gateway",
    "an_update_installs_into_the_other_slot_and_the_next_one_comes_back",
    "arm64_",
    "two_clean_builds_are_byte_identical",
];

/// Builds `board`'s image and runs its suite; `args` go to the test harness (a name
/// filter replaces the arm64 suite's list; flags alone keep it).
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
            // A name filter replaces the suite's list; flags (`--nocapture`) do not.
            if args.iter().all(|a| a.starts_with('-')) {
                // Three at a time on two cores: the update test is as long as the rest
                // together and sorts last, so two at a time left it alone at the end
                // with a core idle (about 200 s of a CI run).
                cmd.args(ARM64_TESTS).arg("--test-threads=3");
            }
        }
    }
    cmd.args(args)
        .env("LLAMABOX_TEST_IMAGE", &output.image)
        .env("LLAMABOX_TEST_BOARD", board)
        .env("LLAMABOX_SOAK", if soak { "1" } else { "0" })
        .env(python::PYTHON_ENV, &python);
    // The models the image ships, so host tests of the services load the same bytes.
    for (recipe, env) in TEST_MODELS {
        let model =
            build::recipe_file(project, recipe).and_then(|path| match output.rootfs_file(&path) {
                Some(model) => Ok(model),
                None => build::stage_one(project, board, recipe)
                    .map(|tree| tree.join(path.trim_start_matches('/'))),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_test_model_recipe_installs_one_file() {
        let project = Project::locate();
        for (recipe, _) in TEST_MODELS {
            let path = build::recipe_file(&project, recipe).unwrap();
            assert!(path.starts_with("/usr/share/llamabox/models/"), "{path}");
        }
        assert!(build::recipe_file(&project, "smollm3").is_err());
    }
}
