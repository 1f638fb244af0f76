//! Debian binary packages: resolving names in a suite's index, downloading pinned
//! `.deb`s from the mirror in the host's apt configuration, and unpacking them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::lock::LockedPackage;
use crate::config::Arch;

use super::http;

/// Overrides the mirror found in apt's configuration.
pub const MIRROR_ENV: &str = "LLAMABOX_DEBIAN_MIRROR";

/// The mirror serving `suite`: `$LLAMABOX_DEBIAN_MIRROR`, else the first apt source
/// (one-line or deb822 format) that lists the suite.
pub fn mirror(suite: &str) -> Result<String> {
    if let Ok(m) = std::env::var(MIRROR_ENV) {
        return Ok(m.trim_end_matches('/').to_string());
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let found = match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => find_in_deb822(&text, suite),
            Some("list") | None => find_in_one_line(&text, suite),
            _ => None,
        };
        if let Some(uri) = found {
            return Ok(uri.trim_end_matches('/').to_string());
        }
    }
    bail!("no apt source for Debian suite `{suite}` in /etc/apt; set {MIRROR_ENV} to a Debian mirror URL")
}

fn find_in_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().peekable();
        if words.next()? != "deb" {
            return None;
        }
        if words.peek()?.starts_with('[') {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.to_string())
    })
}

fn find_in_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if field("Enabled").is_some_and(|e| e == "no") {
            return None;
        }
        let types = field("Types")?;
        let suites = field("Suites")?;
        if !types.split_whitespace().any(|t| t == "deb")
            || !suites.split_whitespace().any(|s| s == suite)
        {
            return None;
        }
        field("URIs")?.split_whitespace().next().map(str::to_string)
    })
}

/// Looks `names` up in the suite's package index for `arch`.
pub fn resolve(
    mirror: &str,
    suite: &str,
    component: &str,
    arch: Arch,
    names: &[String],
) -> Result<Vec<LockedPackage>> {
    let url = format!(
        "{mirror}/dists/{suite}/{component}/binary-{}/Packages.xz",
        arch.debian()
    );
    eprintln!("    reading {url}");
    let compressed = http::get_bytes(&url)?;
    let mut text = String::new();
    xz2::read::XzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .with_context(|| format!("decompressing {url}"))?;
    let mut index: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let fields: BTreeMap<&str, &str> = stanza
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split_once(": "))
            .collect();
        if let Some(name) = fields.get("Package") {
            index.insert(name, fields);
        }
    }
    let mut missing = Vec::new();
    let mut out = Vec::new();
    for name in names {
        let Some(f) = index.get(name.as_str()) else {
            missing.push(name.clone());
            continue;
        };
        let get = |k: &str| {
            f.get(k)
                .map(|v| v.to_string())
                .with_context(|| format!("{name}: no {k} in the index"))
        };
        out.push(LockedPackage {
            name: name.clone(),
            arch: arch.debian().to_string(),
            version: get("Version")?,
            filename: get("Filename")?,
            size: get("Size")?.parse()?,
            sha256: get("SHA256")?,
        });
    }
    if !missing.is_empty() {
        bail!(
            "not in Debian {suite}/{component} ({}): {}",
            arch.debian(),
            missing.join(", ")
        );
    }
    Ok(out)
}

/// The `.deb` in the download cache, fetched first if needed.
pub fn fetch(mirror: &str, package: &LockedPackage, downloads: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(downloads)?;
    let dest = downloads.join(format!("{}.deb", package.sha256));
    if dest.exists() {
        return Ok(dest);
    }
    let url = format!("{mirror}/{}", package.filename);
    http::download_verified(
        &url,
        &dest,
        Some(package.size),
        &package.sha256,
        &package.name,
    )
    .with_context(|| {
        format!(
            "fetching Debian package {} {}",
            package.name, package.version
        )
    })?;
    Ok(dest)
}

/// Unpacks the `.deb`'s data archive into `dest`.
pub fn unpack(deb: &Path, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(deb)?;
    let mut archive = ar::Archive::new(file);
    while let Some(entry) = archive.next_entry() {
        let entry = entry.with_context(|| format!("{}: not a .deb (ar) archive", deb.display()))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let reader: Box<dyn Read> = match name.as_str() {
            "data.tar.xz" => Box::new(xz2::read::XzDecoder::new(entry)),
            "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(entry)),
            "data.tar" => Box::new(entry),
            n if n.starts_with("data.tar") => {
                bail!("{}: unsupported compression {n}", deb.display())
            }
            _ => continue,
        };
        std::fs::create_dir_all(dest)?;
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.unpack(dest)
            .with_context(|| format!("unpacking {}", deb.display()))?;
        return Ok(());
    }
    bail!("{}: no data.tar member", deb.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mirrors_in_both_apt_formats() {
        let one =
            "# comment\ndeb [arch=amd64 signed-by=/x] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            find_in_one_line(one, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(find_in_one_line(one, "trixie"), None);
        let deb822 = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            find_in_deb822(deb822, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            find_in_deb822(deb822, "bookworm-security").as_deref(),
            Some("http://m.example/debian-security")
        );
    }
}
