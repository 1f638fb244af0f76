//! The device's update client (`llamabox-update`, as a library, on the host) against
//! repositories the build tool publishes: the two sides of the update format meet here,
//! which is why these tests live with the build tool's and not in the service's crate.
//! Fixtures: synthetic releases published with the real release code, file-backed
//! slots and ESP; the repository is served by `xtask::serve` (which can misbehave on
//! purpose and logs requests).

mod delta;
mod models;
mod protocol;

use std::path::{Path, PathBuf};

use llamabox_format::update::Target;
use llamabox_format::{BootEntry, SecretKey, Slot, SlotManifest, MANIFEST_BLOCK_SIZE};
use llamabox_update::fetch::Fetcher;
use llamabox_update::install::Layout;
use llamabox_update::state::Store;
use llamabox_update::Updater;
use xtask::build::ReleaseParts;
pub use xtask::serve::{Misbehaviour, Server};

pub const BOARD: &str = "qemu-x86_64";
pub const SLOT_SIZE: u64 = 8 << 20;

pub fn key() -> SecretKey {
    SecretKey::generate(&mut rand_core::OsRng)
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("update")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A release whose EROFS is 4 MiB of `seed`-derived bytes with `patch` applied (offset,
/// bytes), a 64 KiB "hash tree" and 1 MiB boot entries; signed with `image_key`.
pub fn fake_release(
    dir: &Path,
    board: &str,
    version: &str,
    seed: u64,
    patch: Option<(usize, Vec<u8>)>,
    image_key: &SecretKey,
) -> ReleaseParts {
    let dir = dir.join(format!("release-{board}-{version}-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut erofs = pseudo_random(4 << 20, seed);
    if let Some((at, bytes)) = patch {
        erofs.splice(at..at, bytes);
        erofs.truncate(4 << 20);
    }
    let tree = pseudo_random(64 << 10, seed + 1);
    let manifest = SlotManifest {
        board: board.into(),
        version: version.into(),
        data_size: erofs.len() as u64,
        hash_offset: erofs.len() as u64,
        data_block_size: 4096,
        hash_block_size: 4096,
        hash_algorithm: "sha256".into(),
        root_hash: "ab".repeat(32),
        salt: "cd".repeat(32),
    };
    std::fs::write(dir.join("rootfs.erofs"), &erofs).unwrap();
    std::fs::write(dir.join("rootfs.verity"), &tree).unwrap();
    let kernel = pseudo_random(1 << 20, 7); // the same kernel in every release
    let mut uki_a = kernel.clone();
    uki_a.extend_from_slice(format!("llamabox.slot=a version={version}").as_bytes());
    let mut uki_b = kernel;
    uki_b.extend_from_slice(format!("llamabox.slot=b version={version}").as_bytes());
    std::fs::write(dir.join("uki-a.efi"), uki_a).unwrap();
    std::fs::write(dir.join("uki-b.efi"), uki_b).unwrap();
    ReleaseParts {
        board: board.into(),
        version: version.into(),
        slot: llamabox_image::rootfs::SlotImage {
            erofs: dir.join("rootfs.erofs"),
            hash_tree: dir.join("rootfs.verity"),
            manifest_block: manifest.sign(image_key).unwrap(),
            manifest,
        },
        uki_a: dir.join("uki-a.efi"),
        uki_b: dir.join("uki-b.efi"),
    }
}

/// A box on files: two slot partitions, an ESP directory, a state directory and the
/// image's trusted root. Factory state: both slots hold `factory`, slot A boots.
pub struct TestBox {
    pub layout: Layout,
    pub state: PathBuf,
    pub image_root: PathBuf,
    pub installed: String,
}

impl TestBox {
    pub fn new(dir: &Path, factory: &ReleaseParts, root: &[u8]) -> TestBox {
        TestBox::new_with_slot_size(dir, factory, root, SLOT_SIZE)
    }

    pub fn new_with_slot_size(
        dir: &Path,
        factory: &ReleaseParts,
        root: &[u8],
        slot_size: u64,
    ) -> TestBox {
        let dir = dir.join("box");
        let esp = dir.join("esp");
        std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
        let layout = Layout {
            slot_a: dir.join("slot-a.img"),
            slot_b: dir.join("slot-b.img"),
            esp: esp.clone(),
            active: Slot::A,
            tries: 3,
        };
        for slot in [Slot::A, Slot::B] {
            let mut bytes = xtask::release::slot_bytes(factory).unwrap();
            bytes.resize((slot_size - MANIFEST_BLOCK_SIZE as u64) as usize, 0);
            bytes.extend_from_slice(&factory.slot.manifest_block);
            std::fs::write(layout.partition(slot), bytes).unwrap();
        }
        let entries = [
            (
                BootEntry::new_trial(2, Slot::A, 3).blessed(),
                &factory.uki_a,
            ),
            (
                BootEntry::new_trial(1, Slot::B, 3).blessed(),
                &factory.uki_b,
            ),
        ];
        for (entry, uki) in entries {
            std::fs::copy(uki, esp.join(entry.path())).unwrap();
        }
        let image_root = dir.join("image-root.json");
        std::fs::write(&image_root, root).unwrap();
        TestBox {
            state: dir.join("state"),
            layout,
            image_root,
            installed: factory.version.clone(),
        }
    }

    pub fn updater(&self, server: &Server) -> Updater {
        Updater {
            fetcher: Fetcher::new(&[server.url()]),
            store: Store::new(&self.state),
            image_root: self.image_root.clone(),
            board: BOARD.into(),
            installed: self.installed.clone(),
            image_time: None,
        }
    }

    pub fn partition_bytes(&self, slot: Slot) -> Vec<u8> {
        std::fs::read(self.layout.partition(slot)).unwrap()
    }

    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.layout.esp.join("EFI/Linux"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The next boot: `slot` runs at `version` and the health gate blesses it.
    pub fn boot_into(&mut self, slot: Slot, version: &str) {
        self.boot_on_trial(slot, version);
        let dir = self.layout.esp.join("EFI/Linux");
        for name in self.entries() {
            if let Some(entry) = BootEntry::parse(&name).filter(|e| e.slot == slot) {
                std::fs::rename(dir.join(&name), dir.join(entry.blessed().file_name())).unwrap();
            }
        }
    }

    /// The next boot: `slot` runs at `version`, still on trial.
    pub fn boot_on_trial(&mut self, slot: Slot, version: &str) {
        self.layout.active = slot;
        self.installed = version.into();
    }
}

/// Publishes `parts` into `repo` (created on first use with `root`), signed by `keys`.
pub fn publish(
    repo: &Path,
    root: &[u8],
    parts: &ReleaseParts,
    keys: &xtask::release::RoleKeys,
) -> Target {
    if !repo.join("root.json").exists() {
        xtask::release::init_repo(repo, root).unwrap();
    }
    let target = xtask::release::write_bundle(repo, parts).unwrap();
    xtask::release::publish(
        repo,
        target.clone(),
        keys,
        xtask::release::Lifetimes::default(),
    )
    .unwrap();
    target
}
