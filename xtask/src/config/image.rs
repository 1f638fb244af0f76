//! `image/llamabox.toml`: which recipes make up the root filesystem and the initramfs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Deserialize;

use super::recipe::Recipe;
use super::{read_toml, suggest, Problems};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawImage {
    name: String,
    version: String,
    rootfs: Vec<String>,
    initramfs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ImageDef {
    pub name: String,
    pub version: String,
    pub rootfs: Vec<String>,
    pub initramfs: Vec<String>,
}

pub fn load(path: &Path, recipes: &BTreeMap<String, Recipe>) -> Result<ImageDef> {
    let raw: RawImage = read_toml(path)?;
    let mut problems = Problems::default();
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        problems.add("name", "must be non-empty ASCII letters, digits and `-`");
    }
    if raw.version.is_empty() || raw.version.chars().any(|c| c.is_whitespace() || c == '"') {
        problems.add(
            "version",
            "must be a non-empty version without spaces or quotes",
        );
    }
    for (key, list) in [("rootfs", &raw.rootfs), ("initramfs", &raw.initramfs)] {
        for name in list {
            if !recipes.contains_key(name) {
                problems.add(
                    key,
                    format!(
                        "no recipe `{name}` in recipes/{}",
                        suggest(name, recipes.keys().map(String::as_str))
                    ),
                );
            }
        }
    }
    problems.finish(path)?;
    Ok(ImageDef {
        name: raw.name,
        version: raw.version,
        rootfs: raw.rootfs,
        initramfs: raw.initramfs,
    })
}
