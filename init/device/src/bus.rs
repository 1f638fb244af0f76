//! The D-Bus contract of the box: who serves what on the system bus, and the shapes
//! they answer in. The servers (supervisor, update, voice) and their clients (gateway,
//! CLI, update's health check) use these names, never their own literals.

use std::time::Duration;

/// The system bus the box's dbus-daemon listens on (`DBUS_SYSTEM_BUS_ADDRESS` overrides).
pub const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// A well-known name and the object serving it; the interface has the name's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusObject {
    pub name: &'static str,
    pub path: &'static str,
    /// How error messages name it ("the supervisor").
    pub what: &'static str,
}

/// PID 1's supervisor: services, their state and logs, reboot and power off.
pub const SUPERVISOR: BusObject = BusObject {
    name: "org.llamabox.Supervisor1",
    path: "/org/llamabox/Supervisor1",
    what: "the supervisor",
};
/// The update service: check, apply, status.
pub const UPDATE: BusObject = BusObject {
    name: "org.llamabox.Update1",
    path: "/org/llamabox/Update1",
    what: "the update service",
};
/// The voice service: listening state and transcripts.
pub const VOICE: BusObject = BusObject {
    name: "org.llamabox.Voice1",
    path: "/org/llamabox/Voice1",
    what: "the voice service",
};

/// One row of the supervisor's `ListServices`, as it travels on the bus: name,
/// description, state, ready, critical, pid (0: none), starts, last exit.
pub type ServiceRow = (String, String, String, bool, bool, i32, u32, String);

/// One service as the supervisor reports it (a [`ServiceRow`], named).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub description: String,
    pub state: String,
    pub ready: bool,
    /// Whether the release's health depends on it.
    pub critical: bool,
    pub pid: Option<i32>,
    pub starts: u32,
    pub last_exit: String,
}

impl From<ServiceRow> for ServiceStatus {
    fn from(row: ServiceRow) -> ServiceStatus {
        let (name, description, state, ready, critical, pid, starts, last_exit) = row;
        ServiceStatus {
            name,
            description,
            state,
            ready,
            critical,
            pid: (pid != 0).then_some(pid),
            starts,
            last_exit,
        }
    }
}

impl From<ServiceStatus> for ServiceRow {
    fn from(s: ServiceStatus) -> ServiceRow {
        (
            s.name,
            s.description,
            s.state,
            s.ready,
            s.critical,
            s.pid.unwrap_or(0),
            s.starts,
            s.last_exit,
        )
    }
}

/// The system bus's address: `DBUS_SYSTEM_BUS_ADDRESS`, else [`SYSTEM_BUS`].
pub fn system_bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| SYSTEM_BUS.to_string())
}

/// A blocking proxy for `object` on the system bus; calls give up after `timeout`
/// (zbus's default, 25 s, when `None`). Errors are messages for people.
pub fn proxy(
    object: BusObject,
    timeout: Option<Duration>,
) -> Result<zbus::blocking::Proxy<'static>, String> {
    let address = system_bus_address();
    let connection = zbus::blocking::connection::Builder::address(address.as_str())
        .map(|b| match timeout {
            Some(t) => b.method_timeout(t),
            None => b,
        })
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot reach the system bus at {address}: {e}"))?;
    zbus::blocking::Proxy::new_owned(connection, object.name, object.path, object.name)
        .map_err(|e| format!("cannot reach {}: {e}", object.what))
}

/// The supervisor's services, in its order.
pub fn list_services(timeout: Option<Duration>) -> Result<Vec<ServiceStatus>, String> {
    let rows: Vec<ServiceRow> = proxy(SUPERVISOR, timeout)?
        .call("ListServices", &())
        .map_err(|e| format!("{} did not answer: {e}", SUPERVISOR.what))?;
    Ok(rows.into_iter().map(ServiceStatus::from).collect())
}
