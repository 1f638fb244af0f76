//! Over-the-air updates in QEMU: the test image (v0.1.0) pulls releases from a
//! repository the host serves on loopback (the guest reaches it as 10.0.2.2), installs
//! them into its inactive slot and boots them.

use std::path::Path;
use std::time::Duration;

use crate::common::repository::{publish, release_parts};
use crate::common::{TestMachine, BOOT_TIMEOUT};
use xtask::build::ReleaseParts;
use xtask::project::Project;
use xtask::qemu::Agent;
use xtask::release;
use xtask::serve::Server;

/// Hashing and writing a 110 MB slot under TCG.
const APPLY_TIMEOUT: Duration = Duration::from_secs(900);
const TEST_IMAGE: &str = "llamabox-test";

fn update(agent: &mut Agent, server: &Server, verb: &str) -> Result<Vec<String>, String> {
    let command = format!(
        "exec /usr/bin/llamabox-update --repo http://10.0.2.2:{} {verb}",
        server.port()
    );
    agent
        .command(&command, APPLY_TIMEOUT)
        .map_err(|e| format!("{e:#}"))
}

fn boot_info(agent: &mut Agent) -> String {
    agent
        .command("cat /run/llamabox/boot", Duration::from_secs(30))
        .unwrap()
        .join("\n")
}

/// Powers the box off cleanly (SIGTERM to PID 1) and waits for QEMU to exit.
fn power_off(agent: &mut Agent, machine: &mut xtask::qemu::Machine) {
    // The agent may be stopped before its answer gets out: the power-off is the answer.
    let _ = agent.command("signal-pid1 SIGTERM", Duration::from_secs(30));
    machine.wait_exit(Duration::from_secs(120)).unwrap();
}

/// Installs the repository's release and checks the client's report names `installed`
/// (e.g. "installed 0.2.0 as llamabox-3-b+3.efi"); prints it with the time it took.
fn apply_expecting(agent: &mut Agent, server: &Server, installed: &str) {
    let started = std::time::Instant::now();
    let out = update(agent, server, "apply").unwrap().join("\n");
    eprintln!("{out}\napply took {:.1} s", started.elapsed().as_secs_f32());
    assert!(out.contains(installed), "{out}");
}

/// Boots, checks the box runs `version` from `slot`, and waits for the slot's blessing.
fn boot_expecting(
    vm: &mut TestMachine,
    slot: &str,
    version: &str,
) -> (xtask::qemu::Machine, Agent) {
    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    let info = boot_info(&mut agent);
    assert!(
        info.contains(&format!("slot={slot}")) && info.contains(&format!("version={version}")),
        "{info}"
    );
    machine
        .wait_for(&format!("slot {slot} blessed"), BOOT_TIMEOUT)
        .unwrap();
    (machine, agent)
}

// Named to start early among the update tests (libtest runs them in name order): with
// two boots through the release check it is one of the longest.
#[test]
fn an_update_installs_into_the_other_slot_and_the_next_one_comes_back() {
    let mut vm = TestMachine::with_image("update-ab", TEST_IMAGE);
    let repo = vm.dir.join("repo");
    publish(&repo, "llamabox-test-v2");
    let server = Server::start(&repo);

    let (mut machine, mut agent) = boot_expecting(&mut vm, "a", "0.1.0");
    apply_expecting(&mut agent, &server, "installed 0.2.0 as llamabox-3-b+3.efi");
    power_off(&mut agent, &mut machine);

    let (mut machine, mut agent) = boot_expecting(&mut vm, "b", "0.2.0");
    let status = update(&mut agent, &server, "status").unwrap().join("\n");
    assert!(status.contains("updated to 0.2.0"), "{status}");
    publish(&repo, "llamabox-test-v3");
    // Most of v3 is already on the box (v2 in the active slot).
    apply_expecting(&mut agent, &server, "installed 0.3.0 as llamabox-4-a+3.efi");
    power_off(&mut agent, &mut machine);

    boot_expecting(&mut vm, "a", "0.3.0");
}

#[test]
fn a_release_that_never_becomes_healthy_is_rolled_back() {
    let mut vm = TestMachine::with_image("update-rollback", TEST_IMAGE);
    let repo = vm.dir.join("repo");
    // v0.2.0 with a critical service that never reports ready.
    publish(&repo, "llamabox-test-broken-v2");
    let server = Server::start(&repo);

    let (mut machine, mut agent) = boot_expecting(&mut vm, "a", "0.1.0");
    apply_expecting(&mut agent, &server, "installed 0.2.0 as llamabox-3-b+3.efi");
    power_off(&mut agent, &mut machine);

    // Slot b gets the board's tries, each ending at the health gate's deadline; then
    // the bootloader falls back to slot a.
    fell_back_from_0_2_0(&mut vm);
}

/// Boots a box whose slot b holds a refused 0.2.0: waits until the bootloader has fallen
/// back to slot a (0.1.0) and its status says so. Returns the console and the status.
fn fell_back_from_0_2_0(vm: &mut TestMachine) -> (String, String) {
    let mut machine = vm.boot();
    let console = machine
        .wait_for("slot a already blessed", BOOT_TIMEOUT * 4)
        .unwrap();
    assert!(
        console.contains("stage 2 reached: slot b, version 0.2.0"),
        "{console}"
    );
    let mut agent = xtask::qemu::Agent::connect(&vm.agent_socket()).unwrap();
    let status = agent
        .command(
            "exec /usr/bin/llamabox update status",
            Duration::from_secs(60),
        )
        .unwrap()
        .join("\n");
    eprintln!("{status}");
    assert!(status.contains("running 0.1.0 from slot a"), "{status}");
    assert!(
        status.contains("update to 0.2.0 failed") && status.contains("fell back to slot a"),
        "{status}"
    );
    (console, status)
}

/// The semantic health gate: v0.2.0 starts every service, but its model answers
/// garbage (its inference service overrides the GGUF's rope base, like a broken
/// conversion). The release check refuses each try at once, the bootloader falls back,
/// and the status (the phone shows the same `last-result`) says why.
#[test]
fn a_release_whose_model_answers_wrongly_is_rolled_back() {
    let mut vm = TestMachine::with_image("update-wrong-answers", TEST_IMAGE);
    let repo = vm.dir.join("repo");
    publish(&repo, "llamabox-test-wrong-answers-v2");
    let server = Server::start(&repo);

    let (mut machine, mut agent) = boot_expecting(&mut vm, "a", "0.1.0");
    // This time through the update service on the system bus, as the phone does: while
    // its install runs, a check and a second install are refused, naming what runs.
    crate::common::files::write(
        &mut agent,
        "/etc/llamabox/local/update.toml",
        format!(
            "mirrors = [\"http://10.0.2.2:{}\"]\ncheck-interval-minutes = 0\n",
            server.port()
        )
        .as_bytes(),
    );
    let apply = agent
        .command(
            "spawn /usr/bin/llamabox update apply",
            Duration::from_secs(30),
        )
        .unwrap()
        .join("\n");
    assert!(apply.starts_with("pid "), "{apply}");
    let status = |agent: &mut Agent| {
        agent
            .command(
                "exec /usr/bin/llamabox update status",
                Duration::from_secs(60),
            )
            .unwrap()
            .join("\n")
    };
    let started = std::time::Instant::now();
    while !status(&mut agent).contains("phase: installing") {
        assert!(
            started.elapsed() < APPLY_TIMEOUT,
            "the install never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (verb, refusal) in [
        ("check", "cannot start a check: an install is running"),
        ("apply", "cannot start an install: an install is running"),
    ] {
        // Refused: the command fails, with the service's reason.
        let answer = match agent.command(
            &format!("exec /usr/bin/llamabox update {verb}"),
            Duration::from_secs(60),
        ) {
            Ok(lines) => lines.join("\n"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            answer.contains(refusal),
            "{verb} during an install: {answer}"
        );
    }
    let mut last = String::new();
    while !last.contains("pending: 0.2.0 in slot b") {
        assert!(
            started.elapsed() < APPLY_TIMEOUT,
            "the install never ended: {last}"
        );
        std::thread::sleep(Duration::from_secs(2));
        last = status(&mut agent);
    }
    eprintln!("{last}\ninstall took {:.1?}", started.elapsed());
    power_off(&mut agent, &mut machine);

    let (console, status) = fell_back_from_0_2_0(&mut vm);
    assert!(
        console.contains("the language model answered the golden prompt wrongly"),
        "{console}"
    );
    assert!(
        status.contains("release-check: the language model answered the golden prompt wrongly")
            && status.contains("expected \"Paris\"")
            && status.contains("fell back to slot a"),
        "{status}"
    );
}

/// Power cuts during an update: QEMU is killed at a random moment of `apply` (metadata,
/// indexing, writing the slot, its manifest, the boot entry); the next boot must reach a
/// good slot, and a retried update must complete. Three points by default, twenty with
/// `cargo xtask test --soak`; `LLAMABOX_POWER_CUT_SEED` replays a run.
// Named to start early among the update tests (libtest runs them in name order): it is
// one of the longest, and started late it ran alone at the end of the suite.
#[test]
fn a_power_cut_anywhere_in_an_update_leaves_a_bootable_box() {
    let soak = std::env::var("LLAMABOX_SOAK").is_ok_and(|v| v == "1");
    let points = if soak { 20 } else { 3 };
    let seed: u64 = std::env::var("LLAMABOX_POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    eprintln!("power cuts: {points} points, LLAMABOX_POWER_CUT_SEED={seed}");
    let mut random = seed | 1;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let repo = Project::locate()
        .build_dir()
        .join("tests/update-power-cut-repo");
    let _ = std::fs::remove_dir_all(&repo);
    publish(&repo, "llamabox-test-v2");
    let server = Server::start(&repo);

    for point in 0..points {
        // Spread over the whole apply, jittered.
        let stratum = APPLY_WINDOW.as_millis() as u64 / points as u64;
        let delay = Duration::from_millis(stratum * point as u64 + next() % stratum.max(1));
        let mut vm = TestMachine::with_image(&format!("update-power-cut-{point}"), TEST_IMAGE);
        let mut machine = vm.boot();
        let mut agent = vm.agent(&mut machine);
        machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
        let cut = update_with_timeout(&mut agent, &server, delay);
        machine.kill();
        eprintln!(
            "point {point}: power cut {:.1} s into apply ({})",
            delay.as_secs_f32(),
            if cut {
                "during it"
            } else {
                "after it finished"
            }
        );

        let mut machine = vm.boot();
        let console = machine
            .wait_for_any(&["slot a already blessed", "slot b blessed"], BOOT_TIMEOUT)
            .unwrap()
            .1;
        let mut agent = vm.agent(&mut machine);
        let info = boot_info(&mut agent);
        let good = (info.contains("slot=a") && info.contains("version=0.1.0"))
            || (info.contains("slot=b") && info.contains("version=0.2.0"));
        assert!(good, "point {point}: booted {info}\n{console}");
        if info.contains("slot=a") {
            let out = update(&mut agent, &server, "apply")
                .unwrap_or_else(|e| panic!("point {point}: retried update failed: {e}"))
                .join("\n");
            assert!(out.contains("installed 0.2.0"), "point {point}: {out}");
        }
        machine.kill();
    }
}

/// How long an apply takes under TCG here (measured: ~9 s for v0.1.0 -> v0.2.0 of the
/// test image), for spreading the power cuts over it.
const APPLY_WINDOW: Duration = Duration::from_secs(9);

/// Starts `apply` and gives up waiting after `limit`: true if it was still running.
fn update_with_timeout(agent: &mut Agent, server: &Server, limit: Duration) -> bool {
    let command = format!(
        "exec /usr/bin/llamabox-update --repo http://10.0.2.2:{} apply",
        server.port()
    );
    agent.command(&command, limit).is_err()
}

/// One attack: its name and the text its refusal must contain.
struct Attack {
    name: &'static str,
    expect: &'static str,
}

/// Every attack of docs/updates.md against the booted box, each from its own repository
/// and with its own client state; then, with the box off, its active slot is compared
/// byte for byte with the image it was flashed with.
#[test]
fn attacks_are_refused_and_the_active_slot_is_untouched() {
    use llamabox_format::update::{Root, Signed, Snapshot, Timestamp};
    use llamabox_format::SecretKey;

    let project = Project::locate();
    let mut vm = TestMachine::with_image("update-attacks", TEST_IMAGE);
    let dev = xtask::keys::read_secret(&project.keys_dir().join(xtask::keys::DEV_SECRET)).unwrap();
    let dev_keys = || release::RoleKeys::single(&dev);
    let v2 = release_parts("llamabox-test-v2");
    let old = release_parts("llamabox-test-old");
    let fresh = |name: &str| {
        let repo = vm.dir.join(format!("repo-{name}"));
        let _ = std::fs::remove_dir_all(&repo);
        release::init_repo(&repo, &release::trusted_root(&project).unwrap()).unwrap();
        repo
    };
    let publish_parts = |repo: &Path, parts: &ReleaseParts, keys: &release::RoleKeys| {
        let target = release::write_bundle(repo, parts).unwrap();
        release::publish(repo, target, keys, release::Lifetimes::default()).unwrap();
    };
    let expires = std::time::SystemTime::now() + Duration::from_secs(86400 * 30);
    let mut attacks: Vec<(Attack, std::path::PathBuf, Server)> = Vec::new();
    let mut add = |attack: Attack, repo: std::path::PathBuf| {
        let server = Server::start(&repo);
        attacks.push((attack, repo, server));
    };

    // A chunk altered on the server: every 64 KiB of the data file has a flipped bit.
    let repo = fresh("tampered");
    publish_parts(&repo, &v2, &dev_keys());
    for entry in std::fs::read_dir(repo.join("bundles")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "data") {
            let mut bytes = std::fs::read(&path).unwrap();
            for i in (0..bytes.len()).step_by(64 << 10) {
                bytes[i] ^= 1;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
    add(
        Attack {
            name: "tampered chunk",
            expect: "does not match its signed hash",
        },
        repo,
    );

    // Metadata signed by a key the box does not trust.
    let repo = fresh("untrusted");
    let stranger = SecretKey::generate(&mut rand_core::OsRng);
    publish_parts(&repo, &v2, &release::RoleKeys::single(&stranger));
    add(
        Attack {
            name: "untrusted key",
            expect: "does not trust",
        },
        repo,
    );

    // A root (properly rotated) that wants two signatures; only one signs.
    let repo = fresh("threshold");
    let second = SecretKey::generate(&mut rand_core::OsRng);
    let (p1, p2) = (dev.public(), second.public());
    let both = [&p1, &p2];
    let root2 = Root::with_keys(2, expires, [(&both, 2), (&both, 2), (&both, 2), (&both, 2)]);
    release::rotate_root(&repo, &root2, &[&dev, &second]).unwrap();
    publish_parts(&repo, &v2, &dev_keys());
    add(
        Attack {
            name: "below the threshold",
            expect: "1 valid signature(s)",
        },
        repo,
    );

    // An older release than the box runs.
    let repo = fresh("rollback");
    publish_parts(&repo, &old, &dev_keys());
    add(
        Attack {
            name: "rollback",
            expect: "never goes back",
        },
        repo,
    );

    // A timestamp that has expired (a frozen mirror).
    let repo = fresh("freeze");
    let target = release::write_bundle(&repo, &v2).unwrap();
    let expired = release::Lifetimes {
        timestamp: Duration::ZERO,
        ..release::Lifetimes::default()
    };
    release::publish(&repo, target, &dev_keys(), expired).unwrap();
    add(
        Attack {
            name: "freeze",
            expect: "expired",
        },
        repo,
    );

    // The current snapshot with an older targets file under its name.
    let repo = fresh("mix-and-match");
    publish_parts(&repo, &old, &dev_keys());
    publish_parts(&repo, &v2, &dev_keys());
    let timestamp: Signed<Timestamp> =
        Signed::parse(&std::fs::read(repo.join("timestamp.json")).unwrap()).unwrap();
    let snapshot_name = format!("{}.snapshot.json", timestamp.signed.snapshot.version);
    let snapshot: Signed<Snapshot> =
        Signed::parse(&std::fs::read(repo.join(snapshot_name)).unwrap()).unwrap();
    let newer = snapshot.signed.targets.version;
    std::fs::copy(
        repo.join(format!("{}.targets.json", newer - 1)),
        repo.join(format!("{newer}.targets.json")),
    )
    .unwrap();
    add(
        Attack {
            name: "mix-and-match",
            expect: "different snapshots",
        },
        repo,
    );

    // A server that never stops sending.
    let repo = fresh("endless");
    publish_parts(&repo, &v2, &dev_keys());
    add(
        Attack {
            name: "endless data",
            expect: "endless data",
        },
        repo,
    );

    // A correctly signed target whose bundle was built for another board.
    let repo = fresh("other-board");
    let other = ReleaseParts {
        board: "lx2160a".into(),
        version: v2.version.clone(),
        slot: v2.slot.clone(),
        uki_a: v2.uki_a.clone(),
        uki_b: v2.uki_b.clone(),
    };
    let mut target = release::write_bundle(&repo, &other).unwrap();
    target.board = crate::common::board_name();
    release::publish(&repo, target, &dev_keys(), release::Lifetimes::default()).unwrap();
    add(
        Attack {
            name: "another board",
            expect: "lx2160a",
        },
        repo,
    );

    // The development key rotated out by root version 2, then signing a release.
    let repo = fresh("rotated-out");
    let replacement = SecretKey::generate(&mut rand_core::OsRng);
    let root2 = Root::with_keys(2, expires, [(&[&replacement.public()], 1); 4]);
    release::rotate_root(&repo, &root2, &[&dev, &replacement]).unwrap();
    publish_parts(&repo, &v2, &dev_keys());
    add(
        Attack {
            name: "rotated-out key",
            expect: "root version 2 does not trust",
        },
        repo,
    );

    for (attack, _, server) in &attacks {
        if attack.name == "endless data" {
            server.set(xtask::serve::Misbehaviour::Endless("timestamp.json".into()));
        }
    }
    std::thread::sleep(Duration::from_millis(1100)); // the freeze repository's timestamp expires
    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
    let mut failures = Vec::new();
    for (i, (attack, _, server)) in attacks.iter().enumerate() {
        let command = format!(
            "exec /usr/bin/llamabox-update --state /run/update-attack-{i} --repo http://10.0.2.2:{} apply",
            server.port()
        );
        match agent.command(&command, APPLY_TIMEOUT) {
            Ok(out) => failures.push(format!("{}: not refused: {out:?}", attack.name)),
            Err(e) => {
                let e = format!("{e:#}");
                eprintln!("{}: refused: {e}", attack.name);
                if !e.contains(attack.expect) {
                    failures.push(format!(
                        "{}: expected `{}` in: {e}",
                        attack.name, attack.expect
                    ));
                }
            }
        }
    }
    power_off(&mut agent, &mut machine);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing was written to the active slot (a): compare with the flashed image.
    let (offset, size) = vm.partition("llamabox-a");
    let image = crate::common::built_image(TEST_IMAGE);
    let read = |path: &Path| {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut bytes = vec![0; size as usize];
        f.read_exact(&mut bytes).unwrap();
        bytes
    };
    assert!(read(&vm.disk) == read(&image), "the active slot changed");
}
