//! Why the health gate refused a slot on trial: written by PID 1 on the data partition
//! just before it reboots, read by the update service after the bootloader has fallen
//! back, so `llamabox update status` and the phone say why the release was rolled back.

use serde::{Deserialize, Serialize};

/// Where PID 1 keeps the last refusal (shared by both slots, like all of /var).
pub const VERDICT: &str = "/var/lib/llamabox/health-verdict.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Verdict {
    /// The slot that was refused (`a` or `b`).
    pub slot: String,
    /// The version it was running.
    pub version: String,
    /// Which critical services failed, or were not ready in time, each in its own words
    /// (its last status): "release-check: the language model answered …".
    pub reason: String,
}

impl Verdict {
    /// None for a missing or unreadable file: a reason is a courtesy, never a blocker.
    pub fn read(path: &std::path::Path) -> Option<Verdict> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a verdict is plain strings") + "\n"
    }
}
