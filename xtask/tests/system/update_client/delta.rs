//! Delta updates on the real root filesystem: the product image's EROFS is unpacked,
//! one service binary is changed (a byte in every 4 KiB page, as a rebuild touches the
//! whole file), the slot is rebuilt with the image builder's own code, and the real
//! client installs it from a loopback repository onto file-backed slots holding the
//! original. It must download at most 10% of the full bundle.

use std::process::Command;
use std::time::Instant;

use super::*;
use llamabox_update::Applied;
use xtask::build::{self, BuildOptions, ReleaseParts};
use xtask::project::Project;

/// The binary the "new release" changes.
const CHANGED: &str = "usr/bin/llamabox-update";

#[test]
fn changing_one_service_binary_downloads_a_small_part_of_the_bundle() {
    let project = Project::locate();
    let options = BuildOptions {
        board: BOARD.into(),
        image: build::DEFAULT_IMAGE.into(),
        out_dir: None,
        cache_dir: None,
        inputs: Default::default(),
    };
    let v1 = {
        let _building = crate::common::BUILD_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        build::build(&project, &options)
    }
    .expect("building the product image")
    .release
    .unwrap();
    let dir = scratch("delta-real-rootfs");
    let tree = dir.join("tree");
    let status = Command::new("fsck.erofs")
        .arg(format!("--extract={}", tree.display()))
        .arg("--preserve")
        .arg(&v1.slot.erofs)
        .status()
        .expect("fsck.erofs (erofs-utils)");
    assert!(status.success(), "extracting the root filesystem");
    let binary = tree.join(CHANGED);
    let mut bytes = std::fs::read(&binary).unwrap();
    for i in (100..bytes.len()).step_by(4096) {
        bytes[i] ^= 0x5a;
    }
    std::fs::write(&binary, &bytes).unwrap();

    let key = xtask::keys::signing_key(&project).unwrap();
    let slot = llamabox_image::rootfs::build_slot(
        &tree,
        &dir.join("slot"),
        "delta-test",
        BOARD,
        "0.1.1",
        &key,
    )
    .unwrap();
    let v2 = ReleaseParts {
        board: BOARD.into(),
        version: "0.1.1".into(),
        slot,
        uki_a: v1.uki_a.clone(),
        uki_b: v1.uki_b.clone(),
    };

    let root = xtask::release::trusted_root(&project).unwrap();
    let keys = xtask::release::RoleKeys::load(&project).unwrap();
    let repo = dir.join("repo");
    let target = publish(&repo, &root, &v2, &keys);
    let index: llamabox_format::update::BundleIndex = serde_json::from_slice(
        &std::fs::read(repo.join(format!("bundles/{}.index", target.sha256))).unwrap(),
    )
    .unwrap();
    let full = index.data_length;

    let server = Server::start(&repo);
    // File-backed slots as large as the board's partitions.
    let board = xtask::config::board::load(&project.boards_dir(), BOARD).unwrap();
    let device = TestBox::new_with_slot_size(&dir, &v1, &root, board.layout.slot_mib << 20);
    let started = Instant::now();
    let applied = device
        .updater(&server)
        .apply(&device.layout, &mut |_, _| {})
        .unwrap();
    let elapsed = started.elapsed();
    let Applied::Installed { report, .. } = applied else {
        panic!("nothing installed: {applied:?}");
    };
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!(
        "delta: changed {CHANGED} ({:.1} MB): full bundle data {:.1} MB (index {:.2} MB), \
         downloaded {:.2} MB = {:.1}%, copied {:.1} MB, in place {:.1} MB, install {:.1} s",
        mb(bytes.len() as u64),
        mb(full),
        mb(target.length),
        mb(report.downloaded),
        100.0 * report.downloaded as f64 / full as f64,
        mb(report.copied),
        mb(report.in_place),
        elapsed.as_secs_f32()
    );
    assert!(
        report.downloaded * 10 <= full,
        "downloaded {} of {full} bytes",
        report.downloaded
    );
}
