//! Staging recipe outputs: resolving `[[install]]` rules against a source's files and
//! copying the matches into a tree that mirrors the target filesystem.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::recipe::Recipe;
use crate::config::Arch;

/// Installs `recipe`'s files from `sources` (searched in order) into `tree`.
pub fn install(recipe: &Recipe, arch: Arch, sources: &[PathBuf], tree: &Path) -> Result<()> {
    for (i, rule) in recipe.install.iter().enumerate() {
        if rule.arch.is_some_and(|only| only != arch) {
            continue;
        }
        let from = rule.from.replace("{multiarch}", arch.multiarch());
        let to = rule.to.replace("{multiarch}", arch.multiarch());
        let mut matches = Vec::new();
        for source in sources {
            let pattern = source.join(&from);
            let pattern = pattern.to_string_lossy();
            for path in glob::glob(&pattern).with_context(|| {
                format!(
                    "recipe {}: install[{i}].from is not a valid glob",
                    recipe.name
                )
            })? {
                matches.push(path?);
            }
        }
        if matches.is_empty() {
            bail!(
                "recipe `{}` ({}): install[{i}].from `{from}` matched nothing in {}",
                recipe.name,
                recipe.file.display(),
                sources
                    .iter()
                    .map(|s| s.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(expected) = &rule.sha256 {
            check_sha256(recipe, i, &matches, expected)?;
        }
        let into_dir = to.ends_with('/') || matches.len() > 1;
        for path in matches {
            let meta = path.symlink_metadata()?;
            let dest_rel = to.trim_start_matches('/');
            if meta.is_dir() {
                copy_tree(&path, &tree.join(dest_rel), rule.mode)?;
                continue;
            }
            let dest = if into_dir {
                tree.join(dest_rel).join(path.file_name().unwrap())
            } else {
                tree.join(dest_rel)
            };
            copy_entry(&path, &dest, rule.mode)?;
        }
    }
    Ok(())
}

/// An `[[install]]` rule with `sha256` must match exactly one regular file, with that hash.
fn check_sha256(recipe: &Recipe, i: usize, matches: &[PathBuf], expected: &str) -> Result<()> {
    let [file] = matches else {
        bail!(
            "recipe `{}`: install[{i}] pins a sha256 but `from` matches {} files",
            recipe.name,
            matches.len()
        );
    };
    if !file.symlink_metadata()?.is_file() {
        bail!(
            "recipe `{}`: install[{i}] pins a sha256 but {} is not a regular file",
            recipe.name,
            file.display()
        );
    }
    let actual = llamabox_image::sha256_file(file)?;
    if actual != expected {
        bail!(
            "recipe `{}` ({}): install[{i}]: {} has SHA-256 {actual}, the recipe pins {expected}",
            recipe.name,
            recipe.file.display(),
            file.display()
        );
    }
    Ok(())
}

/// Copies `src`'s contents into `dest`, keeping symlinks as symlinks.
pub fn copy_tree(src: &Path, dest: &Path, mode: Option<u32>) -> Result<()> {
    for entry in walkdir::WalkDir::new(src).sort_by_file_name() {
        let entry = entry?;
        let rel = entry.path().strip_prefix(src)?;
        let target = dest.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)?;
            let perms = entry.path().metadata()?.permissions().mode() & 0o7777;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(perms | 0o700))?;
        } else {
            copy_entry(entry.path(), &target, mode)?;
        }
    }
    Ok(())
}

/// Copies one file or symlink. An existing, different file at `dest` is an error:
/// two recipes must not fight over a path.
pub fn copy_entry(src: &Path, dest: &Path, mode: Option<u32>) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let meta = src.symlink_metadata()?;
    if dest.symlink_metadata().is_ok() {
        let same = if meta.file_type().is_symlink() {
            std::fs::read_link(src).ok() == std::fs::read_link(dest).ok()
        } else {
            std::fs::read(src).ok() == std::fs::read(dest).ok()
        };
        if same {
            return Ok(());
        }
        bail!(
            "{} is installed twice with different contents",
            dest.display()
        );
    }
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dest)?;
    } else {
        std::fs::copy(src, dest)
            .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
        let m = mode.unwrap_or(meta.permissions().mode() & 0o7777);
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(m))?;
    }
    Ok(())
}

/// Merges a staged tree into another (the rootfs), with the same conflict rule.
pub fn merge(src: &Path, dest: &Path) -> Result<()> {
    copy_tree(src, dest, None)
}
