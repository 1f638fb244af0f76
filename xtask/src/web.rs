//! The phone's web app as the gateway serves it: the static files of
//! `services/gateway/web` plus `pairing.wasm`, the browser build of the pairing
//! protocol (`services/gateway/pairing`, target `wasm32-unknown-unknown`).
//!
//! The service worker's cache name is stamped with a hash of the app's files, so a
//! changed app replaces the phone's offline copy on its next visit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::project::Project;

use crate::config::WASM_TARGET;

/// The app's sources in the checkout.
pub fn source_dir(project: &Project) -> PathBuf {
    project.root.join("services").join("gateway").join("web")
}

/// Where `build` assembles the app.
pub fn out_dir(project: &Project) -> PathBuf {
    project.build_dir().join("web")
}

/// The placeholder in `sw.js` that `build` replaces with the app's hash.
const VERSION_LINE: &str = "const VERSION = \"dev\";";

/// Builds `pairing.wasm` and assembles the web app in `target/llamabox/web/`; returns
/// that folder (the gateway's `--web`).
pub fn build(project: &Project) -> Result<PathBuf> {
    let status = project
        .cargo()
        .args(["build", "--release", "--locked", "--target", WASM_TARGET])
        .args(["-p", "llamabox-pairing", "--lib"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building pairing.wasm failed (see above; `rustup target add {WASM_TARGET}` if the target is missing)");
    }
    let wasm = project
        .target_dir()
        .join(WASM_TARGET)
        .join("release")
        .join("llamabox_pairing.wasm");
    assemble(&source_dir(project), &wasm, &out_dir(project))
}

/// Copies the app's files and `wasm` into `out` (replaced whole), stamping `sw.js`.
pub fn assemble(source: &Path, wasm: &Path, out: &Path) -> Result<PathBuf> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in walkdir::WalkDir::new(source).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {}", source.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(source)?;
        let bytes = std::fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        files.push((relative.to_string_lossy().into_owned(), bytes));
    }
    let wasm_bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    files.push(("pairing.wasm".into(), wasm_bytes));
    files.sort();

    let mut hash = Sha256::new();
    for (name, bytes) in &files {
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    let version = &hex::encode(hash.finalize())[..16];

    // Assembled beside the old copy, then swapped in: a gateway serving the old one sees
    // either, never half of each.
    let parent = out.parent().context("the web folder needs a parent")?;
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!(".web-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for (name, bytes) in &files {
        let path = staging.join(name);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
        let bytes = if name == "sw.js" {
            let text = String::from_utf8(bytes.clone()).context("sw.js is not UTF-8")?;
            if !text.contains(VERSION_LINE) {
                bail!("sw.js has no `{VERSION_LINE}` line to stamp the version into");
            }
            text.replace(VERSION_LINE, &format!("const VERSION = \"{version}\";"))
                .into_bytes()
        } else {
            bytes.clone()
        };
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&staging, out)
        .with_context(|| format!("moving {} to {}", staging.display(), out.display()))?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the app is in the service worker's offline shell, and the shell
    /// names no file that does not exist.
    #[test]
    fn the_offline_shell_lists_exactly_the_apps_files() {
        let project = Project::locate();
        let source = source_dir(&project);
        let sw = std::fs::read_to_string(source.join("sw.js")).unwrap();
        let start = sw.find("const SHELL = [").expect("a SHELL list in sw.js");
        let end = start + sw[start..].find("];").unwrap();
        let listed: std::collections::BTreeSet<String> = sw[start..end]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        let mut expected: std::collections::BTreeSet<String> = std::fs::read_dir(&source)
            .unwrap()
            .map(|e| format!("/{}", e.unwrap().file_name().to_string_lossy()))
            .filter(|name| name != "/sw.js")
            .collect();
        expected.insert("/".into());
        expected.insert("/pairing.wasm".into());
        assert_eq!(listed, expected);
    }

    #[test]
    fn assembling_stamps_the_service_worker_and_adds_the_wasm() {
        let project = Project::locate();
        let tmp = tempdir();
        let wasm = tmp.join("in.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        let out = assemble(&source_dir(&project), &wasm, &tmp.join("web")).unwrap();
        assert_eq!(std::fs::read(out.join("pairing.wasm")).unwrap(), b"\0asm");
        let sw = std::fs::read_to_string(out.join("sw.js")).unwrap();
        assert!(!sw.contains(VERSION_LINE));
        assert!(sw.contains("const VERSION = \""));
        assert!(out.join("index.html").is_file());
        // Again with other wasm: a new version, the folder replaced whole.
        std::fs::write(&wasm, b"\0asm\x01").unwrap();
        let again = assemble(&source_dir(&project), &wasm, &tmp.join("web")).unwrap();
        assert_ne!(std::fs::read_to_string(again.join("sw.js")).unwrap(), sw);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("llamabox-web-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
