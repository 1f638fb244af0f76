//! Over-the-air updates in QEMU: the test image (v0.1.0) pulls releases from a
//! repository the host serves on loopback (the guest reaches it as 10.0.2.2), installs
//! them into its inactive slot and boots them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestMachine, BOOT_TIMEOUT};
use xtask::build::{self, BuildOptions, ReleaseParts};
use xtask::project::Project;
use xtask::qemu::Agent;
use xtask::release;
use xtask::serve::Server;

/// Hashing and writing a 110 MB slot under TCG.
const APPLY_TIMEOUT: Duration = Duration::from_secs(900);
const TEST_IMAGE: &str = "llamabox-test";

fn release_parts(image: &str) -> ReleaseParts {
    let _building = common::BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let options = BuildOptions {
        board: common::board_name(),
        image: image.into(),
        out_dir: None,
        cache_dir: None,
    };
    build::build(&Project::locate(), &options)
        .expect("building the release image")
        .release
        .expect("a build has release parts")
}

/// Publishes `image` into the repository at `repo` (created on first use), signed with
/// the development keys the test images trust.
fn publish(repo: &Path, image: &str) {
    let project = Project::locate();
    if !repo.join("root.json").exists() {
        release::init_repo(repo, &release::trusted_root(&project).unwrap()).unwrap();
    }
    let target = release::write_bundle(repo, &release_parts(image)).unwrap();
    let keys = release::RoleKeys::load(&project).unwrap();
    release::publish(repo, target, &keys, release::Lifetimes::default()).unwrap();
}

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

#[test]
fn updates_install_into_the_other_slot_and_the_next_one_comes_back() {
    let mut vm = TestMachine::with_image("update-ab", TEST_IMAGE);
    let repo = vm.dir.join("repo");
    publish(&repo, "llamabox-test-v2");
    let server = Server::start(&repo);

    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
    let out = update(&mut agent, &server, "apply").unwrap().join("\n");
    eprintln!("{out}");
    assert!(
        out.contains("installed 0.2.0 as llamabox-3-b+3.efi"),
        "{out}"
    );
    power_off(&mut agent, &mut machine);

    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    let info = boot_info(&mut agent);
    assert!(
        info.contains("slot=b") && info.contains("version=0.2.0"),
        "{info}"
    );
    machine.wait_for("slot b blessed", BOOT_TIMEOUT).unwrap();
    let status = update(&mut agent, &server, "status").unwrap().join("\n");
    assert!(status.contains("updated to 0.2.0"), "{status}");

    publish(&repo, "llamabox-test-v3");
    let started = std::time::Instant::now();
    let out = update(&mut agent, &server, "apply").unwrap().join("\n");
    eprintln!("{out}\napply took {:.1} s", started.elapsed().as_secs_f32());
    assert!(
        out.contains("installed 0.3.0 as llamabox-4-a+3.efi"),
        "{out}"
    );
    // Most of v3 is already on the box (v2 in the active slot).
    power_off(&mut agent, &mut machine);

    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    let info = boot_info(&mut agent);
    assert!(
        info.contains("slot=a") && info.contains("version=0.3.0"),
        "{info}"
    );
    machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
}

#[test]
fn a_release_that_never_becomes_healthy_is_rolled_back() {
    let mut vm = TestMachine::with_image("update-rollback", TEST_IMAGE);
    let repo = vm.dir.join("repo");
    // v0.2.0 with a critical service that never reports ready.
    publish(&repo, "llamabox-test-broken-v2");
    let server = Server::start(&repo);

    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
    let out = update(&mut agent, &server, "apply").unwrap().join("\n");
    assert!(
        out.contains("installed 0.2.0 as llamabox-3-b+3.efi"),
        "{out}"
    );
    power_off(&mut agent, &mut machine);

    // Slot b gets the board's tries, each ending at the health gate's deadline; then
    // the bootloader falls back to slot a.
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
}

/// Power cuts during an update: QEMU is killed at a random moment of `apply` (metadata,
/// indexing, writing the slot, its manifest, the boot entry); the next boot must reach a
/// good slot, and a retried update must complete. Three points by default, twenty with
/// `cargo xtask test --soak`; `LLAMABOX_POWER_CUT_SEED` replays a run.
#[test]
fn power_cuts_during_an_update_leave_a_bootable_box() {
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
