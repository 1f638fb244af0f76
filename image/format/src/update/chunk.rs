//! Content-defined chunking (FastCDC): the builder and the device must cut the same
//! bytes at the same places, so the parameters live here and nowhere else.
//!
//! Boundaries depend on content, not offsets: a file that grew or shrank in the middle
//! of a slot shifts the bytes after it without changing their chunks, so the device can
//! reuse them from its active slot.

use std::io::Read;

use sha2::{Digest, Sha256};

pub const MIN_CHUNK: u32 = 16 * 1024;
pub const AVG_CHUNK: u32 = 64 * 1024;
pub const MAX_CHUNK: u32 = 256 * 1024;

/// A chunk of a file: where it is and what it hashes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub length: u32,
    pub sha256: [u8; 32],
}

/// Cuts `data` into chunks.
pub fn chunk_bytes(data: &[u8]) -> Vec<Chunk> {
    fastcdc::v2020::FastCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .map(|c| Chunk {
            offset: c.offset as u64,
            length: c.length as u32,
            sha256: Sha256::digest(&data[c.offset..c.offset + c.length]).into(),
        })
        .collect()
}

/// Cuts a stream into chunks, calling `each` with every chunk and its bytes.
pub fn chunk_stream<R: Read>(
    reader: R,
    mut each: impl FnMut(&Chunk, &[u8]),
) -> std::io::Result<()> {
    for chunk in fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => std::io::Error::other(other.to_string()),
        })?;
        let found = Chunk {
            offset: chunk.offset,
            length: chunk.length as u32,
            sha256: Sha256::digest(&chunk.data).into(),
        };
        each(&found, &chunk.data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn stream_and_slice_cut_alike() {
        let data = pseudo_random(3 << 20, 1);
        let mut streamed = Vec::new();
        chunk_stream(&data[..], |c, bytes| {
            assert_eq!(bytes.len(), c.length as usize);
            streamed.push(c.clone());
        })
        .unwrap();
        assert_eq!(streamed, chunk_bytes(&data));
        assert_eq!(
            streamed.iter().map(|c| c.length as usize).sum::<usize>(),
            data.len()
        );
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = pseudo_random(4 << 20, 2);
        let mut edited = data.clone();
        edited.splice(1_000_000..1_000_000, pseudo_random(5000, 3));
        let before: std::collections::HashSet<_> =
            chunk_bytes(&data).into_iter().map(|c| c.sha256).collect();
        let after = chunk_bytes(&edited);
        let new = after.iter().filter(|c| !before.contains(&c.sha256)).count();
        assert!(new <= 3, "{new} of {} chunks changed", after.len());
    }
}
