//! `board/<name>/board.toml`: the hardware an image is built for.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use super::{read_toml, suggest, Arch, Problems};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBoard {
    description: String,
    arch: String,
    kernel: RawKernel,
    boot: RawBoot,
    partitions: RawPartitions,
    qemu: Option<RawQemu>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKernel {
    package: String,
    #[serde(default = "default_kernel_image")]
    image: String,
    console: String,
    #[serde(default)]
    cmdline: String,
    #[serde(default)]
    early_modules: Vec<String>,
    #[serde(default)]
    device_trees: Vec<String>,
}

fn default_kernel_image() -> String {
    "boot/vmlinuz-*".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBoot {
    firmware: String,
    loader: String,
    #[serde(default = "default_tries")]
    tries: u32,
}

fn default_tries() -> u32 {
    3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPartitions {
    esp_mib: u64,
    slot_mib: u64,
    data_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawQemu {
    machine: String,
    #[serde(default = "default_memory")]
    memory_mib: u32,
    #[serde(default)]
    cpu: Option<String>,
    firmware_code: String,
    firmware_vars: String,
    #[serde(default)]
    watchdog: Option<String>,
}

fn default_memory() -> u32 {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// UEFI firmware: OVMF/AAVMF in QEMU, EDK2 on LX2160A and Jetson Orin.
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// systemd-boot with type #2 entries (UKIs) and automatic boot assessment.
    SystemdBoot,
}

#[derive(Debug, Clone)]
pub struct Kernel {
    pub package: String,
    pub image: String,
    pub console: String,
    pub cmdline: String,
    pub early_modules: Vec<String>,
    pub device_trees: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Qemu {
    pub machine: String,
    pub memory_mib: u32,
    pub cpu: Option<String>,
    pub firmware_code: PathBuf,
    pub firmware_vars: PathBuf,
    pub watchdog: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Board {
    pub name: String,
    pub description: String,
    pub arch: Arch,
    pub kernel: Kernel,
    pub firmware: Firmware,
    pub loader: Loader,
    pub tries: u32,
    pub layout: llamabox_image::disk::Layout,
    pub qemu: Option<Qemu>,
}

impl Board {
    /// The kernel command line of slot `slot`'s boot entry.
    pub fn cmdline(&self, slot: llamabox_format::Slot) -> String {
        let mut parts = vec![format!("console={}", self.kernel.console)];
        if !self.kernel.cmdline.is_empty() {
            parts.push(self.kernel.cmdline.clone());
        }
        parts.push(format!("llamabox.slot={slot}"));
        parts.join(" ")
    }
}

pub fn known_boards(board_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(board_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("board.toml").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn load(board_dir: &Path, name: &str) -> Result<Board> {
    let path = board_dir.join(name).join("board.toml");
    if !path.exists() {
        let known = known_boards(board_dir);
        anyhow::bail!(
            "no board `{name}`{} (boards: {})",
            suggest(name, known.iter().map(String::as_str)),
            known.join(", ")
        );
    }
    let raw: RawBoard = read_toml(&path)?;
    let mut problems = Problems::default();
    let arch = Arch::parse(&raw.arch);
    if arch.is_none() {
        problems.add(
            "arch",
            format!(
                "unknown architecture `{}` (known: x86_64, aarch64)",
                raw.arch
            ),
        );
    }
    let firmware = match raw.boot.firmware.as_str() {
        "uefi" => Some(Firmware::Uefi),
        other => {
            problems.add(
                "boot.firmware",
                format!("unknown firmware `{other}` (known: uefi)"),
            );
            None
        }
    };
    let loader = match raw.boot.loader.as_str() {
        "systemd-boot" => Some(Loader::SystemdBoot),
        other => {
            problems.add(
                "boot.loader",
                format!("unknown loader `{other}` (known: systemd-boot)"),
            );
            None
        }
    };
    if !(1..=9).contains(&raw.boot.tries) {
        problems.add("boot.tries", "must be between 1 and 9");
    }
    let p = &raw.partitions;
    for (key, v, min) in [
        ("partitions.esp-mib", p.esp_mib, 32),
        ("partitions.slot-mib", p.slot_mib, 16),
        ("partitions.data-mib", p.data_mib, 16),
    ] {
        if v < min {
            problems.add(key, format!("{v} MiB is too small (at least {min})"));
        }
    }
    if raw.kernel.cmdline.contains("llamabox.slot") {
        problems.add(
            "kernel.cmdline",
            "must not set llamabox.slot: the image sets it per slot",
        );
    }
    problems.finish(&path)?;
    Ok(Board {
        name: name.to_string(),
        description: raw.description,
        arch: arch.unwrap(),
        kernel: Kernel {
            package: raw.kernel.package,
            image: raw.kernel.image,
            console: raw.kernel.console,
            cmdline: raw.kernel.cmdline,
            early_modules: raw.kernel.early_modules,
            device_trees: raw.kernel.device_trees,
        },
        firmware: firmware.unwrap(),
        loader: loader.unwrap(),
        tries: raw.boot.tries,
        layout: llamabox_image::disk::Layout {
            esp_mib: p.esp_mib,
            slot_mib: p.slot_mib,
            data_mib: p.data_mib,
        },
        qemu: raw.qemu.map(|q| Qemu {
            machine: q.machine,
            memory_mib: q.memory_mib,
            cpu: q.cpu,
            firmware_code: PathBuf::from(q.firmware_code),
            firmware_vars: PathBuf::from(q.firmware_vars),
            watchdog: q.watchdog,
        }),
    })
}
