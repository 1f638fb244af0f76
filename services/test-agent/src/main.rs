//! The test agent: present only in test images (`image/llamabox-test.toml`), never in
//! the product. It reads one command per line from a serial port (the second one, which
//! QEMU connects to a socket the boot tests hold) and answers with the result lines,
//! then `END ok` or `END error: …`. With `--idle` it is a well-behaved service that
//! reports ready and waits; with `--never-ready` it starts but never reports ready.
//!
//! Commands: `ping`, `state` (the supervisor's JSON state), `kill <service> <SIGNAL>`
//! (the service's main process), `signal-pid1 <SIGNAL>`, `cat <path>`,
//! `exec <program> <args…>` (its output).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;

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
        Some("--port") if args.len() == 2 => serve(&args[1]),
        _ => {
            eprintln!("usage: llamabox-test-agent --port DEVICE | --idle | --never-ready");
            std::process::exit(2);
        }
    }
}

fn serve(device: &str) {
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
    for line in BufReader::new(port).lines() {
        let Ok(line) = line else { continue };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let reply = match run(line) {
            Ok(out) => format!("{out}\nEND ok\n"),
            Err(e) => format!("END error: {e}\n"),
        };
        let _ = writer.write_all(reply.as_bytes());
    }
}

fn signal(name: &str) -> Result<Signal, String> {
    name.parse().map_err(|_| format!("unknown signal {name}"))
}

fn run(line: &str) -> Result<String, String> {
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
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
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
        ["signal-pid1", sig] => {
            kill(Pid::from_raw(1), signal(sig)?).map_err(|e| e.to_string())?;
            Ok(format!("sent {sig} to PID 1"))
        }
        _ => Err(format!("unknown command: {line}")),
    }
}
