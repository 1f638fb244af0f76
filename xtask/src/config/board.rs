//! `board/<name>/board.toml`: the hardware an image is built for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use super::{read_toml, suggest, Arch, Problems};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBoard {
    description: String,
    arch: String,
    #[serde(default)]
    cpu_baseline: Option<String>,
    kernel: RawKernel,
    #[serde(default)]
    device_tree: Option<RawDeviceTree>,
    #[serde(default, rename = "input")]
    inputs: Vec<RawInput>,
    boot: RawBoot,
    partitions: RawPartitions,
    qemu: Option<RawQemu>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKernel {
    #[serde(default)]
    package: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    modules: Option<String>,
    #[serde(default = "default_kernel_image")]
    image: String,
    console: String,
    #[serde(default)]
    cmdline: String,
    #[serde(default)]
    early_modules: Vec<String>,
}

/// Device trees the board can boot with: name → path in the kernel's files. The chosen
/// one travels inside the UKI (systemd-stub installs its `.dtb` section).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDeviceTree {
    default: String,
    options: BTreeMap<String, String>,
}

/// A file the board needs that no package registry carries (a vendor BSP).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInput {
    name: String,
    file: String,
    sha256: String,
    url: String,
    #[serde(default)]
    description: String,
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
    #[serde(default)]
    agent_console: Option<String>,
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

/// Where the kernel, its modules and device trees come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A Debian kernel package from the lock (`linux-image-*`).
    Debian { package: String },
    /// A pinned external input (a vendor BSP tarball, `[[input]]`), unpacked; `modules`
    /// is a tarball inside it that holds `lib/modules/<version>`.
    Input {
        input: String,
        modules: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Kernel {
    pub source: KernelSource,
    /// Glob of the kernel image within the source's files.
    pub image: String,
    pub console: String,
    pub cmdline: String,
    pub early_modules: Vec<String>,
}

/// An external input: a file pinned by SHA-256, fetched from `url` on request or
/// handed to the build with `--input NAME=PATH`.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub file: String,
    pub sha256: String,
    pub url: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct Qemu {
    pub machine: String,
    pub memory_mib: u32,
    pub cpu: Option<String>,
    pub firmware_code: PathBuf,
    pub firmware_vars: PathBuf,
    pub watchdog: Option<String>,
    /// How the test images' agent is reached: a second UART, or a virtio console
    /// where the machine has only one UART (QEMU's arm64 `virt`).
    pub agent_console: AgentConsole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentConsole {
    /// The guest's `/dev/ttyS1`.
    SecondUart,
    /// The guest's `/dev/hvc0` (`virtio_console` among the early modules).
    Virtio,
}

#[derive(Debug, Clone)]
pub struct Board {
    /// The board's identity on the device (`/etc/llamabox/board`, update bundles):
    /// the board directory's name, with the device tree option when it has several
    /// (`lx2160a-honeycomb`), since an update must bring the same device tree.
    pub name: String,
    pub description: String,
    pub arch: Arch,
    /// The CPU the device code is compiled for (`-march` for ggml on arm64).
    pub cpu_baseline: String,
    pub kernel: Kernel,
    /// The device tree path within the kernel's files, when the board boots with one.
    pub device_tree: Option<String>,
    pub inputs: Vec<Input>,
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

/// Loads `board/<name>/board.toml`. `spec` is the board's directory name, optionally
/// with a device tree option: `lx2160a` (its default device tree) or
/// `lx2160a:clearfog-cx`.
pub fn load(board_dir: &Path, spec: &str) -> Result<Board> {
    let (name, dt_option) = match spec.split_once(':') {
        Some((name, option)) => (name, Some(option)),
        None => (spec, None),
    };
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
    let cpu_baseline = match (&raw.cpu_baseline, arch) {
        (Some(b), Some(Arch::Aarch64)) if !b.starts_with("armv8") && !b.starts_with("armv9") => {
            problems.add(
                "cpu-baseline",
                format!("`{b}` is not an arm64 -march value (e.g. armv8-a+crc+crypto)"),
            );
            String::new()
        }
        (Some(b), Some(Arch::X86_64)) if b != "x86-64-v2" && b != "x86-64-v3" => {
            problems.add(
                "cpu-baseline",
                format!("`{b}`: x86_64 boards take x86-64-v2 or x86-64-v3"),
            );
            String::new()
        }
        (Some(b), _) if b == "native" => {
            problems.add(
                "cpu-baseline",
                "never `native`: images run on other machines than the one that built them",
            );
            String::new()
        }
        (Some(b), _) => b.clone(),
        (None, Some(a)) => a.default_cpu_baseline().to_string(),
        (None, None) => String::new(),
    };
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
    let inputs: Vec<Input> = raw
        .inputs
        .into_iter()
        .map(|i| Input {
            name: i.name,
            file: i.file,
            sha256: i.sha256.to_ascii_lowercase(),
            url: i.url,
            description: i.description,
        })
        .collect();
    for i in &inputs {
        if i.sha256.len() != 64 || !i.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.add(&format!("input.{}.sha256", i.name), "must be 64 hex digits");
        }
    }
    let source = match (raw.kernel.package, raw.kernel.input) {
        (Some(package), None) => Some(KernelSource::Debian { package }),
        (None, Some(input)) => {
            if !inputs.iter().any(|i| i.name == input) {
                problems.add("kernel.input", format!("no [[input]] named `{input}`"));
            }
            Some(KernelSource::Input {
                input,
                modules: raw.kernel.modules,
            })
        }
        _ => {
            problems.add(
                "kernel",
                "needs exactly one of `package` (Debian) or `input` (an [[input]])",
            );
            None
        }
    };
    let device_tree = match (&raw.device_tree, dt_option) {
        (None, None) => None,
        (None, Some(option)) => {
            problems.add(
                "device-tree",
                format!(
                    "board `{name}` has no device tree options, so `{name}:{option}` means nothing"
                ),
            );
            None
        }
        (Some(dt), option) => {
            let chosen = option.unwrap_or(&dt.default);
            match dt.options.get(chosen) {
                Some(path) => Some((chosen.to_string(), path.clone())),
                None => {
                    problems.add(
                        "device-tree",
                        format!(
                            "no device tree option `{chosen}`{} (options: {})",
                            suggest(chosen, dt.options.keys().map(String::as_str)),
                            dt.options.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                    None
                }
            }
        }
    };
    let agent_console = match raw.qemu.as_ref().and_then(|q| q.agent_console.as_deref()) {
        None | Some("uart") => AgentConsole::SecondUart,
        Some("virtio") => AgentConsole::Virtio,
        Some(other) => {
            problems.add(
                "qemu.agent-console",
                format!("unknown console `{other}` (known: uart, virtio)"),
            );
            AgentConsole::SecondUart
        }
    };
    problems.finish(&path)?;
    let full_name = match &device_tree {
        Some((option, _)) => format!("{name}-{option}"),
        None => name.to_string(),
    };
    Ok(Board {
        name: full_name,
        description: raw.description,
        arch: arch.unwrap(),
        cpu_baseline,
        kernel: Kernel {
            source: source.unwrap(),
            image: raw.kernel.image,
            console: raw.kernel.console,
            cmdline: raw.kernel.cmdline,
            early_modules: raw.kernel.early_modules,
        },
        device_tree: device_tree.map(|(_, path)| path),
        inputs,
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
            agent_console,
        }),
    })
}
