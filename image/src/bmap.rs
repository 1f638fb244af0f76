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
