//! `cargo xtask`: builds, runs and tests Llama Box images. See `cargo xtask --help`.
//! This file only parses the command line (`cli.rs`) and dispatches: each command is
//! implemented in the library module its arm names.

use anyhow::Result;
use clap::Parser;
use xtask::build::{self, BuildOptions};
use xtask::cli::{BenchCmd, Cli, Cmd};
use xtask::project::Project;
use xtask::{bench, config, flash, fuzz, keys, lock, provision, release, run, serve, setup, suite};

fn main() {
    if let Err(e) = dispatch(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let project = Project::locate();
    match cli.command {
        Cmd::Image {
            board,
            image,
            out,
            cache_dir,
            inputs,
        } => build::image_command(
            &project,
            &BuildOptions {
                board,
                image,
                out_dir: out,
                cache_dir,
                inputs: xtask::inputs::parse_args(&inputs)?,
            },
        ),
        Cmd::Run {
            board,
            image,
            fresh,
        } => run::run_in_qemu(&project, &board, &image, fresh),
        Cmd::Test {
            board,
            fuzz_seconds,
            soak,
            args,
        } => {
            let boards = match &board {
                Some(board) => vec![board.as_str()],
                None => suite::TEST_BOARDS.to_vec(),
            };
            for board in boards {
                suite::run(&project, board, soak, &args)?;
            }
            if fuzz_seconds > 0 {
                fuzz::run(&project, fuzz_seconds)?;
            }
            Ok(())
        }
        Cmd::Fuzz { seconds } => fuzz::run(&project, seconds),
        Cmd::Flash {
            disk,
            image,
            board,
            yes,
        } => flash::command(&project, &disk, image, board, yes),
        Cmd::Keys { out, name } => keys::generate_command(&out, &name),
        Cmd::Release { board, image, repo } => release::command(&project, board, image, &repo),
        Cmd::Serve { repo, listen } => serve::serve_forever(&repo, &listen),
        Cmd::Lock { upgrade } => lock::run(&project, upgrade),
        Cmd::Provision { disk } => provision::command(&disk),
        Cmd::Stage { board, recipe } => build::stage_command(&project, &board, &recipe),
        Cmd::Bench {
            what:
                BenchCmd::Inference {
                    repetitions,
                    threads,
                    ours,
                    reference_twice,
                    cpu_baseline,
                },
        } => bench::inference_command(
            &project,
            repetitions,
            threads,
            ours,
            reference_twice,
            cpu_baseline,
        ),
        Cmd::Bench {
            what:
                BenchCmd::Voice {
                    repetitions,
                    threads,
                    models,
                    ours,
                    cpu_baseline,
                },
        } => bench::voice_command(&project, repetitions, threads, models, ours, cpu_baseline),
        Cmd::Setup => {
            setup::ensure_host_tools(&[config::Arch::X86_64, config::Arch::Aarch64])?;
            println!("host tools are installed");
            Ok(())
        }
    }
}
