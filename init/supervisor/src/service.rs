//! Service definitions: `<name>.toml`, one file per service. Shipped ones live in
//! `/usr/lib/llamabox/services` or `/etc/llamabox/services`; a file of the same name in
//! `/etc/llamabox/local/services` (on the data partition) overrides them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    description: String,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    user: Option<String>,
    group: Option<String>,
    working_directory: Option<String>,
    /// Capabilities a service running as its own user keeps (`net-bind-service`, …).
    #[serde(default)]
    capabilities: Vec<String>,
    /// Directories the service's user owns, made before it starts.
    #[serde(default)]
    directories: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    ready: Option<String>,
    ready_timeout_ms: Option<u64>,
    /// A ready `notify` service must send `WATCHDOG=1` at least this often.
    watchdog_ms: Option<u64>,
    /// CPU priority, -20 (first) to 19 (last), as nice(1); default 0.
    nice: Option<i32>,
    #[serde(default)]
    critical: bool,
    #[serde(default)]
    restart: RawRestart,
    #[serde(default)]
    stop: RawStop,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRestart {
    policy: Option<String>,
    initial_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
    reset_after_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStop {
    signal: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    open_files: Option<u64>,
    processes: Option<u64>,
    core_size: Option<u64>,
    memory_max_mib: Option<u64>,
    cpu_max_percent: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Ready as soon as the process is running.
    Started,
    /// Ready when the process sends `READY=1` to `$NOTIFY_SOCKET`.
    Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub policy: RestartPolicy,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// A run that lasted this long resets the backoff to the initial delay.
    pub reset_after: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
    pub core_size: Option<u64>,
    pub memory_max_mib: Option<u64>,
    pub cpu_max_percent: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    pub command: String,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub working_directory: Option<PathBuf>,
    /// Linux capabilities (numbers) a service with a `user` keeps across the change of
    /// user, as ambient capabilities: the gateway binds ports 80 and 443 without root.
    pub capabilities: Vec<u32>,
    /// Made (0700) before the service starts and owned by its user; one that another
    /// user owns (an older image ran the service as root) is handed over with its
    /// contents, once.
    pub directories: Vec<PathBuf>,
    /// Ordering: start after these are ready (or have given up).
    pub after: Vec<String>,
    /// Ordering and dependency: not started unless these become ready.
    pub requires: Vec<String>,
    pub readiness: Readiness,
    pub ready_timeout: Duration,
    /// Once ready, `WATCHDOG=1` must come at least this often, or the service is taken
    /// for hung and killed (then restarted by its policy). Passed as `WATCHDOG_USEC`.
    pub watchdog: Option<Duration>,
    /// CPU priority (nice value) of the process, and its cgroup's weight
    /// (`cpu.weight.nice`): where the services share cores, the higher one is served
    /// first. The conversation (inference, voice) above the rest of the box.
    pub nice: i32,
    /// The system is healthy only while every critical service is ready.
    pub critical: bool,
    pub restart: Restart,
    pub stop_signal: nix::sys::signal::Signal,
    pub stop_timeout: Duration,
    pub limits: Limits,
}

impl Service {
    /// Every service this one waits for.
    pub fn waits_for(&self) -> impl Iterator<Item = &String> {
        self.after.iter().chain(&self.requires)
    }
}

/// Parses one service file's text. Every problem is reported, each naming its key.
pub fn parse(name: &str, file: &Path, text: &str) -> Result<Service, String> {
    let raw: RawService = toml::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut problems = Vec::new();
    if !valid_name(name) {
        problems.push(format!(
            "file name: `{name}` must be lowercase letters, digits and `-`"
        ));
    }
    if !raw.command.starts_with('/') {
        problems.push(format!(
            "`command`: `{}` must be an absolute path",
            raw.command
        ));
    }
    let capabilities = raw
        .capabilities
        .iter()
        .filter_map(|name| match capability(name) {
            Some(number) => Some(number),
            None => {
                problems.push(format!(
                    "`capabilities`: `{name}` is not one of {}",
                    CAPABILITIES.map(|(n, _)| n).join(", ")
                ));
                None
            }
        })
        .collect::<Vec<_>>();
    if !raw.capabilities.is_empty() && raw.user.is_none() {
        problems.push(
            "`capabilities`: only a service with a `user` is given capabilities (root has them all)"
                .to_string(),
        );
    }
    for dir in &raw.directories {
        if !dir.starts_with('/') || dir.split('/').any(|part| part == "..") || dir == "/" {
            problems.push(format!(
                "`directories`: `{dir}` must be an absolute path below `/`, without `..`"
            ));
        }
    }
    if !raw.directories.is_empty() && raw.user.is_none() {
        problems.push("`directories`: only a service with a `user` owns directories".to_string());
    }
    let readiness = match raw.ready.as_deref() {
        None | Some("started") => Readiness::Started,
        Some("notify") => Readiness::Notify,
        Some(other) => {
            problems.push(format!("`ready`: `{other}` is not `started` or `notify`"));
            Readiness::Started
        }
    };
    let policy = match raw.restart.policy.as_deref() {
        None | Some("always") => RestartPolicy::Always,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("never") => RestartPolicy::Never,
        Some(other) => {
            problems.push(format!(
                "`restart.policy`: `{other}` is not `always`, `on-failure` or `never`"
            ));
            RestartPolicy::Always
        }
    };
    let initial = raw.restart.initial_delay_ms.unwrap_or(100);
    let max = raw.restart.max_delay_ms.unwrap_or(30_000);
    if initial == 0 || max < initial {
        problems.push("`restart`: need 0 < initial-delay-ms <= max-delay-ms".to_string());
    }
    let stop_signal = match raw.stop.signal.as_deref().unwrap_or("SIGTERM").parse() {
        Ok(s) => s,
        Err(_) => {
            problems.push(format!(
                "`stop.signal`: `{}` is not a signal name",
                raw.stop.signal.unwrap_or_default()
            ));
            nix::sys::signal::Signal::SIGTERM
        }
    };
    for key in raw.environment.keys() {
        if key.is_empty() || key.contains('=') {
            problems.push(format!("`environment`: `{key}` is not a variable name"));
        }
    }
    if let Some(p) = raw.limits.cpu_max_percent {
        if p == 0 || p > 100 * 1024 {
            problems.push("`limits.cpu-max-percent`: must be between 1 and 102400".to_string());
        }
    }
    if raw.watchdog_ms.is_some() && raw.ready.as_deref() != Some("notify") {
        problems.push(
            "`watchdog-ms`: needs `ready = \"notify\"` (WATCHDOG=1 comes on the notify socket)"
                .to_string(),
        );
    }
    if raw.nice.is_some_and(|n| !(-20..=19).contains(&n)) {
        problems.push("`nice`: must be between -20 and 19".to_string());
    }
    if raw.watchdog_ms == Some(0) {
        problems.push("`watchdog-ms`: must be above 0".to_string());
    }
    if raw.after.iter().chain(&raw.requires).any(|d| d == name) {
        problems.push("`after`/`requires`: a service cannot wait for itself".to_string());
    }
    if !problems.is_empty() {
        return Err(format!("{}: {}", file.display(), problems.join("; ")));
    }
    Ok(Service {
        name: name.to_string(),
        file: file.to_path_buf(),
        description: raw.description,
        command: raw.command,
        args: raw.args,
        environment: raw.environment,
        user: raw.user,
        group: raw.group,
        working_directory: raw.working_directory.map(PathBuf::from),
        capabilities,
        directories: raw.directories.iter().map(PathBuf::from).collect(),
        after: raw.after,
        requires: raw.requires,
        readiness,
        ready_timeout: Duration::from_millis(raw.ready_timeout_ms.unwrap_or(60_000)),
        watchdog: raw.watchdog_ms.map(Duration::from_millis),
        nice: raw.nice.unwrap_or(0),
        critical: raw.critical,
        restart: Restart {
            policy,
            initial_delay: Duration::from_millis(initial),
            max_delay: Duration::from_millis(max),
            reset_after: Duration::from_millis(
                raw.restart.reset_after_ms.unwrap_or(max.max(10_000)),
            ),
        },
        stop_signal,
        stop_timeout: Duration::from_millis(raw.stop.timeout_ms.unwrap_or(10_000)),
        limits: Limits {
            open_files: raw.limits.open_files,
            processes: raw.limits.processes,
            core_size: raw.limits.core_size,
            memory_max_mib: raw.limits.memory_max_mib,
            cpu_max_percent: raw.limits.cpu_max_percent,
        },
    })
}

/// The capabilities a service file may name (capability(7)), with their numbers. Short
/// on purpose: each is one a service of the box needs.
pub const CAPABILITIES: [(&str, u32); 1] = [
    // Ports below 1024: the gateway's 80 and 443.
    ("net-bind-service", 10),
];

fn capability(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, number)| *number)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Loads `*.toml` from `dirs`; a later directory's file overrides an earlier one's of the
/// same name. All problems (bad files, unknown or cyclic dependencies) are returned
/// together; the services that are fine are returned too, so one bad file never stops
/// the rest of the system.
pub fn load_dirs(dirs: &[PathBuf]) -> (BTreeMap<String, Service>, Vec<String>) {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                files.insert(name, path);
            }
        }
    }
    let mut services = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, path) in files {
        match std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|t| parse(&name, &path, &t))
        {
            Ok(s) => {
                services.insert(name, s);
            }
            Err(e) => problems.push(e),
        }
    }
    problems.extend(check_graph(&mut services));
    (services, problems)
}

/// Drops services whose `requires` name a missing service, and reports cycles (the
/// services in a cycle are dropped: none of them could ever start).
fn check_graph(services: &mut BTreeMap<String, Service>) -> Vec<String> {
    let mut problems = Vec::new();
    loop {
        let missing: Vec<(String, String)> = services
            .values()
            .flat_map(|s| {
                s.requires
                    .iter()
                    .filter(|r| !services.contains_key(*r))
                    .map(|r| (s.name.clone(), r.clone()))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        for (name, dep) in missing {
            if services.remove(&name).is_some() {
                problems.push(format!(
                    "{name}: requires `{dep}`, which is not a (valid) service"
                ));
            }
        }
    }
    // Kahn's algorithm over the edges that exist; what is left is in or behind a cycle.
    let mut remaining: BTreeSet<String> = services.keys().cloned().collect();
    loop {
        let free: Vec<String> = remaining
            .iter()
            .filter(|n| services[*n].waits_for().all(|d| !remaining.contains(d)))
            .cloned()
            .collect();
        if free.is_empty() {
            break;
        }
        for n in free {
            remaining.remove(&n);
        }
    }
    if !remaining.is_empty() {
        problems.push(format!(
            "dependency cycle among: {}",
            remaining.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        for n in remaining {
            services.remove(&n);
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Service, String> {
        parse("svc", Path::new("svc.toml"), text)
    }

    #[test]
    fn minimal_service_gets_defaults() {
        let s = p("description = \"x\"\ncommand = \"/bin/true\"\n").unwrap();
        assert_eq!(s.readiness, Readiness::Started);
        assert_eq!(s.restart.policy, RestartPolicy::Always);
        assert_eq!(s.stop_signal, nix::sys::signal::Signal::SIGTERM);
    }

    #[test]
    fn all_problems_reported_together() {
        let e = p("description = \"x\"\ncommand = \"true\"\nready = \"maybe\"\n[stop]\nsignal = \"SIGFOO\"\n").unwrap_err();
        for needle in ["`command`", "`ready`", "`stop.signal`"] {
            assert!(e.contains(needle), "{needle} missing: {e}");
        }
    }

    #[test]
    fn capabilities_and_directories_belong_to_a_service_with_a_user() {
        let s = p("description = \"x\"\ncommand = \"/bin/true\"\nuser = \"gateway\"\ncapabilities = [\"net-bind-service\"]\ndirectories = [\"/run/llamabox/gateway\"]\n").unwrap();
        assert_eq!(s.capabilities, [10]);
        assert_eq!(s.directories, [PathBuf::from("/run/llamabox/gateway")]);
        let e = p("description = \"x\"\ncommand = \"/bin/true\"\ncapabilities = [\"sys-admin\"]\ndirectories = [\"run/../x\"]\n").unwrap_err();
        for needle in [
            "`sys-admin` is not one of net-bind-service",
            "only a service with a `user` is given capabilities",
            "`run/../x` must be an absolute path",
            "only a service with a `user` owns directories",
        ] {
            assert!(e.contains(needle), "{needle} missing: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = p("description = \"x\"\ncommand = \"/bin/true\"\nrestrat = 1\n").unwrap_err();
        assert!(e.contains("restrat"), "{e}");
    }

    #[test]
    fn cycles_and_missing_requirements_are_dropped_not_fatal() {
        let mut services = BTreeMap::new();
        for (name, text) in [
            (
                "a",
                "description=\"\"\ncommand=\"/bin/true\"\nafter=[\"b\"]\n",
            ),
            (
                "b",
                "description=\"\"\ncommand=\"/bin/true\"\nrequires=[\"a\"]\n",
            ),
            (
                "c",
                "description=\"\"\ncommand=\"/bin/true\"\nrequires=[\"nope\"]\n",
            ),
            ("d", "description=\"\"\ncommand=\"/bin/true\"\n"),
        ] {
            services.insert(
                name.to_string(),
                parse(name, Path::new(name), text).unwrap(),
            );
        }
        let problems = check_graph(&mut services);
        assert_eq!(services.keys().collect::<Vec<_>>(), ["d"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
