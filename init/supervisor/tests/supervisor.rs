//! Host tests with real child processes: the supervisor binary runs as a child
//! subreaper over service files written by each test, and the tests read its state file,
//! its logs and /proc. Assertions are about order and outcomes, never about speed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use llamabox_supervisor::logs;
use llamabox_supervisor::state::Snapshot;

const PATIENCE: Duration = Duration::from_secs(120);

/// Sends READY=1 (and a status) the way sd_notify does.
const NOTIFY_READY: &str = "/usr/bin/python3 -c \"import os,socket; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'STATUS=up\\nREADY=1', os.environ['NOTIFY_SOCKET'])\"";

struct Harness {
    dir: PathBuf,
    child: Option<Child>,
}

impl Harness {
    fn new(name: &str) -> Harness {
        let dir =
            std::env::temp_dir().join(format!("llamabox-supervisor-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("services")).unwrap();
        Harness { dir, child: None }
    }

    fn service(&self, name: &str, toml: &str) {
        std::fs::write(self.dir.join("services").join(format!("{name}.toml")), toml).unwrap();
    }

    /// A service running `script` under /bin/sh, with extra TOML lines.
    fn shell(&self, name: &str, script: &str, extra: &str) {
        let script = script.replace('\\', "\\\\").replace('"', "\\\"");
        self.service(
            name,
            &format!("description = \"test {name}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"{script}\"]\n{extra}\n"),
        );
    }

    fn start(&mut self, extra_args: &[&str]) {
        let child = Command::new(env!("CARGO_BIN_EXE_llamabox-supervisor"))
            .arg("--services")
            .arg(self.dir.join("services"))
            .arg("--log-dir")
            .arg(self.dir.join("logs"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--state-file")
            .arg(self.state_path())
            .args(extra_args)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn state(&self) -> Option<Snapshot> {
        Snapshot::read(&self.state_path()).ok()
    }

    /// Waits until `check` holds for the supervisor's state; returns that state.
    fn wait_until(&self, what: &str, check: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let start = Instant::now();
        loop {
            if let Some(s) = self.state() {
                if check(&s) {
                    return s;
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {what}; state: {:#?}",
                self.state()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends SIGTERM and waits for the supervisor to exit.
    fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "supervisor did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_lines(&self, name: &str) -> Vec<String> {
        logs::read_lines(&self.dir.join("logs"), name).unwrap_or_default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ready(s: &Snapshot, name: &str) -> bool {
    s.service(name).is_some_and(|x| x.ready)
}

#[test]
fn dependencies_start_in_order_and_independent_services_in_parallel() {
    let mut h = Harness::new("order");
    h.shell(
        "a",
        &format!("sleep 0.3; {NOTIFY_READY}; exec sleep 1000"),
        "ready = \"notify\"",
    );
    h.shell("b", "exec sleep 1000", "requires = [\"a\"]");
    h.shell("c", "exec sleep 1000", "after = [\"b\"]");
    h.shell("d", "exec sleep 1000", "");
    h.start(&[]);
    let s = h.wait_until("a, b, c and d ready", |s| {
        ["a", "b", "c", "d"].iter().all(|n| ready(s, n))
    });
    let (a, b, c, d) = (
        s.service("a").unwrap(),
        s.service("b").unwrap(),
        s.service("c").unwrap(),
        s.service("d").unwrap(),
    );
    assert!(
        b.started_at_ms.unwrap() >= a.ready_at_ms.unwrap(),
        "b started before a was ready"
    );
    assert!(
        c.started_at_ms.unwrap() >= b.ready_at_ms.unwrap(),
        "c started before b was ready"
    );
    assert!(
        d.started_at_ms.unwrap() <= a.ready_at_ms.unwrap(),
        "d waited for a, which it does not depend on"
    );
    assert_eq!(a.status.as_deref(), Some("up"));
    h.stop();
}

#[test]
fn readiness_comes_from_the_notify_socket() {
    let mut h = Harness::new("notify");
    let go = h.dir.join("go");
    h.shell(
        "n",
        &format!(
            "while [ ! -e {} ]; do sleep 0.02; done; {NOTIFY_READY}; exec sleep 1000",
            go.display()
        ),
        "ready = \"notify\"",
    );
    h.shell("after-n", "exec sleep 1000", "requires = [\"n\"]");
    h.start(&[]);
    h.wait_until("n running", |s| {
        s.service("n").is_some_and(|n| n.pid.is_some())
    });
    std::thread::sleep(Duration::from_millis(300));
    let s = h.state().unwrap();
    assert!(!ready(&s, "n"), "ready before READY=1 was sent");
    assert_eq!(s.service("after-n").unwrap().state, "waiting");
    assert!(!s.healthy || s.services.iter().all(|x| !x.critical));
    std::fs::write(&go, "").unwrap();
    h.wait_until("n and its dependent ready", |s| {
        ready(s, "n") && ready(s, "after-n")
    });
    h.stop();
}

/// Whether the test runs as root; a test that needs root and finds none skips, except
/// in CI (`LLAMABOX_REQUIRE_ROOT`, set by `.ci/run`), where that is a failure.
fn as_root(for_what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("LLAMABOX_REQUIRE_ROOT").is_none(),
            "not root, and LLAMABOX_REQUIRE_ROOT is set: cannot test {for_what}"
        );
        eprintln!("not root: cannot test {for_what} here");
    }
    root
}

/// Everyone may pass through the harness's directories, as through /run on the box.
fn open_harness_dirs(h: &Harness) {
    for dir in [h.dir.clone(), h.dir.join("run")] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
}

#[test]
fn a_service_running_as_another_user_can_send_ready() {
    if !as_root("running a service as another user") {
        return;
    }
    let mut h = Harness::new("notify-user");
    open_harness_dirs(&h);
    h.shell(
        "as-nobody",
        &format!("{NOTIFY_READY}; exec sleep 1000"),
        "ready = \"notify\"\nuser = \"nobody\"",
    );
    h.start(&[]);
    let s = h.wait_until("as-nobody ready", |s| ready(s, "as-nobody"));
    let pid = s.service("as-nobody").unwrap().pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid.split_whitespace().any(|f| f == "0"), "{uid}");
    h.stop();
}

/// A line of /proc/<pid>/status, e.g. `CapAmb:` → its value.
fn proc_status(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

/// A port below 1024 that nothing listens on (root may bind it to find out).
fn privileged_port(not: u16) -> u16 {
    (900..1000)
        .find(|&p| p != not && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port between 900 and 1000")
}

#[test]
fn a_service_as_its_own_user_keeps_only_the_capabilities_it_names_and_owns_its_directories() {
    if !as_root("capabilities kept across a change of user") {
        return;
    }
    let mut h = Harness::new("capabilities");
    open_harness_dirs(&h);
    // The gateway's case: an older image ran it as root and left its state to root.
    let state = h.dir.join("state/gateway");
    std::fs::create_dir_all(state.join("phones")).unwrap();
    std::fs::write(state.join("phones/left-by-root"), "x").unwrap();
    let bind = |port: u16| {
        format!(
            "/usr/bin/python3 -c \"import socket; socket.socket().bind(('127.0.0.1', {port}))\""
        )
    };
    let port = privileged_port(0);
    let other = privileged_port(port);
    h.shell(
        "binds",
        &format!("{} && {NOTIFY_READY} && exec sleep 1000", bind(port)),
        &format!(
            "ready = \"notify\"\nuser = \"nobody\"\ncapabilities = [\"net-bind-service\"]\ndirectories = [\"{}\"]",
            state.display()
        ),
    );
    // The same without the capability: the port is refused and the service exits at
    // once (`&&`: not at its ready timeout).
    h.shell(
        "cannot",
        &format!("{} && {NOTIFY_READY} && exec sleep 1000", bind(other)),
        "ready = \"notify\"\nuser = \"nobody\"\n[restart]\npolicy = \"never\"",
    );
    h.start(&[]);
    let s = h.wait_until("binds ready, cannot failed", |s| {
        ready(s, "binds") && s.service("cannot").is_some_and(|c| c.last_exit.is_some())
    });
    assert!(!ready(&s, "cannot"));
    let pid = s.service("binds").unwrap().pid.unwrap();
    // Bit 10: CAP_NET_BIND_SERVICE, and nothing else; no way to gain more.
    assert_eq!(proc_status(pid, "CapEff:"), "0000000000000400");
    assert_eq!(proc_status(pid, "CapAmb:"), "0000000000000400");
    assert_eq!(proc_status(pid, "NoNewPrivs:"), "1");
    use std::os::unix::fs::MetadataExt;
    for path in [
        state.clone(),
        state.join("phones"),
        state.join("phones/left-by-root"),
    ] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), 65534, "{} is not nobody's", path.display());
    }
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    h.stop();
}

/// The nice value of a process, from /proc/<pid>/stat (field 19).
fn nice_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn a_services_priority_is_set_before_it_drops_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // A raised priority needs root, and must hold for a service that then runs as
    // another user (the inference service); without root only a lowered one can be.
    let (nice, user) = if root {
        (-7, "\nuser = \"nobody\"")
    } else {
        (7, "")
    };
    let mut h = Harness::new("nice");
    if root {
        std::fs::create_dir_all(h.dir.join("run")).unwrap();
        for dir in [h.dir.clone(), h.dir.join("run")] {
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
    }
    h.shell("first", "exec sleep 1000", &format!("nice = {nice}{user}"));
    h.shell("plain", "exec sleep 1000", "");
    h.service(
        "wrong",
        "description = \"x\"\ncommand = \"/bin/true\"\nnice = -21\n",
    );
    h.start(&[]);
    let s = h.wait_until("first and plain running", |s| {
        ready(s, "first") && ready(s, "plain")
    });
    assert_eq!(nice_of(s.service("first").unwrap().pid.unwrap()), nice);
    assert_eq!(nice_of(s.service("plain").unwrap().pid.unwrap()), 0);
    assert!(s.service("wrong").is_none(), "a nice of -21 was accepted");
    h.stop();
}

#[test]
fn a_crashing_service_restarts_with_growing_backoff_up_to_the_cap() {
    let mut h = Harness::new("backoff");
    h.shell(
        "crash",
        "echo crashing; exit 3",
        "[restart]\ninitial-delay-ms = 20\nmax-delay-ms = 160",
    );
    h.start(&[]);
    let s = h.wait_until("six restarts", |s| {
        s.service("crash")
            .is_some_and(|c| c.backoff_history_ms.len() >= 7)
    });
    let c = s.service("crash").unwrap();
    assert_eq!(
        &c.backoff_history_ms[..7],
        &[20, 40, 80, 160, 160, 160, 160]
    );
    assert_eq!(c.last_exit.as_deref(), Some("exited with status 3"));
    assert!(c.starts >= 7);
    assert!(
        h.log_lines("crash")
            .iter()
            .filter(|l| l.ends_with(" crashing"))
            .count()
            >= 7
    );
    h.stop();
}

/// A service that writes output (or notify datagrams) as fast as it can gets a bounded
/// share of each wake-up: crashes are still reaped and restart timers still fire.
#[test]
fn a_flooding_service_does_not_stall_the_supervisor() {
    let mut h = Harness::new("flood");
    h.shell("flood", "exec yes llamabox-flood-line", "");
    h.shell(
        "spam",
        "exec /usr/bin/python3 -c \"import os,socket; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); [s.sendto(b'STATUS=spam', os.environ['NOTIFY_SOCKET']) for _ in iter(int, 1)]\"",
        "ready = \"notify\"",
    );
    h.shell(
        "crash",
        "exit 3",
        "[restart]\ninitial-delay-ms = 20\nmax-delay-ms = 40",
    );
    h.start(&[]);
    h.wait_until("the flood to reach the log and the spam its status", |s| {
        s.service("spam")
            .is_some_and(|x| x.status.as_deref() == Some("spam"))
    });
    let before = h.state().unwrap().service("crash").unwrap().starts;
    h.wait_until("five more restarts of the crashing service", |s| {
        s.service("crash").is_some_and(|c| c.starts >= before + 5)
    });
    assert!(h
        .log_lines("flood")
        .iter()
        .any(|l| l.ends_with(" llamabox-flood-line")));
    h.stop();
}

/// Ready, a few `WATCHDOG=1`, then alive but silent (hung): the supervisor kills it and
/// its restart policy brings it back. Before, WATCHDOG=1 was parsed and ignored.
#[test]
fn a_hung_service_is_killed_by_its_watchdog_and_restarted() {
    let mut h = Harness::new("watchdog");
    h.shell(
        "hangs",
        "exec /usr/bin/python3 -c \"import os,socket,time; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); a=os.environ['NOTIFY_SOCKET']; print('watchdog', os.environ.get('WATCHDOG_USEC'), flush=True); s.sendto(b'READY=1', a); [(s.sendto(b'WATCHDOG=1', a), time.sleep(0.1)) for _ in range(3)]; time.sleep(1000)\"",
        "ready = \"notify\"\nwatchdog-ms = 300\n[restart]\ninitial-delay-ms = 20\nmax-delay-ms = 40",
    );
    h.start(&[]);
    let s = h.wait_until("a watchdog kill and a restart", |s| {
        s.service("hangs").is_some_and(|x| x.starts >= 2)
    });
    // Killed, not exited: the process was still there when its watchdog ran out.
    assert_eq!(
        s.service("hangs").unwrap().last_exit.as_deref(),
        Some("killed by SIGKILL")
    );
    assert!(h
        .log_lines("hangs")
        .iter()
        .any(|l| l.ends_with(" watchdog 300000")));
    h.stop();
}

#[test]
fn a_service_that_cannot_start_blocks_only_what_requires_it() {
    let mut h = Harness::new("broken");
    h.service("broken", "description = \"missing binary\"\ncommand = \"/nonexistent/llamabox-test\"\n[restart]\ninitial-delay-ms = 50\nmax-delay-ms = 200\n");
    h.shell("unrelated", "exec sleep 1000", "");
    h.shell(
        "orders-after-broken",
        "exec sleep 1000",
        "after = [\"broken\"]",
    );
    h.shell("needs-broken", "exec sleep 1000", "requires = [\"broken\"]");
    h.start(&[]);
    let s = h.wait_until("unrelated services ready", |s| {
        ready(s, "unrelated") && ready(s, "orders-after-broken")
    });
    let broken = s.service("broken").unwrap();
    assert!(
        broken
            .failure
            .as_deref()
            .unwrap_or("")
            .contains("cannot run /nonexistent/llamabox-test"),
        "{broken:?}"
    );
    assert_eq!(s.service("needs-broken").unwrap().state, "waiting");
    assert!(s.service("needs-broken").unwrap().started_at_ms.is_none());
    h.stop();
}

/// The supervisor's children that are zombies right now.
fn zombie_children(ppid: i32) -> usize {
    let mut zombies = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so parse after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == ppid.to_string() {
            zombies += 1;
        }
    }
    zombies
}

#[test]
fn a_thousand_orphaned_grandchildren_are_all_reaped() {
    let mut h = Harness::new("orphans");
    h.shell(
        "spawner",
        "i=0; while [ $i -lt 1000 ]; do (sleep 0.2 &); i=$((i+1)); done; echo spawned; exec sleep 1000",
        "",
    );
    h.start(&[]);
    h.wait_until("1000 orphans reaped", |s| s.orphans_reaped >= 1000);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        zombie_children(h.pid()),
        0,
        "zombies left under the supervisor"
    );
    assert_eq!(h.state().unwrap().orphans_reaped, 1000);
    h.stop();
}

#[test]
fn stop_timeout_escalates_to_sigkill_and_shutdown_is_ordered() {
    let mut h = Harness::new("stop");
    h.shell(
        "stubborn",
        "trap '' TERM; echo stubborn; while true; do sleep 0.05; done",
        "[stop]\ntimeout-ms = 300",
    );
    h.shell("base", "exec sleep 1000", "");
    h.shell("top", "exec sleep 1000", "requires = [\"base\"]");
    h.start(&[]);
    h.wait_until("all ready", |s| {
        ["stubborn", "base", "top"].iter().all(|n| ready(s, n))
    });
    let stubborn_pid = h.state().unwrap().service("stubborn").unwrap().pid.unwrap();
    h.stop();
    let s = h.state().unwrap();
    let stubborn = s.service("stubborn").unwrap();
    assert_eq!(stubborn.state, "stopped");
    assert_eq!(stubborn.last_exit.as_deref(), Some("killed by SIGKILL"));
    assert_eq!(
        s.service("base").unwrap().last_exit.as_deref(),
        Some("killed by SIGTERM")
    );
    assert!(
        !Path::new(&format!("/proc/{stubborn_pid}")).exists(),
        "stubborn service survived"
    );
    let events = h.log_lines("supervisor");
    let at = |needle: &str| {
        events
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {events:#?}"))
    };
    assert!(at("stubborn: still running") > at("stubborn: stopping"));
    assert!(
        at("top: stopped") < at("base: stopping"),
        "base was stopped before its dependent"
    );
}

#[test]
fn logs_survive_a_supervisor_restart_and_rotate_at_their_bound() {
    let mut h = Harness::new("logs");
    h.shell(
        "talker",
        "echo \"run $(cat /proc/sys/kernel/random/uuid)\"; exec sleep 1000",
        "",
    );
    // The flood runs once: after the supervisor's restart it only sleeps, so
    // the second run cannot leave a half flood at the end of the log.
    let flooded = h.dir.join("flooded");
    h.shell(
        "flood",
        &format!(
            "[ -e {m} ] && exec sleep 1000; touch {m}; \
             i=0; while [ $i -lt 3000 ]; do echo \"flood line $i padding padding padding padding padding\"; i=$((i+1)); done; echo done; exec sleep 1000",
            m = flooded.display()
        ),
        "",
    );
    let bound = "16384";
    h.start(&["--log-max-bytes", bound, "--log-keep", "3"]);
    let first_run = |h: &Harness| {
        h.log_lines("talker")
            .iter()
            .filter(|l| l.contains(" run "))
            .count()
    };
    let start = Instant::now();
    while first_run(&h) < 1
        || !h
            .log_lines("flood")
            .last()
            .is_some_and(|l| l.ends_with(" done"))
    {
        assert!(start.elapsed() < PATIENCE, "services did not log");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.stop();
    h.start(&["--log-max-bytes", bound, "--log-keep", "3"]);
    let start = Instant::now();
    while first_run(&h) < 2 {
        assert!(start.elapsed() < PATIENCE, "second run did not log");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.stop();

    let talker = h.log_lines("talker");
    let runs: Vec<&String> = talker.iter().filter(|l| l.contains(" run ")).collect();
    assert_eq!(runs.len(), 2, "{talker:#?}");
    assert_ne!(runs[0], runs[1]);
    // Every line starts with an RFC 3339 timestamp.
    assert!(
        talker
            .iter()
            .all(|l| l.len() > 24 && &l[4..5] == "-" && &l[10..11] == "T"),
        "{talker:#?}"
    );

    let files = logs::files(&h.dir.join("logs"), "flood");
    assert_eq!(files.len(), 4, "{files:?}");
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() <= 16384,
            "{} exceeds the bound",
            f.display()
        );
    }
    let flood = h.log_lines("flood");
    assert!(flood.last().unwrap().ends_with(" done"));
    let numbers: Vec<u32> = flood
        .iter()
        .filter_map(|l| {
            l.split("flood line ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "rotation lost or reordered lines"
    );
    assert_eq!(*numbers.last().unwrap(), 2999);
}
