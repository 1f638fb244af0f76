//! Turning a root filesystem tree, a kernel and an initramfs tree into a flashable,
//! signed, A/B disk image. Knows nothing about recipes or boards' TOML: `xtask` resolves
//! those and calls in here with plain paths and values.
//!
//! Every step is deterministic: same inputs, same bytes (fixed timestamps, GUIDs and
//! volume ids derived from the inputs, sorted directory walks).

pub mod bmap;
pub mod cpio;
pub mod disk;
pub mod esp;
pub mod gpt;
pub mod modules;
pub mod rootfs;
pub mod tool;
pub mod uki;

use sha2::{Digest, Sha256};

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
