//! External inputs: files a board needs that no package registry carries (NVIDIA's
//! Jetson Linux BSP), pinned by SHA-256 in `board.toml`. The build takes them from
//! `--input NAME=PATH` or from the downloads folder; without them it stops before
//! compiling anything, naming the file, its SHA-256 and where to get it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::config::board::{Board, Input};
use crate::project::Project;

/// Where inputs are looked for when not given on the command line.
pub fn inputs_dir(project: &Project) -> PathBuf {
    project.downloads_dir().join("inputs")
}

/// Parses `NAME=PATH` arguments.
pub fn parse_args(args: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    args.iter()
        .map(|a| {
            let (name, path) = a
                .split_once('=')
                .with_context(|| format!("--input `{a}`: expected NAME=PATH"))?;
            Ok((name.to_string(), PathBuf::from(path)))
        })
        .collect()
}

/// The file for each of the board's inputs, each checked against its SHA-256.
pub fn resolve(
    project: &Project,
    board: &Board,
    given: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, PathBuf>> {
    for name in given.keys() {
        if !board.inputs.iter().any(|i| &i.name == name) {
            let known: Vec<&str> = board.inputs.iter().map(|i| i.name.as_str()).collect();
            bail!(
                "--input {name}: board {} has no input `{name}` (its inputs: {})",
                board.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for input in &board.inputs {
        let path = match given.get(&input.name) {
            Some(path) => {
                if !path.is_file() {
                    bail!("--input {}={}: no such file", input.name, path.display());
                }
                path.clone()
            }
            None => {
                let path = inputs_dir(project).join(&input.file);
                if !path.is_file() {
                    missing.push(input);
                    continue;
                }
                path
            }
        };
        let sha256 = llamabox_image::sha256_file(&path)?;
        if sha256 != input.sha256 {
            bail!(
                "input {} ({}) has SHA-256 {sha256}, but board {} pins {}: not the file it needs",
                input.name,
                path.display(),
                board.name,
                input.sha256
            );
        }
        found.insert(input.name.clone(), path);
    }
    if !missing.is_empty() {
        bail!("{}", missing_message(project, board, &missing));
    }
    Ok(found)
}

fn missing_message(project: &Project, board: &Board, missing: &[&Input]) -> String {
    let mut text = format!(
        "board {} needs {} file(s) that cannot be downloaded by the build:",
        board.name,
        missing.len()
    );
    for input in missing {
        text += &format!(
            "\n  - {file}\n      {description}\n      SHA-256 {sha}\n      get it from {url}\n      then pass --input {name}=PATH (or put it in {dir}/)",
            file = input.file,
            description = input.description,
            sha = input.sha256,
            url = input.url,
            name = input.name,
            dir = inputs_dir(project).display(),
        );
    }
    text
}

/// Unpacks a tarball (any compression tar recognises) into `dest`.
pub fn unpack(tarball: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    llamabox_image::tool::run(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(dest)
            .arg("--no-same-owner"),
    )
    .with_context(|| format!("unpacking {}", tarball.display()))?;
    Ok(())
}
