//! `llamabox`: talks to the supervisor over the system bus (`org.llamabox.Supervisor1`)
//! and reads the logs on the data partition.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use llamabox_device::bus::{self, SUPERVISOR, UPDATE, VOICE};

const LOG_DIR: &str = "/var/log/llamabox";

#[derive(Parser)]
#[command(name = "llamabox", about = "Control and inspect a Llama Box", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the services with their state.
    Status,
    /// Stop a service and start it again.
    Restart { service: String },
    /// Stop a service; it stays stopped until `start`.
    Stop { service: String },
    /// Start a stopped service.
    Start { service: String },
    /// Show a service's log (`supervisor` for the supervisor's, `kernel` for the kernel's).
    Logs {
        #[arg(default_value = "supervisor")]
        service: String,
        /// Keep printing new lines as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to show first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        #[arg(long, default_value = LOG_DIR, hide = true)]
        log_dir: PathBuf,
    },
    /// Updates, through the update service (org.llamabox.Update1).
    Update {
        #[command(subcommand)]
        action: UpdateCmd,
    },
    /// Voice, through the voice service (org.llamabox.Voice1).
    Voice {
        #[command(subcommand)]
        action: VoiceCmd,
    },
    /// Stop every service and reboot.
    Reboot,
    /// Stop every service and power off.
    Poweroff,
}

#[derive(Subcommand)]
enum UpdateCmd {
    /// Check the repository for an update.
    Check,
    /// Install an available update into the other slot (it boots at the next restart).
    Apply,
    /// The running release, an install waiting for a restart, and the last result.
    Status,
}

#[derive(Subcommand)]
enum VoiceCmd {
    /// Model, capture source, whether the microphone listens, the last transcript.
    Status,
    /// Print transcripts (and spoken answers) as they arrive.
    Listen {
        /// Stop after this many transcripts (default: never).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Mute the microphone: audio is dropped unheard until `unmute`.
    Mute,
    /// Listen again.
    Unmute,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("llamabox: {e}");
        std::process::exit(1);
    }
}

fn update_proxy() -> Result<zbus::blocking::Proxy<'static>, String> {
    bus::proxy(UPDATE, None)
}

fn voice(action: VoiceCmd) -> Result<(), String> {
    let proxy = bus::proxy(VOICE, None)?;
    match action {
        VoiceCmd::Status => {
            let json: String = proxy
                .call("Status", &())
                .map_err(|e| format!("voice status: {e}"))?;
            let status: serde_json::Value =
                serde_json::from_str(&json).map_err(|e| format!("voice status: {e}"))?;
            let text = |key: &str| match &status[key] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "none".into(),
                other => other.to_string(),
            };
            println!("model: {}", text("model"));
            println!("source: {}", text("source"));
            println!("listening: {}", text("listening"));
            println!(
                "heard: {} s, level {} dBFS",
                text("heard-seconds"),
                text("level-dbfs")
            );
            println!(
                "utterances: {} ({} detected)",
                text("utterances"),
                text("speech-started")
            );
            println!("last transcript: {}", text("last-transcript"));
            println!("answers pending: {}", text("answers-pending"));
            if !status["capture-error"].is_null() {
                println!("capture error: {}", text("capture-error"));
            }
        }
        VoiceCmd::Mute | VoiceCmd::Unmute => {
            let listening = matches!(action, VoiceCmd::Unmute);
            proxy
                .call_method("SetListening", &(listening,))
                .map_err(|e| format!("voice: {e}"))?;
        }
        VoiceCmd::Listen { count } => {
            let transcripts = proxy
                .receive_signal("Transcript")
                .map_err(|e| format!("voice transcripts: {e}"))?;
            let answers = proxy
                .receive_signal("AnswerDone")
                .map_err(|e| format!("voice answers: {e}"))?;
            std::thread::spawn(move || {
                for message in answers {
                    if let Ok((id, text)) = message.body().deserialize::<(u64, String)>() {
                        println!("answer {id}: {text}");
                    }
                }
            });
            for (seen, message) in (1..).zip(transcripts) {
                let (id, text, _language): (u64, String, String) = message
                    .body()
                    .deserialize()
                    .map_err(|e| format!("a malformed Transcript signal: {e}"))?;
                println!("utterance {id}: {text}");
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn update_status(proxy: &zbus::blocking::Proxy<'_>) -> Result<serde_json::Value, String> {
    let json: String = proxy
        .call("Status", &())
        .map_err(|e| format!("update status: {e}"))?;
    serde_json::from_str(&json).map_err(|e| format!("update status: {e}"))
}

fn update(action: UpdateCmd) -> Result<(), String> {
    let proxy = update_proxy()?;
    match action {
        UpdateCmd::Check => {
            let answer: String = proxy
                .call("Check", &())
                .map_err(|e| format!("update check: {e}"))?;
            println!("{answer}");
        }
        UpdateCmd::Apply => {
            let before = update_status(&proxy)?["last-result"].clone();
            proxy
                .call_method("Apply", &())
                .map_err(|e| format!("update apply: {e}"))?;
            let mut shown = u64::MAX;
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let status = update_status(&proxy)?;
                let (done, total) = (
                    status["done-bytes"].as_u64().unwrap_or(0),
                    status["total-bytes"].as_u64().unwrap_or(0),
                );
                if total > 0 && done * 10 / total != shown {
                    shown = done * 10 / total;
                    eprintln!("{}% of {} MB", done * 100 / total, total / 1_000_000);
                }
                if status["phase"] != "installing" && status["last-result"] != before {
                    let result = status["last-result"].as_str().unwrap_or("").to_string();
                    println!("{result}");
                    if result.starts_with("failed") {
                        return Err("the update was not installed".into());
                    }
                    break;
                }
            }
        }
        UpdateCmd::Status => {
            let status = update_status(&proxy)?;
            let text = |key: &str| status[key].as_str().unwrap_or("").to_string();
            println!(
                "running {} from slot {}",
                text("running-version"),
                text("running-slot")
            );
            println!("phase: {}", text("phase"));
            if let Some(version) = status["available"].as_str() {
                println!("available: {version}");
            }
            if let Some(pending) = status["pending"].as_object() {
                println!(
                    "pending: {} in slot {}, boots at the next restart",
                    pending["version"].as_str().unwrap_or("?"),
                    pending["slot"].as_str().unwrap_or("?")
                );
            }
            println!(
                "last result: {}",
                status["last-result"].as_str().unwrap_or("none")
            );
        }
    }
    Ok(())
}

fn proxy() -> Result<zbus::blocking::Proxy<'static>, String> {
    bus::proxy(SUPERVISOR, None)
}

fn call(method: &str, service: &str) -> Result<(), String> {
    proxy()?
        .call_method(method, &(service,))
        .map(|_| ())
        .map_err(|e| format!("{method} {service}: {e}"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Cmd::Update { action } => update(action)?,
        Cmd::Voice { action } => voice(action)?,
        Cmd::Status => {
            let services =
                bus::list_services(None).map_err(|e| format!("cannot list services: {e}"))?;
            println!(
                "{:<20} {:<9} {:<6} {:<8} {:>7} {:>6}  LAST EXIT",
                "SERVICE", "STATE", "READY", "CRITICAL", "PID", "STARTS"
            );
            for s in services {
                let (name, state, starts, last_exit) = (s.name, s.state, s.starts, s.last_exit);
                let (ready, critical) = (s.ready, s.critical);
                let pid = s.pid.map_or("-".into(), |pid| pid.to_string());
                let yes = |b: bool| if b { "yes" } else { "no" };
                println!(
                    "{name:<20} {state:<9} {:<6} {:<8} {pid:>7} {starts:>6}  {last_exit}",
                    yes(ready),
                    yes(critical)
                );
            }
        }
        Cmd::Restart { service } => call("Restart", &service)?,
        Cmd::Stop { service } => call("Stop", &service)?,
        Cmd::Start { service } => call("Start", &service)?,
        Cmd::Reboot => proxy()?
            .call_method("Reboot", &())
            .map(|_| ())
            .map_err(|e| e.to_string())?,
        Cmd::Poweroff => proxy()?
            .call_method("PowerOff", &())
            .map(|_| ())
            .map_err(|e| e.to_string())?,
        Cmd::Logs {
            service,
            follow,
            lines,
            log_dir,
        } if service == "kernel" => kernel_log(follow, lines, &log_dir)?,
        Cmd::Logs {
            service,
            follow,
            lines,
            log_dir,
        } => service_log(&log_dir, &service, follow, lines)?,
    }
    Ok(())
}

fn service_log(dir: &Path, service: &str, follow: bool, lines: usize) -> Result<(), String> {
    let all = llamabox_supervisor::logs::read_lines(dir, service)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if all.is_empty() && !follow {
        return Err(format!(
            "no log for `{service}` in {} (is the name right?)",
            dir.display()
        ));
    }
    let mut out = std::io::stdout().lock();
    for line in &all[all.len().saturating_sub(lines)..] {
        let _ = writeln!(out, "{line}");
    }
    if !follow {
        return Ok(());
    }
    // Follow the current file; when it is rotated (it shrinks), start it over.
    let path = dir.join(format!("{service}.log"));
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    loop {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
        }
        if len > offset {
            if let Ok(mut f) = std::fs::File::open(&path) {
                let mut buf = Vec::new();
                if f.seek(SeekFrom::Start(offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                    offset += buf.len() as u64;
                    let _ = out.write_all(&buf);
                    let _ = out.flush();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The kernel's ring buffer from /dev/kmsg: one record per read, `prio,seq,usec,flags;text`.
fn kernel_log(follow: bool, lines: usize, _dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(if follow { 0 } else { libc::O_NONBLOCK })
        .open("/dev/kmsg")
        .map_err(|e| format!("/dev/kmsg: {e}"))?;
    let mut records = Vec::new();
    let mut buf = vec![0u8; 8192];
    let mut out = std::io::stdout().lock();
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (header, text) = record.split_once(';').unwrap_or(("", &record));
                let usec: u64 = header
                    .split(',')
                    .nth(2)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let line = format!(
                    "[{:>5}.{:06}] {}",
                    usec / 1_000_000,
                    usec % 1_000_000,
                    text.lines().next().unwrap_or("")
                );
                if follow {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                } else {
                    records.push(line);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue, // records were overwritten
            Err(e) => return Err(format!("/dev/kmsg: {e}")),
        }
    }
    for line in &records[records.len().saturating_sub(lines)..] {
        let _ = writeln!(out, "{line}");
    }
    Ok(())
}
