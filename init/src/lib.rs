//! The Llama Box boot chain after the bootloader.
//!
//! Stage 1 (`llamabox-stage1`, `/init` in the initramfs) opens the booted slot's
//! verified root and hands over to stage 2 (`llamabox-init`, `/sbin/init` in the root),
//! which runs as PID 1 for the life of the system. Both are static binaries; neither
//! may panic, since a dying PID 1 panics the kernel.

pub mod device_mapper;
pub mod kmod;
pub mod log;
pub mod power;

// Shared with the services and the CLI (they never depend on this crate).
pub use llamabox_device::{block, boot_info, esp, fs};

/// Kernel command line keys this project reads.
pub mod cmdline {
    use llamabox_format::Slot;

    pub const SLOT: &str = "llamabox.slot";

    /// The value of `key=value` on the kernel command line, if present.
    pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
        cmdline
            .split_ascii_whitespace()
            .filter_map(|arg| arg.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    pub fn slot(cmdline: &str) -> Option<Slot> {
        value(cmdline, SLOT).and_then(Slot::parse)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn finds_the_slot() {
            let line = "console=ttyS0 llamabox.slot=b quiet";
            assert_eq!(super::slot(line), Some(llamabox_format::Slot::B));
            assert_eq!(super::slot("console=ttyS0"), None);
        }
    }
}
