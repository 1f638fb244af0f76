//! The real services on the host, as the box runs them, for tests that need them
//! together (the web app, load).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::browser::{client, Process};
use crate::common::{free_port, service_binary};

/// A model file `cargo xtask test` hands the tests (the image's own, from the build
/// cache) in `variable`.
pub fn test_model(variable: &str) -> std::path::PathBuf {
    std::env::var_os(variable)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "{variable} is not set: run the tests with `cargo xtask test`, which provides it"
            )
        })
}

pub fn wait_healthy(process: &mut Process, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!("{what} exited: {status}");
        }
        if client()
            .get(format!("{url}/health"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} at {url} never became ready");
}

/// Where the gateway finds its services.
pub struct Services<'a> {
    pub inference: &'a str,
    pub voice: &'a str,
}

/// The real gateway with a provisioned device file (setup code `code`), listening for
/// plain HTTP and HTTPS on `bind`.
pub fn start_gateway(
    state: &Path,
    web: &Path,
    bind: IpAddr,
    (http, https): (u16, u16),
    code: &str,
    services: &Services,
) -> Process {
    let device = state.join("provisioned.json");
    std::fs::write(
        &device,
        format!(r#"{{"id": "0123456789abcdef", "setup-code": "{code}"}}"#),
    )
    .unwrap();
    let child = Command::new(service_binary("llamabox-gateway"))
        .arg("serve")
        .arg("--state")
        .arg(state.join("state"))
        .arg("--device-file")
        .arg(&device)
        .arg("--web")
        .arg(web)
        .args(["--http", &SocketAddr::new(bind, http).to_string()])
        .args(["--https", &SocketAddr::new(bind, https).to_string()])
        .args(["--inference", services.inference])
        .args(["--voice", services.voice])
        .arg("--no-mdns")
        // This test's own boot state, not the host's /run.
        .arg("--pairing-limits")
        .arg(state.join("run").join("pairing.json"))
        .spawn()
        .expect("starting the gateway");
    let mut process = Process(child);
    wait_healthy(
        &mut process,
        &format!("http://127.0.0.1:{http}"),
        "the gateway",
    );
    process
}

/// The real inference service on `model`, on a free loopback port, with `args` (threads,
/// sequences, context): the process and its base URL, once it answers `/health`.
pub fn start_inference(model: &Path, args: &[&str]) -> (Process, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut process = Process(
        Command::new(service_binary("llamabox-inference"))
            .arg("--model")
            .arg(model)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting llamabox-inference"),
    );
    wait_healthy(&mut process, &url, "the inference service");
    (process, url)
}
