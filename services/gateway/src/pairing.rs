//! The box's side of pairing: the pairing window, the failure budget and the
//! exchanges in flight (protocol: the `llamabox-pairing` crate, docs/pairing.md).
//!
//! Rules (after Matter's commissioning window):
//! - Pairing is open for a window after boot (15 minutes by default); a paired phone
//!   can open it again.
//! - Each wrong proof is one failed attempt. After `MAX_FAILURES` pairing closes until
//!   the box restarts, whatever the window says: an online guesser gets 20 of 10^8.
//! - The failure count and the window's end are kept for the boot (a file under /run),
//!   so restarting the gateway (a crash, or a guesser who makes it crash) resets neither.
//! - At most `MAX_PENDING` exchanges wait for their proof, each for `PENDING_TIMEOUT`;
//!   an exchange never finished costs the guesser nothing but reveals nothing either
//!   (without a proof there is no yes/no).

use llamabox_pairing::{box_respond, PairingError, SessionKeys, SetupCode};
use rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 20;
pub const MAX_PENDING: usize = 4;
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Pairing {
    code: SetupCode,
    window: Duration,
    open_until: Option<Instant>,
    failures: u32,
    pending: HashMap<String, Pending>,
    /// Where the failures and the window's end are kept for this boot.
    boot_file: Option<PathBuf>,
}

/// What survives a gateway restart within one boot.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
struct BootState {
    failures: u32,
    /// When the window closes, in seconds since boot (`None`: closed).
    window_closes_at: Option<f64>,
}

/// Seconds since boot (CLOCK_BOOTTIME: counts suspend too, shared by every process).
fn since_boot() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

struct Pending {
    keys: SessionKeys,
    name: String,
    started: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The window has ended (a paired phone can open it again).
    WindowClosed,
    /// `MAX_FAILURES` wrong codes: closed until the box restarts.
    TooManyFailures,
    /// `MAX_PENDING` exchanges are already waiting.
    Busy,
    /// No such exchange (never started, finished, or expired).
    UnknownSession,
    BadMessage,
    /// The proof did not verify; `attempts_left` more wrong codes are allowed.
    WrongCode {
        attempts_left: u32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::WindowClosed => write!(
                f,
                "pairing is closed: the pairing window has ended (restart the box, or open it from a paired phone)"
            ),
            Refusal::TooManyFailures => write!(
                f,
                "pairing is closed until the box restarts: {MAX_FAILURES} wrong setup codes"
            ),
            Refusal::Busy => write!(f, "too many pairings in progress; try again in a minute"),
            Refusal::UnknownSession => {
                write!(f, "no such pairing session (it expired or already finished)")
            }
            Refusal::BadMessage => write!(f, "malformed pairing message"),
            Refusal::WrongCode { attempts_left: 0 } => write!(
                f,
                "wrong setup code; pairing is now closed until the box restarts"
            ),
            Refusal::WrongCode { attempts_left } => {
                write!(f, "wrong setup code ({attempts_left} attempts left)")
            }
        }
    }
}

/// What `GET /v1/pairing` shows.
#[derive(serde::Serialize, Debug)]
pub struct PairingStatus {
    pub open: bool,
    /// Seconds until the window closes (0 when closed).
    pub closes_in_s: u64,
    pub failures: u32,
    pub attempts_left: u32,
}

impl Pairing {
    /// Opens the window at once (the box just booted), or, if `boot_file` holds this
    /// boot's state (the gateway restarted), carries on from it.
    pub fn new(code: SetupCode, window: Duration, boot_file: Option<PathBuf>) -> Pairing {
        let saved = boot_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<BootState>(&bytes).ok());
        let now = Instant::now();
        let (failures, open_until) = match saved {
            Some(state) => {
                let left = state.window_closes_at.map(|at| at - since_boot());
                let open_until = left
                    .filter(|s| *s > 0.0)
                    .map(|s| now + Duration::from_secs_f64(s));
                (state.failures.min(MAX_FAILURES), open_until)
            }
            None => (0, Some(now + window)),
        };
        let pairing = Pairing {
            code,
            window,
            open_until,
            failures,
            pending: HashMap::new(),
            boot_file,
        };
        pairing.save();
        pairing
    }

    /// Writes this boot's state; a failure to write is logged, never fatal (the limits
    /// still hold until the gateway restarts).
    fn save(&self) {
        let Some(path) = &self.boot_file else { return };
        let now = Instant::now();
        let state = BootState {
            failures: self.failures,
            window_closes_at: self
                .open_until
                .filter(|until| *until > now)
                .map(|until| since_boot() + (until - now).as_secs_f64()),
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&state)?)?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!("cannot keep the pairing limits in {}: {e}", path.display());
        }
    }

    pub fn status(&self) -> PairingStatus {
        let now = Instant::now();
        let open = self.check_open(now).is_ok();
        PairingStatus {
            open,
            closes_in_s: match self.open_until {
                Some(until) if open => until.saturating_duration_since(now).as_secs(),
                _ => 0,
            },
            failures: self.failures,
            attempts_left: MAX_FAILURES - self.failures,
        }
    }

    /// A paired phone opens the window again (not after too many failures).
    pub fn reopen(&mut self) -> Result<(), Refusal> {
        if self.failures >= MAX_FAILURES {
            return Err(Refusal::TooManyFailures);
        }
        self.open_until = Some(Instant::now() + self.window);
        self.save();
        Ok(())
    }

    fn check_open(&self, now: Instant) -> Result<(), Refusal> {
        if self.failures >= MAX_FAILURES {
            return Err(Refusal::TooManyFailures);
        }
        match self.open_until {
            Some(until) if now < until => Ok(()),
            _ => Err(Refusal::WindowClosed),
        }
    }

    /// Step 1 → 2: the phone's message in; the session id and the box's message out.
    pub fn start(&mut self, name: &str, message: &[u8]) -> Result<(String, Vec<u8>), Refusal> {
        let now = Instant::now();
        self.check_open(now)?;
        self.pending
            .retain(|_, p| now.duration_since(p.started) < PENDING_TIMEOUT);
        if self.pending.len() >= MAX_PENDING {
            return Err(Refusal::Busy);
        }
        let (keys, reply) =
            box_respond(&self.code, message, &mut OsRng).map_err(|_| Refusal::BadMessage)?;
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let session = hex::encode(id);
        self.pending.insert(
            session.clone(),
            Pending {
                keys,
                name: name.to_string(),
                started: now,
            },
        );
        Ok((session, reply))
    }

    /// Step 3: checks the phone's proof. On success returns the keys (to seal the
    /// credential with) and the phone's name; every wrong proof is counted.
    pub fn finish(
        &mut self,
        session: &str,
        proof: &[u8],
    ) -> Result<(SessionKeys, String), Refusal> {
        let now = Instant::now();
        // The window is checked again: a code guessed after closing must not pair.
        self.check_open(now)?;
        let pending = self
            .pending
            .remove(session)
            .ok_or(Refusal::UnknownSession)?;
        if now.duration_since(pending.started) >= PENDING_TIMEOUT {
            return Err(Refusal::UnknownSession);
        }
        match pending.keys.verify_phone_proof(session.as_bytes(), proof) {
            Ok(()) => Ok((pending.keys, pending.name)),
            Err(PairingError::WrongCode | PairingError::BadMessage | PairingError::BadSeal) => {
                self.failures += 1;
                self.save();
                if self.failures >= MAX_FAILURES {
                    // Nothing in flight may finish after the budget is spent.
                    self.pending.clear();
                }
                Err(Refusal::WrongCode {
                    attempts_left: MAX_FAILURES - self.failures,
                })
            }
        }
    }
}
