//! The update client against a real HTTP server on loopback, with file-backed slots:
//! install, A/B alternation, delta, resume, and every attack in docs/updates.md —
//! each refused with a clear error and the active slot untouched.

use std::time::{Duration, SystemTime};

use super::*;
use llamabox_format::update::{MetadataError, Role, Root, Signed, Snapshot, Timestamp};
use llamabox_format::{Slot, MANIFEST_BLOCK_SIZE};
use llamabox_update::{Applied, Error};
use xtask::release::{Lifetimes, RoleKeys};

struct World {
    dir: std::path::PathBuf,
    repo: std::path::PathBuf,
    image_key: llamabox_format::SecretKey,
    repo_key: llamabox_format::SecretKey,
    root: Vec<u8>,
    keys: RoleKeys,
    server: Server,
    device: TestBox,
}

/// A repository with v0.1.0 published and a box running it.
fn world(name: &str) -> World {
    let dir = scratch(name);
    let repo = dir.join("repo");
    let image_key = key();
    let repo_key = key();
    let root = xtask::release::dev_root(&repo_key);
    let keys = RoleKeys::single(&repo_key);
    let v1 = fake_release(&dir, BOARD, "0.1.0", 1, None, &image_key);
    publish(&repo, &root, &v1, &keys);
    let server = Server::start(&repo);
    let device = TestBox::new(&dir, &v1, &root);
    World {
        dir,
        repo,
        image_key,
        repo_key,
        root,
        keys,
        server,
        device,
    }
}

impl World {
    fn release(
        &self,
        version: &str,
        seed: u64,
        patch: Option<(usize, Vec<u8>)>,
    ) -> xtask::build::ReleaseParts {
        fake_release(&self.dir, BOARD, version, seed, patch, &self.image_key)
    }

    /// Publishes root version 2, which hands every role to one new key; returns the key.
    fn rotate_every_role(&self) -> llamabox_format::SecretKey {
        let new_key = key();
        let new_public = new_key.public();
        let expires = SystemTime::now() + Duration::from_secs(86400 * 30);
        let root2 = Root::with_keys(2, expires, [(&[&new_public], 1); 4]);
        xtask::release::rotate_root(&self.repo, &root2, &[&self.repo_key, &new_key]).unwrap();
        new_key
    }

    fn publish(&self, parts: &xtask::build::ReleaseParts) {
        publish(&self.repo, &self.root, parts, &self.keys);
    }

    fn apply(&self) -> Result<Applied, Error> {
        self.device
            .updater(&self.server)
            .apply(&self.device.layout, &mut |_, _| {})
    }

    /// Applies, expecting a refusal; checks the active slot and its boot entry are unchanged.
    fn refused(&self) -> Error {
        let active = self.device.layout.active;
        let before = self.device.partition_bytes(active);
        let entries = self.device.entries();
        let err = match self.apply() {
            Err(e) => e,
            Ok(applied) => panic!("the update was not refused: {applied:?}"),
        };
        assert!(
            before == self.device.partition_bytes(active),
            "the active slot changed"
        );
        let active_entry = |names: &[String]| {
            names
                .iter()
                .find(|n| n.contains(&format!("-{active}")))
                .cloned()
        };
        assert_eq!(active_entry(&entries), active_entry(&self.device.entries()));
        eprintln!("refused: {err}");
        err
    }
}

fn installed(applied: Applied) -> llamabox_update::install::Report {
    match applied {
        Applied::Installed { report, .. } => report,
        other => panic!("nothing installed: {other:?}"),
    }
}

#[test]
fn updates_alternate_between_slots_and_write_the_exact_release() {
    let mut w = world("alternate");
    assert!(matches!(w.apply().unwrap(), Applied::UpToDate { .. }));

    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    let report = installed(w.apply().unwrap());
    assert_eq!(report.slot, Some(Slot::B));
    assert_eq!(report.entry, "llamabox-3-b+3.efi");
    let slot_b = w.device.partition_bytes(Slot::B);
    let expected = xtask::release::slot_bytes(&v2).unwrap();
    assert!(
        slot_b[..expected.len()] == expected[..],
        "slot B holds the release"
    );
    assert_eq!(
        slot_b[slot_b.len() - MANIFEST_BLOCK_SIZE..],
        v2.slot.manifest_block[..]
    );
    let entry = std::fs::read(w.device.layout.esp.join("EFI/Linux/llamabox-3-b+3.efi")).unwrap();
    assert_eq!(entry, std::fs::read(&v2.uki_b).unwrap());
    assert!(
        !w.device
            .entries()
            .iter()
            .any(|n| n.starts_with("llamabox-1-b")),
        "{:?}",
        w.device.entries()
    );

    // v2 booted (the bootloader blessed it); the next update goes back to slot A.
    w.device.boot_into(Slot::B, "0.2.0");
    let v3 = w.release("0.3.0", 3, None);
    w.publish(&v3);
    let report = installed(w.apply().unwrap());
    assert_eq!(report.slot, Some(Slot::A));
    assert_eq!(report.entry, "llamabox-4-a+3.efi");
    let expected = xtask::release::slot_bytes(&v3).unwrap();
    assert!(w.device.partition_bytes(Slot::A)[..expected.len()] == expected[..]);
}

#[test]
fn a_small_change_downloads_a_small_part() {
    let w = world("delta");
    // v2 = v1 with 20 KiB inserted in the middle of the root filesystem (a grown binary).
    let v2 = w.release("0.2.0", 1, Some((2 << 20, pseudo_random(20 << 10, 99))));
    w.publish(&v2);
    let report = installed(w.apply().unwrap());
    assert_eq!(
        report.total,
        report.in_place + report.copied + report.downloaded
    );
    assert!(
        report.downloaded * 10 <= report.total,
        "downloaded {} of {} bytes",
        report.downloaded,
        report.total
    );
}

#[test]
fn a_broken_connection_resumes_after_the_last_verified_chunk() {
    let w = world("resume");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    w.server.set(Misbehaviour::DropHalfway { times: 3 });
    let report = installed(w.apply().unwrap());
    assert_eq!(
        report.downloaded + report.copied + report.in_place,
        report.total
    );
    let expected = xtask::release::slot_bytes(&v2).unwrap();
    assert!(w.device.partition_bytes(Slot::B)[..expected.len()] == expected[..]);
}

#[test]
fn an_interrupted_install_keeps_what_it_wrote() {
    let w = world("interrupted");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    // The first attempt dies on the data file: the slot is half written, not bootable.
    w.server.set(Misbehaviour::DropHalfway { times: 1000 });
    assert!(w.apply().is_err());
    assert!(
        !w.device.entries().iter().any(|n| n.contains("-b")),
        "{:?}",
        w.device.entries()
    );
    w.server.set(Misbehaviour::None);
    let report = installed(w.apply().unwrap());
    assert!(report.in_place > 0, "{report:?}");
}

#[test]
fn tampered_chunk_is_refused() {
    let w = world("tampered");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    let data = std::fs::read_dir(w.repo.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100_000] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let err = w.refused();
    assert!(matches!(err, Error::TamperedChunk { .. }), "{err}");
    assert!(
        !w.device.entries().iter().any(|n| n.contains("-b")),
        "{:?}",
        w.device.entries()
    );
}

#[test]
fn metadata_signed_by_an_untrusted_key_is_refused() {
    let w = world("untrusted");
    let v2 = w.release("0.2.0", 2, None);
    let stranger = key();
    publish(&w.repo, &w.root, &v2, &RoleKeys::single(&stranger));
    let err = w.refused();
    assert!(
        matches!(
            err,
            Error::Metadata(MetadataError::Threshold { valid: 0, .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&stranger.public().id().to_string()),
        "{err}"
    );
}

#[test]
fn fewer_signatures_than_the_threshold_are_refused() {
    let dir = scratch("threshold");
    let repo = dir.join("repo");
    let (image_key, k1, k2) = (key(), key(), key());
    let (p1, p2) = (k1.public(), k2.public());
    let both = [&p1, &p2];
    let expires = SystemTime::now() + Duration::from_secs(86400 * 30);
    let root_meta = Root::with_keys(1, expires, [(&both, 2), (&both, 2), (&both, 2), (&both, 2)]);
    let root = Signed::sign(&root_meta, &[&k1, &k2]);
    let v1 = fake_release(&dir, BOARD, "0.1.0", 1, None, &image_key);
    let device = TestBox::new(&dir, &v1, &root);
    let two = RoleKeys {
        targets: vec![clone(&k1), clone(&k2)],
        snapshot: vec![clone(&k1), clone(&k2)],
        timestamp: vec![clone(&k1), clone(&k2)],
    };
    publish(&repo, &root, &v1, &two);
    let server = Server::start(&repo);
    assert!(matches!(
        device.updater(&server).check().unwrap(),
        llamabox_update::repository::Check::UpToDate { .. }
    ));
    let v2 = fake_release(&dir, BOARD, "0.2.0", 2, None, &image_key);
    publish(&repo, &root, &v2, &RoleKeys::single(&k1));
    let err = device.updater(&server).check().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Metadata(MetadataError::Threshold {
                valid: 1,
                threshold: 2,
                ..
            })
        ),
        "{err}"
    );
}

fn clone(key: &llamabox_format::SecretKey) -> llamabox_format::SecretKey {
    llamabox_format::SecretKey::parse(&key.to_file("")).unwrap()
}

#[test]
fn an_older_version_is_refused() {
    let mut w = world("rollback");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    installed(w.apply().unwrap());
    w.device.boot_into(Slot::B, "0.2.0");
    let old = w.release("0.1.5", 5, None);
    w.publish(&old);
    let err = w.refused();
    assert!(matches!(err, Error::Rollback { .. }), "{err}");
}

#[test]
fn an_expired_timestamp_is_refused() {
    let w = world("freeze");
    let v2 = w.release("0.2.0", 2, None);
    let target = xtask::release::write_bundle(&w.repo, &v2).unwrap();
    let expired = Lifetimes {
        timestamp: Duration::ZERO,
        ..Lifetimes::default()
    };
    xtask::release::publish(&w.repo, target, &w.keys, expired).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_timestamp_expired(&w.refused());
}

#[test]
fn a_clock_behind_the_image_is_not_believed() {
    let w = world("image-time");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    // The system clock says the week-long timestamp is fresh, and so does a box that
    // knows no better.
    let mut plain = w.device.updater(&w.server);
    plain.check().unwrap();
    // An image made 30 days from now: to the box running it, that timestamp expired
    // long ago, whatever its clock (a box without a real-time clock boots in 1970).
    plain.image_time = Some(SystemTime::now() + Duration::from_secs(30 * 86_400));
    assert_timestamp_expired(&plain.check().unwrap_err());
}

fn assert_timestamp_expired(err: &Error) {
    assert!(
        matches!(
            err,
            Error::Metadata(MetadataError::Expired {
                role: Role::Timestamp,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn a_replayed_old_timestamp_is_refused() {
    let w = world("replay");
    let old_timestamp = std::fs::read(w.repo.join("timestamp.json")).unwrap();
    w.device.updater(&w.server).check().unwrap();
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    w.device.updater(&w.server).check().unwrap();
    std::fs::write(w.repo.join("timestamp.json"), old_timestamp).unwrap();
    let err = w.refused();
    assert!(
        matches!(err, Error::Metadata(MetadataError::VersionRollback { .. })),
        "{err}"
    );
}

#[test]
fn metadata_from_different_snapshots_is_refused() {
    let w = world("mix-and-match");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    // The mirror serves v2's snapshot with targets from the first release under its name.
    let current: Signed<Timestamp> =
        Signed::parse(&std::fs::read(w.repo.join("timestamp.json")).unwrap()).unwrap();
    let snapshot: Signed<Snapshot> = Signed::parse(
        &std::fs::read(
            w.repo
                .join(format!("{}.snapshot.json", current.signed.snapshot.version)),
        )
        .unwrap(),
    )
    .unwrap();
    let newer = snapshot.signed.targets.version;
    std::fs::copy(
        w.repo.join(format!("{}.targets.json", newer - 1)),
        w.repo.join(format!("{newer}.targets.json")),
    )
    .unwrap();
    let err = w.refused();
    assert!(
        matches!(err, Error::Metadata(MetadataError::Mismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("different snapshots"), "{err}");
}

#[test]
fn endless_data_is_cut_off() {
    let w = world("endless");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    for suffix in ["timestamp.json", ".data"] {
        w.server.set(Misbehaviour::Endless(suffix.into()));
        let err = w.refused();
        assert!(err.to_string().contains("endless data"), "{suffix}: {err}");
    }
}

#[test]
fn a_bundle_for_another_board_is_refused() {
    let w = world("other-board");
    // Correctly signed, but the bundle inside was built for another board.
    let other = fake_release(&w.dir, "lx2160a", "0.2.0", 2, None, &w.image_key);
    let mut target = xtask::release::write_bundle(&w.repo, &other).unwrap();
    target.board = BOARD.into();
    xtask::release::publish(&w.repo, target, &w.keys, Lifetimes::default()).unwrap();
    let err = w.refused();
    assert!(err.to_string().contains("lx2160a"), "{err}");
}

/// A leaked timestamp key signs a timestamp with a huge version and the box sees it.
/// Without a reset when the root rotates that key away, every honest timestamp after it
/// would look like a rollback: updates frozen for good (TUF 5.3.11).
#[test]
fn rotating_a_leaked_timestamp_key_unfreezes_updates() {
    let w = world("timestamp-rotation");
    let honest = std::fs::read(w.repo.join("timestamp.json")).unwrap();
    let mut forged = Signed::<Timestamp>::parse(&honest).unwrap().signed;
    forged.version = 1_000_000;
    std::fs::write(
        w.repo.join("timestamp.json"),
        Signed::sign(&forged, &[&w.repo_key]),
    )
    .unwrap();
    w.device.updater(&w.server).check().unwrap();
    std::fs::write(w.repo.join("timestamp.json"), honest).unwrap();

    let new_key = w.rotate_every_role();
    let v2 = w.release("0.2.0", 2, None);
    publish(&w.repo, &w.root, &v2, &RoleKeys::single(&new_key));
    match w.device.updater(&w.server).check().unwrap() {
        llamabox_update::repository::Check::Available { target } => {
            assert_eq!(target.version, "0.2.0")
        }
        other => panic!("the rotated repository's release is not offered: {other:?}"),
    }
}

#[test]
fn a_rotated_out_key_is_refused() {
    let w = world("rotation");
    let new_key = w.rotate_every_role();
    // Signed with the new keys: accepted, and the box now trusts root v2.
    let v2 = w.release("0.2.0", 2, None);
    publish(&w.repo, &w.root, &v2, &RoleKeys::single(&new_key));
    w.device.updater(&w.server).check().unwrap();
    // The old key, rotated out, signs a release: refused.
    let v3 = w.release("0.3.0", 3, None);
    w.publish(&v3);
    let err = w.refused();
    assert!(
        matches!(err, Error::Metadata(MetadataError::Threshold { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("root version 2 does not trust"),
        "{err}"
    );
}

#[test]
fn requests_are_plain_gets_without_identifiers() {
    let w = world("privacy");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    installed(w.apply().unwrap());
    let requests = w.server.requests.lock().unwrap();
    assert!(!requests.is_empty());
    for head in requests.iter() {
        let line = head.lines().next().unwrap();
        assert!(line.starts_with("GET /"), "{line}");
        assert!(!line.contains('?'), "{line}");
        for header in head.lines().skip(1) {
            let name = header.split(':').next().unwrap().to_ascii_lowercase();
            assert!(
                ["host", "user-agent", "accept", "range"].contains(&name.as_str()),
                "unexpected header: {header}"
            );
            if name == "user-agent" {
                assert_eq!(header.trim(), "user-agent: llamabox-update");
            }
        }
    }
}

#[test]
fn a_repository_on_a_usb_stick_gets_the_same_checks() {
    let w = world("offline");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    let stick = w.repo.display().to_string();
    let updater = |mirror: &str| llamabox_update::Updater {
        fetcher: llamabox_update::fetch::Fetcher::new(&[mirror.to_string()]),
        ..w.device.updater(&w.server)
    };
    // Tampered on the stick: refused like from the network.
    let data_files: Vec<_> = std::fs::read_dir(w.repo.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .collect();
    let originals: Vec<Vec<u8>> = data_files
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for (path, original) in data_files.iter().zip(&originals) {
        let mut bad = original.clone();
        for i in (0..bad.len()).step_by(64 << 10) {
            bad[i] ^= 1;
        }
        std::fs::write(path, bad).unwrap();
    }
    let err = updater(&stick)
        .apply(&w.device.layout, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, Error::TamperedChunk { .. }), "{err}");

    for (path, original) in data_files.iter().zip(&originals) {
        std::fs::write(path, original).unwrap();
    }
    let report = installed(
        updater(&format!("file://{stick}"))
            .apply(&w.device.layout, &mut |_, _| {})
            .unwrap(),
    );
    assert_eq!(report.slot, Some(Slot::B));
}

#[test]
fn the_fallback_slot_is_kept_while_the_running_one_is_on_trial() {
    let mut w = world("on-trial");
    let v2 = w.release("0.2.0", 2, None);
    w.publish(&v2);
    installed(w.apply().unwrap());
    // Booted into slot b, which is still on trial (the health gate has not passed).
    w.device.boot_on_trial(Slot::B, "0.2.0");
    let v3 = w.release("0.3.0", 3, None);
    w.publish(&v3);
    let slot_a = w.device.partition_bytes(Slot::A);
    let err = w.apply().unwrap_err();
    assert!(matches!(err, Error::RunningOnTrial { .. }), "{err}");
    assert!(
        slot_a == w.device.partition_bytes(Slot::A),
        "the fallback slot changed"
    );
}
