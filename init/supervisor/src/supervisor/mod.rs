//! The event loop and each service's state machine.
//!
//! ```text
//! waiting ──(dependencies settled)──> starting ──(READY=1 or running)──> running
//!    ^                                   │  \____________________________/ │
//!    └──── backoff <──(exited, restart)──┘          (exited)               │
//!                                                                          v
//!                          stopping ──(exited / SIGKILL after timeout)──> stopped
//! ```

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

mod health;
mod spawn;

use health::GateState;
pub use health::HealthGate;
use spawn::{hand_over, spawn};

use crate::bus;
use crate::logs::{LineSplitter, LogFile};
use crate::notify::{Message, NotifySocket};
use crate::service::{self, Readiness, RestartPolicy, Service};
use crate::state::{ServiceState, Snapshot};

/// Output buffers (8 KiB each) read from one service per wake-up.
const MAX_OUTPUT_READS: usize = 16;

/// Reads at most `reads` buffers from a non-blocking fd into `chunk`; true once the
/// writer has closed it. Bounded so that a flooding writer cannot hold the caller.
fn read_some(fd: std::os::fd::RawFd, reads: usize, mut chunk: impl FnMut(&[u8])) -> bool {
    let mut buf = [0u8; 8192];
    let mut done = 0;
    while done < reads {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                chunk(&buf[..n]);
                done += 1;
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return false, // EAGAIN: drained for now
        }
    }
    false
}
/// Notify datagrams read from one service per wake-up.
const MAX_NOTIFY_DATAGRAMS: usize = 64;

pub struct Config {
    /// Directories of service files, later ones overriding earlier ones.
    pub service_dirs: Vec<PathBuf>,
    pub log_dir: PathBuf,
    /// Notify sockets live here.
    pub run_dir: PathBuf,
    pub state_file: Option<PathBuf>,
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// Where to put services' cgroups (cgroup v2), if anywhere.
    pub cgroup_root: Option<PathBuf>,
    /// A hardware watchdog device to pet (`/dev/watchdog`), if any.
    pub watchdog: Option<PathBuf>,
    /// Environment every service gets (a service's own `environment` wins).
    pub environment: BTreeMap<String, String>,
    /// Serve `org.llamabox.Supervisor1` on this bus once its broker service is ready.
    pub bus: Option<BusConfig>,
}

pub struct BusConfig {
    /// D-Bus address, e.g. `unix:path=/run/dbus/system_bus_socket`.
    pub address: String,
    /// The service that runs the bus broker.
    pub broker: String,
}

/// The control plane's link into the event loop.
struct Control {
    shared: Arc<bus::Shared>,
    requests: Receiver<bus::Request>,
    wake: OwnedFd,
    serving: bool,
}

/// What a polled file descriptor belongs to.
enum Source {
    Notify(String),
    Output(String),
    Control,
}

/// Why the supervisor stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    PowerOff,
    Reboot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Starting,
    Running,
    Backoff,
    Stopping,
    Stopped,
    Failed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Backoff => "backoff",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
}

struct Svc {
    def: Service,
    phase: Phase,
    pid: Option<Pid>,
    ready: bool,
    run_started: Option<Instant>,
    started_at_ms: Option<u64>,
    ready_at_ms: Option<u64>,
    starts: u32,
    next_delay: Duration,
    backoff_history_ms: Vec<u64>,
    /// When the current timer (backoff, readiness or stop timeout) fires.
    deadline: Option<Instant>,
    killed: bool,
    /// Stopped by request: not restarted, not started again until asked.
    held: bool,
    /// Stopping by request, to be started again once it has exited.
    restart_requested: bool,
    /// Has failed at least once: `after` dependents stop waiting for it.
    settled_by_failure: bool,
    last_exit: Option<String>,
    status: Option<String>,
    failure: Option<String>,
    notify: Option<NotifySocket>,
    output: Option<OwnedFd>,
    splitter: LineSplitter,
    log: Option<LogFile>,
}

impl Svc {
    /// Sends the stop signal to the service's process group and starts the stop timer,
    /// after which it gets SIGKILL.
    fn send_stop(&mut self) -> Signal {
        self.phase = Phase::Stopping;
        self.deadline = Some(Instant::now() + self.def.stop_timeout);
        if let Some(pid) = self.pid {
            let _ = kill(Pid::from_raw(-pid.as_raw()), self.def.stop_signal);
        }
        self.def.stop_signal
    }

    /// Waits before the next start: the delay doubles per consecutive failure, capped.
    fn back_off(&mut self) -> Duration {
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(self.def.restart.max_delay);
        self.backoff_history_ms.push(ms(delay));
        self.phase = Phase::Backoff;
        self.deadline = Some(Instant::now() + delay);
        delay
    }
}

pub struct Supervisor {
    config: Config,
    services: BTreeMap<String, Svc>,
    problems: Vec<String>,
    epoch: Instant,
    orphans_reaped: u64,
    shutting_down: Option<Exit>,
    events: Option<LogFile>,
    gate: Option<GateState>,
    watchdog: Option<(std::fs::File, Instant)>,
    control: Option<Control>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Supervisor {
    pub fn new(config: Config) -> Supervisor {
        let (defs, problems) = service::load_dirs(&config.service_dirs);
        let events = LogFile::open(
            &config.log_dir,
            "supervisor",
            config.log_max_bytes,
            config.log_keep,
        )
        .ok();
        let services = defs
            .into_iter()
            .map(|(name, def)| {
                let log = LogFile::open(
                    &config.log_dir,
                    &name,
                    config.log_max_bytes,
                    config.log_keep,
                )
                .ok();
                let svc = Svc {
                    next_delay: def.restart.initial_delay,
                    def,
                    phase: Phase::Waiting,
                    pid: None,
                    ready: false,
                    run_started: None,
                    started_at_ms: None,
                    ready_at_ms: None,
                    starts: 0,
                    backoff_history_ms: Vec::new(),
                    deadline: None,
                    killed: false,
                    held: false,
                    restart_requested: false,
                    settled_by_failure: false,
                    last_exit: None,
                    status: None,
                    failure: None,
                    notify: None,
                    output: None,
                    splitter: LineSplitter::default(),
                    log,
                };
                (name, svc)
            })
            .collect();
        let mut s = Supervisor {
            config,
            services,
            problems,
            epoch: Instant::now(),
            orphans_reaped: 0,
            shutting_down: None,
            events,
            gate: None,
            watchdog: None,
            control: None,
        };
        if s.config.bus.is_some() {
            s.control = s.make_control();
        }
        for p in s.problems.clone() {
            s.event(&format!("service file problem: {p}"));
        }
        s
    }

    fn make_control(&mut self) -> Option<Control> {
        let (wake_read, wake_write) = match nix::unistd::pipe2(
            nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
        ) {
            Ok(p) => p,
            Err(e) => {
                self.event(&format!("no control plane: cannot create its pipe: {e}"));
                return None;
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(bus::Shared {
            snapshot: Mutex::new(Snapshot::default()),
            log_dir: self.config.log_dir.clone(),
            requests: Mutex::new(tx),
            wake: wake_write,
        });
        Some(Control {
            shared,
            requests: rx,
            wake: wake_read,
            serving: false,
        })
    }

    /// Carries out what the control plane asked for.
    fn on_control(&mut self) {
        let Some(control) = &self.control else { return };
        let mut buf = [0u8; 64];
        while nix::unistd::read(control.wake.as_raw_fd(), &mut buf).is_ok_and(|n| n > 0) {}
        let requests: Vec<bus::Request> = control.requests.try_iter().collect();
        for request in requests {
            self.event(&format!("request: {request:?}"));
            match request {
                bus::Request::Reboot => self.request_shutdown(Exit::Reboot),
                bus::Request::PowerOff => self.request_shutdown(Exit::PowerOff),
                bus::Request::Restart(name) => self.stop_service(&name, true),
                bus::Request::Stop(name) => self.stop_service(&name, false),
                bus::Request::Start(name) => {
                    if let Some(s) = self.services.get_mut(&name) {
                        s.held = false;
                        if matches!(s.phase, Phase::Stopped | Phase::Failed) {
                            s.phase = Phase::Waiting;
                            s.next_delay = s.def.restart.initial_delay;
                        }
                    }
                }
            }
        }
    }

    /// Stops a service on request; with `restart`, starts it again once it has exited.
    fn stop_service(&mut self, name: &str, restart: bool) {
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        s.held = !restart;
        match s.phase {
            Phase::Starting | Phase::Running => {
                s.restart_requested = restart;
                let sig = s.send_stop();
                self.event(&format!("{name}: stopping ({sig}) on request"));
            }
            Phase::Waiting | Phase::Backoff | Phase::Stopped | Phase::Failed => {
                s.deadline = None;
                s.next_delay = s.def.restart.initial_delay;
                s.phase = if restart {
                    Phase::Waiting
                } else {
                    Phase::Stopped
                };
            }
            Phase::Stopping => s.restart_requested = restart,
        }
    }

    fn event(&mut self, message: &str) {
        eprintln!("llamabox-supervisor: {message}");
        if let Some(log) = &mut self.events {
            let _ = log.write_line(message.as_bytes());
        }
    }

    /// Runs until a shutdown request has stopped every service. Never panics on a
    /// service's behaviour; errors are logged and survived.
    pub fn run(&mut self) -> Exit {
        self.open_watchdog();
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        if let Err(e) = mask.thread_block() {
            self.event(&format!("cannot block signals: {e}"));
        }
        let signals =
            match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
                Ok(fd) => fd,
                Err(e) => {
                    self.event(&format!("cannot create signalfd: {e}; polling instead"));
                    return self.run_without_signalfd();
                }
            };
        loop {
            if let Some(exit) = self.step() {
                return exit;
            }
            self.wait(Some(&signals));
            while let Ok(Some(info)) = signals.read_signal() {
                self.on_signal(info.ssi_signo as i32);
            }
        }
    }

    fn run_without_signalfd(&mut self) -> Exit {
        loop {
            if let Some(exit) = self.step() {
                return exit;
            }
            self.wait(None);
            self.reap();
        }
    }

    /// Everything that does not wait: start what can start, fire timers, write state.
    fn step(&mut self) -> Option<Exit> {
        self.reap();
        self.fire_timers();
        self.pet_watchdog();
        if self.shutting_down.is_some() {
            self.advance_shutdown();
        } else {
            self.start_eligible();
        }
        self.check_health();
        self.write_state();
        match self.shutting_down {
            Some(exit)
                if self
                    .services
                    .values()
                    .all(|s| matches!(s.phase, Phase::Stopped | Phase::Failed)) =>
            {
                self.drain_all_output();
                self.event("all services stopped");
                if let Some(log) = &self.events {
                    let _ = log.sync();
                }
                Some(exit)
            }
            _ => None,
        }
    }

    fn on_signal(&mut self, signo: i32) {
        match Signal::try_from(signo) {
            Ok(Signal::SIGCHLD) => self.reap(),
            Ok(Signal::SIGTERM) => self.request_shutdown(Exit::PowerOff),
            Ok(Signal::SIGINT) => self.request_shutdown(Exit::Reboot),
            _ => {}
        }
    }

    pub fn request_shutdown(&mut self, exit: Exit) {
        if self.shutting_down.is_none() {
            self.event(&format!(
                "shutdown requested ({exit:?}): stopping services in reverse order"
            ));
            self.shutting_down = Some(exit);
        }
    }

    /// Blocks in poll until a signal, a notification, log output or the next timer.
    fn wait(&mut self, signals: Option<&SignalFd>) {
        let now = Instant::now();
        let next = self
            .services
            .values()
            .filter_map(|s| s.deadline)
            .chain(self.next_housekeeping())
            .min();
        let mut timeout = next
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(60));
        if signals.is_none() {
            timeout = timeout.min(Duration::from_millis(50));
        }
        let timeout = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);

        // What each fd after the signalfd belongs to; the fds are borrowed from
        // `self` for the poll only, then `self` handles what became ready.
        let (owners, ready) = {
            let mut owners: Vec<Source> = Vec::new();
            let mut fds: Vec<PollFd> = Vec::new();
            if let Some(sig) = signals {
                fds.push(PollFd::new(sig.as_fd(), PollFlags::POLLIN));
            }
            for (name, s) in &self.services {
                if let Some(n) = &s.notify {
                    owners.push(Source::Notify(name.clone()));
                    fds.push(PollFd::new(n.socket.as_fd(), PollFlags::POLLIN));
                }
                if let Some(o) = &s.output {
                    owners.push(Source::Output(name.clone()));
                    fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
                }
            }
            if let Some(control) = &self.control {
                owners.push(Source::Control);
                fds.push(PollFd::new(control.wake.as_fd(), PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => eprintln!("llamabox-supervisor: poll: {e}"),
            }
            let skip = usize::from(signals.is_some());
            let ready: Vec<bool> = fds[skip..]
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            (owners, ready)
        };
        for (source, active) in owners.into_iter().zip(ready) {
            if !active {
                continue;
            }
            match source {
                Source::Notify(name) => self.on_notify(&name),
                Source::Output(name) => self.read_output(&name),
                Source::Control => self.on_control(),
            }
        }
    }

    fn on_notify(&mut self, name: &str) {
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        let messages = s
            .notify
            .as_ref()
            .map(|n| n.drain(MAX_NOTIFY_DATAGRAMS))
            .unwrap_or_default();
        for m in messages {
            match m {
                Message::Ready => self.mark_ready(name),
                Message::Watchdog => {
                    if let Some(s) = self.services.get_mut(name) {
                        if s.phase == Phase::Running {
                            s.deadline = s.def.watchdog.map(|w| Instant::now() + w);
                        }
                    }
                }
                Message::Status(text) => {
                    if let Some(s) = self.services.get_mut(name) {
                        s.status = Some(text);
                    }
                }
                _ => {}
            }
        }
    }

    fn mark_ready(&mut self, name: &str) {
        let now_ms = ms(self.epoch.elapsed());
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        if s.phase == Phase::Starting {
            s.phase = Phase::Running;
            s.ready = true;
            s.ready_at_ms = Some(now_ms);
            // While running, the only timer is the service's own watchdog, if it has one.
            s.deadline = s.def.watchdog.map(|w| Instant::now() + w);
            self.event(&format!("{name}: ready"));
        }
        let broker_ready = self.config.bus.as_ref().is_some_and(|b| b.broker == name);
        if let (true, Some(bus), Some(control)) =
            (broker_ready, &self.config.bus, &mut self.control)
        {
            if !control.serving {
                control.serving = true;
                bus::serve(bus.address.clone(), control.shared.clone());
            }
        }
    }

    /// Moves a service's output into its log, line by line: at most `MAX_OUTPUT_READS`
    /// buffers per wake-up, so a service that floods its output cannot keep PID 1 from
    /// reaping, timers and the watchdog (poll wakes again at once if more is waiting).
    fn read_output(&mut self, name: &str) {
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        let Some(fd) = &s.output else { return };
        let (log, splitter) = (&mut s.log, &mut s.splitter);
        let closed = read_some(fd.as_raw_fd(), MAX_OUTPUT_READS, |bytes| {
            if let Some(log) = log {
                splitter.push(bytes, |line| {
                    let _ = log.write_line(line);
                });
            }
        });
        if closed {
            s.output = None;
            if let Some(log) = &mut s.log {
                s.splitter.finish(|line| {
                    let _ = log.write_line(line);
                });
            }
        }
    }

    fn drain_all_output(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            self.read_output(&name);
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let owner = self
                        .services
                        .iter()
                        .find(|(_, s)| s.pid == Some(pid))
                        .map(|(n, _)| n.clone());
                    match owner {
                        Some(name) => self.on_exit(&name, status),
                        None => self.orphans_reaped += 1,
                    }
                }
            }
        }
    }

    fn on_exit(&mut self, name: &str, status: WaitStatus) {
        let description = match status {
            WaitStatus::Exited(_, code) => format!("exited with status {code}"),
            WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
            other => format!("{other:?}"),
        };
        let success = matches!(status, WaitStatus::Exited(_, 0));
        self.read_output(name);
        let shutting_down = self.shutting_down.is_some();
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        // Whatever the main process left behind in its process group goes with it.
        if let Some(pid) = s.pid.take() {
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        }
        s.ready = false;
        s.notify = None;
        s.last_exit = Some(description.clone());
        let lasted = s.run_started.map(|t| t.elapsed()).unwrap_or_default();
        if s.phase == Phase::Stopping && s.restart_requested && !shutting_down {
            s.restart_requested = false;
            s.phase = Phase::Waiting;
            s.deadline = None;
            self.event(&format!(
                "{name}: {description}; starting it again on request"
            ));
            return;
        }
        if s.phase == Phase::Stopping || shutting_down {
            s.phase = Phase::Stopped;
            s.deadline = None;
            let how = if s.killed { " (after SIGKILL)" } else { "" };
            self.event(&format!("{name}: stopped, {description}{how}"));
            return;
        }
        s.settled_by_failure = true;
        let restart = match s.def.restart.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if !restart {
            s.phase = if success {
                Phase::Stopped
            } else {
                Phase::Failed
            };
            s.deadline = None;
            self.event(&format!("{name}: {description}; not restarting (policy)"));
            return;
        }
        // Exponential backoff: doubles per consecutive failure, capped; a long run resets it.
        if lasted >= s.def.restart.reset_after {
            s.next_delay = s.def.restart.initial_delay;
        }
        let delay = s.back_off();
        self.event(&format!(
            "{name}: {description}; restarting in {} ms",
            ms(delay)
        ));
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.deadline.is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(s) = self.services.get_mut(&name) else {
                continue;
            };
            s.deadline = None;
            match s.phase {
                Phase::Backoff => s.phase = Phase::Waiting,
                Phase::Starting => {
                    // Never reported ready: treat as a failed start.
                    if let Some(pid) = s.pid {
                        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                    }
                    let secs = s.def.ready_timeout.as_secs_f32();
                    self.event(&format!("{name}: not ready after {secs:.1} s; killing it"));
                }
                Phase::Running => {
                    // Alive but silent: hung. Killed, it exits like a crash and restarts
                    // by its policy.
                    if let Some(pid) = s.pid {
                        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                    }
                    let secs = s.def.watchdog.unwrap_or_default().as_secs_f32();
                    self.event(&format!(
                        "{name}: no WATCHDOG=1 for {secs:.1} s: hung; killing it"
                    ));
                }
                Phase::Stopping => {
                    if let Some(pid) = s.pid {
                        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                        s.killed = true;
                        let secs = s.def.stop_timeout.as_secs_f32();
                        self.event(&format!("{name}: still running {secs:.1} s after its stop signal; sending SIGKILL"));
                    }
                }
                _ => {}
            }
        }
    }

    /// Is `dep` far enough along for a service that waits for it?
    fn settled(&self, dep: &str, required: bool) -> Option<bool> {
        let Some(d) = self.services.get(dep) else {
            return Some(true);
        };
        if d.ready {
            return Some(true);
        }
        if required {
            // A required service that has given up for good fails its dependents.
            return if d.phase == Phase::Failed || d.phase == Phase::Stopped {
                None
            } else {
                Some(false)
            };
        }
        Some(d.settled_by_failure || matches!(d.phase, Phase::Failed | Phase::Stopped))
    }

    fn start_eligible(&mut self) {
        let waiting: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.phase == Phase::Waiting)
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            let def = &self.services[&name].def;
            let mut go = true;
            let mut failed_dep = None;
            for dep in &def.requires {
                match self.settled(dep, true) {
                    Some(true) => {}
                    Some(false) => go = false,
                    None => failed_dep = Some(dep.clone()),
                }
            }
            for dep in &def.after {
                if self.settled(dep, false) != Some(true) {
                    go = false;
                }
            }
            if let Some(dep) = failed_dep {
                let s = self.services.get_mut(&name).unwrap();
                s.phase = Phase::Failed;
                s.failure = Some(format!("required service `{dep}` failed"));
                self.event(&format!(
                    "{name}: not started: required service `{dep}` failed"
                ));
            } else if go {
                self.start(&name);
            }
        }
    }

    fn start(&mut self, name: &str) {
        let now_ms = ms(self.epoch.elapsed());
        let run_dir = self.config.run_dir.join("notify");
        let cgroup_root = self.config.cgroup_root.clone();
        let s = self.services.get_mut(name).unwrap();
        s.starts += 1;
        s.killed = false;
        s.status = None;
        let notify = match s.def.readiness {
            Readiness::Notify => match NotifySocket::bind(&run_dir, name)
                .and_then(|n| hand_over(&n.path, &s.def).map(|()| n))
            {
                Ok(n) => Some(n),
                Err(e) => {
                    let message = format!("{name}: cannot create its notify socket: {e}");
                    s.phase = Phase::Failed;
                    s.failure = Some(message.clone());
                    self.event(&message);
                    return;
                }
            },
            Readiness::Started => None,
        };
        let environment = &self.config.environment;
        match spawn(
            &s.def,
            environment,
            notify.as_ref().map(|n| n.path.clone()),
            cgroup_root,
        ) {
            Ok((pid, output)) => {
                s.pid = Some(pid);
                s.output = Some(output);
                s.notify = notify;
                s.run_started = Some(Instant::now());
                s.started_at_ms = Some(now_ms);
                s.failure = None;
                s.phase = Phase::Starting;
                if s.def.readiness == Readiness::Notify {
                    s.deadline = Some(Instant::now() + s.def.ready_timeout);
                }
                let started = format!("{name}: started (pid {pid})");
                let immediately_ready = s.def.readiness == Readiness::Started;
                self.event(&started);
                if immediately_ready {
                    self.mark_ready(name);
                }
            }
            Err(e) => {
                // Cannot even start (missing binary, bad user…): back off and retry like a
                // crash, so a file that appears later still gets its service started.
                s.settled_by_failure = true;
                s.failure = Some(e.clone());
                s.last_exit = Some(format!("failed to start: {e}"));
                if s.def.restart.policy == RestartPolicy::Never {
                    s.phase = Phase::Failed;
                    self.event(&format!("{name}: failed to start: {e}"));
                } else {
                    let delay = s.back_off();
                    self.event(&format!(
                        "{name}: failed to start: {e}; retrying in {} ms",
                        ms(delay)
                    ));
                }
            }
        }
    }

    /// Stops services whose dependents have all stopped, newest dependencies last.
    fn advance_shutdown(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let phase = self.services[&name].phase;
            match phase {
                Phase::Waiting | Phase::Backoff => {
                    let s = self.services.get_mut(&name).unwrap();
                    s.phase = Phase::Stopped;
                    s.deadline = None;
                }
                Phase::Starting | Phase::Running => {
                    let dependents_running = self.services.values().any(|other| {
                        other.def.waits_for().any(|d| *d == name)
                            && matches!(
                                other.phase,
                                Phase::Starting | Phase::Running | Phase::Stopping
                            )
                    });
                    if dependents_running {
                        continue;
                    }
                    let sig = self.services.get_mut(&name).unwrap().send_stop();
                    self.event(&format!("{name}: stopping ({sig})"));
                }
                _ => {}
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let services: Vec<ServiceState> = self
            .services
            .iter()
            .map(|(name, s)| ServiceState {
                name: name.clone(),
                description: s.def.description.clone(),
                state: s.phase.name().to_string(),
                ready: s.ready,
                critical: s.def.critical,
                pid: s.pid.map(|p| p.as_raw()),
                started_at_ms: s.started_at_ms,
                ready_at_ms: s.ready_at_ms,
                starts: s.starts,
                backoff_history_ms: s.backoff_history_ms.clone(),
                last_exit: s.last_exit.clone(),
                status: s.status.clone(),
                failure: s.failure.clone(),
            })
            .collect();
        Snapshot {
            supervisor_pid: std::process::id(),
            healthy: self
                .services
                .values()
                .filter(|s| s.def.critical)
                .all(|s| s.ready),
            services,
            orphans_reaped: self.orphans_reaped,
            shutting_down: self.shutting_down.is_some(),
            problems: self.problems.clone(),
        }
    }

    fn write_state(&mut self) {
        if let Some(control) = &self.control {
            if let Ok(mut shared) = control.shared.snapshot.lock() {
                *shared = self.snapshot();
            }
        }
        if let Some(path) = &self.config.state_file {
            if let Err(e) = self.snapshot().write(path) {
                eprintln!("llamabox-supervisor: cannot write {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod read_tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn one_wake_up_reads_a_bounded_amount_of_a_flood() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        // Room for far more than one wake-up's share.
        nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
        let flood = vec![b'y'; 1 << 19];
        let mut written = 0;
        while written < flood.len() {
            written += nix::unistd::write(&w, &flood[written..]).unwrap();
        }
        let mut read = 0;
        assert!(!read_some(r.as_raw_fd(), MAX_OUTPUT_READS, |b| read += b.len()));
        assert_eq!(
            read,
            MAX_OUTPUT_READS * 8192,
            "one wake-up's share, no more"
        );
        // The rest comes on later wake-ups, then the end.
        drop(w);
        let mut rest = 0;
        while !read_some(r.as_raw_fd(), MAX_OUTPUT_READS, |b| rest += b.len()) {}
        assert_eq!(read + rest, flood.len());
    }
}
