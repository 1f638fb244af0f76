//! Files to and from the box over the test agent's serial line, in base64.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
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
            .command(&format!("{verb} {path} {}", B64.encode(chunk)), ANSWER)
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
    B64.decode(lines.concat())
        .expect("the agent answers base64")
}
