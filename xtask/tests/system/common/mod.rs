//! The boot tests' harness: built images, and machines on sparse copies of them.

#![allow(dead_code)] // each test binary uses a different part

pub mod audio;
pub mod browser;
pub mod egress;
pub mod files;
pub mod phone;
pub mod repository;
pub mod services;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use llamabox_format::{SignedManifest, MANIFEST_BLOCK_SIZE};
use xtask::build::{self, BuildOptions};
use xtask::config::board::{self, Board};
use xtask::project::Project;
use xtask::qemu::{Agent, Extras, Machine};

/// Generous: TCG on a busy 2-core machine. A boot normally reaches stage 2 in ~20 s.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The image has no coreutils: the network recipe's static busybox, off PATH, for the
/// tests' `ls`, `stat`, `grep` on the box.
pub const BUSYBOX: &str = "/usr/lib/llamabox/network/busybox";

pub fn board_name() -> String {
    std::env::var("LLAMABOX_TEST_BOARD").unwrap_or_else(|_| "qemu-x86_64".into())
}

/// Builds run one at a time: parallel tests would otherwise build the same cache
/// entries side by side.
pub static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The image `image/<name>.toml` for the test board, built once per test binary. The
/// product image comes from `cargo xtask test` (`LLAMABOX_TEST_IMAGE`) when it ran us.
pub fn built_image(name: &str) -> PathBuf {
    static IMAGES: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut images = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = images.get(name) {
        return path.clone();
    }
    let path = match std::env::var_os("LLAMABOX_TEST_IMAGE") {
        Some(path) if name == build::DEFAULT_IMAGE => PathBuf::from(path),
        _ => {
            let _building = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let options = BuildOptions {
                board: board_name(),
                image: name.into(),
                out_dir: None,
                cache_dir: None,
                inputs: Default::default(),
            };
            build::build(&Project::locate(), &options)
                .expect("building the image")
                .image
        }
    };
    images.insert(name.to_string(), path.clone());
    path
}

/// The Python interpreter with the tests' pinned packages (the `openai` client): from
/// `cargo xtask test` (`LLAMABOX_PYTHON`), else the venv is created here.
pub fn python() -> PathBuf {
    match std::env::var_os(xtask::python::PYTHON_ENV) {
        Some(path) => PathBuf::from(path),
        None => xtask::python::ensure_venv(&Project::locate()).expect("the Python test venv"),
    }
}

/// A service's binary from the same cargo build as this test (`target/<profile>/`, beside
/// `deps/` where the test runs from): `cargo test --workspace`, which `cargo xtask test`
/// runs, builds every service's binary; `cargo test -p xtask` alone does not.
pub fn service_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary under target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo build -p {name}` (cargo xtask test builds it)",
        path.display()
    );
    path
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One scenario's disk and firmware state.
pub struct TestMachine {
    pub dir: PathBuf,
    pub disk: PathBuf,
    vars: PathBuf,
    board: Board,
    boots: usize,
}

impl TestMachine {
    /// A machine for scenario `name` on a copy of the product image.
    pub fn new(name: &str) -> TestMachine {
        TestMachine::with_image(name, build::DEFAULT_IMAGE)
    }

    pub fn with_image(name: &str, image: &str) -> TestMachine {
        let project = Project::locate();
        let board = board::load(&project.boards_dir(), &board_name()).unwrap();
        let dir = project.build_dir().join("tests").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(built_image(image))
            .arg(&disk)
            .status()
            .unwrap();
        assert!(status.success(), "copying the image failed");
        let vars = dir.join("efivars.fd");
        xtask::qemu::fresh_vars(&board, &vars).unwrap();
        TestMachine {
            dir,
            disk,
            vars,
            board,
            boots: 0,
        }
    }

    pub fn boot(&mut self) -> Machine {
        self.boot_forwarding(&[])
    }

    /// Boots with guest ports forwarded to 127.0.0.1: (host port, guest port).
    pub fn boot_forwarding(&mut self, forwards: &[(u16, u16)]) -> Machine {
        self.boot_extra(forwards, &Extras::default())
    }

    /// Like `boot_forwarding`, with QEMU `extras` (a packet capture, USB devices).
    pub fn boot_extra(&mut self, forwards: &[(u16, u16)], extras: &Extras) -> Machine {
        self.boots += 1;
        let log = self.dir.join(format!("console-{}.log", self.boots));
        Machine::start_extra(
            &self.board,
            &self.disk,
            &self.vars,
            &log,
            Some(&self.agent_socket()),
            forwards,
            extras,
        )
        .unwrap()
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// Connects to the test agent once the console shows it ready.
    pub fn agent(&self, machine: &mut Machine) -> Agent {
        machine
            .wait_for("llamabox-supervisor: test-agent: ready", BOOT_TIMEOUT)
            .unwrap();
        let mut agent = Agent::connect(&self.agent_socket()).unwrap();
        let pong = agent
            .command("ping", std::time::Duration::from_secs(30))
            .unwrap();
        assert!(pong.iter().any(|l| l == "pong"), "{pong:?}");
        agent
    }

    /// The disk grows by `extra` bytes (sparse), as an image written to a larger card.
    /// Returns its new size.
    pub fn grow_disk(&self, extra: u64) -> u64 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.disk)
            .unwrap();
        let size = file.metadata().unwrap().len() + extra;
        file.set_len(size).unwrap();
        size
    }

    /// (byte offset, size) of the partition labelled `label`.
    pub fn partition(&self, label: &str) -> (u64, u64) {
        let table = llamabox_image::gpt::read(&self.disk).unwrap();
        let (_, offset, size) = table
            .into_iter()
            .find(|(l, _, _)| l == label)
            .unwrap_or_else(|| panic!("no partition {label}"));
        (offset, size)
    }

    pub fn read_at(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.disk).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    pub fn write_at(&self, offset: u64, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.disk)
            .unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }

    /// The slot's manifest block: (its offset on disk, the parsed block).
    pub fn manifest(&self, label: &str) -> (u64, SignedManifest) {
        let (offset, size) = self.partition(label);
        let at = offset + size - MANIFEST_BLOCK_SIZE as u64;
        (
            at,
            SignedManifest::decode(&self.read_at(at, MANIFEST_BLOCK_SIZE)).unwrap(),
        )
    }
}

impl Drop for TestMachine {
    /// A passing scenario's disk goes (a few hundred MB each, and CI disks are shared);
    /// a failing one keeps it beside its console logs for inspection.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.disk);
        }
    }
}
