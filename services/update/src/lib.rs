//! The update client (docs/updates.md): checks a repository, verifies its signed
//! metadata and installs a bundle into the inactive slot, chunk by verified chunk.
//!
//! - [`fetch`]: GET-only HTTP with bounded bodies, range requests and mirrors.
//! - [`repository`]: the TUF-style metadata walk: root chain, timestamp, snapshot,
//!   targets, each pinned and checked against what this box has already seen.
//! - [`install`]: writes the inactive slot (reusing local chunks), then its manifest,
//!   then its boot entry; never touches the active slot.
//! - [`models`]: models as signed updates: the catalog, and the store on the data
//!   partition that pulls land in, chunk by verified chunk.
//! - [`state`]: what persists across boots: trusted root, versions seen, the
//!   anti-rollback floor, the last result.
#![forbid(unsafe_code)]

pub mod device;
pub mod fetch;
pub mod firewall;
pub mod install;
pub mod models;
pub mod release_check;
pub mod repository;
pub mod service;
pub mod state;

/// Everything an update can fail with, each naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error(transparent)]
    Metadata(#[from] llamabox_format::update::MetadataError),
    #[error(transparent)]
    Bundle(#[from] llamabox_format::update::BundleError),
    #[error("update to {offered} refused: this box runs {installed} and never goes back to an older version")]
    Rollback { offered: String, installed: String },
    #[error(
        "chunk {index} of `{file}` does not match its signed hash (tampered or corrupt download)"
    )]
    TamperedChunk { file: String, index: usize },
    #[error("the slot manifest in the bundle does not match the signed target: {0}")]
    ManifestMismatch(String),
    #[error("the running slot {slot} is still on trial ({entry}): the other slot is its fallback and is not overwritten until this one is blessed")]
    RunningOnTrial {
        slot: llamabox_format::Slot,
        entry: String,
    },
    #[error("the inactive slot's partition holds {available} bytes, the bundle needs {needed}")]
    SlotTooSmall { needed: u64, available: u64 },
    #[error(transparent)]
    ModelFormat(#[from] llamabox_format::update::models::ModelFormatError),
    #[error("the model catalog: {0}")]
    ModelCatalog(String),
    #[error("no model `{name}` {where_}; {known}")]
    UnknownModel {
        name: String,
        /// "is installed" or "is in the signed catalog".
        where_: &'static str,
        /// The names there are.
        known: String,
    },
    #[error("the repository offers no models (its release has no model catalog)")]
    NoCatalog,
    #[error("`{model}` needs {} more on the data partition, which has {} free", mib(*needed), mib(*free))]
    NoSpace {
        model: String,
        needed: u64,
        free: u64,
    },
    #[error("the model `{name}` does not match its signed hash as a whole (a wrong index); its partial download was discarded")]
    TamperedModel { name: String },
    #[error("the pull of `{name}` was cancelled; the {} verified so far are kept for the next pull", mib(*kept))]
    Cancelled { name: String, kept: u64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {reason}")]
    State { path: String, reason: String },
}

/// Bytes as people read them on a phone: `241.4 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

use std::path::PathBuf;
use std::time::SystemTime;

/// One box's view of one repository.
pub struct Updater {
    pub fetcher: fetch::Fetcher,
    pub store: state::Store,
    /// The root the image trusts (`/etc/llamabox/update/root.json`).
    pub image_root: PathBuf,
    pub board: String,
    /// The running image's version.
    pub installed: String,
    /// When the running image's source was committed (`/etc/llamabox/image-time`): the
    /// clock is never believed to be earlier (a box without a real-time clock boots in 1970).
    pub image_time: Option<SystemTime>,
}

/// What `apply` did.
#[derive(Debug)]
pub enum Applied {
    UpToDate {
        version: Option<String>,
    },
    Installed {
        version: String,
        report: install::Report,
    },
}

impl Updater {
    /// The system clock, but never before the image was made.
    fn clock(&self) -> SystemTime {
        let now = SystemTime::now();
        match self.image_time {
            Some(image) if image > now => image,
            _ => now,
        }
    }

    /// Verifies the repository's metadata; remembers the versions and time it saw.
    pub fn check(&self) -> Result<repository::Check, Error> {
        self.walk().map(|(check, _)| check)
    }

    /// The metadata walk, remembered; also the signed target of the model catalog.
    fn walk(&self) -> Result<(repository::Check, Option<llamabox_format::update::Target>), Error> {
        let mut state = self.store.load()?;
        let walk = repository::check(
            &self.fetcher,
            &self.store,
            &self.image_root,
            &self.board,
            &self.installed,
            &state.seen,
            self.clock(),
        )?;
        state.seen = walk.seen;
        self.store.save(&state)?;
        Ok((walk.check, walk.models))
    }

    /// Verifies the repository's metadata, then fetches the model catalog it pins.
    pub fn catalog(&self) -> Result<llamabox_format::update::models::ModelCatalog, Error> {
        let target = self.walk()?.1.ok_or(Error::NoCatalog)?;
        models::fetch_catalog(&self.fetcher, &target)
    }

    /// Pulls the model `name` from the signed catalog into `store`.
    pub fn pull_model(
        &self,
        store: &models::ModelStore,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<models::Pulled, Error> {
        let catalog = self.catalog()?;
        let Some(entry) = catalog.get(name) else {
            let known: Vec<&str> = catalog.models.iter().map(|m| m.name.as_str()).collect();
            return Err(Error::UnknownModel {
                name: name.to_string(),
                where_: "in the signed catalog",
                known: format!("it offers {}", known.join(", ")),
            });
        };
        store.pull(&self.fetcher, entry, progress, cancel)
    }

    /// Checks, then installs an available update into the inactive slot.
    pub fn apply(
        &self,
        layout: &install::Layout,
        progress: install::Progress,
    ) -> Result<Applied, Error> {
        let result = self.apply_inner(layout, progress);
        let mut state = self.store.load()?;
        state.last_result = Some(match &result {
            Ok(Applied::UpToDate { .. }) => "up to date".to_string(),
            Ok(Applied::Installed { version, report }) => format!(
                "installed {version} into slot {}; it boots next",
                report.slot.map(|s| s.name()).unwrap_or("?")
            ),
            Err(e) => format!("failed: {e}"),
        });
        if let Ok(Applied::Installed { version, report }) = &result {
            state.pending = Some(state::Pending {
                version: version.clone(),
                slot: report
                    .slot
                    .map(|s| s.name().to_string())
                    .unwrap_or_default(),
            });
        }
        self.store.save(&state)?;
        result
    }

    fn apply_inner(
        &self,
        layout: &install::Layout,
        progress: install::Progress,
    ) -> Result<Applied, Error> {
        match self.check()? {
            repository::Check::UpToDate { version } => Ok(Applied::UpToDate { version }),
            repository::Check::Available { target } => {
                let index = repository::fetch_index(&self.fetcher, &target, &self.board)?;
                let report = install::install(&self.fetcher, &index, layout, progress)?;
                Ok(Applied::Installed {
                    version: target.version,
                    report,
                })
            }
        }
    }
}

impl Updater {
    /// After a boot, settles an install that was waiting for it: the new slot booted and
    /// was blessed (success: the anti-rollback floor rises to its version), or the box
    /// runs the other slot (the bootloader fell back). While the new slot is still on
    /// trial nothing is decided. Returns the sentence recorded as the last result.
    ///
    /// `refusal` is why the health gate refused a slot (PID 1's record): when it is about
    /// the pending install, the failure says so.
    pub fn reconcile(
        &self,
        booted: llamabox_format::Slot,
        version: &str,
        blessed: bool,
        refusal: Option<&llamabox_format::health::Verdict>,
    ) -> Result<Option<String>, Error> {
        let mut state = self.store.load()?;
        let Some(pending) = state.pending.clone() else {
            return Ok(None);
        };
        let message = if pending.slot == booted.name() && pending.version == version {
            if !blessed {
                return Ok(None);
            }
            state.seen.version_floor = Some(version.to_string());
            format!("updated to {version}: slot {booted} booted and was blessed")
        } else {
            let why = refusal
                .filter(|r| r.slot == pending.slot && r.version == pending.version)
                .map(|r| format!(" ({})", r.reason))
                .unwrap_or_default();
            format!(
                "update to {} failed: slot {} never became healthy{why}, so the box fell back to slot {booted} ({version})",
                pending.version, pending.slot
            )
        };
        state.pending = None;
        state.last_result = Some(message.clone());
        self.store.save(&state)?;
        Ok(Some(message))
    }
}
