//! Models as signed updates on a booted box (issue 13, docs/models.md): the image's
//! release published with a model catalog of both LLMs, a box at that release on a card
//! larger than the image (the data partition grows to hold a model), and an app's view
//! of it through the gateway with the official `ollama` and `openai` clients
//! (`models_client.py`): pull with progress, list, chat, delete; the factory model
//! answers throughout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::common::browser;
use crate::common::phone::pair;
use crate::common::repository::publish_with_models;
use crate::common::{files, free_port, TestMachine};
use llamabox_format::provisioning::DeviceIdentity;
use xtask::serve::Server;

const TEST_IMAGE: &str = "llamabox-test";
const CODE: &str = "27182818";
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How QEMU's user-mode network shows the host's loopback to the guest.
const HOST_FROM_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Gemma 3 270M Q4_K_M (recipes/gemma3-270m.toml): the model the box pulls.
const PULLED: &str = "gemma3:270m";
const PULLED_LENGTH: u64 = 253_113_024;

#[test]
fn a_box_pulls_lists_chats_with_and_deletes_a_signed_model_through_the_ollama_api() {
    let mut vm = TestMachine::with_image("models", TEST_IMAGE);
    // A card 2 GiB larger than the image: the data partition grows to hold the model
    // on first boot.
    vm.grow_disk(2 << 30);
    let repo = vm.dir.join("repo");
    publish_with_models(&repo, TEST_IMAGE, &["smollm2", "gemma3-270m"]);
    let server = Server::start(&repo);
    let mirror = SocketAddr::new(IpAddr::V4(HOST_FROM_GUEST), server.port());

    xtask::provision::write(
        &vm.disk,
        &DeviceIdentity {
            id: "00e9e55000000002".into(),
            setup_code: CODE.into(),
        },
    )
    .unwrap();
    let https_port = free_port();
    let mut machine = vm.boot_forwarding(&[(https_port, 443)]);
    let mut agent = vm.agent(&mut machine);
    wait_for_services(&mut machine);
    files::write(
        &mut agent,
        "/etc/llamabox/local/update.toml",
        format!("mirrors = [\"http://{mirror}\"]\ncheck-interval-minutes = 0\n").as_bytes(),
    );

    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{https_port}");
    let token = pair(&http, &base, CODE)["token"]
        .as_str()
        .unwrap()
        .to_string();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/system/models_client.py");
    let output = std::process::Command::new(crate::common::python())
        .arg(&script)
        .env("LLAMABOX_URL", &base)
        .env("LLAMABOX_TOKEN", &token)
        .env("LLAMABOX_MODEL", PULLED)
        .env("LLAMABOX_MODEL_LENGTH", PULLED_LENGTH.to_string())
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap();
    eprint!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "models_client.py failed (above)");

    // The web app's view (the update service's): nothing installed any more, the
    // pull recorded as done, and the grown data partition's space.
    let models = get_json(&http, &base, &token, "/v1/device/models");
    eprintln!(
        "models after the delete: installed {}, pull {}, free {}",
        models["installed"], models["pull"], models["free-bytes"]
    );
    assert_eq!(models["installed"], serde_json::json!([]), "{models}");
    assert_eq!(
        models["pull"]["phase"], "failed",
        "the last pull (of an unknown name)"
    );
    let catalog: Vec<&str> = models["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(catalog, ["smollm2:135m", PULLED], "{models}");
    assert!(
        models["free-bytes"].as_u64().unwrap() > 1 << 30,
        "the data partition did not grow: {models}"
    );

    web_app_pulls_and_deletes_a_model(&http, &base, &token);

    // A power cut in the middle of a pull.
    drop(agent);
    let seed = std::env::var("LLAMABOX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_207u64);
    let fraction =
        0.1 + 0.8 * ((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64);
    eprintln!(
        "the power fails {:.0}% into the pull (seed {seed}; LLAMABOX_TEST_SEED picks another)",
        fraction * 100.0
    );
    let slow = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1200))
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let pull = slow
        .post(format!("{base}/api/pull"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "model": PULLED }))
        .send()
        .unwrap();
    let mut reached = 0;
    for line in std::io::BufRead::lines(std::io::BufReader::new(pull)) {
        let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        reached = line["completed"].as_u64().unwrap_or(reached);
        if reached as f64 >= fraction * PULLED_LENGTH as f64 {
            break;
        }
    }
    assert!(reached > 0 && reached < PULLED_LENGTH, "cut at {reached}");
    machine.kill();

    let mut machine = vm.boot_forwarding(&[(https_port, 443)]);
    wait_for_services(&mut machine);
    let tags = get_json(&slow, &base, &token, "/api/tags");
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["model"].as_str())
        .collect();
    assert_eq!(names.len(), 1, "only the factory model is whole: {names:?}");
    assert!(!names.contains(&PULLED), "{names:?}");

    let pulled = slow
        .post(format!("{base}/api/pull"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "model": PULLED, "stream": false }))
        .send()
        .unwrap();
    let status = pulled.status();
    let pulled: serde_json::Value = pulled.json().unwrap();
    assert_eq!(status, 200, "{pulled}");
    let models = get_json(&slow, &base, &token, "/v1/device/models");
    let resumed = models["pull"]["resumed-bytes"].as_u64().unwrap_or(0);
    eprintln!("after the power cut at {reached} bytes, the pull kept {resumed} bytes");
    assert!(resumed > 0, "the pull started over: {models}");
    let installed: Vec<&str> = models["installed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(installed, [PULLED], "{models}");
}

/// The services a phone's model requests go through.
fn wait_for_services(machine: &mut xtask::qemu::Machine) {
    for service in ["gateway", "inference", "update"] {
        machine
            .wait_for(
                &format!("llamabox-supervisor: {service}: ready"),
                READY_TIMEOUT,
            )
            .unwrap();
    }
}

/// `GET base + path` with the phone's token, as JSON.
fn get_json(
    http: &reqwest::blocking::Client,
    base: &str,
    token: &str,
    path: &str,
) -> serde_json::Value {
    http.get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// The web app's Models section (device tab), in Chromium against the box: a second
/// phone pairs, pulls the catalog's SmolLM2 with the progress bar moving, then deletes it.
fn web_app_pulls_and_deletes_a_model(http: &reqwest::blocking::Client, base: &str, token: &str) {
    let (chromium, chromedriver) = browser::find_browser()
        .expect("Chromium and chromedriver (cargo xtask setup installs them)");
    let opened = http
        .post(format!("{base}/v1/pairing/window"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert!(opened.status().is_success(), "{}", opened.status());
    let web =
        browser::Browser::start_with(&chromium, &chromedriver, &["--ignore-certificate-errors"]);
    web.goto(&format!("{base}/#pair={CODE}"));
    web.wait(
        "the pairing screen",
        "return document.querySelector('#pair-state').textContent.includes('Pairing is open');",
        READY_TIMEOUT,
    );
    web.click("#pair-button");
    web.wait(
        "pairing to finish",
        &web.visible("#pair-done"),
        READY_TIMEOUT,
    );
    web.click("#pair-continue");
    web.click(".tabs button[data-tab=device]");
    let pull = "smollm2:135m";
    let row = format!(
        "[...document.querySelectorAll('#models-available li')].find(li => li.querySelector('.who span')?.textContent === {pull:?})"
    );
    web.wait(
        "the catalog's models in the Models section",
        &format!("return !!({row});"),
        READY_TIMEOUT,
    );
    // Confirmations are answered yes; the progress bar is watched while the pull runs.
    web.exec(
        "window.confirm = () => true; window.seenProgress = 0;
         setInterval(() => { const b = document.querySelector('#models-progress');
           if (!b.hidden && b.value > 0) window.seenProgress = Math.max(window.seenProgress, b.value); }, 20);",
    );
    web.exec(&format!("({row}).querySelector('button').click();"));
    let state = web.wait(
        "the pull to finish",
        "const t = document.querySelector('#models-state').textContent;
         return (t.includes('is installed') || t.includes('failed')) && t;",
        READY_TIMEOUT,
    );
    assert!(state.as_str().unwrap().contains("is installed"), "{state}");
    let seen = web.exec("return window.seenProgress;");
    assert!(
        seen.as_f64().unwrap_or(0.0) > 0.0,
        "the progress bar never moved: {seen}"
    );
    let installed = format!(
        "[...document.querySelectorAll('#models-installed li')].find(li => li.querySelector('.who span')?.textContent === {pull:?})"
    );
    web.wait(
        "the pulled model among the installed ones",
        &format!("const r = {installed}; return !!r && !!r.querySelector('button.danger');"),
        READY_TIMEOUT,
    );
    // Made the default (loaded at start), then deleted: the built-in model is again.
    web.exec(&format!(
        "[...({installed}).querySelectorAll('button')].find(b => b.textContent === 'Make default').click();"
    ));
    web.wait(
        "the pulled model marked as the default",
        &format!("return ({installed}).querySelector('.since').textContent.includes('default');"),
        READY_TIMEOUT,
    );
    web.exec("document.querySelector('#models').scrollIntoView();");
    web.screenshot("models-pulled");
    web.exec(&format!(
        "({installed}).querySelector('button.danger').click();"
    ));
    web.wait(
        "the deleted model to leave the list",
        &format!("return !({installed}) && document.querySelector('#models-state').textContent.includes('Deleted');"),
        READY_TIMEOUT,
    );
    web.wait(
        "the built-in model as the default again",
        "return document.querySelector('#models-installed li .since').textContent.includes('built in · default');",
        READY_TIMEOUT,
    );
}
