//! `cargo xtask release`: a built image becomes an update bundle, published into a
//! static repository directory (docs/updates.md).
//!
//! The repository's formats are `llamabox_format::update`; this module writes them.
//! Publishing adds files and only then replaces `timestamp.json` (write and rename), so
//! a device reading the repository mid-publish sees the old release or the new one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use llamabox_format::update::bundle::{uki_file, BundleFile, BundleIndex, ChunkRef, SLOT_FILE};
use llamabox_format::update::chunk::chunk_bytes;
use llamabox_format::update::metadata::format_time;
use llamabox_format::update::models::MODELS_TARGET;
use llamabox_format::update::{MetaFile, Role, Root, Signed, Snapshot, Target, Targets, Timestamp};
use llamabox_format::{SecretKey, Slot};
use sha2::{Digest, Sha256};

use crate::build::ReleaseParts;
use crate::project::Project;

pub use crate::keys::{dev_root, trusted_root, UPDATE_ROOT_ENV};

/// A directory with the online role keys: `targets*.secret`, `snapshot*.secret`,
/// `timestamp*.secret`. Without it, the development key signs every role.
pub const UPDATE_KEYS_ENV: &str = "LLAMABOX_UPDATE_KEYS";

/// How long each role's metadata stays valid after publishing.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub targets: Duration,
    pub snapshot: Duration,
    pub timestamp: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Lifetimes {
            targets: Duration::from_secs(365 * DAY),
            snapshot: Duration::from_secs(365 * DAY),
            timestamp: Duration::from_secs(7 * DAY),
        }
    }
}

/// The keys that sign the online roles.
pub struct RoleKeys {
    pub targets: Vec<SecretKey>,
    pub snapshot: Vec<SecretKey>,
    pub timestamp: Vec<SecretKey>,
}

impl RoleKeys {
    pub fn single(key: &SecretKey) -> RoleKeys {
        let copy = || SecretKey::parse(&key.to_file("")).expect("own key file parses");
        RoleKeys {
            targets: vec![copy()],
            snapshot: vec![copy()],
            timestamp: vec![copy()],
        }
    }

    /// `$LLAMABOX_UPDATE_KEYS`, else the development key.
    pub fn load(project: &Project) -> Result<RoleKeys> {
        let Some(dir) = std::env::var_os(UPDATE_KEYS_ENV).map(PathBuf::from) else {
            let dev = crate::keys::read_secret(&project.keys_dir().join(crate::keys::DEV_SECRET))?;
            return Ok(RoleKeys::single(&dev));
        };
        let role = |prefix: &str| -> Result<Vec<SecretKey>> {
            let mut keys = Vec::new();
            let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    name.starts_with(prefix) && name.ends_with(".secret")
                })
                .collect();
            paths.sort();
            for path in paths {
                keys.push(crate::keys::read_secret(&path)?);
            }
            if keys.is_empty() {
                bail!("{}: no {prefix}*.secret key", dir.display());
            }
            Ok(keys)
        };
        Ok(RoleKeys {
            targets: role("targets")?,
            snapshot: role("snapshot")?,
            timestamp: role("timestamp")?,
        })
    }
}

/// The bytes of a slot as the device writes them from the partition's start:
/// EROFS, zeros up to the hash tree, the hash tree.
pub fn slot_bytes(parts: &ReleaseParts) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(&parts.slot.erofs)?;
    bytes.resize(parts.slot.manifest.hash_offset as usize, 0);
    bytes.extend(std::fs::read(&parts.slot.hash_tree)?);
    Ok(bytes)
}

/// Chunks the release and writes `bundles/<sha256>.data` and `bundles/<sha256>.index`
/// into the repository. Returns the target entry that points at the index.
pub fn write_bundle(repo: &Path, parts: &ReleaseParts) -> Result<Target> {
    let files: Vec<(String, Vec<u8>)> = vec![
        (SLOT_FILE.to_string(), slot_bytes(parts)?),
        (uki_file(Slot::A), std::fs::read(&parts.uki_a)?),
        (uki_file(Slot::B), std::fs::read(&parts.uki_b)?),
    ];
    let mut data = Vec::new();
    let mut stored: HashMap<[u8; 32], u64> = HashMap::new();
    let mut index_files = BTreeMap::new();
    for (name, bytes) in &files {
        let mut chunks = Vec::new();
        for chunk in chunk_bytes(bytes) {
            let offset = *stored.entry(chunk.sha256).or_insert_with(|| {
                let at = data.len() as u64;
                let start = chunk.offset as usize;
                data.extend_from_slice(&bytes[start..start + chunk.length as usize]);
                at
            });
            chunks.push(ChunkRef {
                offset,
                length: chunk.length,
                sha256: hex::encode(chunk.sha256),
            });
        }
        index_files.insert(
            name.clone(),
            BundleFile {
                length: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
                chunks,
            },
        );
    }
    let data_sha256 = hex::encode(Sha256::digest(&data));
    let index = BundleIndex {
        format: llamabox_format::update::bundle::FORMAT,
        board: parts.board.clone(),
        version: parts.version.clone(),
        manifest: hex::encode(&parts.slot.manifest_block),
        files: index_files,
        data_length: data.len() as u64,
        data_sha256: data_sha256.clone(),
    };
    let index_bytes = index.to_bytes();
    let index_sha256 = hex::encode(Sha256::digest(&index_bytes));
    let dir = repo.join("bundles");
    std::fs::create_dir_all(&dir)?;
    write_atomically(&dir.join(format!("{data_sha256}.data")), &data)?;
    write_atomically(&dir.join(format!("{index_sha256}.index")), &index_bytes)?;
    Ok(Target {
        board: parts.board.clone(),
        version: parts.version.clone(),
        length: index_bytes.len() as u64,
        sha256: index_sha256,
    })
}

/// A model a release offers: its recipe's `[model]` table and the file it installs.
pub struct ModelSource {
    pub model: crate::config::recipe::Model,
    pub description: String,
    pub file: PathBuf,
    /// The chat template's text (the recipe's `template` file, read).
    pub template: Option<String>,
}

/// Chunks each model and writes `models/<sha256>.blob` and `models/<sha256>.index`, then
/// the catalog `models/<sha256>.catalog`. Returns the `models` target that pins it.
pub fn write_models(repo: &Path, version: &str, sources: &[ModelSource]) -> Result<Target> {
    use llamabox_format::update::models::{self, ModelCatalog, ModelEntry, ModelIndex, Pin};
    let dir = repo.join("models");
    std::fs::create_dir_all(&dir)?;
    let mut entries = Vec::new();
    for source in sources {
        let bytes = std::fs::read(&source.file)
            .with_context(|| format!("cannot read the model {}", source.file.display()))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let index = ModelIndex {
            format: models::FORMAT,
            length: bytes.len() as u64,
            sha256: sha256.clone(),
            chunks: chunk_bytes(&bytes)
                .into_iter()
                .map(|c| ChunkRef {
                    offset: c.offset,
                    length: c.length,
                    sha256: hex::encode(c.sha256),
                })
                .collect(),
        };
        let index_bytes = index.to_bytes();
        let index_sha256 = hex::encode(Sha256::digest(&index_bytes));
        let blob = repo.join(models::blob_path(&sha256));
        if !blob.exists() {
            write_atomically(&blob, &bytes)?;
        }
        write_atomically(&repo.join(models::index_path(&index_sha256)), &index_bytes)?;
        let m = &source.model;
        let format = match source.file.extension().and_then(|e| e.to_str()) {
            Some("gguf") => "gguf",
            _ => "ggml",
        };
        let entry = ModelEntry {
            name: m.name.clone(),
            kind: m.kind,
            format: format.into(),
            family: m.family.clone(),
            quantization: m.quantization.clone(),
            parameters: m.parameters.clone(),
            description: source.description.clone(),
            license: m.license.clone(),
            length: bytes.len() as u64,
            sha256,
            index: Pin {
                length: index_bytes.len() as u64,
                sha256: index_sha256,
            },
            template: source.template.clone(),
            options: m.options.clone(),
            min_memory_mib: m.min_memory_mib,
        };
        entry
            .validate()
            .map_err(|e| anyhow::anyhow!("model {}: {e}", m.name))?;
        entries.push(entry);
    }
    let catalog = ModelCatalog {
        format: models::FORMAT,
        version: version.to_string(),
        models: entries,
    };
    let bytes = catalog.to_bytes();
    let sha256 = hex::encode(Sha256::digest(&bytes));
    write_atomically(&repo.join(models::catalog_path(&sha256)), &bytes)?;
    Ok(Target {
        board: models::ANY_BOARD.to_string(),
        version: version.to_string(),
        length: bytes.len() as u64,
        sha256,
    })
}

/// The models an image's `catalog` names, staged from their recipes.
pub fn catalog_sources(project: &Project, board: &str, image: &str) -> Result<Vec<ModelSource>> {
    let recipes = crate::config::recipe::load_all(&project.recipes_dir())?;
    let def = crate::config::image::load(&project.images_dir(), image, &recipes)?;
    model_sources(project, board, &def.catalog)
}

/// The model recipes `names`, staged.
pub fn model_sources(project: &Project, board: &str, names: &[String]) -> Result<Vec<ModelSource>> {
    let recipes = crate::config::recipe::load_all(&project.recipes_dir())?;
    let mut sources = Vec::new();
    for name in names {
        let Some(recipe) = recipes.get(name) else {
            bail!("no recipe `{name}`");
        };
        let Some(model) = recipe.model.clone() else {
            bail!("recipe `{name}` has no [model] table: it is not a model");
        };
        let tree = crate::build::stage_one(project, board, name)?;
        let file = tree.join(crate::build::recipe_file(project, name)?.trim_start_matches('/'));
        let template = match &model.template {
            Some(t) => {
                let path = project.recipes_dir().join(t);
                Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                )
            }
            None => None,
        };
        sources.push(ModelSource {
            model,
            description: recipe.description.clone(),
            file,
            template,
        });
    }
    Ok(sources)
}

/// Creates a repository trusting `root` (the bytes of version 1 of the root metadata).
pub fn init_repo(repo: &Path, root: &[u8]) -> Result<()> {
    let parsed = Signed::<Root>::parse(root)?;
    if repo.join("root.json").exists() {
        bail!("{} already holds a repository", repo.display());
    }
    std::fs::create_dir_all(repo)?;
    write_atomically(
        &repo.join(format!("{}.root.json", parsed.signed.version)),
        root,
    )?;
    write_atomically(&repo.join("root.json"), root)?;
    Ok(())
}

/// The repository's current targets metadata and versions, read from its files.
struct Current {
    targets: Option<Targets>,
    snapshot_version: u64,
    timestamp_version: u64,
}

fn current(repo: &Path) -> Result<Current> {
    let path = repo.join("timestamp.json");
    if !path.exists() {
        return Ok(Current {
            targets: None,
            snapshot_version: 0,
            timestamp_version: 0,
        });
    }
    let timestamp = Signed::<Timestamp>::parse(&std::fs::read(&path)?)?.signed;
    let snapshot_path = repo.join(format!("{}.snapshot.json", timestamp.snapshot.version));
    let snapshot = Signed::<Snapshot>::parse(&std::fs::read(&snapshot_path)?)?.signed;
    let targets_path = repo.join(format!("{}.targets.json", snapshot.targets.version));
    let targets = Signed::<Targets>::parse(&std::fs::read(&targets_path)?)?.signed;
    Ok(Current {
        targets: Some(targets),
        snapshot_version: snapshot.version,
        timestamp_version: timestamp.version,
    })
}

fn signers(keys: &[SecretKey]) -> Vec<&SecretKey> {
    keys.iter().collect()
}

/// Adds (or replaces) `target` for its board and signs new targets, snapshot and
/// timestamp metadata.
pub fn publish(repo: &Path, target: Target, keys: &RoleKeys, lifetimes: Lifetimes) -> Result<()> {
    let name = Targets::name_for_board(&target.board);
    publish_targets(repo, vec![(name, target)], keys, lifetimes)
}

/// Adds (or replaces) `targets` by name, all in one new targets version.
pub fn publish_targets(
    repo: &Path,
    new: Vec<(String, Target)>,
    keys: &RoleKeys,
    lifetimes: Lifetimes,
) -> Result<()> {
    let now = SystemTime::now();
    let current = current(repo)?;
    let mut targets = current.targets.unwrap_or(Targets {
        kind: Role::Targets,
        version: 0,
        expires: String::new(),
        targets: BTreeMap::new(),
    });
    targets.version += 1;
    targets.expires = format_time(now + lifetimes.targets);
    targets.targets.extend(new);
    let targets_bytes = Signed::sign(&targets, &signers(&keys.targets));
    write_atomically(
        &repo.join(format!("{}.targets.json", targets.version)),
        &targets_bytes,
    )?;

    let snapshot = Snapshot {
        kind: Role::Snapshot,
        version: current.snapshot_version + 1,
        expires: format_time(now + lifetimes.snapshot),
        targets: MetaFile::describe(targets.version, &targets_bytes),
    };
    let snapshot_bytes = Signed::sign(&snapshot, &signers(&keys.snapshot));
    write_atomically(
        &repo.join(format!("{}.snapshot.json", snapshot.version)),
        &snapshot_bytes,
    )?;
    refresh_timestamp_to(
        repo,
        &snapshot_bytes,
        snapshot.version,
        current.timestamp_version + 1,
        keys,
        lifetimes,
        now,
    )
}

/// Re-signs the timestamp with a new expiry (what a timestamp server does on a schedule).
pub fn refresh_timestamp(repo: &Path, keys: &RoleKeys, lifetimes: Lifetimes) -> Result<()> {
    let current = current(repo)?;
    let snapshot_bytes =
        std::fs::read(repo.join(format!("{}.snapshot.json", current.snapshot_version)))?;
    refresh_timestamp_to(
        repo,
        &snapshot_bytes,
        current.snapshot_version,
        current.timestamp_version + 1,
        keys,
        lifetimes,
        SystemTime::now(),
    )
}

fn refresh_timestamp_to(
    repo: &Path,
    snapshot_bytes: &[u8],
    snapshot_version: u64,
    version: u64,
    keys: &RoleKeys,
    lifetimes: Lifetimes,
    now: SystemTime,
) -> Result<()> {
    let timestamp = Timestamp {
        kind: Role::Timestamp,
        version,
        expires: format_time(now + lifetimes.timestamp),
        snapshot: MetaFile::describe(snapshot_version, snapshot_bytes),
    };
    write_atomically(
        &repo.join("timestamp.json"),
        &Signed::sign(&timestamp, &signers(&keys.timestamp)),
    )
}

/// Publishes the next root (rotation): signed by the current root keys and the new ones.
pub fn rotate_root(repo: &Path, next: &Root, signers: &[&SecretKey]) -> Result<()> {
    let bytes = Signed::sign(next, signers);
    write_atomically(&repo.join(format!("{}.root.json", next.version)), &bytes)?;
    write_atomically(&repo.join("root.json"), &bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `cargo xtask release`: the board's image built and published into `repo` (created
/// on first use, trusting the image's update root).
pub fn command(project: &Project, board: String, image: String, repo: &Path) -> Result<()> {
    let out = crate::build::build(
        project,
        &crate::build::BuildOptions {
            image: image.clone(),
            ..crate::build::BuildOptions::for_board(board)
        },
    )?;
    let parts = out.release.expect("a build has release parts");
    if !repo.join("root.json").exists() {
        init_repo(repo, &trusted_root(project)?)?;
    }
    let target = write_bundle(repo, &parts)?;
    let mut targets = vec![(Targets::name_for_board(&target.board), target.clone())];
    let sources = catalog_sources(project, &parts.board, &image)?;
    if !sources.is_empty() {
        let models = write_models(repo, &parts.version, &sources)?;
        targets.push((MODELS_TARGET.to_string(), models));
    }
    let keys = RoleKeys::load(project)?;
    publish_targets(repo, targets, &keys, Lifetimes::default())?;
    println!(
        "published {} {} into {} (bundle index {})",
        target.board,
        target.version,
        repo.display(),
        &target.sha256[..16]
    );
    for source in &sources {
        println!("  with model {}", source.model.name);
    }
    Ok(())
}
