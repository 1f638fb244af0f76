//! A snapshot of the supervisor's view, written as JSON after every change (atomically,
//! by rename) for `llamabox status`, tests and the boot health gate.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    pub supervisor_pid: u32,
    pub services: Vec<ServiceState>,
    /// Processes reaped that were not services' main processes (re-parented orphans).
    pub orphans_reaped: u64,
    /// Every critical service is ready.
    pub healthy: bool,
    pub shutting_down: bool,
    /// Problems found in the service files (the services concerned are not run).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServiceState {
    pub name: String,
    pub description: String,
    /// waiting, starting, running, backoff, stopping, stopped, failed
    pub state: String,
    pub ready: bool,
    pub critical: bool,
    pub pid: Option<i32>,
    /// Times since the supervisor started, in milliseconds.
    pub started_at_ms: Option<u64>,
    pub ready_at_ms: Option<u64>,
    pub starts: u32,
    /// Every backoff delay chosen so far, in milliseconds.
    pub backoff_history_ms: Vec<u64>,
    pub last_exit: Option<String>,
    pub status: Option<String>,
    pub failure: Option<String>,
}

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&ServiceState> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).expect("snapshot serializes"),
        )?;
        std::fs::rename(tmp, path)
    }

    pub fn read(path: &std::path::Path) -> std::io::Result<Snapshot> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}
