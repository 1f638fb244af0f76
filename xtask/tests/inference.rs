//! The inference service in the product image, in QEMU (TCG): the supervisor starts it,
//! it loads the shipped model and reports ready, and a chat completion sent from the
//! host through the port forward gets an answer, once over plain HTTP and once through
//! the official `openai` Python client.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, TestMachine, BOOT_TIMEOUT};
use serde_json::{json, Value};
use xtask::qemu::INFERENCE_PORT;

/// Boot plus loading the model on one emulated vCPU.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// A few tokens: TCG emulates every AVX2 instruction.
const MAX_TOKENS: u64 = 8;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

#[test]
fn inference_answers_a_chat_completion_through_the_port_forward() {
    let mut vm = TestMachine::new("inference");
    let port = free_port();
    let started = Instant::now();
    let mut machine = vm.boot_forwarding(&[(port, INFERENCE_PORT)]);
    let console = machine
        .wait_for("llamabox-supervisor: inference: ready", READY_TIMEOUT)
        .unwrap();
    eprintln!(
        "inference ready {:.1} s after QEMU started",
        started.elapsed().as_secs_f32()
    );
    assert!(
        console.contains("llamabox-init: stage 2 reached: slot a"),
        "{console}"
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = client();

    let health = http.get(format!("{base}/health")).send().unwrap();
    assert_eq!(health.status(), 200, "GET /health once ready");

    let models = http.get(format!("{base}/v1/models")).send().unwrap();
    assert_eq!(models.status(), 200, "GET /v1/models");
    let models: Value = serde_json::from_str(&models.text().unwrap()).unwrap();
    let model = models["data"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no model id in {models}"))
        .to_string();

    let asked = Instant::now();
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .header("Content-Type", "application/json")
        .body(
            json!({
                "model": model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": MAX_TOKENS,
            })
            .to_string(),
        )
        .send()
        .unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    eprintln!(
        "chat completion ({MAX_TOKENS} tokens at most) took {:.1} s: {body}",
        asked.elapsed().as_secs_f32()
    );
    let message = &body["choices"][0]["message"];
    assert_eq!(message["role"], "assistant", "{body}");
    let content = message["content"].as_str().unwrap_or_default();
    assert!(!content.trim().is_empty(), "empty reply: {body}");
    let completion_tokens = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!(
        (1..=MAX_TOKENS).contains(&completion_tokens),
        "usage: {body}"
    );

    // The same request as a user's program sends it: the official client library.
    let script = format!(
        r#"
import openai
client = openai.OpenAI(base_url="{base}/v1", api_key="unused", timeout={timeout})
reply = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Hi"}}],
    max_tokens={MAX_TOKENS},
)
text = reply.choices[0].message.content
assert reply.choices[0].message.role == "assistant", reply
assert text and text.strip(), reply
print("openai client reply:", repr(text))
"#,
        timeout = REQUEST_TIMEOUT.as_secs()
    );
    let output = std::process::Command::new(common::python())
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the openai client failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&output.stdout));

    // Not critical, but a well-behaved service must not keep the slot from being blessed.
    machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
}
