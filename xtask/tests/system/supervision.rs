//! The supervisor as PID 1 in QEMU, driven through the test agent of the test images.

use std::time::{Duration, Instant};

use crate::common::{TestMachine, BOOT_TIMEOUT, BUSYBOX};
use llamabox_supervisor::state::Snapshot;
use xtask::qemu::Agent;

const TEST_IMAGE: &str = "llamabox-test";
const ANSWER: Duration = Duration::from_secs(30);
/// The services of the test image that start quickly.
const TEST_SERVICES: &[&str] = &["dbus", "test-agent", "test-idle"];

fn state(agent: &mut Agent) -> Snapshot {
    let lines = agent.command("state", ANSWER).unwrap();
    let json = lines
        .iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON state line");
    serde_json::from_str(json).unwrap()
}

fn wait_state(agent: &mut Agent, what: &str, check: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let start = Instant::now();
    loop {
        let s = state(agent);
        if check(&s) {
            return s;
        }
        assert!(
            start.elapsed() < BOOT_TIMEOUT,
            "timed out waiting for {what}: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn services_come_up_and_a_killed_service_comes_back() {
    let mut vm = TestMachine::with_image("services-restart", TEST_IMAGE);
    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    // The product's inference service loads its model meanwhile (minutes under TCG);
    // it is not critical, and these tests are about the others.
    let s = wait_state(&mut agent, "the test services ready", |s| {
        s.healthy
            && TEST_SERVICES
                .iter()
                .all(|n| s.service(n).is_some_and(|x| x.ready))
    });
    let names: Vec<&str> = s.services.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dbus",
            "gateway",
            "inference",
            "network",
            "release-check",
            "test-agent",
            "test-idle",
            "update",
            "usb-gadget",
            "usb-host",
            "voice"
        ]
    );
    assert!(!s.service("inference").unwrap().critical);
    // A factory image's first boot has no blessed release to fall back to: nothing to
    // check, ready at once.
    let check = s.service("release-check").unwrap();
    assert!(check.critical && check.ready, "{check:?}");
    assert!(
        check
            .status
            .as_deref()
            .is_some_and(|s| s.contains("nothing to check")),
        "{check:?}"
    );
    let idle = s.service("test-idle").unwrap();
    assert!(idle.critical && idle.starts == 1, "{idle:?}");

    let reply = agent.command("kill test-idle SIGKILL", ANSWER).unwrap();
    assert!(
        reply
            .iter()
            .any(|l| l.starts_with("sent SIGKILL to test-idle")),
        "{reply:?}"
    );
    let s = wait_state(&mut agent, "test-idle restarted", |s| {
        s.service("test-idle")
            .is_some_and(|x| x.starts == 2 && x.ready)
    });
    let idle = s.service("test-idle").unwrap();
    assert_eq!(idle.last_exit.as_deref(), Some("killed by SIGKILL"));
    machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
}

#[test]
fn llamabox_cli_controls_services_over_d_bus() {
    let mut vm = TestMachine::with_image("cli-over-dbus", TEST_IMAGE);
    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    machine
        .wait_for(
            "serving org.llamabox.Supervisor1 on the system bus",
            BOOT_TIMEOUT,
        )
        .unwrap();
    wait_state(&mut agent, "all services ready", |s| s.healthy);

    let status = agent
        .command("exec /usr/bin/llamabox status", ANSWER)
        .unwrap();
    for service in TEST_SERVICES {
        let row = status
            .iter()
            .find(|l| l.starts_with(service))
            .unwrap_or_else(|| panic!("no row for {service} in {status:#?}"));
        assert!(row.contains("running") && row.contains("yes"), "{row}");
    }

    // The bus is default-deny (overlays/dbus/…/dbus-system.conf): a service running as
    // its own user, if compromised, calls nothing on the box's names. Root can, above.
    for command in ["restart test-idle", "reboot", "status", "update status"] {
        let err = agent
            .command(
                &format!("exec-as inference /usr/bin/llamabox {command}"),
                ANSWER,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AccessDenied") || err.contains("Rejected send message"),
            "{command} as inference: {err}"
        );
    }
    the_esp_is_roots_alone(&mut agent);

    agent
        .command("exec /usr/bin/llamabox restart test-idle", ANSWER)
        .unwrap();
    wait_state(&mut agent, "test-idle restarted on request", |s| {
        s.service("test-idle")
            .is_some_and(|x| x.starts == 2 && x.ready)
    });
    agent
        .command("exec /usr/bin/llamabox stop test-idle", ANSWER)
        .unwrap();
    let s = wait_state(&mut agent, "test-idle stopped", |s| {
        s.service("test-idle").is_some_and(|x| x.state == "stopped")
    });
    assert!(
        !s.healthy,
        "a stopped critical service leaves the system unhealthy"
    );
    agent
        .command("exec /usr/bin/llamabox start test-idle", ANSWER)
        .unwrap();
    wait_state(&mut agent, "test-idle started again", |s| {
        s.service("test-idle")
            .is_some_and(|x| x.starts == 3 && x.ready)
    });

    let err = agent
        .command("exec /usr/bin/llamabox restart no-such-service", ANSWER)
        .unwrap_err();
    assert!(
        err.to_string().contains("no service `no-such-service`"),
        "{err}"
    );
    let logs = agent
        .command("exec /usr/bin/llamabox logs supervisor -n 200", ANSWER)
        .unwrap();
    assert!(
        logs.iter()
            .any(|l| l.contains("request: Restart(\"test-idle\")")),
        "{logs:#?}"
    );
    let kernel = agent
        .command("exec /usr/bin/llamabox logs kernel -n 5", ANSWER)
        .unwrap();
    assert!(kernel.len() >= 5, "{kernel:#?}");

    // The bus broker crashes: the supervisor restarts it and serves its interface again.
    agent.command("kill dbus SIGKILL", ANSWER).unwrap();
    machine
        .wait_for("lost the system bus", BOOT_TIMEOUT)
        .unwrap();
    let start = Instant::now();
    loop {
        let console = machine.console();
        if console.matches("serving org.llamabox.Supervisor1").count() >= 2 {
            break;
        }
        assert!(
            start.elapsed() < BOOT_TIMEOUT,
            "the interface did not come back\n{console}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = agent
        .command("exec /usr/bin/llamabox status", ANSWER)
        .unwrap();
    assert!(status.iter().any(|l| l.starts_with("dbus")), "{status:#?}");
}

/// `s_feature_incompat` of the ext4 superblock at `offset`: bit 0x4 (RECOVER) is set
/// while the filesystem is mounted and cleared by a clean unmount.
fn ext4_needs_recovery(vm: &TestMachine, offset: u64) -> bool {
    let sb = vm.read_at(offset + 1024, 1024);
    assert_eq!(&sb[56..58], &[0x53, 0xEF], "no ext4 superblock");
    let incompat = u32::from_le_bytes(sb[96..100].try_into().unwrap());
    incompat & 0x4 != 0
}

#[test]
fn sigterm_to_pid_1_powers_off_cleanly() {
    let mut vm = TestMachine::with_image("sigterm-pid1", TEST_IMAGE);
    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    wait_state(&mut agent, "all services ready", |s| s.healthy);
    let (data, _) = vm.partition("llamabox-data");
    assert!(
        ext4_needs_recovery(&vm, data),
        "the mounted data partition should be marked in use"
    );

    // The shutdown this starts stops the agent too, so its answer may never arrive:
    // the evidence is the machine powering off and what the console says.
    let _ = agent.command("signal-pid1 SIGTERM", ANSWER);
    let status = machine.wait_exit(BOOT_TIMEOUT).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    let console = machine.console();
    for needle in [
        "shutdown requested (PowerOff)",
        "test-idle: stopped",
        "test-agent: stopped",
        "all services stopped",
        "data partition unmounted",
        "powering off",
    ] {
        assert!(console.contains(needle), "no `{needle}` in\n{console}");
    }
    assert!(
        console.find("test-idle: stopping").unwrap()
            < console.find("test-agent: stopping").unwrap(),
        "test-idle comes after test-agent, so it must stop first"
    );
    assert!(
        !ext4_needs_recovery(&vm, data),
        "the data partition was not unmounted cleanly"
    );
}

#[test]
fn a_broken_critical_service_leaves_the_slot_unblessed_and_slot_b_boots() {
    let mut vm = TestMachine::with_image("broken-critical", TEST_IMAGE);
    // Slot A gets the broken image's root filesystem (same kernel, initramfs and
    // keys, so the ESP entries are unchanged); slot B keeps the good one.
    let broken = crate::common::built_image("llamabox-test-broken");
    let (slot_a, size) = vm.partition("llamabox-a");
    let mut bytes = vec![0u8; size as usize];
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&broken).unwrap();
        f.seek(SeekFrom::Start(slot_a)).unwrap();
        f.read_exact(&mut bytes).unwrap();
    }
    vm.write_at(slot_a, &bytes);

    let mut machine = vm.boot();
    let console = machine
        .wait_for("slot b blessed", BOOT_TIMEOUT * 3)
        .unwrap();
    let attempts = console.matches("llamabox-stage1: booting slot a").count();
    assert_eq!(
        attempts, 3,
        "slot A should get exactly the board's 3 tries\n{console}"
    );
    assert_eq!(
        console.matches("not healthy 25 s after start").count(),
        3,
        "{console}"
    );
    assert!(!console.contains("slot a blessed"), "{console}");
    assert!(
        console.contains("llamabox-init: stage 2 reached: slot b"),
        "{console}"
    );
}

/// FAT has no owners or modes: whoever mounts the ESP decides who reads it. Mounted as
/// the box's code mounts it (`MountedEsp`: stage 1, PID 1, the update service), every
/// file is root's alone — boot entries, and on a provisioned box `device.json` with the
/// setup code — and a service's user can neither list nor read it.
fn the_esp_is_roots_alone(agent: &mut Agent) {
    const AT: &str = "/run/test-esp";
    agent.command(&format!("mount-esp {AT}"), ANSWER).unwrap();
    let entries = agent
        .command(&format!("exec {BUSYBOX} ls {AT}/EFI/Linux"), ANSWER)
        .unwrap();
    let entry = format!("{AT}/EFI/Linux/{}", entries.first().expect("a boot entry"));
    let modes = agent
        .command(
            &format!("exec {BUSYBOX} stat -c %a:%u {AT} {AT}/EFI/Linux {entry}"),
            ANSWER,
        )
        .unwrap();
    assert_eq!(modes, ["700:0", "700:0", "600:0"], "{entry}");
    for command in [
        format!("{BUSYBOX} ls {AT}"),
        format!("{BUSYBOX} cat {entry}"),
    ] {
        let err = agent
            .command(&format!("exec-as inference {command}"), ANSWER)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Permission denied"),
            "{command} as inference: {err}"
        );
    }
    agent
        .command(&format!("exec {BUSYBOX} umount {AT}"), ANSWER)
        .unwrap();
}
