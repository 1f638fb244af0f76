//! Starting a server under test, waiting until it is ready, stopping it.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server may take to load the model and answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `llamabox-inference`.
    Ours,
    /// llama.cpp's `llama-server`.
    LlamaServer,
}

/// One side of the comparison.
#[derive(Debug, Clone)]
pub struct Side {
    pub label: &'static str,
    pub kind: Kind,
    pub binary: PathBuf,
    /// CPU priority (nice value): ours as the image's service file sets it, llama-server
    /// as its users run it (0).
    pub nice: i32,
}

/// What a server is started with; both sides get the same values.
pub struct Settings<'a> {
    pub model: &'a Path,
    pub threads: usize,
    /// Total KV cache, in tokens.
    pub ctx_size: u32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// A chat template file replacing the model's (a model without one).
    pub chat_template: Option<&'a Path>,
}

pub struct Server {
    child: Child,
    pub base_url: String,
    log: PathBuf,
}

impl Server {
    /// Starts `side` and returns once `GET /health` answers 200.
    pub fn start(side: &Side, settings: &Settings, log: PathBuf) -> Result<Server> {
        let port = free_port()?;
        let mut cmd = Command::new(&side.binary);
        let (threads, ctx, parallel) = (
            settings.threads.to_string(),
            settings.ctx_size.to_string(),
            settings.parallel.to_string(),
        );
        match side.kind {
            Kind::Ours => cmd
                .arg("--model")
                .arg(settings.model)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--threads", &threads, "--ctx-size", &ctx])
                .args(["--parallel", &parallel]),
            // With an explicit -np, llama-server splits -c evenly across its slots
            // (kv_unified stays off): each slot gets ctx / parallel tokens.
            Kind::LlamaServer => cmd
                .arg("-m")
                .arg(settings.model)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["-t", &threads, "-c", &ctx, "-np", &parallel]),
        };
        if let Some(template) = settings.chat_template {
            cmd.arg("--chat-template-file").arg(template);
        }
        // Nothing else: each side runs as its users run it. Ours as the image ships it
        // (its service file sets no environment), llama-server with its defaults
        // (OpenMP's own wait policy).
        if side.nice != 0 {
            let nice = side.nice;
            // SAFETY: setpriority is a plain system call, safe between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let out = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", side.binary.display()))?;
        let mut server = Server {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log,
        };
        server
            .wait_ready()
            .with_context(|| format!("{} did not become ready", side.label))?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/health", self.base_url);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("it exited ({status}); {}", self.log_tail());
            }
            if let Ok(response) = http.get(&url).send() {
                if response.status() == reqwest::StatusCode::OK {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "GET {url} not 200 after {} s; {}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of the server's log, for errors.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }

    /// SIGTERM, then SIGKILL if the server does not exit in time.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    /// A benchmark that fails half-way leaves no server running.
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
