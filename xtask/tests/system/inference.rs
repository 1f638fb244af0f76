//! The inference service and the gateway in the product image, in QEMU (TCG): the
//! supervisor starts both; the box, provisioned like a flashed device, pairs with a
//! "phone" (this test) over HTTPS using its setup code; the credential opens the API,
//! and a chat completion sent from the host through the gateway gets an answer, once
//! over plain HTTPS and once through the official `openai` Python client, which pins
//! the device certificate.

use std::time::{Duration, Instant};

use crate::common::browser;
use crate::common::phone::pair;
use crate::common::{free_port, TestMachine, BOOT_TIMEOUT};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use llamabox_format::provisioning::DeviceIdentity;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Boot plus loading the model on one emulated vCPU.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// A few tokens: TCG emulates every AVX2 instruction.
const MAX_TOKENS: u64 = 8;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const CODE: &str = "27182818";

/// HTTPS to the box: its certificate is self-signed, so this client trusts any and the
/// test checks the fingerprint itself (as a phone pins it after pairing).
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[test]
fn inference_answers_a_paired_phone_through_the_gateway() {
    let mut vm = TestMachine::new("inference");
    // Provisioned as `cargo xtask provision` does after flashing.
    let identity = DeviceIdentity {
        id: "0123456789abcdef".into(),
        setup_code: CODE.into(),
    };
    xtask::provision::write(&vm.disk, &identity).unwrap();
    let (https_port, http_port) = (free_port(), free_port());
    let started = Instant::now();
    let mut machine = vm.boot_forwarding(&[(https_port, 443), (http_port, 80)]);
    let console = machine
        .wait_for("llamabox-supervisor: inference: ready", READY_TIMEOUT)
        .unwrap();
    eprintln!(
        "inference ready {:.1} s after QEMU started",
        started.elapsed().as_secs_f32()
    );
    machine
        .wait_for("llamabox-supervisor: gateway: ready", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        console.contains("llamabox-init: stage 2 reached: slot a"),
        "{console}"
    );
    assert!(
        console.contains("device identity from the ESP"),
        "stage 1 did not pick up the provisioned identity: {console}"
    );
    let base = format!("https://127.0.0.1:{https_port}");
    let http = client();

    // The provisioned name; the API is closed to unpaired clients.
    let pairing = http.get(format!("{base}/v1/pairing")).send().unwrap();
    let info = pairing.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    let fingerprint = hex::encode(Sha256::digest(info.peer_certificate().unwrap()));
    let cert_der = info.peer_certificate().unwrap().to_vec();
    let pairing: Value = serde_json::from_str(&pairing.text().unwrap()).unwrap();
    assert_eq!(pairing["device"], "llamabox-0123", "{pairing}");
    assert_eq!(pairing["open"], true, "{pairing}");
    assert_eq!(
        http.get(format!("{base}/v1/models"))
            .send()
            .unwrap()
            .status(),
        401
    );
    // Plain HTTP arrives on the virtual Ethernet (not a USB link): sent to HTTPS.
    let plain = http
        .get(format!("http://127.0.0.1:{http_port}/v1/models"))
        .send()
        .unwrap();
    assert_eq!(plain.status(), 308, "plain HTTP from the LAN side");

    let credential = pair(&http, &base, CODE);
    assert_eq!(
        credential["fingerprint"],
        fingerprint.as_str(),
        "{credential}"
    );
    let token = credential["token"].as_str().unwrap().to_string();

    // The phone's device screen: the running release, storage and services.
    let status = http
        .get(format!("{base}/v1/device/status"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(status.status(), 200);
    let status: Value = serde_json::from_str(&status.text().unwrap()).unwrap();
    assert_eq!(status["release"]["slot"], "a", "{status}");
    assert_eq!(status["release"]["version"], "0.1.0", "{status}");
    assert!(
        status["storage"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );
    let services = status["services"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"));
    let ready = |name: &str| {
        services
            .iter()
            .any(|s| s["name"] == name && s["ready"] == true)
    };
    assert!(ready("gateway") && ready("inference"), "{status}");
    assert!(status["update"]["phase"].is_string(), "{status}");

    // Updates from the phone reach the update service over D-Bus; the product image
    // has no repository configured, which the service says.
    let check = http
        .post(format!("{base}/v1/update/check"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    let code = check.status();
    let check: Value = serde_json::from_str(&check.text().unwrap()).unwrap();
    assert!(
        (code == 200 && check["result"].is_string())
            || (code == 409
                && check["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("update check: "))),
        "{code} {check}"
    );
    eprintln!("update check from the phone: {code} {check}");

    let models = http
        .get(format!("{base}/v1/models"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(models.status(), 200, "GET /v1/models with the credential");
    let models: Value = serde_json::from_str(&models.text().unwrap()).unwrap();
    let model = models["data"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no model id in {models}"))
        .to_string();

    let asked = Instant::now();
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&token)
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

    // The device certificate, as the phone pins it: the openai client verifies the
    // connection against it (and the host name `localhost` it names).
    let cert_pem = vm.dir.join("device-cert.pem");
    let pem_body: Vec<String> = B64
        .encode(&cert_der)
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).to_string())
        .collect();
    std::fs::write(
        &cert_pem,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            pem_body.join("\n")
        ),
    )
    .unwrap();
    let base = format!("https://localhost:{https_port}");
    // The same request as a user's program sends it: the official client library.
    let script = format!(
        r#"
import openai
client = openai.OpenAI(
    base_url="{base}/v1",
    api_key="{token}",
    timeout={timeout},
    http_client=openai.DefaultHttpxClient(verify="{cert}"),
)
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
        timeout = REQUEST_TIMEOUT.as_secs(),
        cert = cert_pem.display(),
    );
    let output = std::process::Command::new(crate::common::python())
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

    web_app_pairs_and_chats(https_port, &fingerprint);

    // Not critical, but a well-behaved service must not keep the slot from being blessed.
    machine.wait_for("slot a blessed", BOOT_TIMEOUT).unwrap();
}

/// The web app served by the box, as a phone opens it from the label's QR code (the
/// setup code in the link's fragment): it pairs (SPAKE2 in WebAssembly), shows the
/// certificate's fingerprint, and a chat message gets a streamed answer. Chromium
/// accepts the box's self-signed certificate, as a person does after checking the
/// fingerprint.
fn web_app_pairs_and_chats(https_port: u16, fingerprint: &str) {
    let Some((chromium, chromedriver)) = browser::find_browser() else {
        return;
    };
    let web =
        browser::Browser::start_with(&chromium, &chromedriver, &["--ignore-certificate-errors"]);
    web.goto(&format!("https://127.0.0.1:{https_port}/#pair={CODE}"));
    web.wait(
        "the pairing screen with the code from the link",
        &format!(
            "return document.querySelector('#pair-code').value === {CODE:?}
                && document.querySelector('#pair-state').textContent.includes('Pairing is open');"
        ),
        REQUEST_TIMEOUT,
    );
    web.click("#pair-button");
    web.wait(
        "pairing to finish",
        &web.visible("#pair-done"),
        REQUEST_TIMEOUT,
    );
    let shown = web.text_of("#paired-fingerprint").replace(':', "");
    assert_eq!(shown.to_lowercase(), fingerprint, "fingerprint shown");
    web.screenshot("board-paired");
    web.click("#pair-continue");
    web.wait(
        "the model picker",
        "const o = document.querySelector('#set-model option'); return !!o && o.value;",
        REQUEST_TIMEOUT,
    );
    web.click("#settings-toggle");
    web.type_into("#set-max-tokens", &MAX_TOKENS.to_string());
    web.type_into("#set-temperature", "0");
    web.click("#settings-close");
    web.type_into("#prompt", "Hi");
    web.click("#send");
    let answer = web.wait(
        "the answer",
        "const all = document.querySelectorAll('#messages .msg.assistant');
         const e = all[all.length - 1];
         return !!e && e.dataset.state === 'done' && e.querySelector('.body').textContent;",
        REQUEST_TIMEOUT,
    );
    eprintln!("web app answer: {answer}");
    web.screenshot("board-chat");

    // The device screen shows what the update service reports (its D-Bus status uses
    // hyphenated names: the screen once read "Running undefined").
    web.click(".tabs button[data-tab=device]");
    let update = web
        .wait(
            "the update section",
            "const t = document.querySelector('#update-state').textContent; return t.length > 0 && t;",
            REQUEST_TIMEOUT,
        )
        .as_str()
        .unwrap_or_default()
        .to_string();
    let version = update.strip_prefix("Running ").unwrap_or_default();
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()) && !update.contains("undefined"),
        "the update section says {update:?}"
    );
}
