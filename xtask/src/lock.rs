//! `cargo xtask lock`: pins every Debian package and PyPI distribution the recipes and
//! boards name, for every architecture a board uses, and the PyPI distributions
//! `cargo xtask bench` downloads.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use crate::bench;
use crate::config::lock::DebianLock;
use crate::config::recipe::Source;
use crate::config::{self, Arch};
use crate::fetch::{debian, pypi};
use crate::project::Project;

/// Debian packages the image needs besides those recipes name.
const BUILTIN_DEBIAN: &[&str] = &["systemd-boot-efi"];

pub fn run(project: &Project, upgrade: bool) -> Result<()> {
    let recipes = config::recipe::load_all(&project.recipes_dir())?;
    let mut wanted: BTreeMap<Arch, BTreeSet<String>> = BTreeMap::new();
    for name in config::board::known_boards(&project.boards_dir()) {
        let board = config::board::load(&project.boards_dir(), &name)?;
        let set = wanted.entry(board.arch).or_default();
        if let config::board::KernelSource::Debian { package } = &board.kernel.source {
            set.insert(package.clone());
        }
        set.extend(BUILTIN_DEBIAN.iter().map(|s| s.to_string()));
        for recipe in recipes.values().filter(|r| r.supports(board.arch)) {
            if let Source::Debian { packages } = &recipe.source {
                set.extend(packages.iter().cloned());
            }
        }
    }

    let path = project.debian_lock();
    let old = DebianLock::load(&path).ok();
    let suite = old
        .as_ref()
        .map(|l| l.suite.clone())
        .unwrap_or_else(|| "bookworm".into());
    let component = old
        .as_ref()
        .map(|l| l.component.clone())
        .unwrap_or_else(|| "main".into());
    let mirror = debian::mirror(&suite)?;
    // Pins stay as they are: only packages (or architectures) not yet in the lock are
    // resolved, so adding a board never moves another board's bytes. `--upgrade`
    // resolves everything anew.
    let mut packages = Vec::new();
    for (arch, names) in &wanted {
        let mut to_resolve = Vec::new();
        for name in names {
            match old
                .as_ref()
                .filter(|_| !upgrade)
                .and_then(|l| l.get(name, *arch).ok())
            {
                Some(pinned) => packages.push(pinned.clone()),
                None => to_resolve.push(name.clone()),
            }
        }
        if !to_resolve.is_empty() {
            packages.extend(debian::resolve(
                &mirror,
                &suite,
                &component,
                *arch,
                &to_resolve,
            )?);
        }
    }
    let lock = DebianLock {
        suite,
        component,
        packages,
    };
    lock.save(&path)?;
    eprintln!(
        "wrote {} ({} packages)",
        path.display(),
        lock.packages.len()
    );

    let mut dists: BTreeSet<(String, String)> = recipes
        .values()
        .flat_map(|r| r.source.pypi_dists())
        .collect();
    // The benchmark's reference server and model are pinned like the image's inputs.
    dists.extend(
        bench::PYPI_DISTS
            .iter()
            .map(|(name, version)| (name.to_string(), version.to_string())),
    );
    if !dists.is_empty() {
        let index = pypi::index_url()?;
        let mut lock = pypi::PypiLock::default();
        for (name, version) in dists {
            lock.packages.push(pypi::resolve(&index, &name, &version)?);
        }
        lock.save(&project.pypi_lock())?;
        eprintln!(
            "wrote {} ({} distributions)",
            project.pypi_lock().display(),
            lock.packages.len()
        );
    }
    // The tests' Python packages are resolved by pip: anew only on `--upgrade`.
    if upgrade || !project.python_requirements().exists() {
        crate::python::lock(project)?;
    }
    Ok(())
}
