//! `llamabox-update serve`: the supervised update service.
//!
//! - `org.llamabox.Update1` on the system bus, at `/org/llamabox/Update1`: `Check() → s`,
//!   `Apply()` (starts an install in the background), `Status() → s` (JSON: phase,
//!   progress, running version and slot, pending install, last result).
//!   Models (docs/models.md): `Catalog() → s`, `Models() → s`, `PullModel(s)`,
//!   `CancelPull() → b`, `DeleteModel(s)`, `SetDefaultModel(s)`.
//! - A schedule: every `check-interval-minutes` (config), a check, and with
//!   `auto-install` an install; `reboot = "after-install"` then asks the supervisor to
//!   reboot, `"manual"` (the default) leaves that to the user.
//! - After boot: settles the last install once the booted slot is blessed (or at once
//!   when the bootloader fell back), so `Status` says which happened.
//!
//! It is a critical service: a release whose updater cannot start is not blessed, so a
//! box never keeps a release that could not update itself again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::fetch::Fetcher;
use crate::models::ModelStore;
use crate::state::{Pending, Store};
use crate::{device, repository, Applied, Updater};

use llamabox_device::bus::{self, SUPERVISOR, SYSTEM_BUS, UPDATE};
const BUS_NAME: &str = UPDATE.name;
const OBJECT_PATH: &str = UPDATE.path;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    /// `idle`, `checking`, `installing` or `installed` (waiting for a reboot).
    pub phase: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub running_version: String,
    pub running_slot: String,
    pub available: Option<String>,
    pub pending: Option<Pending>,
    pub last_result: Option<String>,
}

/// A model pull the service runs or ran last (`Models()`'s `pull`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PullStatus {
    pub name: String,
    /// `pulling`, `done`, `failed` or `cancelled`.
    pub phase: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// SHA-256 of the model file, once the catalog named it.
    pub sha256: Option<String>,
    pub error: Option<String>,
    /// What went wrong, for callers that answer by kind: `unknown-model`, `no-space`,
    /// `cancelled`, `failed`.
    pub error_kind: Option<String>,
    /// Bytes an earlier, interrupted pull had verified and this one kept.
    pub resumed_bytes: u64,
}

#[derive(Default)]
struct ModelsState {
    /// The signed catalog as last fetched.
    catalog: Option<llamabox_format::update::models::ModelCatalog>,
    pull: Option<PullStatus>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
}

struct Service {
    status: Mutex<Status>,
    models: Mutex<ModelsState>,
    /// What is using the repository and the update state right now, if anything: a
    /// check, an install and settling never overlap (each writes the seen versions and
    /// the anti-rollback floor).
    busy: Mutex<Option<&'static str>>,
}

/// Holds the service's one unit of work; freed when dropped.
struct Busy(Arc<Service>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn updater() -> Result<Updater, String> {
    let config = device::config()?;
    let (_, installed) = device::booted()?;
    Ok(Updater {
        fetcher: Fetcher::new(&config.mirrors),
        store: Store::new(device::STATE_DIR),
        image_root: device::IMAGE_ROOT.into(),
        board: device::board()?,
        installed,
        image_time: device::image_time()?,
    })
}

fn log(message: &str) {
    eprintln!("llamabox-update: {message}");
}

impl Service {
    /// Starts a unit of work, or says which one is running.
    fn begin(self: &Arc<Self>, what: &'static str) -> Result<Busy, String> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = *busy {
            return Err(format!("cannot start {what}: {running} is running"));
        }
        *busy = Some(what);
        Ok(Busy(self.clone()))
    }

    fn refresh(&self) {
        let store = Store::new(device::STATE_DIR);
        if let Ok(state) = store.load() {
            let mut status = self.status.lock().unwrap();
            status.pending = state.pending;
            status.last_result = state.last_result;
        }
    }

    fn set_phase(&self, phase: &str) {
        self.status.lock().unwrap().phase = phase.to_string();
    }

    fn check(self: &Arc<Self>) -> Result<String, String> {
        let _busy = self.begin("a check")?;
        let updater = updater()?;
        if updater.fetcher.mirror_count() == 0 {
            return Err(format!(
                "no repository configured (`mirrors` in {})",
                device::CONFIG_FILES[0]
            ));
        }
        self.set_phase("checking");
        let result = updater.check().map_err(|e| e.to_string());
        let mut status = self.status.lock().unwrap();
        status.phase = "idle".into();
        match result? {
            repository::Check::UpToDate { version } => {
                status.available = None;
                Ok(format!(
                    "up to date ({})",
                    version.unwrap_or_else(|| "no release for this board".into())
                ))
            }
            repository::Check::Available { target } => {
                status.available = Some(target.version.clone());
                Ok(format!("available: {}", target.version))
            }
        }
    }

    /// Installs in the background; false if an install is already running.
    fn start_apply(self: &Arc<Self>, then_reboot: bool) -> Result<(), String> {
        let busy = self.begin("an install")?;
        let updater = updater()?;
        let service = self.clone();
        std::thread::spawn(move || {
            service.set_phase("installing");
            let result = device::layout()
                .map_err(|e| e.to_string())
                .and_then(|(layout, _esp)| {
                    let progress_to = service.clone();
                    let mut progress = move |done: u64, total: u64| {
                        let mut status = progress_to.status.lock().unwrap();
                        status.done_bytes = done;
                        status.total_bytes = total;
                    };
                    updater
                        .apply(&layout, &mut progress)
                        .map_err(|e| e.to_string())
                });
            let installed = matches!(result, Ok(Applied::Installed { .. }));
            match &result {
                Ok(Applied::Installed { version, report }) => log(&format!(
                    "installed {version} as {} ({} bytes downloaded of {})",
                    report.entry, report.downloaded, report.total
                )),
                Ok(Applied::UpToDate { .. }) => log("up to date"),
                Err(e) => log(&format!("install failed: {e}")),
            }
            service.set_phase(if installed { "installed" } else { "idle" });
            service.refresh();
            drop(busy);
            if installed && then_reboot {
                log("rebooting into the new release (reboot = \"after-install\")");
                if let Err(e) = ask_supervisor_to_reboot() {
                    log(&format!("cannot ask the supervisor to reboot: {e}"));
                }
            }
        });
        Ok(())
    }

    /// Settles the last install after a boot (see `Updater::reconcile`); false to be
    /// asked again later (not settled yet, or other work is running).
    fn settle(self: &Arc<Self>) -> bool {
        let Ok(_busy) = self.begin("settling the last install") else {
            return false;
        };
        let settled = (|| -> Result<bool, String> {
            let (slot, version) = device::booted()?;
            let blessed = device::booted_slot_blessed(slot)?;
            let updater = updater()?;
            if let Some(message) = updater
                .reconcile(slot, &version, blessed, device::refusal().as_ref())
                .map_err(|e| e.to_string())?
            {
                log(&message);
            }
            Ok(updater
                .store
                .load()
                .map_err(|e| e.to_string())?
                .pending
                .is_none()
                || blessed)
        })();
        self.refresh();
        settled.unwrap_or_else(|e| {
            log(&e);
            true
        })
    }
}

impl Service {
    fn model_store() -> ModelStore {
        ModelStore::new(llamabox_format::paths::MODEL_STORE)
    }

    /// Verifies the repository and fetches its model catalog (kept for `Models()`).
    fn catalog(self: &Arc<Self>) -> Result<String, String> {
        let _busy = self.begin("fetching the model catalog")?;
        let updater = updater()?;
        if updater.fetcher.mirror_count() == 0 {
            return Err(format!(
                "no repository configured (`mirrors` in {})",
                device::CONFIG_FILES[0]
            ));
        }
        let catalog = updater.catalog().map_err(|e| e.to_string())?;
        let json = serde_json::to_string(&catalog).expect("a catalog serializes");
        self.models.lock().unwrap().catalog = Some(catalog);
        Ok(json)
    }

    /// Installed models, the last catalog, the pull in progress and the space left.
    fn models_json(&self) -> Result<String, String> {
        let store = Self::model_store();
        let installed: Vec<serde_json::Value> = store
            .installed()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|m| {
                let mut value = serde_json::to_value(&m.entry).expect("an entry serializes");
                value["path"] = m.path.to_string_lossy().into();
                value["modified-at"] =
                    llamabox_format::update::metadata::format_time(m.modified).into();
                value
            })
            .collect();
        let state = self.models.lock().unwrap();
        Ok(serde_json::json!({
            "installed": installed,
            "default": store.default_model(),
            "catalog": state.catalog.as_ref().map(|c| &c.models),
            "pull": state.pull,
            "free-bytes": store.free_bytes().ok(),
        })
        .to_string())
    }

    /// Starts pulling `name` from the signed catalog in the background.
    fn start_pull(self: &Arc<Self>, name: String) -> Result<(), String> {
        let busy = self.begin("a model pull")?;
        let updater = updater()?;
        if updater.fetcher.mirror_count() == 0 {
            return Err(format!(
                "no repository configured (`mirrors` in {})",
                device::CONFIG_FILES[0]
            ));
        }
        let cancel = {
            let mut models = self.models.lock().unwrap();
            models.cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
            models.pull = Some(PullStatus {
                name: name.clone(),
                phase: "pulling".into(),
                done_bytes: 0,
                total_bytes: 0,
                sha256: None,
                error: None,
                error_kind: None,
                resumed_bytes: 0,
            });
            models.cancel.clone()
        };
        let service = self.clone();
        std::thread::spawn(move || {
            let _busy = busy;
            let store = Self::model_store();
            let result = (|| {
                let catalog = updater.catalog()?;
                let sha256 = catalog.get(&name).map(|m| m.sha256.clone());
                service.models.lock().unwrap().catalog = Some(catalog);
                if let Some(pull) = &mut service.models.lock().unwrap().pull {
                    pull.sha256 = sha256;
                }
                let progress_to = service.clone();
                let mut progress = move |done: u64, total: u64| {
                    if let Some(pull) = &mut progress_to.models.lock().unwrap().pull {
                        pull.done_bytes = done;
                        pull.total_bytes = total;
                    }
                };
                updater.pull_model(&store, &name, &mut progress, &cancel)
            })();
            let mut models = service.models.lock().unwrap();
            let pull = models.pull.as_mut().expect("set when the pull started");
            match result {
                Ok(pulled) => {
                    log(&format!(
                        "pulled the model {name} ({} downloaded, {} kept from an earlier pull)",
                        crate::mib(pulled.downloaded),
                        crate::mib(pulled.resumed)
                    ));
                    pull.phase = "done".into();
                    pull.resumed_bytes = pulled.resumed;
                }
                Err(e @ crate::Error::Cancelled { .. }) => {
                    log(&e.to_string());
                    pull.phase = "cancelled".into();
                    pull.error = Some(e.to_string());
                    pull.error_kind = Some("cancelled".into());
                }
                Err(e) => {
                    log(&format!("the pull of {name} failed: {e}"));
                    pull.phase = "failed".into();
                    pull.error_kind = Some(
                        match e {
                            crate::Error::UnknownModel { .. } => "unknown-model",
                            crate::Error::NoSpace { .. } => "no-space",
                            _ => "failed",
                        }
                        .into(),
                    );
                    pull.error = Some(e.to_string());
                }
            }
        });
        Ok(())
    }

    fn cancel_pull(&self) -> bool {
        let models = self.models.lock().unwrap();
        let pulling = models.pull.as_ref().is_some_and(|p| p.phase == "pulling");
        if pulling {
            models
                .cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        pulling
    }

    fn set_default_model(&self, name: &str) -> Result<(), String> {
        let name = (!name.is_empty()).then_some(name);
        Self::model_store()
            .set_default(name)
            .map_err(|e| e.to_string())?;
        log(&format!(
            "the default model is now {}",
            name.unwrap_or("the factory model")
        ));
        Ok(())
    }

    fn delete_model(&self, name: &str) -> Result<(), String> {
        {
            let models = self.models.lock().unwrap();
            if let Some(pull) = models.pull.as_ref().filter(|p| p.phase == "pulling") {
                if pull.name == name {
                    return Err(format!("`{name}` is being pulled: cancel the pull first"));
                }
            }
        }
        Self::model_store()
            .delete(name)
            .map_err(|e| e.to_string())?;
        log(&format!("deleted the model {name}"));
        Ok(())
    }
}

fn ask_supervisor_to_reboot() -> Result<(), String> {
    bus::proxy(SUPERVISOR, None)?
        .call_method("Reboot", &())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

struct Interface {
    service: Arc<Service>,
}

#[zbus::interface(name = "org.llamabox.Update1")]
impl Interface {
    /// Verifies the repository's metadata: "up to date (…)" or "available: <version>".
    /// Runs on its own thread: a slow mirror must not hold up `Status` and the rest of
    /// the interface for the minutes a check may take.
    async fn check(&self) -> zbus::fdo::Result<String> {
        let (reply, result) = futures_channel::oneshot::channel();
        let service = self.service.clone();
        std::thread::spawn(move || {
            let _ = reply.send(service.check());
        });
        result
            .await
            .unwrap_or_else(|_| Err("the check stopped without a result".into()))
            .map_err(zbus::fdo::Error::Failed)
    }

    /// Starts installing an available update into the inactive slot.
    fn apply(&self) -> zbus::fdo::Result<()> {
        self.service
            .start_apply(false)
            .map_err(zbus::fdo::Error::Failed)
    }

    /// Verifies the repository and returns its signed model catalog (JSON).
    async fn catalog(&self) -> zbus::fdo::Result<String> {
        let (reply, result) = futures_channel::oneshot::channel();
        let service = self.service.clone();
        std::thread::spawn(move || {
            let _ = reply.send(service.catalog());
        });
        result
            .await
            .unwrap_or_else(|_| Err("fetching the catalog stopped without a result".into()))
            .map_err(zbus::fdo::Error::Failed)
    }

    /// Installed models, the catalog last fetched, the current or last pull and the
    /// space left for models (JSON; docs/models.md).
    fn models(&self) -> zbus::fdo::Result<String> {
        self.service.models_json().map_err(zbus::fdo::Error::Failed)
    }

    /// Starts pulling a model from the signed catalog; progress shows in `Models()`.
    fn pull_model(&self, name: String) -> zbus::fdo::Result<()> {
        self.service
            .start_pull(name)
            .map_err(zbus::fdo::Error::Failed)
    }

    /// Stops the pull in progress after its current chunk (what it has is kept); false
    /// if nothing was being pulled.
    fn cancel_pull(&self) -> bool {
        self.service.cancel_pull()
    }

    /// Makes an installed model the one the box loads at start ("": the factory model).
    fn set_default_model(&self, name: String) -> zbus::fdo::Result<()> {
        self.service
            .set_default_model(&name)
            .map_err(zbus::fdo::Error::Failed)
    }

    /// Removes an installed model from the data partition.
    fn delete_model(&self, name: String) -> zbus::fdo::Result<()> {
        self.service
            .delete_model(&name)
            .map_err(zbus::fdo::Error::Failed)
    }

    /// The service's state as JSON.
    fn status(&self) -> zbus::fdo::Result<String> {
        self.service.refresh();
        let status = self.service.status.lock().unwrap().clone();
        Ok(serde_json::to_string(&status).expect("status serializes"))
    }
}

/// Runs the service: never returns.
pub fn run() -> ! {
    let (slot, version) = device::booted().unwrap_or((llamabox_format::Slot::A, "unknown".into()));
    let service = Arc::new(Service {
        status: Mutex::new(Status {
            phase: "idle".into(),
            running_version: version,
            running_slot: slot.to_string(),
            ..Status::default()
        }),
        busy: Mutex::new(None),
        models: Mutex::new(ModelsState::default()),
    });
    service.refresh();

    // Serve the bus first: readiness means the control plane answers.
    let connection = loop {
        let built = zbus::blocking::connection::Builder::address(SYSTEM_BUS)
            .and_then(|b| b.name(BUS_NAME))
            .and_then(|b| {
                b.serve_at(
                    OBJECT_PATH,
                    Interface {
                        service: service.clone(),
                    },
                )
            })
            .and_then(|b| b.build());
        match built {
            Ok(c) => break c,
            Err(e) => {
                log(&format!("cannot serve {BUS_NAME} yet: {e}"));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    log(&format!("serving {BUS_NAME}"));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    // Settle the last install: at once, then until the booted slot is blessed.
    let settler = service.clone();
    std::thread::spawn(move || {
        while !settler.settle() {
            std::thread::sleep(Duration::from_secs(10));
        }
    });

    loop {
        let schedule = device::config().unwrap_or_else(|e| {
            log(&format!("{e}; updates are checked by hand only"));
            device::Config::default()
        });
        let interval = schedule.check_interval_minutes;
        if interval == 0 || schedule.mirrors.is_empty() {
            std::thread::sleep(Duration::from_secs(3600));
            continue;
        }
        std::thread::sleep(Duration::from_secs(interval * 60));
        match service.check() {
            Ok(message) => {
                log(&message);
                if message.starts_with("available") && schedule.auto_install {
                    let then_reboot = schedule.reboot == device::RebootPolicy::AfterInstall;
                    if let Err(e) = service.start_apply(then_reboot) {
                        log(&e);
                    }
                }
            }
            Err(e) => log(&format!("scheduled check failed: {e}")),
        }
        let _ = &connection;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::object_server::Interface as _;

    #[test]
    fn the_interface_is_the_contracts() {
        // zbus's attribute takes a literal; the contract's name must be the same.
        assert_eq!(Interface::name().as_str(), UPDATE.name);
    }
}
