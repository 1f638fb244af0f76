//! `.bmap` files (bmaptool's format 2.0): which blocks of the sparse image hold data,
//! with a SHA-256 per range, so flashing writes only those and verifies them.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::Result;
use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 4096;

/// Builds the bmap of `image`. Blocks are mapped when they hold a non-zero byte or fall
/// in one of `always_mapped` byte ranges (partition heads that must be cleared on flash,
/// so a stale filesystem on the card is not mistaken for ours).
pub fn build(image: &Path, always_mapped: &[(u64, u64)]) -> Result<String> {
    let mut file = std::fs::File::open(image)?;
    let size = file.metadata()?.len();
    let blocks = size.div_ceil(BLOCK);
    let forced = |b: u64| {
        always_mapped
            .iter()
            .any(|&(start, len)| b * BLOCK >= start && b * BLOCK < start + len)
    };

    let mut ranges: Vec<(u64, u64, Sha256)> = Vec::new();
    let mut buf = vec![0u8; BLOCK as usize];
    file.seek(SeekFrom::Start(0))?;
    for b in 0..blocks {
        let n = (BLOCK.min(size - b * BLOCK)) as usize;
        file.read_exact(&mut buf[..n])?;
        if !forced(b) && buf[..n].iter().all(|&x| x == 0) {
            continue;
        }
        match ranges.last_mut() {
            Some((_, end, hasher)) if *end + 1 == b => {
                *end = b;
                hasher.update(&buf[..n]);
            }
            _ => {
                let mut hasher = Sha256::new();
                hasher.update(&buf[..n]);
                ranges.push((b, b, hasher));
            }
        }
    }
    let mapped: u64 = ranges.iter().map(|(s, e, _)| e - s + 1).sum();
    let mut body = String::new();
    for (start, end, hasher) in ranges {
        let span = if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        };
        body += &format!(
            "        <Range chksum=\"{}\"> {span} </Range>\n",
            hex::encode(hasher.finalize())
        );
    }
    let render = |checksum: &str| {
        format!(
            "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n    <ImageSize> {size} </ImageSize>\n    <BlockSize> {BLOCK} </BlockSize>\n    <BlocksCount> {blocks} </BlocksCount>\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {checksum} </BmapFileChecksum>\n    <BlockMap>\n{body}    </BlockMap>\n</bmap>\n"
        )
    };
    // The file's own checksum is taken with the field zeroed, as bmaptool checks it.
    let zeroed = render(&"0".repeat(64));
    let checksum = hex::encode(Sha256::digest(zeroed.as_bytes()));
    Ok(render(&checksum))
}

/// A parsed `.bmap`: the image's size and the ranges of mapped blocks with their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// (first block, last block, SHA-256 of the range's bytes), in order.
    pub ranges: Vec<(u64, u64, String)>,
}

impl Bmap {
    /// Bytes the mapped ranges cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(s, e, _)| ((e + 1) * self.block_size).min(self.image_size) - s * self.block_size)
            .sum()
    }
}

/// Parses a `.bmap` written by `build` (or bmaptool, format 2.x with SHA-256 checksums),
/// checking the file's own checksum.
pub fn parse(text: &str) -> Result<Bmap> {
    use anyhow::{bail, Context};
    let field = |name: &str| -> Result<&str> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = text
            .find(&open)
            .with_context(|| format!("bmap: no <{name}>"))?
            + open.len();
        let end = text[start..]
            .find(&close)
            .with_context(|| format!("bmap: <{name}> is not closed"))?;
        Ok(text[start..start + end].trim())
    };
    if field("ChecksumType")? != "sha256" {
        bail!("bmap: only SHA-256 checksums are supported");
    }
    let stated = field("BmapFileChecksum")?.to_string();
    let zeroed = text.replacen(&stated, &"0".repeat(stated.len()), 1);
    if hex::encode(Sha256::digest(zeroed.as_bytes())) != stated {
        bail!("bmap: the file's checksum does not match its contents (damaged or edited)");
    }
    let image_size: u64 = field("ImageSize")?.parse().context("bmap: ImageSize")?;
    let block_size: u64 = field("BlockSize")?.parse().context("bmap: BlockSize")?;
    if block_size == 0 {
        bail!("bmap: BlockSize is 0");
    }
    let mut ranges = Vec::new();
    for part in text.split("<Range").skip(1) {
        let sum = part
            .split_once("chksum=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(sum, _)| sum.to_string())
            .context("bmap: a range has no checksum")?;
        let span = part
            .split_once('>')
            .and_then(|(_, rest)| rest.split_once("</Range>"))
            .map(|(span, _)| span.trim())
            .context("bmap: a range is not closed")?;
        let (start, end) = match span.split_once('-') {
            Some((a, b)) => (a.trim().parse()?, b.trim().parse()?),
            None => {
                let b: u64 = span.parse()?;
                (b, b)
            }
        };
        if end < start || start * block_size >= image_size {
            bail!("bmap: range {span} lies outside the {image_size}-byte image");
        }
        ranges.push((start, end, sum));
    }
    Ok(Bmap {
        image_size,
        block_size,
        ranges,
    })
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn parses_what_build_writes_and_notices_edits() {
        let dir = std::env::temp_dir().join(format!("bmap-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("i.img");
        let mut bytes = vec![0u8; 10 * BLOCK as usize + 100];
        bytes[5] = 1;
        bytes[3 * BLOCK as usize] = 2;
        bytes[4 * BLOCK as usize] = 3;
        bytes[10 * BLOCK as usize + 50] = 4;
        std::fs::write(&image, &bytes).unwrap();
        let text = build(&image, &[]).unwrap();
        let map = parse(&text).unwrap();
        assert_eq!(map.image_size, bytes.len() as u64);
        let spans: Vec<(u64, u64)> = map.ranges.iter().map(|(s, e, _)| (*s, *e)).collect();
        assert_eq!(spans, vec![(0, 0), (3, 4), (10, 10)]);
        assert_eq!(map.mapped_bytes(), 3 * BLOCK + 100);
        let edited = text.replacen("> 3-4 <", "> 3-5 <", 1);
        assert!(parse(&edited).unwrap_err().to_string().contains("checksum"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
