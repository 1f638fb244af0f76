//! `org.llamabox.Supervisor1` on the system bus, at `/org/llamabox/Supervisor1`.
//!
//! The interface runs on its own thread (zbus's blocking API). It answers reads from the
//! latest state snapshot and hands control requests to the event loop through a channel,
//! waking the loop's `poll` through a pipe; the event loop stays the only owner of the
//! services.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::logs;
use crate::state::Snapshot;

pub use llamabox_device::bus::SUPERVISOR;
use llamabox_device::bus::{ServiceRow, ServiceStatus};
const BUS_NAME: &str = SUPERVISOR.name;
const OBJECT_PATH: &str = SUPERVISOR.path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Restart(String),
    Stop(String),
    Start(String),
    Reboot,
    PowerOff,
}

/// What the interface thread shares with the event loop.
pub struct Shared {
    pub snapshot: Mutex<Snapshot>,
    pub log_dir: PathBuf,
    pub requests: Mutex<Sender<Request>>,
    /// Write end of the event loop's wake pipe.
    pub wake: OwnedFd,
}

impl Shared {
    fn send(&self, request: Request) -> zbus::fdo::Result<()> {
        let sent = self.requests.lock().map(|tx| tx.send(request));
        match sent {
            Ok(Ok(())) => {
                let _ = nix::unistd::write(&self.wake, b"!");
                Ok(())
            }
            _ => Err(zbus::fdo::Error::Failed(
                "the supervisor is shutting down".into(),
            )),
        }
    }

    fn known(&self, name: &str) -> zbus::fdo::Result<()> {
        let snapshot = self
            .snapshot
            .lock()
            .map_err(|_| zbus::fdo::Error::Failed("state unavailable".into()))?;
        if snapshot.service(name).is_some() {
            Ok(())
        } else {
            Err(zbus::fdo::Error::InvalidArgs(format!(
                "no service `{name}`"
            )))
        }
    }
}

struct Interface {
    shared: Arc<Shared>,
}

#[zbus::interface(name = "org.llamabox.Supervisor1")]
impl Interface {
    fn list_services(&self) -> zbus::fdo::Result<Vec<ServiceRow>> {
        let snapshot = self
            .shared
            .snapshot
            .lock()
            .map_err(|_| zbus::fdo::Error::Failed("state unavailable".into()))?;
        Ok(snapshot
            .services
            .iter()
            .map(|s| {
                ServiceStatus {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    state: s.state.clone(),
                    ready: s.ready,
                    critical: s.critical,
                    pid: s.pid,
                    starts: s.starts,
                    last_exit: s.last_exit.clone().unwrap_or_default(),
                }
                .into()
            })
            .collect())
    }

    /// The whole state as JSON (the same as /run/llamabox/supervisor.json).
    fn state_json(&self) -> zbus::fdo::Result<String> {
        let snapshot = self
            .shared
            .snapshot
            .lock()
            .map_err(|_| zbus::fdo::Error::Failed("state unavailable".into()))?;
        serde_json::to_string(&*snapshot).map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }

    #[zbus(property)]
    fn healthy(&self) -> bool {
        self.shared
            .snapshot
            .lock()
            .map(|s| s.healthy)
            .unwrap_or(false)
    }

    fn restart(&self, name: &str) -> zbus::fdo::Result<()> {
        self.shared.known(name)?;
        self.shared.send(Request::Restart(name.to_string()))
    }

    fn stop(&self, name: &str) -> zbus::fdo::Result<()> {
        self.shared.known(name)?;
        self.shared.send(Request::Stop(name.to_string()))
    }

    fn start(&self, name: &str) -> zbus::fdo::Result<()> {
        self.shared.known(name)?;
        self.shared.send(Request::Start(name.to_string()))
    }

    /// Stops every service and reboots (the update service asks for this).
    fn reboot(&self) -> zbus::fdo::Result<()> {
        self.shared.send(Request::Reboot)
    }

    fn power_off(&self) -> zbus::fdo::Result<()> {
        self.shared.send(Request::PowerOff)
    }

    /// The last `lines` lines of a service's log (`supervisor` for the supervisor's own).
    fn logs(&self, name: &str, lines: u32) -> zbus::fdo::Result<Vec<String>> {
        if name != "supervisor" {
            self.shared.known(name)?;
        }
        let all = logs::read_lines(&self.shared.log_dir, name)
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let skip = all.len().saturating_sub(lines as usize);
        Ok(all[skip..].to_vec())
    }
}

/// Connects to the bus at `address` and serves the interface, retrying until the bus
/// accepts us. The connection is checked every few seconds; when the broker has gone
/// (restarted by the supervisor), the interface is served again on a new connection.
pub fn serve(address: String, shared: Arc<Shared>) {
    std::thread::spawn(move || loop {
        let built = zbus::blocking::connection::Builder::address(address.as_str())
            .and_then(|b| b.name(BUS_NAME))
            .and_then(|b| {
                b.serve_at(
                    OBJECT_PATH,
                    Interface {
                        shared: shared.clone(),
                    },
                )
            })
            .and_then(|b| b.build());
        match built {
            Ok(connection) => {
                eprintln!("llamabox-supervisor: serving {BUS_NAME} on the system bus");
                // The connection's own executor thread answers calls; this one only
                // checks that the broker is still there.
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    let alive = connection.call_method(
                        Some("org.freedesktop.DBus"),
                        "/org/freedesktop/DBus",
                        Some("org.freedesktop.DBus.Peer"),
                        "Ping",
                        &(),
                    );
                    if let Err(e) = alive {
                        eprintln!("llamabox-supervisor: lost the system bus ({e}); reconnecting");
                        break;
                    }
                }
            }
            Err(e) => {
                eprintln!("llamabox-supervisor: cannot serve {BUS_NAME} yet: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::object_server::Interface as _;

    #[test]
    fn the_interface_is_the_contracts() {
        // zbus's attribute takes a literal; the contract's name must be the same.
        assert_eq!(Interface::name().as_str(), SUPERVISOR.name);
    }
}
