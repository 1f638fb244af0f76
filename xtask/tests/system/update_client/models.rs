//! Models as signed updates (docs/models.md): the release code publishes a catalog of
//! synthetic models beside a release, and the device's model store pulls from it over
//! real HTTP — every refusal with a clear error and nothing half-written listed.

use std::sync::atomic::AtomicBool;

use super::*;
use llamabox_format::update::models::{ModelKind, MODELS_TARGET};
use llamabox_format::update::{MetadataError, Targets};
use llamabox_update::models::ModelStore;
use llamabox_update::Error;
use xtask::config::recipe::Model;
use xtask::release::{Lifetimes, ModelSource, RoleKeys};

struct World {
    dir: PathBuf,
    repo: PathBuf,
    root: Vec<u8>,
    release: ReleaseParts,
    server: Server,
    device: TestBox,
    store: ModelStore,
}

const A: &str = "tiny:a";
const B: &str = "tiny:b";

fn model_file(dir: &Path, name: &str, len: usize, seed: u64) -> ModelSource {
    let file = dir.join(format!("{}.gguf", name.replace(':', "-")));
    std::fs::write(&file, pseudo_random(len, seed)).unwrap();
    ModelSource {
        model: Model {
            name: name.into(),
            kind: ModelKind::Llm,
            family: "llama".into(),
            quantization: "Q4_1".into(),
            parameters: "1M".into(),
            license: "MIT".into(),
            template: None,
            options: Default::default(),
            min_memory_mib: 16,
        },
        description: format!("test model {name}"),
        file,
        template: Some("{{ messages }}".into()),
    }
}

/// Publishes the release and a catalog of `models`, signed by `keys`, in one targets
/// version.
fn publish_with_models(
    repo: &Path,
    root: &[u8],
    release: &ReleaseParts,
    models: &[ModelSource],
    keys: &RoleKeys,
) {
    if !repo.join("root.json").exists() {
        xtask::release::init_repo(repo, root).unwrap();
    }
    let bundle = xtask::release::write_bundle(repo, release).unwrap();
    let catalog = xtask::release::write_models(repo, &release.version, models).unwrap();
    xtask::release::publish_targets(
        repo,
        vec![
            (Targets::name_for_board(&release.board), bundle),
            (MODELS_TARGET.into(), catalog),
        ],
        keys,
        Lifetimes::default(),
    )
    .unwrap();
}

/// A repository with release 0.1.0 and two models (3 MiB and 2 MiB), and a box
/// running 0.1.0 with an empty model store.
fn world(name: &str) -> World {
    let dir = scratch(&format!("models-{name}"));
    let repo = dir.join("repo");
    let repo_key = key();
    let root = xtask::release::dev_root(&repo_key);
    let keys = RoleKeys::single(&repo_key);
    let release = fake_release(&dir, BOARD, "0.1.0", 1, None, &key());
    let models = [
        model_file(&dir, A, 3 << 20, 11),
        model_file(&dir, B, 2 << 20, 12),
    ];
    publish_with_models(&repo, &root, &release, &models, &keys);
    let server = Server::start(&repo);
    let device = TestBox::new(&dir, &release, &root);
    let store = ModelStore::new(dir.join("box/models"));
    World {
        dir,
        repo,
        root,
        release,
        server,
        device,
        store,
    }
}

impl World {
    fn pull(&self, name: &str) -> Result<llamabox_update::models::Pulled, Error> {
        self.device.updater(&self.server).pull_model(
            &self.store,
            name,
            &mut |_, _| {},
            &AtomicBool::new(false),
        )
    }

    fn listed(&self) -> Vec<String> {
        self.store
            .installed()
            .unwrap()
            .into_iter()
            .map(|m| m.entry.name)
            .collect()
    }

    fn source_bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("{}.gguf", name.replace(':', "-")))).unwrap()
    }

    /// The repository's blob of `name` (the file the box fetches ranges of).
    fn repo_blob(&self, name: &str) -> PathBuf {
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            self.source_bytes(name),
        ));
        self.repo
            .join(llamabox_format::update::models::blob_path(&sha))
    }
}

fn refused(result: Result<llamabox_update::models::Pulled, Error>) -> Error {
    let err = result.expect_err("the pull was not refused");
    eprintln!("refused: {err}");
    err
}

#[test]
fn a_model_is_pulled_listed_and_deleted() {
    let w = world("pull");
    let catalog = w.device.updater(&w.server).catalog().unwrap();
    let names: Vec<&str> = catalog.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, [A, B]);
    assert_eq!(
        catalog.models[0].template.as_deref(),
        Some("{{ messages }}")
    );

    let mut seen = Vec::new();
    let pulled = w
        .device
        .updater(&w.server)
        .pull_model(
            &w.store,
            A,
            &mut |done, total| seen.push((done, total)),
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!((pulled.downloaded, pulled.resumed), (3 << 20, 0));
    assert_eq!(seen.last(), Some(&(3 << 20, 3 << 20)));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert_eq!(w.listed(), [A]);
    let installed = w.store.get(A).unwrap().unwrap();
    assert!(std::fs::read(&installed.path).unwrap() == w.source_bytes(A));

    // Pulling it again fetches nothing.
    assert!(w.pull(A).unwrap().already);

    let err = refused(w.pull("tiny:c"));
    assert!(matches!(err, Error::UnknownModel { .. }), "{err}");
    assert!(err.to_string().contains("tiny:a, tiny:b"), "{err}");

    // The default model: only an installed one; deleting it brings back the factory's.
    assert_eq!(w.store.default_model(), None);
    let err = w.store.set_default(Some(B)).unwrap_err();
    assert!(
        err.to_string().contains("no model `tiny:b` is installed"),
        "{err}"
    );
    w.store.set_default(Some(A)).unwrap();
    assert_eq!(w.store.default_model().as_deref(), Some(A));

    w.store.delete(A).unwrap();
    assert_eq!(w.store.default_model(), None);
    assert!(w.listed().is_empty());
    assert!(!installed.path.exists(), "the blob was left behind");
    let err = w.store.delete(A).unwrap_err();
    assert!(
        err.to_string().contains("no model `tiny:a` is installed"),
        "{err}"
    );
}

#[test]
fn a_tampered_model_chunk_is_refused_and_the_pull_resumes_once_repaired() {
    let w = world("tampered");
    let blob = w.repo_blob(A);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[2 << 20] ^= 1;
    std::fs::write(&blob, &bad).unwrap();
    let err = refused(w.pull(A));
    assert!(matches!(err, Error::TamperedChunk { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match its signed hash"),
        "{err}"
    );
    assert!(w.listed().is_empty());

    // The mirror is repaired: the chunks verified before the bad one are kept.
    std::fs::write(&blob, &good).unwrap();
    let pulled = w.pull(A).unwrap();
    assert!(pulled.resumed > 1 << 20, "{pulled:?}");
    assert_eq!(pulled.resumed + pulled.downloaded, 3 << 20);
    assert_eq!(w.listed(), [A]);
}

#[test]
fn a_catalog_signed_by_an_untrusted_key_is_refused() {
    let w = world("untrusted");
    let stranger = key();
    let models = [model_file(&w.dir, "evil:latest", 1 << 20, 13)];
    publish_with_models(
        &w.repo,
        &w.root,
        &w.release,
        &models,
        &RoleKeys::single(&stranger),
    );
    let err = refused(w.pull("evil:latest"));
    assert!(
        matches!(
            err,
            Error::Metadata(MetadataError::Threshold { valid: 0, .. })
        ),
        "{err}"
    );
    assert!(w.listed().is_empty());
}

#[test]
fn a_model_outside_the_signed_metadata_is_refused() {
    let w = world("unsigned");
    // A mirror swaps the catalog at its signed path for one that lists its own model.
    let target = {
        let updater = w.device.updater(&w.server);
        let catalog = updater.catalog().unwrap();
        assert_eq!(catalog.models.len(), 2);
        let dir = w.repo.join("models");
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "catalog"))
            .unwrap()
    };
    let signed = std::fs::read(&target).unwrap();
    let forged = xtask::release::write_models(
        &w.dir.join("forged-repo"),
        "0.1.0",
        &[model_file(&w.dir, "evil:latest", 1 << 20, 13)],
    )
    .unwrap();
    std::fs::copy(
        w.dir
            .join("forged-repo")
            .join(llamabox_format::update::models::catalog_path(
                &forged.sha256,
            )),
        &target,
    )
    .unwrap();
    let err = refused(w.pull("evil:latest"));
    assert!(
        matches!(err, Error::Metadata(MetadataError::Mismatch { .. })),
        "{err}"
    );

    // The catalog is restored, and the forged model's files sit in the repository
    // beside it: a name the signed catalog does not list is still not pulled.
    std::fs::write(&target, signed).unwrap();
    let err = refused(w.pull("evil:latest"));
    assert!(
        err.to_string()
            .contains("no model `evil:latest` in the signed catalog; it offers tiny:a, tiny:b"),
        "{err}"
    );
    assert!(w.listed().is_empty());
}

#[test]
fn a_pull_larger_than_the_free_space_is_refused_before_it_starts() {
    let mut w = world("space");
    w.store = ModelStore::new(w.dir.join("box/models")).with_limit(Some(4 << 20));
    w.pull(B).unwrap();
    let before = w.server.requests.lock().unwrap().len();
    let err = refused(w.pull(A));
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "`tiny:a` needs 3.0 MiB more on the data partition, which has 2.0 MiB free"
    );
    assert_eq!(w.listed(), [B]);
    let fetched = w.server.requests.lock().unwrap()[before..].join("");
    assert!(
        !fetched.contains(".index") && !fetched.contains(".blob"),
        "fetched model files for a pull that cannot fit: {fetched}"
    );
    // Deleting makes room.
    w.store.delete(B).unwrap();
    w.pull(A).unwrap();
    assert_eq!(w.listed(), [A]);
}

#[test]
fn an_interrupted_or_cancelled_pull_lists_nothing_and_resumes() {
    let w = world("resume");
    w.server.set(Misbehaviour::DropHalfway { times: 1000 });
    let err = refused(w.pull(A));
    assert!(matches!(err, Error::Fetch(_)), "{err}");
    assert!(w.listed().is_empty());

    // Cancelled once a megabyte is in: what was verified stays for the next pull.
    w.server.set(Misbehaviour::None);
    let cancel = AtomicBool::new(false);
    let err = w
        .device
        .updater(&w.server)
        .pull_model(
            &w.store,
            A,
            &mut |done, _| {
                if done >= 1 << 20 {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            },
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
    assert!(w.listed().is_empty());

    let pulled = w.pull(A).unwrap();
    assert!(pulled.resumed >= 1 << 20, "{pulled:?}");
    assert_eq!(pulled.resumed + pulled.downloaded, 3 << 20);
    let installed = w.store.get(A).unwrap().unwrap();
    assert!(std::fs::read(&installed.path).unwrap() == w.source_bytes(A));
}
