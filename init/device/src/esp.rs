//! The EFI system partition: where each slot's boot entry lives and where boot counting
//! happens. Stage 1 marks a slot bad here; stage 2 blesses it.

use std::path::{Path, PathBuf};

use llamabox_format::{boot_entry, BootEntry, Slot};
use nix::mount::{umount, MsFlags};

use crate::{block, fs};

pub const LABEL: &str = "esp";
/// FAT has no owners or modes; these make every file root's alone (0600, directories
/// 0700) while it is mounted: `device.json`, with the setup code, lives here.
const MOUNT_OPTIONS: &str = "fmask=0177,dmask=0077";

pub struct MountedEsp {
    root: PathBuf,
}

impl MountedEsp {
    /// Finds the ESP by its partition label and mounts it read-write at `at`.
    pub fn mount(at: &str) -> Result<MountedEsp, String> {
        let esp = block::wait_for_label(LABEL, std::time::Duration::from_secs(10))
            .ok_or_else(|| format!("no partition labelled `{LABEL}`"))?;
        let device = esp.device.to_string_lossy().into_owned();
        fs::mount_fs(
            &device,
            at,
            "vfat",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(MOUNT_OPTIONS),
        )?;
        Ok(MountedEsp {
            root: PathBuf::from(at),
        })
    }

    /// The entry of `slot`, if the ESP has one.
    pub fn entry(&self, slot: Slot) -> Option<BootEntry> {
        let dir = self.root.join(boot_entry::DIRECTORY);
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| BootEntry::parse(&e.file_name().to_string_lossy()))
            .find(|e| e.slot == slot)
    }

    /// Renames `from` to `to` and makes the rename durable.
    pub fn rename(&self, from: &BootEntry, to: &BootEntry) -> Result<(), String> {
        if from == to {
            return Ok(());
        }
        let (a, b) = (self.root.join(from.path()), self.root.join(to.path()));
        std::fs::rename(&a, &b)
            .map_err(|e| format!("cannot rename {} to {}: {e}", a.display(), b.display()))?;
        nix::unistd::sync();
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn unmount(self) {
        nix::unistd::sync();
        let _ = umount(&self.root);
    }
}
