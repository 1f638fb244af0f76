//! Boot tests: the built image in QEMU (TCG), each scenario on its own sparse copy of
//! the image and its own firmware variable store, asserting on the serial console.
//!
//! `cargo xtask test` builds the image first and passes its path in
//! `LLAMABOX_TEST_IMAGE`; run alone, these tests build it themselves.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use llamabox_format::{SecretKey, SignedManifest, MANIFEST_BLOCK_SIZE};
use xtask::build::{self, BuildOptions};
use xtask::config::board::{self, Board};
use xtask::project::Project;
use xtask::qemu::Machine;

/// Generous: TCG on a busy 2-core machine. A boot normally reaches stage 2 in ~20 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn board_name() -> String {
    std::env::var("LLAMABOX_TEST_BOARD").unwrap_or_else(|_| "qemu-x86_64".into())
}

fn built_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| match std::env::var_os("LLAMABOX_TEST_IMAGE") {
        Some(path) => PathBuf::from(path),
        None => {
            let options = BuildOptions {
                board: board_name(),
                out_dir: None,
                cache_dir: None,
            };
            build::build(&Project::locate(), &options)
                .expect("building the image")
                .image
        }
    })
}

/// One scenario's disk and firmware state.
struct TestMachine {
    dir: PathBuf,
    disk: PathBuf,
    vars: PathBuf,
    board: Board,
    boots: usize,
}

impl TestMachine {
    fn new(name: &str) -> TestMachine {
        let project = Project::locate();
        let board = board::load(&project.boards_dir(), &board_name()).unwrap();
        let dir = project.build_dir().join("tests").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(built_image())
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

    fn boot(&mut self) -> Machine {
        self.boots += 1;
        let log = self.dir.join(format!("console-{}.log", self.boots));
        Machine::start(&self.board, &self.disk, &self.vars, &log).unwrap()
    }

    /// (byte offset, size) of the partition labelled `label`.
    fn partition(&self, label: &str) -> (u64, u64) {
        let table = llamabox_image::gpt::read(&self.disk).unwrap();
        let (_, offset, size) = table
            .into_iter()
            .find(|(l, _, _)| l == label)
            .unwrap_or_else(|| panic!("no partition {label}"));
        (offset, size)
    }

    fn read_at(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.disk).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.disk)
            .unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }

    /// The slot's manifest block: (its offset on disk, the parsed block).
    fn manifest(&self, label: &str) -> (u64, SignedManifest) {
        let (offset, size) = self.partition(label);
        let at = offset + size - MANIFEST_BLOCK_SIZE as u64;
        (
            at,
            SignedManifest::decode(&self.read_at(at, MANIFEST_BLOCK_SIZE)).unwrap(),
        )
    }
}

#[test]
fn boots_to_stage_2_from_slot_a() {
    let mut vm = TestMachine::new("boots-slot-a");
    let mut machine = vm.boot();
    let console = machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
    assert!(
        console.contains("llamabox-stage1: booting slot a"),
        "{console}"
    );
    assert!(
        console.contains("llamabox-init: stage 2 reached: slot a"),
        "{console}"
    );
    assert!(
        console.contains("slot a: manifest signed by a trusted key"),
        "{console}"
    );
    assert!(
        console.contains("healthy: every critical service ready"),
        "{console}"
    );
}

#[test]
fn corrupt_slot_a_fails_verification_and_slot_b_boots() {
    let mut vm = TestMachine::new("corrupt-slot-a");
    let (_, manifest) = vm.manifest("llamabox-a");
    let data_size = manifest.unverified_payload().unwrap().data_size;
    // One flipped bit in the middle of slot A's root filesystem.
    let (slot_a, _) = vm.partition("llamabox-a");
    let target = slot_a + (data_size / 2 / 4096) * 4096 + 100;
    let byte = vm.read_at(target, 1)[0];
    vm.write_at(target, &[byte ^ 0x01]);

    let mut machine = vm.boot();
    let console = machine
        .wait_for("slot b blessed", BOOT_TIMEOUT * 2)
        .unwrap();
    assert!(
        console.contains("slot verification FAILED: slot a: root filesystem block"),
        "{console}"
    );
    assert!(
        console.contains("does not match its dm-verity hash"),
        "{console}"
    );
    assert!(console.contains("marked slot a bad"), "{console}");
    assert!(!console.contains("stage 2 reached: slot a"), "{console}");
    assert!(
        console.contains("llamabox-init: stage 2 reached: slot b"),
        "{console}"
    );
}

#[test]
fn root_hash_signed_by_an_untrusted_key_is_refused() {
    let mut vm = TestMachine::new("untrusted-key");
    let (at, manifest) = vm.manifest("llamabox-a");
    // The same, genuine root hash, signed by a key the initramfs does not trust.
    let impostor = SecretKey::generate(&mut rand_core::OsRng);
    let block = manifest
        .unverified_payload()
        .unwrap()
        .sign(&impostor)
        .unwrap();
    vm.write_at(at, &block);

    let mut machine = vm.boot();
    let console = machine
        .wait_for("slot b blessed", BOOT_TIMEOUT * 2)
        .unwrap();
    let refusal = format!(
        "manifest is signed by key {}, which is not a trusted key",
        impostor.public().id()
    );
    assert!(console.contains(&refusal), "{console}");
    assert!(!console.contains("stage 2 reached: slot a"), "{console}");
    assert!(console.contains("stage 2 reached: slot b"), "{console}");
}

#[test]
fn data_partition_is_created_on_first_boot_and_survives_a_reboot() {
    let mut vm = TestMachine::new("data-partition");
    let mut first = vm.boot();
    let console = first.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
    assert!(
        console.contains("first boot: formatting the data partition"),
        "{console}"
    );
    assert!(console.contains("boot number 1 recorded"), "{console}");
    assert!(
        console.contains("root filesystem is read-only"),
        "{console}"
    );
    first.kill(); // pull the plug: the boot record was made durable before services started

    let mut second = vm.boot();
    let console = second
        .wait_for("slot a already blessed", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        !console.contains("formatting the data partition"),
        "{console}"
    );
    assert!(console.contains("boot number 2 recorded"), "{console}");
    assert!(
        console.contains("root filesystem is read-only"),
        "{console}"
    );
    assert!(
        console.contains("boot entry llamabox-2-a.efi (blessed)"),
        "{console}"
    );
}
