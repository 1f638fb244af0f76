//! What the update client remembers across boots, on the data partition: the newest
//! root it trusts, the metadata versions and the latest time it has seen (so a box
//! whose clock resets still refuses stale metadata), and the anti-rollback floor.
//! Files are replaced atomically (write, fsync, rename, fsync the directory).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use llamabox_format::update::metadata::{format_time, parse_time};
use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Seen {
    pub timestamp_version: u64,
    pub snapshot_version: u64,
    pub targets_version: u64,
    /// The latest time this box has known to be past (RFC 3339).
    pub time: Option<String>,
    /// The lowest image version this box will install: the highest it has run.
    pub version_floor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Pending {
    pub version: String,
    pub slot: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct State {
    #[serde(default)]
    pub seen: Seen,
    /// An installed update waiting for its first boot.
    pub pending: Option<Pending>,
    /// A sentence about the last attempt, for `llamabox update status`.
    pub last_result: Option<String>,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn root_path(&self) -> PathBuf {
        self.dir.join("root.json")
    }

    pub fn load(&self) -> Result<State, Error> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(crate::io(format!("reading {}", path.display()))(e)),
        }
    }

    pub fn save(&self, state: &State) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomically(&self.state_path(), &bytes)
    }

    /// The trusted root: the newest one stored here, else the image's.
    pub fn trusted_root(&self, image_root: &Path) -> Result<Vec<u8>, Error> {
        match std::fs::read(self.root_path()) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::read(image_root)
                .map_err(crate::io(format!(
                    "reading the image's update root {}",
                    image_root.display()
                ))),
            Err(e) => Err(crate::io("reading the stored update root")(e)),
        }
    }

    pub fn save_root(&self, bytes: &[u8]) -> Result<(), Error> {
        write_atomically(&self.root_path(), bytes)
    }
}

impl Seen {
    /// Now, as far as this box can tell: never earlier than a time it has seen before.
    pub fn now(&self, clock: SystemTime) -> SystemTime {
        let seen = self.time.as_deref().and_then(|t| parse_time(t).ok());
        match seen {
            Some(seen) if seen > clock => seen,
            _ => clock,
        }
    }

    pub fn record_time(&mut self, now: SystemTime) {
        self.time = Some(format_time(now));
    }
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    llamabox_device::fs::write_durably(path, bytes)
        .map_err(crate::io(format!("writing {}", path.display())))
}
