//! The box itself: what the image says about the board and the boot, where the slots
//! and the ESP are. Used when the command line does not name them (on the device).

use std::path::PathBuf;
use std::time::SystemTime;

use llamabox_device::boot_info::BootInfo;
use llamabox_device::esp::MountedEsp;
use llamabox_format::Slot;

use crate::install::Layout;

pub use llamabox_format::paths::{
    BOARD as BOARD_FILE, BOOT_TRIES as TRIES_FILE, IMAGE_TIME as IMAGE_TIME_FILE,
    UPDATE_ROOT as IMAGE_ROOT,
};
pub const STATE_DIR: &str = "/var/lib/llamabox/update";
/// The repository configuration: the image's, overridden by the box's local one.
pub const CONFIG_FILES: [&str; 2] = [
    "/etc/llamabox/local/update.toml",
    "/etc/llamabox/update/config.toml",
];
const ESP_MOUNT: &str = "/run/llamabox/update-esp";

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Repository base URLs (or local directories), tried in order.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// How often the service checks; 0: only when asked.
    #[serde(default = "default_interval")]
    pub check_interval_minutes: u64,
    /// Install an available update as soon as a scheduled check finds it.
    #[serde(default = "yes")]
    pub auto_install: bool,
    /// What happens after an install.
    #[serde(default)]
    pub reboot: RebootPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mirrors: Vec::new(),
            check_interval_minutes: default_interval(),
            auto_install: true,
            reboot: RebootPolicy::Manual,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    /// The user restarts the box (the phone shows "restart to finish").
    #[default]
    Manual,
    /// The service asks the supervisor to reboot right after an install.
    AfterInstall,
}

fn default_interval() -> u64 {
    24 * 60
}

fn yes() -> bool {
    true
}

pub fn config() -> Result<Config, String> {
    for path in CONFIG_FILES {
        match std::fs::read_to_string(path) {
            Ok(text) => return toml::from_str(&text).map_err(|e| format!("{path}: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{path}: {e}")),
        }
    }
    Ok(Config::default())
}

pub fn board() -> Result<String, String> {
    read_trimmed(BOARD_FILE)
}

/// When the running image's source was committed; `None` for an image without the file
/// (built outside git). A file that is there but unreadable is an error, not a shrug:
/// it is a floor under the clock that metadata expiry depends on.
pub fn image_time() -> Result<Option<SystemTime>, String> {
    match std::fs::read_to_string(IMAGE_TIME_FILE) {
        Ok(text) => llamabox_format::update::metadata::parse_time(text.trim())
            .map(Some)
            .map_err(|e| format!("{IMAGE_TIME_FILE}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{IMAGE_TIME_FILE}: {e}")),
    }
}

fn read_trimmed(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

/// The booted slot and its image version, as stage 1 recorded them.
pub fn booted() -> Result<(Slot, String), String> {
    let info =
        BootInfo::read().map_err(|e| format!("{}: {e}", llamabox_device::boot_info::PATH))?;
    let slot = info
        .get("slot")
        .and_then(Slot::parse)
        .ok_or("the boot information names no slot")?;
    let version = info
        .get("version")
        .ok_or("the boot information names no version")?;
    Ok((slot, version.to_string()))
}

/// The slots' partitions and the ESP, mounted while the returned guard lives.
pub fn layout() -> Result<(Layout, EspGuard), String> {
    let (active, _) = booted()?;
    let partition = |slot: Slot| {
        llamabox_device::block::find_by_label(slot.partition_label())
            .map(|p| p.device)
            .ok_or_else(|| format!("no partition labelled {}", slot.partition_label()))
    };
    let tries = read_trimmed(TRIES_FILE)?
        .parse()
        .map_err(|e| format!("{TRIES_FILE}: {e}"))?;
    std::fs::create_dir_all(ESP_MOUNT).map_err(|e| format!("{ESP_MOUNT}: {e}"))?;
    let esp = MountedEsp::mount(ESP_MOUNT)?;
    let layout = Layout {
        slot_a: partition(Slot::A)?,
        slot_b: partition(Slot::B)?,
        esp: PathBuf::from(ESP_MOUNT),
        active,
        tries,
    };
    Ok((layout, EspGuard(Some(esp))))
}

/// Unmounts the ESP when dropped.
pub struct EspGuard(Option<MountedEsp>);

impl Drop for EspGuard {
    fn drop(&mut self) {
        if let Some(esp) = self.0.take() {
            esp.unmount();
        }
    }
}

/// Whether the booted slot's boot entry has lost its counter (the health gate passed).
/// Why the health gate last refused a slot, as PID 1 recorded it.
pub fn refusal() -> Option<llamabox_format::health::Verdict> {
    llamabox_format::health::Verdict::read(std::path::Path::new(llamabox_format::health::VERDICT))
}

pub fn booted_slot_blessed(slot: Slot) -> Result<bool, String> {
    std::fs::create_dir_all(ESP_MOUNT).map_err(|e| format!("{ESP_MOUNT}: {e}"))?;
    let esp = MountedEsp::mount(ESP_MOUNT)?;
    let blessed = esp
        .entry(slot)
        .is_some_and(|e| !e.is_on_trial() && e.counter.is_none());
    esp.unmount();
    Ok(blessed)
}
