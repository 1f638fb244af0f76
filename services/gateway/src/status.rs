//! `GET /v1/device/status`: what the phone's device screen shows — the running
//! release, the services, storage and updates. Each part is read on its own; one that
//! cannot be read says why (`{"error": …}`) and the rest still answers.

use llamabox_device::bus::{self, UPDATE};
use serde_json::{json, Value};
use std::time::Duration;

/// A wedged service must not hold the phone's screen: D-Bus calls give up after this.
const BUS_TIMEOUT: Duration = Duration::from_secs(5);
/// The data partition: conversations on the phone aside, everything the box keeps.
const DATA_MOUNT: &str = "/data";

pub fn collect(device_name: &str) -> Value {
    json!({
        "device": device_name,
        "release": part(release()),
        "services": part(services()),
        "storage": part(storage()),
        "update": part(update()),
    })
}

fn part(result: Result<Value, String>) -> Value {
    result.unwrap_or_else(|e| json!({ "error": e }))
}

/// The booted slot and version, as stage 1 recorded them.
fn release() -> Result<Value, String> {
    let info = llamabox_device::boot_info::BootInfo::read()
        .map_err(|e| format!("{}: {e}", llamabox_device::boot_info::PATH))?;
    Ok(json!({
        "version": info.get("version"),
        "slot": info.get("slot"),
    }))
}

/// Name, state, readiness and whether the release depends on it, per service.
fn services() -> Result<Value, String> {
    Ok(bus::list_services(Some(BUS_TIMEOUT))?
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "description": s.description,
                "state": s.state,
                "ready": s.ready,
                "critical": s.critical,
                "starts": s.starts,
                "last_exit": s.last_exit,
            })
        })
        .collect())
}

fn storage() -> Result<Value, String> {
    let stat = nix::sys::statvfs::statvfs(DATA_MOUNT).map_err(|e| format!("{DATA_MOUNT}: {e}"))?;
    let block = stat.fragment_size() as u64;
    Ok(json!({
        "mount": DATA_MOUNT,
        "total_bytes": stat.blocks() as u64 * block,
        "free_bytes": stat.blocks_available() as u64 * block,
    }))
}

/// The update service's own status (docs/updates.md), as it reports it.
fn update() -> Result<Value, String> {
    let text: String = bus::proxy(UPDATE, Some(BUS_TIMEOUT))?
        .call("Status", &())
        .map_err(|e| format!("the update service did not answer: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("the update service's status: {e}"))
}

/// Asks the update service to check its repository: "up to date (…)" or
/// "available: <version>", or why it could not.
pub fn update_check() -> Result<String, String> {
    bus::proxy(UPDATE, Some(BUS_TIMEOUT))?
        .call("Check", &())
        .map_err(|e| bus_error("update check", e))
}

/// Starts installing the available update into the inactive slot; progress shows in
/// the status.
pub fn update_apply() -> Result<(), String> {
    bus::proxy(UPDATE, Some(BUS_TIMEOUT))?
        .call_method("Apply", &())
        .map(|_| ())
        .map_err(|e| bus_error("update", e))
}

/// The service's own message from a D-Bus error, without zbus's wrapping.
fn bus_error(what: &str, e: zbus::Error) -> String {
    format!("{what}: {}", bus_message(e))
}

/// A D-Bus error as the service worded it (zbus's own description otherwise).
pub fn bus_message(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(_, Some(message), _) => message,
        other => other.to_string(),
    }
}
