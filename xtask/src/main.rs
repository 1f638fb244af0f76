//! `cargo xtask`: builds, runs and tests Llama Box images. See `cargo xtask --help`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use llamabox_format::provisioning::DeviceIdentity;
use xtask::build::{self, BuildOptions};
use xtask::project::Project;
use xtask::{bench, config, fuzz, keys, lock, provision, python, qemu, release, setup};

const DEFAULT_BOARD: &str = "qemu-x86_64";

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

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, boot and test Llama Box images",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the disk image for a board and print the paths of the image, its .bmap and .sha256.
    Image {
        /// The board (board/<BOARD>/board.toml), with a device tree option where it has
        /// several: `lx2160a:clearfog-cx`.
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: String,
        /// Image definition: image/<IMAGE>.toml.
        #[arg(long, default_value = build::DEFAULT_IMAGE)]
        image: String,
        /// Directory for the outputs (default: target/llamabox/out/<board>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Build cache directory (default: target/llamabox/cache).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// A file for one of the board's external inputs, e.g. the Jetson Linux BSP:
        /// `--input jetson-linux=PATH` (repeatable; docs/boards.md).
        #[arg(long = "input", value_name = "NAME=PATH")]
        inputs: Vec<String>,
    },
    /// Build if needed and boot the image in QEMU, serial console on this terminal (ctrl-a x quits).
    Run {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: String,
        /// Image definition: image/<IMAGE>.toml.
        #[arg(long, default_value = build::DEFAULT_IMAGE)]
        image: String,
        /// Start from the freshly built image instead of the previous run's disk state.
        #[arg(long)]
        fresh: bool,
    },
    /// Run the whole test suite: unit tests, boot tests in QEMU, then the fuzz targets
    /// for a bounded time.
    Test {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: String,
        /// Seconds to run each fuzz target (0 skips fuzzing).
        #[arg(long, default_value_t = 30)]
        fuzz_seconds: u64,
        /// The long suites too: power cuts at 20 points instead of 3.
        #[arg(long)]
        soak: bool,
        /// Extra arguments for the test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the image and publish it as a signed update bundle in a static repository
    /// directory (created on first use, trusting the image's update root).
    Release {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: String,
        /// Image definition: image/<IMAGE>.toml.
        #[arg(long, default_value = build::DEFAULT_IMAGE)]
        image: String,
        /// The repository directory; serve it with any static HTTP server.
        #[arg(long)]
        repo: PathBuf,
    },
    /// Serve a repository directory over HTTP (GET with ranges), for boxes in development.
    Serve {
        #[arg(long)]
        repo: PathBuf,
        /// Address to listen on; QEMU guests reach the host's loopback as 10.0.2.2.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
    },
    /// Stage one recipe on its own into the build cache (no image) and print its files
    /// paths there: e.g. a converted Whisper model for a benchmark.
    Stage {
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: String,
        /// The recipe: recipes/<RECIPE>.toml.
        recipe: String,
    },
    /// Generate an ed25519 signing key pair.
    Keys {
        /// Directory to write <name>.secret and <name>.pub into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value = "llamabox-release")]
        name: String,
    },
    /// Pin the Debian packages and PyPI distributions that recipes and boards name.
    /// Existing pins stay; only what is not pinned yet is resolved.
    Lock {
        /// Resolve every package anew (newest in the suite), not only the new ones.
        #[arg(long)]
        upgrade: bool,
    },
    /// Give a flashed disk (image file or block device) its own identity and pairing
    /// setup code, and print its label (with a QR code).
    Provision {
        /// The flashed disk, e.g. /dev/sdX after `bmaptool copy`, or an image file.
        #[arg(long)]
        disk: PathBuf,
    },
    /// Write an image onto a card or disk: only the blocks its .bmap maps, read back and
    /// verified, then provisioned (its own setup code and label). Refuses mounted disks
    /// and the disk this machine runs from; asks before writing.
    Flash {
        /// The target: a block device (/dev/sdX, /dev/mmcblk0, /dev/nvme0n1) or a file.
        #[arg(long)]
        disk: PathBuf,
        /// The image to write (its .bmap beside it) [default: the board's built image,
        /// built if needed].
        #[arg(long)]
        image: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_BOARD)]
        board: String,
        /// Do not ask before overwriting the target.
        #[arg(long)]
        yes: bool,
    },
    /// Run the fuzz targets (cargo-fuzz) for a bounded time.
    Fuzz {
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Install the host tools the build needs (Debian packages, Rust targets).
    Setup,
    /// Benchmarks that compare our services with reference implementations.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Our inference service against llama.cpp's llama-server (built from the pinned
    /// source): decode, prompt processing, time to first token, 4 concurrent streams.
    Inference {
        /// Times each measurement is repeated on each side; the report shows medians.
        #[arg(long, default_value_t = 8)]
        repetitions: usize,
        /// Threads for both servers (default: the number of cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Use this llamabox-inference binary instead of building it.
        #[arg(long, conflicts_with = "reference_twice")]
        ours: Option<PathBuf>,
        /// Run llama-server on both sides, to check the harness (ratios should be ~1).
        #[arg(long)]
        reference_twice: bool,
    },
    /// Our voice service against whisper.cpp's whisper-cli (built from the whisper.cpp
    /// the service links): transcription speed (RTF) on the same audio, and the latency
    /// from the end of a spoken command to its transcript. Needs espeak-ng and cmake.
    Voice {
        /// Times each transcription is repeated on each side; the report shows medians.
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
        /// Thread counts for both sides, compared in turn; the first is also the
        /// latency run's.
        #[arg(long, value_delimiter = ',', default_values_t = [2, 1])]
        threads: Vec<usize>,
        /// Models to measure: tiny.en, base (default: both).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Use this llamabox-voice binary instead of building it.
        #[arg(long)]
        ours: Option<PathBuf>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let project = Project::locate();
    match cli.command {
        Cmd::Image {
            board,
            image,
            out,
            cache_dir,
            inputs,
        } => {
            let output = build::build(
                &project,
                &BuildOptions {
                    board,
                    image,
                    out_dir: out,
                    cache_dir,
                    inputs: xtask::inputs::parse_args(&inputs)?,
                },
            )?;
            println!("image:  {}", output.image.display());
            println!("bmap:   {}", output.bmap.display());
            println!("sha256: {}", output.sha256_file.display());
            println!("rootfs: {}", output.rootfs.display());
        }
        Cmd::Run {
            board,
            image,
            fresh,
        } => run_in_qemu(&project, &board, &image, fresh)?,
        Cmd::Test {
            board,
            fuzz_seconds,
            soak,
            args,
        } => {
            test(&project, &board, soak, &args)?;
            if fuzz_seconds > 0 {
                fuzz::run(&project, fuzz_seconds)?;
            }
        }
        Cmd::Fuzz { seconds } => fuzz::run(&project, seconds)?,
        Cmd::Flash {
            disk,
            image,
            board,
            yes,
        } => {
            let image = match image {
                Some(image) => image,
                None => {
                    build::build(
                        &project,
                        &BuildOptions {
                            board,
                            image: build::DEFAULT_IMAGE.into(),
                            out_dir: None,
                            cache_dir: None,
                            inputs: Default::default(),
                        },
                    )?
                    .image
                }
            };
            let flashed = xtask::flash::flash(&xtask::flash::FlashOptions {
                image: &image,
                target: &disk,
                yes,
            })?;
            println!("{}", provision::label(&flashed.identity));
            println!(
                "flashed {} onto {} ({:.1} MiB written and verified); keep the setup code with the box",
                image.display(),
                disk.display(),
                flashed.written_bytes as f64 / 1048576.0
            );
        }
        Cmd::Keys { out, name } => {
            let (secret, public) =
                keys::generate(&out, &name, &format!("Llama Box signing key `{name}`"))?;
            println!(
                "secret key: {} (keep it out of the repository)",
                secret.display()
            );
            println!("public key: {}", public.display());
            println!(
                "sign images with it: {}={} cargo xtask image",
                keys::SIGNING_KEY_ENV,
                secret.display()
            );
        }
        Cmd::Release { board, image, repo } => {
            let out = build::build(
                &project,
                &build::BuildOptions {
                    board,
                    image,
                    out_dir: None,
                    cache_dir: None,
                    inputs: Default::default(),
                },
            )?;
            let parts = out.release.expect("a build has release parts");
            if !repo.join("root.json").exists() {
                release::init_repo(&repo, &release::trusted_root(&project)?)?;
            }
            let target = release::write_bundle(&repo, &parts)?;
            let keys = release::RoleKeys::load(&project)?;
            release::publish(&repo, target.clone(), &keys, release::Lifetimes::default())?;
            println!(
                "published {} {} into {} (bundle index {})",
                target.board,
                target.version,
                repo.display(),
                &target.sha256[..16]
            );
        }
        Cmd::Serve { repo, listen } => {
            let server = xtask::serve::Server::bind(&repo, &listen)
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("serving {} at {}", repo.display(), server.url());
            loop {
                std::thread::park();
            }
        }
        Cmd::Lock { upgrade } => lock::run(&project, upgrade)?,
        Cmd::Provision { disk } => {
            let identity = provision::new_identity();
            provision::write(&disk, &identity)?;
            println!("{}", provision::label(&identity));
            println!(
                "provisioned {}: keep the setup code with the box (it is on no other copy)",
                disk.display()
            );
        }
        Cmd::Stage { board, recipe } => {
            let tree = build::stage_one(&project, &board, &recipe)?;
            for entry in walkdir::WalkDir::new(&tree).sort_by_file_name() {
                let entry = entry?;
                if !entry.file_type().is_dir() {
                    let rel = entry.path().strip_prefix(&tree)?;
                    println!("/{}\t{}", rel.display(), entry.path().display());
                }
            }
        }
        Cmd::Bench {
            what:
                BenchCmd::Inference {
                    repetitions,
                    threads,
                    ours,
                    reference_twice,
                },
        } => {
            if repetitions == 0 {
                bail!("--repetitions must be at least 1");
            }
            let ours = match (ours, reference_twice) {
                (_, true) => bench::Ours::Reference,
                (Some(path), false) => bench::Ours::Binary(path),
                (None, false) => bench::Ours::Build,
            };
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            bench::inference(
                &project,
                &bench::Options {
                    ours,
                    repetitions,
                    threads,
                },
            )?;
        }
        Cmd::Bench {
            what:
                BenchCmd::Voice {
                    repetitions,
                    threads,
                    models,
                    ours,
                },
        } => {
            if repetitions == 0 || threads.contains(&0) {
                bail!("--repetitions and --threads must be at least 1");
            }
            bench::voice(
                &project,
                &bench::VoiceOptions {
                    ours,
                    repetitions,
                    threads,
                    models,
                },
            )?;
        }
        Cmd::Setup => {
            setup::ensure_host_tools(&[config::Arch::X86_64, config::Arch::Aarch64])?;
            println!("host tools are installed");
        }
    }
    Ok(())
}

fn run_in_qemu(project: &Project, board_name: &str, image: &str, fresh: bool) -> Result<()> {
    let output = build::build(
        project,
        &BuildOptions {
            board: board_name.into(),
            image: image.into(),
            out_dir: None,
            cache_dir: None,
            inputs: Default::default(),
        },
    )?;
    let board = config::board::load(&project.boards_dir(), board_name)?;
    let dir = project
        .build_dir()
        .join("run")
        .join(format!("{image}-{board_name}"));
    std::fs::create_dir_all(&dir)?;
    let (disk, vars, stamp, identity_file) = (
        dir.join("disk.img"),
        dir.join("efivars.fd"),
        dir.join("image.sha256"),
        dir.join("device.json"),
    );
    // The run keeps its own disk state (data partition, boot counters, identity) across
    // runs of the same image; a new image or --fresh starts over as a new device.
    let same_image =
        std::fs::read_to_string(&stamp).ok().as_deref() == Some(output.image_sha256.as_str());
    let identity = std::fs::read(&identity_file)
        .ok()
        .and_then(|bytes| DeviceIdentity::parse(&bytes).ok());
    let identity = match identity {
        Some(identity) if !fresh && same_image && disk.exists() && vars.exists() => identity,
        _ => {
            // A sparse copy, not a qcow2 overlay: provisioning writes into its ESP.
            let _ = std::fs::remove_file(&disk);
            llamabox_image::tool::run(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&output.image)
                    .arg(&disk),
            )?;
            let identity = provision::new_identity();
            provision::write(&disk, &identity)?;
            std::fs::write(&identity_file, identity.to_json())?;
            qemu::fresh_vars(&board, &vars)?;
            std::fs::write(&stamp, &output.image_sha256)?;
            identity
        }
    };
    eprintln!("{}", provision::label(&identity));
    eprintln!(
        "==> booting {} in QEMU (TCG: expect ~20 s to stage 2); ctrl-a x quits",
        board.name
    );
    for (host, guest) in qemu::PORT_FORWARDS {
        eprintln!("    device port {guest} is at 127.0.0.1:{host}");
    }
    qemu::run_interactive(&board, &disk, &vars)
}

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

fn test(project: &Project, board: &str, soak: bool, args: &[String]) -> Result<()> {
    let arch = config::board::load(&project.boards_dir(), board)?.arch;
    let output = build::build(
        project,
        &BuildOptions {
            board: board.into(),
            image: build::DEFAULT_IMAGE.into(),
            out_dir: None,
            cache_dir: None,
            inputs: Default::default(),
        },
    )?;
    let python = python::ensure_venv(project)?;
    eprintln!("==> cargo test (boot tests use {})", output.image.display());
    let mut cmd = project.cargo();
    cmd.args(["test", "--locked"]);
    match arch {
        // Everything, except the arm64 board checks (they cross-build arm64 code).
        config::Arch::X86_64 => {
            cmd.args(["--workspace", "--"]).args(["--skip", "arm64_"]);
        }
        config::Arch::Aarch64 => {
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
    let status = cmd.status().context("cannot run cargo test")?;
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}
