//! The command line of `cargo xtask`: every command and flag, with the help text users
//! see. `main.rs` dispatches; each command lives in the module named in its arm there.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::build;

/// The board commands use when none is named: the x86_64 test vehicle.
pub const DEFAULT_BOARD: &str = "qemu-x86_64";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, boot and test Llama Box images",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    /// Run the whole test suite: unit tests and every boot test in QEMU on qemu-x86_64,
    /// then qemu-aarch64's suite (the scenarios that prove arm64), then the fuzz targets
    /// for a bounded time.
    Test {
        /// One board's suite only (default: every test board in turn, what CI runs).
        #[arg(long)]
        board: Option<String>,
        /// Seconds to run each fuzz target (0 skips fuzzing). Short: CI runs this; `cargo
        /// xtask fuzz` runs longer.
        #[arg(long, default_value_t = 15)]
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
pub enum BenchCmd {
    /// Our inference service against llama.cpp's llama-server, llama-bench and
    /// llama-batched-bench (built from the pinned source), on two model sizes: decode,
    /// prompt processing, time to first token, 4 concurrent streams, and decode with a
    /// busy thread competing. Run as root: ours runs at the priority the image gives it.
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
        /// ggml's CPU baseline for both sides: x86-64-v3 (AVX2; the default on x86_64)
        /// or x86-64-v2 (the QEMU board's SSE4.2).
        #[arg(long)]
        cpu_baseline: Option<String>,
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
        /// ggml's CPU baseline for both sides: x86-64-v3 (AVX2; the default on x86_64)
        /// or x86-64-v2 (the QEMU board's SSE4.2).
        #[arg(long)]
        cpu_baseline: Option<String>,
    },
}
