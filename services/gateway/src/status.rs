//! `GET /v1/device/status`: what the phone's device screen shows — the running
//! release, the services, storage and updates. Each part is read on its own; one that
//! cannot be read says why (`{"error": …}`) and the rest still answers.

use serde_json::{json, Value};
use std::time::Duration;

const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
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
    let info = llamabox_init::boot_info::BootInfo::read()
        .map_err(|e| format!("{}: {e}", llamabox_init::boot_info::PATH))?;
    Ok(json!({
        "version": info.get("version"),
        "slot": info.get("slot"),
    }))
}

fn bus_proxy(
    name: &'static str,
    path: &'static str,
) -> Result<zbus::blocking::Proxy<'static>, String> {
    let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| SYSTEM_BUS.into());
    let connection = zbus::blocking::connection::Builder::address(address.as_str())
        .map(|b| b.method_timeout(BUS_TIMEOUT))
        .and_then(|b| b.build())
        .map_err(|e| format!("the system bus is not reachable: {e}"))?;
    zbus::blocking::Proxy::new_owned(connection, name, path, name).map_err(|e| e.to_string())
}

/// Name, state, readiness and whether the release depends on it, per service.
fn services() -> Result<Value, String> {
    type Row = (String, String, String, bool, bool, i32, u32, String);
    let rows: Vec<Row> = bus_proxy("org.llamabox.Supervisor1", "/org/llamabox/Supervisor1")?
        .call("ListServices", &())
        .map_err(|e| format!("the supervisor did not answer: {e}"))?;
    Ok(rows
        .into_iter()
        .map(
            |(name, description, state, ready, critical, _, starts, last_exit)| {
                json!({
                    "name": name,
                    "description": description,
                    "state": state,
                    "ready": ready,
                    "critical": critical,
                    "starts": starts,
                    "last_exit": last_exit,
                })
            },
        )
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
    let text: String = bus_proxy("org.llamabox.Update1", "/org/llamabox/Update1")?
        .call("Status", &())
        .map_err(|e| format!("the update service did not answer: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("the update service's status: {e}"))
}

/// Asks the update service to check its repository: "up to date (…)" or
/// "available: <version>", or why it could not.
pub fn update_check() -> Result<String, String> {
    bus_proxy("org.llamabox.Update1", "/org/llamabox/Update1")?
        .call("Check", &())
        .map_err(|e| bus_error("update check", e))
}

/// Starts installing the available update into the inactive slot; progress shows in
/// the status.
pub fn update_apply() -> Result<(), String> {
    bus_proxy("org.llamabox.Update1", "/org/llamabox/Update1")?
        .call_method("Apply", &())
        .map(|_| ())
        .map_err(|e| bus_error("update", e))
}

/// The service's own message from a D-Bus error, without zbus's wrapping.
fn bus_error(what: &str, e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(_, Some(message), _) => format!("{what}: {message}"),
        other => format!("{what}: {other}"),
    }
}
