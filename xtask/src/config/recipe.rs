//! `recipes/<name>.toml`: one component of the image, where it comes from and what it
//! installs where. See docs/recipes.md for the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use super::{read_toml, Arch, Problems};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRecipe {
    description: String,
    #[serde(default)]
    arch: Vec<String>,
    source: RawSource,
    #[serde(default)]
    install: Vec<RawInstall>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSource {
    #[serde(rename = "crate")]
    krate: Option<String>,
    binaries: Option<Vec<String>>,
    #[serde(rename = "static")]
    static_link: Option<bool>,
    debian: Option<Vec<String>>,
    pypi: Option<String>,
    overlay: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInstall {
    from: String,
    to: String,
    mode: Option<String>,
    arch: Option<String>,
    sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Binaries of a workspace package, built for the board's target triple.
    Crate {
        package: String,
        binaries: Vec<String>,
        static_link: bool,
    },
    /// Debian binary packages, pinned in `recipes/debian.lock`.
    Debian { packages: Vec<String> },
    /// A PyPI distribution `name==version`, pinned (with its sha256) in `recipes/pypi.lock`.
    Pypi { name: String, version: String },
    /// A directory tree under `overlays/`.
    Overlay { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// Path or glob inside the source (`{multiarch}` expands to e.g. `x86_64-linux-gnu`).
    pub from: String,
    /// Absolute destination; a trailing `/` installs into that directory.
    pub to: String,
    pub mode: Option<u32>,
    /// Only for this architecture (e.g. the dynamic loader's path differs).
    pub arch: Option<Arch>,
    /// The SHA-256 the one file `from` matches must have (lowercase hex): pins the bytes
    /// of a file itself, whatever package it arrives in (model weights).
    pub sha256: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    /// Empty: every architecture.
    pub arch: Vec<Arch>,
    pub source: Source,
    pub install: Vec<Install>,
}

impl Recipe {
    pub fn supports(&self, arch: Arch) -> bool {
        self.arch.is_empty() || self.arch.contains(&arch)
    }
}

pub fn load(path: &Path) -> Result<Recipe> {
    let raw: RawRecipe = read_toml(path)?;
    let name = path
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut problems = Problems::default();

    let mut arch = Vec::new();
    for a in &raw.arch {
        match Arch::parse(a) {
            Some(a) => arch.push(a),
            None => problems.add(
                "arch",
                format!("unknown architecture `{a}` (known: x86_64, aarch64)"),
            ),
        }
    }

    let s = raw.source;
    let crate_only_keys = s.binaries.is_some() || s.static_link.is_some();
    let kinds = [
        s.krate.is_some(),
        s.debian.is_some(),
        s.pypi.is_some(),
        s.overlay.is_some(),
    ];
    let source = match kinds.iter().filter(|k| **k).count() {
        1 => {
            if let Some(package) = s.krate {
                Some(Source::Crate {
                    binaries: s.binaries.unwrap_or_else(|| vec![package.clone()]),
                    static_link: s.static_link.unwrap_or(true),
                    package,
                })
            } else if let Some(packages) = s.debian {
                if packages.is_empty() {
                    problems.add("source.debian", "lists no packages");
                }
                Some(Source::Debian { packages })
            } else if let Some(spec) = s.pypi {
                match spec.split_once("==") {
                    Some((n, v)) if !n.is_empty() && !v.is_empty() => Some(Source::Pypi {
                        name: n.to_string(),
                        version: v.to_string(),
                    }),
                    _ => {
                        problems.add("source.pypi", format!("`{spec}` is not `name==version`"));
                        None
                    }
                }
            } else {
                s.overlay.map(|p| Source::Overlay {
                    path: PathBuf::from(p),
                })
            }
        }
        0 => {
            problems.add(
                "source",
                "needs one of `crate`, `debian`, `pypi` or `overlay`",
            );
            None
        }
        _ => {
            problems.add(
                "source",
                "names more than one of `crate`, `debian`, `pypi`, `overlay`",
            );
            None
        }
    };
    if !matches!(source, Some(Source::Crate { .. })) && crate_only_keys {
        problems.add(
            "source.binaries",
            "`binaries` and `static` only apply to `crate` sources",
        );
    }

    let mut install = Vec::new();
    for (i, raw) in raw.install.into_iter().enumerate() {
        let key = format!("install[{i}]");
        if !raw.to.starts_with('/') {
            problems.add(
                &format!("{key}.to"),
                format!("`{}` must be an absolute path", raw.to),
            );
        }
        if raw.from.starts_with('/') || raw.from.split('/').any(|c| c == "..") {
            problems.add(
                &format!("{key}.from"),
                format!(
                    "`{}` must be relative to the source, without `..`",
                    raw.from
                ),
            );
        }
        let mode = match raw.mode.as_deref().map(|m| u32::from_str_radix(m, 8)) {
            None => None,
            Some(Ok(m)) if m <= 0o7777 => Some(m),
            Some(_) => {
                problems.add(
                    &format!("{key}.mode"),
                    format!(
                        "`{}` is not an octal mode such as \"0755\"",
                        raw.mode.unwrap()
                    ),
                );
                None
            }
        };
        let only = match raw.arch.as_deref().map(|a| (a, Arch::parse(a))) {
            None => None,
            Some((_, Some(a))) => Some(a),
            Some((a, None)) => {
                problems.add(
                    &format!("{key}.arch"),
                    format!("unknown architecture `{a}` (known: x86_64, aarch64)"),
                );
                None
            }
        };
        if let Some(sha) = &raw.sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                problems.add(
                    &format!("{key}.sha256"),
                    format!("`{sha}` is not a SHA-256 (64 lowercase hex digits)"),
                );
            }
        }
        install.push(Install {
            from: raw.from,
            to: raw.to,
            mode,
            arch: only,
            sha256: raw.sha256,
        });
    }
    if install.is_empty() {
        problems.add("install", "installs nothing; add [[install]] tables");
    }
    problems.finish(path)?;
    Ok(Recipe {
        name,
        file: path.to_path_buf(),
        description: raw.description,
        arch,
        source: source.unwrap(),
        install,
    })
}

/// Every recipe in `dir`, by name. All files are checked before any error is returned.
pub fn load_all(dir: &Path) -> Result<BTreeMap<String, Recipe>> {
    let mut recipes = BTreeMap::new();
    let mut errors = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        match load(&path) {
            Ok(r) => {
                recipes.insert(r.name.clone(), r);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("\n"));
    }
    Ok(recipes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe> {
        let dir = std::env::temp_dir().join(format!("llamabox-recipe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("r{}.toml", text.len()));
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn debian_recipe_parses() {
        let r = parse(
            "description = \"mke2fs\"\narch = [\"x86_64\"]\n[source]\ndebian = [\"e2fsprogs\"]\n[[install]]\nfrom = \"sbin/mke2fs\"\nto = \"/sbin/\"\nmode = \"0755\"\n",
        )
        .unwrap();
        assert_eq!(
            r.source,
            Source::Debian {
                packages: vec!["e2fsprogs".into()]
            }
        );
        assert_eq!(r.install[0].mode, Some(0o755));
        assert!(r.supports(Arch::X86_64) && !r.supports(Arch::Aarch64));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            "description = \"x\"\narch = [\"mips\"]\n[source]\ndebian = [\"a\"]\noverlay = \"b\"\n[[install]]\nfrom = \"../x\"\nto = \"rel\"\nmode = \"999\"\n",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "mips",
            "more than one",
            "install[0].to",
            "install[0].from",
            "install[0].mode",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }

    #[test]
    fn an_install_rule_can_pin_a_file_hash() {
        let sha = "ab".repeat(32);
        let r = parse(&format!(
            "description = \"m\"\n[source]\npypi = \"m==1\"\n[[install]]\nfrom = \"m.gguf\"\nto = \"/m.gguf\"\nsha256 = \"{sha}\"\n"
        ))
        .unwrap();
        assert_eq!(r.install[0].sha256.as_deref(), Some(sha.as_str()));
        let err = parse(
            "description = \"m\"\n[source]\npypi = \"m==1\"\n[[install]]\nfrom = \"m.gguf\"\nto = \"/m.gguf\"\nsha256 = \"ABC\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("install[0].sha256"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse("description = \"x\"\n[source]\ndebian = [\"a\"]\ndebain = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("debain"), "{err}");
    }
}
