//! Files to and from the box over the test agent's serial line, in base64.

use std::time::Duration;

use xtask::qemu::Agent;

/// Bytes per `write`/`append` command: 16 KiB of base64 on the line. Each chunk is
/// answered before the next is sent, so the guest's tty buffers never overrun.
const CHUNK: usize = 12 * 1024;
const ANSWER: Duration = Duration::from_secs(60);

/// Writes `bytes` to `path` in the guest (a writable place: `/run`, `/tmp`, `/data`),
/// checking the size the agent reports after each chunk.
pub fn write(agent: &mut Agent, path: &str, bytes: &[u8]) {
    let mut written = 0;
    let mut chunks = bytes.chunks(CHUNK).peekable();
    if chunks.peek().is_none() {
        agent.command(&format!("write {path} "), ANSWER).unwrap();
        return;
    }
    for (i, chunk) in chunks.enumerate() {
        let verb = if i == 0 { "write" } else { "append" };
        let reply = agent
            .command(&format!("{verb} {path} {}", encode(chunk)), ANSWER)
            .unwrap();
        written += chunk.len();
        let expected = format!("{path}: {written} bytes");
        assert!(reply.contains(&expected), "{reply:?}");
    }
}

/// The contents of `path` in the guest.
pub fn read(agent: &mut Agent, path: &str) -> Vec<u8> {
    let lines = agent
        .command(&format!("read {path}"), Duration::from_secs(300))
        .unwrap();
    decode(&lines.concat())
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = u32::from_be_bytes([
            0,
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

pub fn decode(text: &str) -> Vec<u8> {
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut n, mut bits) = (0u32, 0);
    for &c in text {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("invalid base64 character {:?}", c as char));
        n = n << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
            n &= (1 << bits) - 1;
        }
    }
    out
}
