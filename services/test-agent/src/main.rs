//! The test agent: present only in test images (`image/llamabox-test.toml`), never in
//! the product. It reads one command per line from a serial port (the second one, which
//! QEMU connects to a socket the boot tests hold) and answers with the result lines,
//! then `END ok` or `END error: …`. With `--idle` it is a well-behaved service that
//! reports ready and waits; with `--never-ready` it starts but never reports ready.
//!
//! Commands: `ping`, `state` (the supervisor's JSON state), `kill <service> <SIGNAL>`
//! (the service's main process), `signal-pid1 <SIGNAL>`, `cat <path>`,
//! `exec <program> <args…>` (its output), `exec-as <user> <program> <args…>` (the same
//! as that user), `spawn <program> <args…>` (starts it in the
//! background and answers its pid), `wait <pid> <seconds>` (a spawned program's output
//! once it exited, like `exec`), `write <path> <base64>` and `append <path> <base64>`
//! (the file's size afterwards; send large files in chunks of a few KiB, each answered
//! before the next, so the serial line never overruns), `read <path>` (the file in
//! base64, in lines), `connect <ip:port>` (opens a TCP connection from the box, as any
//! root service could: the firewall test expects it refused).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nix::sys::signal::{kill, Signal};
use nix::sys::termios;
use nix::unistd::Pid;

const STATE: &str = "/run/llamabox/supervisor.json";

fn notify_ready() {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Ok(socket) = UnixDatagram::unbound() {
            let _ = socket.send_to(b"READY=1", path);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--idle") => {
            notify_ready();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("--never-ready") => {
            eprintln!("starting, and never going to be ready");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("--port") => match port_candidates(&args) {
            Some(candidates) => serve(&candidates),
            None => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: llamabox-test-agent --port DEVICE [--port DEVICE …] | --idle | --never-ready"
    );
    std::process::exit(2);
}

/// `--port A --port B …`: the candidates in order.
fn port_candidates(args: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for pair in args.chunks(2) {
        match pair {
            [flag, device] if flag == "--port" => out.push(device.clone()),
            _ => return None,
        }
    }
    Some(out)
}

/// The boards' second console differs: a second UART on x86 (`/dev/ttyS1`), a virtio
/// console on QEMU's arm64 `virt` machine, which has one UART (`/dev/hvc0`). The first
/// candidate that exists is the agent's port.
fn serve(candidates: &[String]) {
    let Some(device) = candidates
        .iter()
        .find(|d| std::path::Path::new(d.as_str()).exists())
    else {
        eprintln!("none of {candidates:?} exists");
        std::process::exit(1);
    };
    serve_on(device)
}

fn serve_on(device: &str) {
    let port = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot open {device}: {e}");
            std::process::exit(1);
        }
    };
    if let Ok(mut t) = termios::tcgetattr(&port) {
        termios::cfmakeraw(&mut t);
        let _ = termios::tcsetattr(&port, termios::SetArg::TCSANOW, &t);
    }
    notify_ready();
    eprintln!("serving commands on {device}");
    let mut writer = port.try_clone().expect("dup of the port");
    let mut agent = Agent::default();
    for line in BufReader::new(port).lines() {
        let Ok(line) = line else { continue };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let reply = match agent.run(line) {
            Ok(out) => format!("{out}\nEND ok\n"),
            Err(e) => format!("END error: {e}\n"),
        };
        let _ = writer.write_all(reply.as_bytes());
    }
}

fn signal(name: &str) -> Result<Signal, String> {
    name.parse().map_err(|_| format!("unknown signal {name}"))
}

/// Base64 characters per line of a `read` answer.
const READ_LINE: usize = 4096;

/// The programs started with `spawn`: a thread per program collects its output, so a
/// chatty one never blocks on a full pipe.
struct Agent {
    done_tx: Sender<(u32, std::io::Result<Output>)>,
    done_rx: Receiver<(u32, std::io::Result<Output>)>,
    /// Spawned programs by pid: their name, and their output once they exited.
    spawned: HashMap<u32, (String, Option<std::io::Result<Output>>)>,
}

impl Default for Agent {
    fn default() -> Agent {
        let (done_tx, done_rx) = channel();
        Agent {
            done_tx,
            done_rx,
            spawned: HashMap::new(),
        }
    }
}

impl Agent {
    fn run(&mut self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ping"] => Ok("pong".into()),
            ["state"] => std::fs::read_to_string(STATE)
                .map(|s| s.replace('\n', " "))
                .map_err(|e| format!("{STATE}: {e}")),
            ["cat", path] => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}")),
            ["kill", service, sig] => {
                let state: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(STATE).map_err(|e| format!("{STATE}: {e}"))?,
                )
                .map_err(|e| e.to_string())?;
                let pid = state["services"]
                    .as_array()
                    .and_then(|list| list.iter().find(|s| s["name"] == *service))
                    .and_then(|s| s["pid"].as_i64())
                    .ok_or_else(|| format!("service {service} has no running process"))?;
                kill(Pid::from_raw(pid as i32), signal(sig)?).map_err(|e| e.to_string())?;
                Ok(format!("sent {sig} to {service} (pid {pid})"))
            }
            ["exec", program, args @ ..] => {
                let out = Command::new(program)
                    .args(args)
                    .output()
                    .map_err(|e| format!("{program}: {e}"))?;
                report(program, &out)
            }
            ["exec-as", user, program, args @ ..] => {
                // As a service that runs as its own user would (the supervisor's `user`).
                let user = nix::unistd::User::from_name(user)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no user {user}"))?;
                let out = Command::new(program)
                    .args(args)
                    .uid(user.uid.as_raw())
                    .gid(user.gid.as_raw())
                    .output()
                    .map_err(|e| format!("{program}: {e}"))?;
                report(program, &out)
            }
            ["spawn", program, args @ ..] => self.spawn(program, args),
            ["wait", pid, seconds] => {
                let pid: u32 = pid.parse().map_err(|_| format!("bad pid {pid}"))?;
                let seconds: u64 = seconds
                    .parse()
                    .map_err(|_| format!("bad number of seconds {seconds}"))?;
                self.wait(pid, Duration::from_secs(seconds))
            }
            ["write", path, data] => write_file(path, data, false),
            ["append", path, data] => write_file(path, data, true),
            ["read", path] => {
                let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
                let text = B64.encode(&bytes);
                let lines: Vec<&str> = text
                    .as_bytes()
                    .chunks(READ_LINE)
                    .map(|l| std::str::from_utf8(l).unwrap())
                    .collect();
                Ok(lines.join("\n"))
            }
            ["connect", address] => {
                let address: std::net::SocketAddr = address
                    .parse()
                    .map_err(|_| format!("bad address {address}"))?;
                std::net::TcpStream::connect_timeout(&address, Duration::from_secs(10))
                    .map(|_| format!("connected to {address}"))
                    .map_err(|e| format!("{address}: {e}"))
            }
            // The ESP mounted as the box's own code mounts it (stage 1, PID 1 and the
            // update service all use `MountedEsp`), left mounted for the test to look at.
            ["mount-esp", at] => {
                std::fs::create_dir_all(at).map_err(|e| format!("{at}: {e}"))?;
                let esp = llamabox_device::esp::MountedEsp::mount(at)?;
                std::mem::forget(esp);
                Ok(format!("the ESP is mounted at {at}"))
            }
            ["signal-pid1", sig] => {
                kill(Pid::from_raw(1), signal(sig)?).map_err(|e| e.to_string())?;
                Ok(format!("sent {sig} to PID 1"))
            }
            _ => Err(format!("unknown command: {line}")),
        }
    }

    fn spawn(&mut self, program: &str, args: &[&str]) -> Result<String, String> {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        let pid = child.id();
        let done = self.done_tx.clone();
        std::thread::spawn(move || {
            let _ = done.send((pid, child.wait_with_output()));
        });
        self.spawned.insert(pid, (program.to_string(), None));
        Ok(format!("pid {pid}"))
    }

    fn wait(&mut self, pid: u32, timeout: Duration) -> Result<String, String> {
        if !self.spawned.contains_key(&pid) {
            return Err(format!("no spawned program has pid {pid}"));
        }
        let deadline = Instant::now() + timeout;
        while self.spawned[&pid].1.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok((done, out)) => {
                    if let Some(entry) = self.spawned.get_mut(&done) {
                        entry.1 = Some(out);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("pid {pid} still running after {timeout:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => unreachable!("the agent holds a sender"),
            }
        }
        let (program, out) = self.spawned.remove(&pid).unwrap();
        let out = out.unwrap().map_err(|e| format!("{program}: {e}"))?;
        report(&program, &out)
    }
}

/// A finished program's stdout and stderr; an error when it did not exit with 0.
fn report(program: &str, out: &Output) -> Result<String, String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text.trim_end().to_string())
    } else {
        Err(format!(
            "{program} failed ({}): {}",
            out.status,
            text.trim_end().replace('\n', " | ")
        ))
    }
}

/// Writes (or appends) base64 `data` to `path`, creating its directory; answers the
/// file's size afterwards, so the sender can check that nothing was lost.
fn write_file(path: &str, data: &str, append: bool) -> Result<String, String> {
    let bytes = B64.decode(data).map_err(|e| format!("base64: {e}"))?;
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    file.write_all(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let size = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    Ok(format!("{path}: {size} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_in_chunks_and_read_back() {
        let dir = std::env::temp_dir().join(format!("test-agent-{}", std::process::id()));
        let path = dir.join("sub/clip.bin");
        let path = path.to_str().unwrap();
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut agent = Agent::default();
        let (first, rest) = bytes.split_at(3001);
        let reply = agent
            .run(&format!("write {path} {}", B64.encode(first)))
            .unwrap();
        assert_eq!(reply, format!("{path}: 3001 bytes"));
        for chunk in rest.chunks(1000) {
            agent
                .run(&format!("append {path} {}", B64.encode(chunk)))
                .unwrap();
        }
        let text = agent.run(&format!("read {path}")).unwrap();
        assert_eq!(B64.decode(text.replace('\n', "")).unwrap(), bytes);
        assert!(agent.run(&format!("write {path} abc")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn spawned_programs_are_waited_for() {
        let mut agent = Agent::default();
        let pid = |reply: String| reply.strip_prefix("pid ").unwrap().to_string();
        let slow = pid(agent.run("spawn sleep 1").unwrap());
        let quick = pid(agent.run("spawn echo hello").unwrap());
        let failing = pid(agent.run("spawn false").unwrap());
        assert_eq!(agent.run(&format!("wait {quick} 10")).unwrap(), "hello");
        assert!(agent.run(&format!("wait {failing} 10")).is_err());
        assert!(agent
            .run(&format!("wait {slow} 0"))
            .unwrap_err()
            .contains("still running"));
        assert_eq!(agent.run(&format!("wait {slow} 10")).unwrap(), "");
        assert!(agent.run(&format!("wait {slow} 10")).is_err());
        assert!(agent.run("spawn /nonexistent").is_err());
    }
}
