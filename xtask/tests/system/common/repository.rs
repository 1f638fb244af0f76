//! Update repositories on the host, as `cargo xtask release` publishes them, for the
//! boxes under test to pull from (the guest reaches the host's loopback as 10.0.2.2).

use std::path::Path;

use xtask::build::{self, BuildOptions, ReleaseParts};
use xtask::project::Project;
use xtask::release;

pub fn release_parts(image: &str) -> ReleaseParts {
    let _building = crate::common::BUILD_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let options = BuildOptions {
        board: crate::common::board_name(),
        image: image.into(),
        out_dir: None,
        cache_dir: None,
        inputs: Default::default(),
    };
    build::build(&Project::locate(), &options)
        .expect("building the release image")
        .release
        .expect("a build has release parts")
}

/// Publishes `image` into the repository at `repo` (created on first use), signed with
/// the development keys the test images trust.
pub fn publish(repo: &Path, image: &str) {
    let project = Project::locate();
    if !repo.join("root.json").exists() {
        release::init_repo(repo, &release::trusted_root(&project).unwrap()).unwrap();
    }
    let target = release::write_bundle(repo, &release_parts(image)).unwrap();
    let keys = release::RoleKeys::load(&project).unwrap();
    release::publish(repo, target, &keys, release::Lifetimes::default()).unwrap();
}

/// Publishes `image` with a model catalog of the recipes `models` (staged for the test
/// board; the signed `models` target beside the board's).
pub fn publish_with_models(repo: &Path, image: &str, models: &[&str]) {
    let project = Project::locate();
    if !repo.join("root.json").exists() {
        release::init_repo(repo, &release::trusted_root(&project).unwrap()).unwrap();
    }
    let parts = release_parts(image);
    let bundle = release::write_bundle(repo, &parts).unwrap();
    let names: Vec<String> = models.iter().map(|m| m.to_string()).collect();
    let sources = {
        let _building = crate::common::BUILD_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        release::model_sources(&project, &crate::common::board_name(), &names).unwrap()
    };
    let catalog = release::write_models(repo, &parts.version, &sources).unwrap();
    let keys = release::RoleKeys::load(&project).unwrap();
    release::publish_targets(
        repo,
        vec![
            (
                llamabox_format::update::Targets::name_for_board(&parts.board),
                bundle,
            ),
            (
                llamabox_format::update::models::MODELS_TARGET.to_string(),
                catalog,
            ),
        ],
        &keys,
        release::Lifetimes::default(),
    )
    .unwrap();
}
