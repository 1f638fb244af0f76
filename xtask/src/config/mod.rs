//! The declarative inputs: recipes (`recipes/*.toml`), boards (`board/*/board.toml`),
//! the image definition (`image/llamabox.toml`) and the Debian lock file.
//!
//! Each file is read in two stages: a private raw struct that serde fills
//! (`deny_unknown_fields`, kebab-case), then a validated public type. Validation
//! collects every problem in a file and reports them together, each naming its key.

pub mod board;
pub mod image;
pub mod lock;
pub mod recipe;

/// The browser's target (the web app's pairing code).
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The architectures images are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
    /// Debian's name for the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
    /// Debian's multiarch triplet, as used in library paths (`{multiarch}` in recipes).
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }
    pub fn rust_target(self, static_musl: bool) -> &'static str {
        match (self, static_musl) {
            (Arch::X86_64, true) => "x86_64-unknown-linux-musl",
            (Arch::X86_64, false) => "x86_64-unknown-linux-gnu",
            (Arch::Aarch64, true) => "aarch64-unknown-linux-musl",
            (Arch::Aarch64, false) => "aarch64-unknown-linux-gnu",
        }
    }
    /// The objcopy that can write this architecture's PE files (unified kernel images):
    /// the host's binutils knows only x86 PE, Debian's cross binutils know arm64's.
    pub fn objcopy(self) -> &'static str {
        match self {
            Arch::X86_64 => "objcopy",
            Arch::Aarch64 => "aarch64-linux-gnu-objcopy",
        }
    }
    /// The QEMU system emulator for this architecture.
    pub fn qemu_system(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }
    /// systemd-boot's files for this architecture: (EFI stub, boot loader, the removable
    /// media path firmware starts without a boot entry).
    pub fn systemd_boot_files(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Arch::X86_64 => ("linuxx64.efi.stub", "systemd-bootx64.efi", "BOOTX64.EFI"),
            Arch::Aarch64 => ("linuxaa64.efi.stub", "systemd-bootaa64.efi", "BOOTAA64.EFI"),
        }
    }
    /// The GPT partition type of a root filesystem for this architecture
    /// (Discoverable Partitions Specification).
    pub fn gpt_root_type(self) -> &'static str {
        match self {
            Arch::X86_64 => llamabox_image::gpt::TYPE_ROOT_X86_64,
            Arch::Aarch64 => llamabox_image::gpt::TYPE_ROOT_ARM64,
        }
    }
    /// The CPU baseline device code is compiled for when a board names none. x86_64's
    /// is the host's in `.cargo/config.toml` (x86-64-v2, the test vehicle's); arm64's is
    /// the oldest core a supported board has (the LX2160A's Cortex-A72).
    pub fn default_cpu_baseline(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64-v2",
            Arch::Aarch64 => "armv8-a+crc+crypto",
        }
    }
    /// Host packages needed to build (and boot in QEMU) for this architecture besides
    /// the common ones: (command or file glob that must exist, Debian package).
    pub fn host_packages(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Arch::X86_64 => &[
                ("qemu-system-x86_64", "qemu-system-x86"),
                ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
            ],
            Arch::Aarch64 => &[
                ("qemu-system-aarch64", "qemu-system-arm"),
                ("/usr/share/AAVMF/AAVMF_CODE.fd", "qemu-efi-aarch64"),
                ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
                ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
                ("aarch64-linux-gnu-objcopy", "binutils-aarch64-linux-gnu"),
                // cpal's ALSA bindings link the arm64 libasound (Debian multiarch).
                (
                    "/usr/lib/aarch64-linux-gnu/libasound.so",
                    "libasound2-dev:arm64",
                ),
            ],
        }
    }
}

/// Problems found in one file, reported together.
#[derive(Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn add(&mut self, key: &str, message: impl std::fmt::Display) {
        self.0.push(format!("`{key}`: {message}"));
    }
    pub fn finish(self, file: &Path) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        bail!(
            "{}: {} problem(s):\n  - {}",
            file.display(),
            self.0.len(),
            self.0.join("\n  - ")
        )
    }
}

/// Reads and parses a TOML file into its raw form; serde's message names the key.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// "did you mean …" for a misspelt name.
pub fn suggest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let best = known
        .into_iter()
        .map(|k| (edit_distance(wanted, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min();
    match best {
        Some((_, k)) => format!(" (did you mean `{k}`?)"),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        assert_eq!(
            suggest("e2fsprog", ["e2fsprogs", "init"]),
            " (did you mean `e2fsprogs`?)"
        );
        assert_eq!(suggest("zzz", ["e2fsprogs", "init"]), "");
    }
}
