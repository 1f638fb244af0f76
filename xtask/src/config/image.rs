//! `image/<name>.toml`: which recipes make up the root filesystem and the initramfs, and
//! the boot health gate's timing. `image/llamabox.toml` is the product; other images
//! (test variants) `extend` it and add recipes or change the gate.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::recipe::Recipe;
use super::{read_toml, suggest, Problems};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawImage {
    /// Another image in the same folder whose settings this one starts from.
    extends: Option<String>,
    version: Option<String>,
    #[serde(default)]
    rootfs: Vec<String>,
    #[serde(default)]
    initramfs: Vec<String>,
    /// Recipes with a `[model]` table a release offers as signed model updates.
    catalog: Option<Vec<String>>,
    health: Option<RawHealth>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealth {
    grace_ms: u64,
    deadline_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ImageDef {
    /// The file name without `.toml`; outputs are named after it.
    pub name: String,
    pub version: String,
    pub rootfs: Vec<String>,
    pub initramfs: Vec<String>,
    /// Model recipes `cargo xtask release` publishes in the signed catalog.
    pub catalog: Vec<String>,
    /// Health gate: bless after `grace_ms` healthy, reboot if not by `deadline_ms`.
    pub health_grace_ms: u64,
    pub health_deadline_ms: u64,
}

impl ImageDef {
    /// `/etc/llamabox/health.toml` for the root filesystem.
    pub fn health_toml(&self) -> String {
        format!(
            "# Written by the image build from image/{}.toml.\ngrace-ms = {}\ndeadline-ms = {}\n",
            self.name, self.health_grace_ms, self.health_deadline_ms
        )
    }
}

pub fn known_images(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

pub fn load(dir: &Path, name: &str, recipes: &BTreeMap<String, Recipe>) -> Result<ImageDef> {
    load_depth(dir, name, recipes, 0)
}

fn load_depth(
    dir: &Path,
    name: &str,
    recipes: &BTreeMap<String, Recipe>,
    depth: usize,
) -> Result<ImageDef> {
    let path = dir.join(format!("{name}.toml"));
    if !path.exists() {
        let known = known_images(dir);
        bail!(
            "no image `{name}` in {}{}",
            dir.display(),
            suggest(name, known.iter().map(String::as_str))
        );
    }
    if depth > 4 {
        bail!("{}: `extends` chain is too long (a cycle?)", path.display());
    }
    let raw: RawImage = read_toml(&path)?;
    let mut problems = Problems::default();
    let parent = match &raw.extends {
        Some(parent) => Some(load_depth(dir, parent, recipes, depth + 1)?),
        None => None,
    };
    let version = raw
        .version
        .clone()
        .or(parent.as_ref().map(|p| p.version.clone()));
    let version = match version {
        Some(v) if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '"') => v,
        _ => {
            problems.add(
                "version",
                "needs a version without spaces or quotes (or `extends`)",
            );
            String::new()
        }
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        problems.add("file name", "must be ASCII letters, digits and `-`");
    }
    for (key, list) in [("rootfs", &raw.rootfs), ("initramfs", &raw.initramfs)] {
        for recipe in list {
            if !recipes.contains_key(recipe) {
                problems.add(
                    key,
                    format!(
                        "no recipe `{recipe}` in recipes/{}",
                        suggest(recipe, recipes.keys().map(String::as_str))
                    ),
                );
            }
        }
    }
    let (grace, deadline) = match (raw.health, &parent) {
        (Some(h), _) => (h.grace_ms, h.deadline_ms),
        (None, Some(p)) => (p.health_grace_ms, p.health_deadline_ms),
        (None, None) => (10_000, 300_000),
    };
    for recipe in raw.catalog.iter().flatten() {
        match recipes.get(recipe) {
            None => problems.add(
                "catalog",
                format!(
                    "no recipe `{recipe}` in recipes/{}",
                    suggest(recipe, recipes.keys().map(String::as_str))
                ),
            ),
            Some(r) if r.model.is_none() => problems.add(
                "catalog",
                format!("recipe `{recipe}` has no [model] table: it is not a model"),
            ),
            Some(_) => {}
        }
    }
    if deadline <= grace {
        problems.add("health", "deadline-ms must be longer than grace-ms");
    }
    problems.finish(&path)?;
    // A child's catalog replaces its parent's: a release offers one list.
    let catalog = raw
        .catalog
        .or(parent.as_ref().map(|p| p.catalog.clone()))
        .unwrap_or_default();
    let (mut rootfs, mut initramfs) = parent.map(|p| (p.rootfs, p.initramfs)).unwrap_or_default();
    rootfs.extend(raw.rootfs);
    initramfs.extend(raw.initramfs);
    Ok(ImageDef {
        name: name.to_string(),
        version,
        rootfs,
        initramfs,
        catalog,
        health_grace_ms: grace,
        health_deadline_ms: deadline,
    })
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// docs/recipes.md's example image file is one the parser takes.
    #[test]
    fn the_documented_example_parses() {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/recipes.md"),
        )
        .unwrap();
        let section = &doc[doc.find("## The image").expect("the image section")..];
        let start = section.find("```toml\n").expect("a TOML example") + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let raw: RawImage = toml::from_str(example).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(raw.version.as_deref(), Some("0.1.0"));
        assert!(raw.health.is_some());
    }
}
