//! Root filesystem slot contents: the tree packed as EROFS, its dm-verity hash tree and
//! the signed manifest that stage 1 checks before it trusts either.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use llamabox_format::{manifest::VERITY_BLOCK_SIZE, SecretKey, SlotManifest};
use sha2::{Digest, Sha256};

use crate::tool::run;

/// What goes into a slot partition, as files.
#[derive(Debug, Clone)]
pub struct SlotImage {
    pub erofs: PathBuf,
    pub hash_tree: PathBuf,
    pub manifest_block: Vec<u8>,
    pub manifest: SlotManifest,
}

impl SlotImage {
    /// Bytes the slot's EROFS and hash tree occupy; the manifest adds one block at the end.
    pub fn required_size(&self) -> Result<u64> {
        let tree = std::fs::metadata(&self.hash_tree)?.len();
        Ok(self.manifest.hash_offset + tree + llamabox_format::MANIFEST_BLOCK_SIZE as u64)
    }
}

/// A deterministic UUID-shaped string from `seed`.
pub fn derived_uuid(seed: &[u8]) -> String {
    let h = Sha256::digest(seed);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout, derived rather than random
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Packs `tree` into `out_dir/rootfs.erofs`, computes its verity hash tree and signs
/// the manifest. `seed` (the build's input hash) fixes the filesystem UUID and salt.
pub fn build_slot(
    tree: &Path,
    out_dir: &Path,
    seed: &str,
    board: &str,
    version: &str,
    key: &SecretKey,
) -> Result<SlotImage> {
    std::fs::create_dir_all(out_dir)?;
    let erofs = out_dir.join("rootfs.erofs");
    run(Command::new("mkfs.erofs")
        .arg("-zlz4hc")
        .arg(format!(
            "-U{}",
            derived_uuid(format!("erofs:{seed}").as_bytes())
        ))
        .arg("-T0")
        .arg("--all-root")
        .arg(&erofs)
        .arg(tree))
    .context("packing the root filesystem with mkfs.erofs")?;

    // dm-verity covers whole blocks: pad the image to the block size.
    let len = std::fs::metadata(&erofs)?.len();
    let block = u64::from(VERITY_BLOCK_SIZE);
    let data_size = len.div_ceil(block) * block;
    if data_size != len {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&erofs)?
            .set_len(data_size)?;
    }

    let salt = hex::encode(Sha256::digest(format!("verity-salt:{seed}")));
    let hash_tree = out_dir.join("rootfs.verity");
    let _ = std::fs::remove_file(&hash_tree);
    let output = run(Command::new("veritysetup")
        .arg("format")
        .arg("--no-superblock")
        .arg("--hash=sha256")
        .arg(format!("--data-block-size={block}"))
        .arg(format!("--hash-block-size={block}"))
        .arg(format!("--salt={salt}"))
        .arg(&erofs)
        .arg(&hash_tree))
    .context("computing the dm-verity hash tree with veritysetup")?;
    let root_hash = output
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .context("veritysetup printed no `Root hash:` line")?;
    if root_hash.len() != 64 {
        bail!("veritysetup printed an unexpected root hash `{root_hash}`");
    }

    let manifest = SlotManifest {
        board: board.to_string(),
        version: version.to_string(),
        data_size,
        hash_offset: data_size,
        data_block_size: VERITY_BLOCK_SIZE,
        hash_block_size: VERITY_BLOCK_SIZE,
        hash_algorithm: "sha256".into(),
        root_hash,
        salt,
    };
    let manifest_block = manifest.sign(key)?;
    std::fs::write(out_dir.join("manifest.bin"), &manifest_block)?;
    Ok(SlotImage {
        erofs,
        hash_tree,
        manifest_block,
        manifest,
    })
}
