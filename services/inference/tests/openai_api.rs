//! Runs `openai_api.py` and `ollama_api.py` (the official `openai` and `ollama` clients)
//! against two real servers on the real model. `cargo xtask test` provides the model (`LLAMABOX_TEST_MODEL`, the file the image
//! ships) and a Python with `openai` and `ollama` installed (`LLAMABOX_PYTHON`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(model: &Path, args: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_llamabox-inference"))
            .arg("--model")
            .arg(model)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--threads", "2"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting llamabox-inference");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        server.wait_ready(port);
        server
    }

    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited before it was ready: {status}", self.url);
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let mut reply = String::new();
                if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
                    && s.read_to_string(&mut reply).is_ok()
                    && reply.starts_with("HTTP/1.0 200")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} never became ready", self.url);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required_env(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("{name} is not set: run the tests with `cargo xtask test`, which provides it")
        })
}

#[test]
fn official_clients_against_the_real_model() {
    let model = required_env("LLAMABOX_TEST_MODEL");
    let python = required_env("LLAMABOX_PYTHON");
    let main = Server::start(&model, &["--parallel", "4", "--ctx-size", "4096"]);
    let tiny = Server::start(
        &model,
        &["--parallel", "1", "--queue", "1", "--ctx-size", "1024"],
    );
    let status = Command::new(python)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"))
        .args(["-m", "unittest", "-v", "openai_api", "ollama_api"])
        .env("LLAMABOX_URL", &main.url)
        .env("LLAMABOX_TINY_URL", &tiny.url)
        .status()
        .expect("running python");
    assert!(
        status.success(),
        "openai_api.py or ollama_api.py failed (see above)"
    );
}

/// A model store as the update service leaves it, holding the test model again as a
/// pulled model `smollm2:copy` (docs/models.md has the layout).
fn model_store(model: &Path) -> PathBuf {
    use llamabox_format::update::models::{store, ModelEntry, ModelKind, Pin};
    use sha2::Digest;
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("model-store");
    let _ = std::fs::remove_dir_all(&root);
    let bytes = std::fs::read(model).unwrap();
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let entry = ModelEntry {
        name: "smollm2:copy".into(),
        kind: ModelKind::Llm,
        format: "gguf".into(),
        family: "llama".into(),
        quantization: "Q4_1".into(),
        parameters: "135M".into(),
        description: "the test model, as pulled".into(),
        license: "Apache-2.0".into(),
        length: bytes.len() as u64,
        sha256: sha256.clone(),
        index: Pin {
            length: 1,
            sha256: sha256.clone(),
        },
        template: None,
        options: [("temperature".to_string(), serde_json::json!(0.7))].into(),
        min_memory_mib: 192,
    };
    let blob = store::blob_path(&root, &sha256);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let path = store::entry_path(&root, &entry.name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();
    // The owner made it the default: the service loads it once the factory model is up.
    std::fs::write(store::default_path(&root), "smollm2:copy\n").unwrap();
    root
}

#[test]
fn models_switch_at_run_time_and_wait_for_each_other() {
    let model = required_env("LLAMABOX_TEST_MODEL");
    let python = required_env("LLAMABOX_PYTHON");
    let store = model_store(&model);
    let server = Server::start(
        &model,
        &[
            "--parallel",
            "2",
            "--ctx-size",
            "2048",
            "--models-dir",
            store.to_str().unwrap(),
        ],
    );
    let status = Command::new(python)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"))
        .args(["-m", "unittest", "-v", "models_api"])
        .env("LLAMABOX_URL", &server.url)
        .status()
        .expect("running python");
    assert!(status.success(), "models_api.py failed (see above)");
}
