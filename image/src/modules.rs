//! The dependency closure of the kernel modules a board needs early, resolved from the
//! modules' own `.modinfo` sections (`depends=`, `softdep=pre:`, `alias=`): Debian's
//! kernel package ships no `modules.dep`, and we do not want depmod on the host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection};

#[derive(Debug, Default)]
struct ModInfo {
    depends: Vec<String>,
    soft_pre: Vec<String>,
    aliases: Vec<String>,
}

/// Module names use `-` and `_` interchangeably; the kernel normalizes to `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn read_modinfo(path: &Path) -> Result<ModInfo> {
    let data = std::fs::read(path).with_context(|| path.display().to_string())?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{}: not an ELF module", path.display()))?;
    let mut info = ModInfo::default();
    let Some(section) = file.section_by_name(".modinfo") else {
        return Ok(info);
    };
    for field in section.data()?.split(|b| *b == 0) {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "depends" => info
                .depends
                .extend(value.split(',').filter(|s| !s.is_empty()).map(normalize)),
            "alias" => info.aliases.push(value.to_string()),
            "softdep" => {
                // "pre: a b post: c"
                let mut in_pre = false;
                for word in value.split_whitespace() {
                    match word {
                        "pre:" => in_pre = true,
                        "post:" => in_pre = false,
                        w if in_pre => info.soft_pre.push(w.to_string()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Returns the module files to load, dependencies before dependents.
/// `modules_dir` is `lib/modules/<version>` of an unpacked kernel package.
pub fn closure(modules_dir: &Path, wanted: &[String]) -> Result<Vec<PathBuf>> {
    let mut paths = BTreeMap::new();
    for entry in walkdir::WalkDir::new(modules_dir).sort_by_file_name() {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy();
        if let Some(stem) = name.strip_suffix(".ko") {
            paths.insert(normalize(stem), entry.path().to_path_buf());
        }
    }
    if paths.is_empty() {
        bail!("no kernel modules (*.ko) under {}", modules_dir.display());
    }

    let mut infos = BTreeMap::new();
    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    let mut aliases: Option<BTreeMap<String, String>> = None;
    for name in wanted {
        let name = normalize(name);
        if !paths.contains_key(&name) {
            bail!(
                "kernel module `{name}` is not in {} (built into the kernel? then drop it from early-modules)",
                modules_dir.display()
            );
        }
        visit(
            &name,
            &paths,
            &mut infos,
            &mut aliases,
            &mut visiting,
            &mut order,
        )?;
    }
    Ok(order.into_iter().map(|n| paths[&n].clone()).collect())
}

fn visit(
    name: &str,
    paths: &BTreeMap<String, PathBuf>,
    infos: &mut BTreeMap<String, ModInfo>,
    aliases: &mut Option<BTreeMap<String, String>>,
    visiting: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<()> {
    if order.iter().any(|n| n == name) || !visiting.insert(name.to_string()) {
        return Ok(());
    }
    let info = read_modinfo(&paths[name])?;
    let mut deps = Vec::new();
    for soft in &info.soft_pre {
        // Soft dependencies name a module or an alias ("crypto-crc32c"). An alias no
        // module provides is built into the kernel.
        if paths.contains_key(&normalize(soft)) {
            deps.push(normalize(soft));
        } else {
            let table = aliases.get_or_insert_with(|| alias_table(paths));
            if let Some(module) = table.get(soft) {
                deps.push(module.clone());
            }
        }
    }
    deps.extend(info.depends.iter().cloned());
    infos.insert(name.to_string(), info);
    for dep in deps {
        if !paths.contains_key(&dep) {
            bail!("module `{name}` depends on `{dep}`, which is not in the kernel package");
        }
        visit(&dep, paths, infos, aliases, visiting, order)?;
    }
    order.push(name.to_string());
    Ok(())
}

/// alias -> module, first module by name wins (so `crc32c_generic` before `crc32c_intel`,
/// which needs CPU features an emulated machine may lack).
fn alias_table(paths: &BTreeMap<String, PathBuf>) -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    for (name, path) in paths {
        if let Ok(info) = read_modinfo(path) {
            for alias in info.aliases {
                if !alias.contains('*') {
                    table.entry(alias).or_insert_with(|| name.clone());
                }
            }
        }
    }
    table
}
