//! Formats that cross the boundary between the build host and the device.
//!
//! The image builder (`xtask`, `llamabox-image`) writes these; stage 1 of `init`
//! and the update service read them. Keeping them in one crate means the
//! two sides cannot drift apart. Everything read from a device or a download is
//! untrusted: lengths are bounded and errors are typed so callers can branch.
#![forbid(unsafe_code)]

pub mod boot_entry;
pub mod gpt;
pub mod health;
pub mod keys;
pub mod manifest;
pub mod paths;
pub mod provisioning;
pub mod update;

pub use boot_entry::{BootEntry, Slot};
pub use keys::{KeyError, KeyId, PublicKey, SecretKey};
pub use manifest::{ManifestError, SignedManifest, SlotManifest, MANIFEST_BLOCK_SIZE};
