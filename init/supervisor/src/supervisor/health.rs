//! The health gate that blesses a slot on trial, and the hardware watchdog.

use std::time::{Duration, Instant};

use super::{Exit, Phase, Supervisor};

/// Judges a freshly booted slot: once every critical service has been ready for
/// `grace`, `on_healthy` runs (it blesses the slot). If that has not happened
/// `deadline` after the supervisor started, or a critical service has failed for good
/// (it exited and its policy does not restart it: the release check saying the model
/// answers wrongly), `on_refused` gets the reason (which services, in their own words)
/// and the machine reboots so the bootloader's boot counting can fall back to the other
/// slot.
pub struct HealthGate {
    pub grace: Duration,
    pub deadline: Duration,
    pub on_healthy: Box<dyn FnMut() -> Result<String, String>>,
    pub on_refused: Box<dyn FnMut(&str)>,
}

/// A critical service as the gate sees it.
pub(super) struct Critical<'a> {
    pub name: &'a str,
    pub ready: bool,
    /// Exited and not restarted (policy `never`, or `on-failure` after a failure).
    pub failed: bool,
    /// Its last `STATUS=` line, else how it last exited.
    pub said: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Judgement {
    Healthy,
    Pending,
    Refused(String),
}

impl Critical<'_> {
    /// "release-check: the language model answered …", or just its name.
    fn describe(&self) -> String {
        match self.said {
            Some(said) => format!("{}: {said}", self.name),
            None => self.name.to_string(),
        }
    }
}

/// What the critical services say about the slot right now.
pub(super) fn judge(critical: &[Critical]) -> Judgement {
    let failed: Vec<String> = critical
        .iter()
        .filter(|c| c.failed)
        .map(Critical::describe)
        .collect();
    if !failed.is_empty() {
        return Judgement::Refused(failed.join("; "));
    }
    if critical.iter().all(|c| c.ready) {
        Judgement::Healthy
    } else {
        Judgement::Pending
    }
}

/// The critical services that are not ready, with what they last said.
pub(super) fn not_ready(critical: &[Critical]) -> String {
    critical
        .iter()
        .filter(|c| !c.ready)
        .map(Critical::describe)
        .collect::<Vec<_>>()
        .join("; ")
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
        let critical: Vec<Critical> = self
            .services
            .iter()
            .filter(|(_, s)| s.def.critical)
            .map(|(name, s)| Critical {
                name,
                ready: s.ready,
                failed: s.phase == Phase::Failed,
                said: s.status.as_deref().or(s.last_exit.as_deref()),
            })
            .collect();
        let judgement = judge(&critical);
        let waiting_for = not_ready(&critical);
        let healthy = judgement == Judgement::Healthy;
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
        let message = if let Judgement::Refused(reason) = judgement {
            g.done = true;
            self.shutting_down = Some(Exit::Reboot);
            (g.gate.on_refused)(&reason);
            Some(format!(
                "not healthy: a critical service failed ({reason}); rebooting so the bootloader can fall back"
            ))
        } else if g
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
            let seconds = g.gate.deadline.as_secs_f32();
            (g.gate.on_refused)(&format!(
                "not ready {seconds:.0} s after start: {waiting_for}"
            ));
            Some(format!(
                "not healthy {seconds:.0} s after start (critical services not ready: {waiting_for}); rebooting so the bootloader can fall back"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service<'a>(
        name: &'a str,
        ready: bool,
        failed: bool,
        said: Option<&'a str>,
    ) -> Critical<'a> {
        Critical {
            name,
            ready,
            failed,
            said,
        }
    }

    #[test]
    fn a_critical_service_that_failed_for_good_refuses_the_slot_at_once_with_its_words() {
        let check = service(
            "release-check",
            false,
            true,
            Some("the language model answered the golden prompt wrongly"),
        );
        let judgement = judge(&[service("dbus", true, false, None), check]);
        assert_eq!(
            judgement,
            Judgement::Refused(
                "release-check: the language model answered the golden prompt wrongly".into()
            )
        );
    }

    #[test]
    fn ready_is_healthy_and_starting_is_pending_with_what_it_says() {
        assert_eq!(
            judge(&[service("dbus", true, false, None)]),
            Judgement::Healthy
        );
        let waiting = [
            service("dbus", true, false, None),
            service(
                "release-check",
                false,
                false,
                Some("waiting for the inference service"),
            ),
        ];
        assert_eq!(judge(&waiting), Judgement::Pending);
        assert_eq!(
            not_ready(&waiting),
            "release-check: waiting for the inference service"
        );
    }
}
