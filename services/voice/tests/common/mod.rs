//! Shared by the voice tests: the model `cargo xtask test` provides, and the service
//! (and the inference service) as real processes on free ports.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The image's default Whisper model (base), from the build cache.
pub fn whisper_model() -> PathBuf {
    required_env("LLAMABOX_TEST_WHISPER_MODEL")
}

pub fn required_env(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("{name} is not set: run the tests with `cargo xtask test`, which provides it")
        })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A service process, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub fn start(program: &Path, args: &[&str], port: u16) -> Server {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if reqwest::blocking::get(format!("{}/health", server.url))
                .is_ok_and(|r| r.status().is_success())
            {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} never became ready", server.url);
    }

    /// The voice service with `extra` arguments, on the test model, no D-Bus.
    pub fn voice(extra: &[&str]) -> Server {
        let port = free_port();
        let model = whisper_model();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--listen",
            &listen,
            "--bus",
            "none",
        ];
        args.extend_from_slice(extra);
        Server::start(Path::new(env!("CARGO_BIN_EXE_llamabox-voice")), &args, port)
    }

    /// Events from `/v1/voice/events`, as JSON, on a channel (read by a thread).
    pub fn events(&self) -> mpsc::Receiver<Value> {
        let response = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .unwrap()
            .get(format!("{}/v1/voice/events", self.url))
            .send()
            .expect("subscribing to the events");
        assert!(response.status().is_success());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(response).lines() {
                let Ok(line) = line else { return };
                if let Some(data) = line.strip_prefix("data: ") {
                    if let Ok(v) = serde_json::from_str(data) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        rx
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
