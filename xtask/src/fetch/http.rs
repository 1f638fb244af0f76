//! Plain HTTP(S) GETs with a progress bar for large bodies.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

fn client() -> Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(1800))
        .build()?)
}

pub fn get_bytes(url: &str) -> Result<Vec<u8>> {
    let response = client()?
        .get(url)
        .send()
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    Ok(response
        .bytes()
        .with_context(|| format!("GET {url}"))?
        .to_vec())
}

/// Downloads `url` to `dest`, checking length and SHA-256 before the file appears
/// under its final name. A mismatch leaves nothing behind.
pub fn download_verified(
    url: &str,
    dest: &Path,
    size: Option<u64>,
    sha256: &str,
    label: &str,
) -> Result<()> {
    let mut response = client()?
        .get(url)
        .send()
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let total = size.or(response.content_length()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total).with_message(label.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template("    {msg} {bytes}/{total_bytes} {bar:30} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let tmp = dest.with_extension("partial");
    let mut out = std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = response
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        received += n as u64;
        if let Some(size) = size {
            if received > size {
                let _ = std::fs::remove_file(&tmp);
                bail!("{url}: the server sent more than the pinned {size} bytes");
            }
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    let got = hex::encode(hasher.finalize());
    if got != sha256 {
        let _ = std::fs::remove_file(&tmp);
        bail!("{url}: SHA-256 is {got}, but the lock file pins {sha256} (a changed or corrupt download)");
    }
    out.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}
