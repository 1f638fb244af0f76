//! The health gate that blesses a slot on trial, and the hardware watchdog.

use std::time::{Duration, Instant};

use super::{Exit, Supervisor};

/// Judges a freshly booted slot: once every critical service has been ready for
/// `grace`, `on_healthy` runs (it blesses the slot); if that has not happened
/// `deadline` after the supervisor started, the machine reboots so the bootloader's
/// boot counting can fall back to the other slot.
pub struct HealthGate {
    pub grace: Duration,
    pub deadline: Duration,
    pub on_healthy: Box<dyn FnMut() -> Result<String, String>>,
}

pub(super) struct GateState {
    gate: HealthGate,
    healthy_since: Option<Instant>,
    done: bool,
}

/// How often the hardware watchdog is petted; its timeout (30 s on i6300esb by
/// default, typically 60 s on SoCs) must be longer.
pub(super) const WATCHDOG_INTERVAL: Duration = Duration::from_secs(5);

impl Supervisor {
    pub fn set_health_gate(&mut self, gate: HealthGate) {
        self.gate = Some(GateState {
            gate,
            healthy_since: None,
            done: false,
        });
    }

    pub(super) fn open_watchdog(&mut self) {
        let Some(path) = self.config.watchdog.clone() else {
            return;
        };
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => {
                self.event(&format!("petting the hardware watchdog {}", path.display()));
                self.watchdog = Some((file, Instant::now()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.event(&format!("cannot open {}: {e}", path.display())),
        }
    }

    pub(super) fn pet_watchdog(&mut self) {
        use std::io::Write;
        if let Some((file, last)) = &mut self.watchdog {
            if last.elapsed() >= WATCHDOG_INTERVAL {
                let _ = file.write_all(b"\0");
                *last = Instant::now();
            }
        }
    }

    /// Disarms the watchdog (magic close) before a deliberate power-off.
    pub fn release_watchdog(&mut self) {
        use std::io::Write;
        if let Some((mut file, _)) = self.watchdog.take() {
            let _ = file.write_all(b"V");
        }
    }

    pub(super) fn check_health(&mut self) {
        let healthy = self
            .services
            .values()
            .filter(|s| s.def.critical)
            .all(|s| s.ready);
        let now = Instant::now();
        let elapsed = self.epoch.elapsed();
        let Some(g) = &mut self.gate else { return };
        if g.done || self.shutting_down.is_some() {
            return;
        }
        match (healthy, g.healthy_since) {
            (true, None) => g.healthy_since = Some(now),
            (false, Some(_)) => g.healthy_since = None,
            _ => {}
        }
        let message = if g
            .healthy_since
            .is_some_and(|t| now.duration_since(t) >= g.gate.grace)
        {
            g.done = true;
            Some(match (g.gate.on_healthy)() {
                Ok(m) => format!(
                    "healthy: every critical service ready for {:.1} s; {m}",
                    g.gate.grace.as_secs_f32()
                ),
                Err(e) => format!("healthy, but the slot could not be blessed: {e}"),
            })
        } else if elapsed >= g.gate.deadline {
            g.done = true;
            self.shutting_down = Some(Exit::Reboot);
            Some(format!(
                "not healthy {:.0} s after start (critical services not ready); rebooting so the bootloader can fall back",
                g.gate.deadline.as_secs_f32()
            ))
        } else {
            None
        };
        if let Some(m) = message {
            self.event(&m);
        }
    }

    /// The next moment the gate or the watchdog needs attention.
    pub(super) fn next_housekeeping(&self) -> Option<Instant> {
        let gate = self
            .gate
            .as_ref()
            .filter(|g| !g.done)
            .map(|g| match g.healthy_since {
                Some(t) => (t + g.gate.grace).min(self.epoch + g.gate.deadline),
                None => self.epoch + g.gate.deadline,
            });
        let dog = self
            .watchdog
            .as_ref()
            .map(|(_, last)| *last + WATCHDOG_INTERVAL);
        [gate, dog].into_iter().flatten().min()
    }
}
