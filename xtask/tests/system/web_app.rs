//! The web app end to end, in a real browser: Debian's headless Chromium, driven
//! through chromedriver's W3C WebDriver HTTP API with the blocking reqwest client the
//! other tests use (no WebDriver crate, no Python: a dozen JSON commands suffice).
//!
//! The real gateway serves the assembled app (`xtask::web::build`: the static files
//! plus pairing.wasm) and forwards to the real inference service on the model
//! `cargo xtask test` provides (`LLAMABOX_TEST_MODEL`). The browser, with a phone's
//! screen and user agent:
//! - sees a wrong code refused with the attempts left, then pairs with the right one
//!   (SPAKE2 in WebAssembly) and shows the certificate fingerprint;
//! - sends a chat message and watches the answer grow while it streams; stops one
//!   answer and regenerates it;
//! - reloads: still paired, the conversation still there, the page controlled by the
//!   service worker; the device screen lists this phone; the voice screen copes with
//!   no voice service;
//! - with the gateway stopped, reloads and still gets the app and its conversations
//!   (offline shell); then, with the real voice service (Whisper tiny.en) hearing a
//!   spoken question, shows its transcript and the LLM's streamed answer; after this
//!   phone is revoked, the next request returns it to the pairing screen.
//!
//! Screenshots (a 390×844 phone) go to `target/llamabox/screenshots/`, and to
//! `docs/screenshots/` with `LLAMABOX_UPDATE_SCREENSHOTS=1`.
//!
//! Without Chromium the test is skipped, unless `LLAMABOX_REQUIRE_BROWSER` is set.

use crate::common::browser::{client, Browser, Process};
use crate::common::services::{start_gateway, start_inference, wait_healthy, Services};
use crate::common::{free_port, service_binary};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use llamabox_pairing::phone_storage;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::project::Project;

const CODE: &str = "27182818";
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const WRONG_CODE: &str = "3141-5926";
const QUESTION: &str = "Write a Python function that adds two numbers.";
const SECOND_QUESTION: &str = "Tell me a long story about a llama who lives in a box.";
/// The real voice service (Whisper tiny.en, `LLAMABOX_TEST_WHISPER_MODEL_EN`) hearing
/// espeak-ng's question from a real-time WAV source and answering it with the real
/// inference service. The question comes three times, 8 s apart, so the page hears it
/// whenever its subscription starts.
fn voice_service(inference_url: &str) -> (Process, String, tempfile::TempDir) {
    use llamabox_speech as speech;
    let model = crate::common::services::test_model("LLAMABOX_TEST_WHISPER_MODEL_EN");
    let binary = service_binary("llamabox-voice");
    let question = speech::speak(speech::QUESTION, "en-us").expect("espeak-ng");
    let mut audio = Vec::new();
    for _ in 0..3 {
        audio.extend(vec![0.0; 8 * speech::RATE as usize]);
        audio.extend(&question);
    }
    audio.extend(vec![0.0; 2 * speech::RATE as usize]);
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("question.wav");
    speech::write_wav(&wav, &audio).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut process = Process(
        Command::new(&binary)
            .arg("serve")
            .arg("--model")
            .arg(&model)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--bus", "none"])
            .arg("--source")
            .arg(format!("wav:{}", wav.display()))
            .args(["--answer-url", inference_url])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting llamabox-voice"),
    );
    wait_healthy(&mut process, &url, "the voice service");
    (process, url, dir)
}

/// A script true once the conversation that asked `QUESTION` is on screen.
fn first_question_shown() -> String {
    format!(
        "const u = document.querySelector('#messages .msg.user .body');
         return !!u && u.textContent === {QUESTION:?};"
    )
}

/// The last assistant bubble: its text, state and how often it was repainted.
const LAST_ANSWER: &str = "const all = document.querySelectorAll('#messages .msg.assistant');
    const e = all[all.length - 1];
    return e ? {text: e.querySelector('.body').textContent, state: e.dataset.state,
                count: all.length} : null;";

/// Watches the last answer stream; returns the distinct texts seen while it streamed
/// and the final state.
fn watch_stream(browser: &Browser, stop_after: Option<usize>) -> (Vec<String>, Value) {
    browser.wait(
        "the answer to start streaming",
        "const all = document.querySelectorAll('#messages .msg.assistant');
         const e = all[all.length - 1];
         return !!e && e.dataset.state === 'streaming';",
        Duration::from_secs(30),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen: Vec<String> = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the answer never ended: {seen:?}"
        );
        let answer = browser.exec(LAST_ANSWER);
        if answer["state"] != "streaming" {
            return (seen, answer);
        }
        let text = answer["text"].as_str().unwrap_or_default().to_string();
        if !text.is_empty() && seen.last() != Some(&text) {
            seen.push(text);
        }
        if stop_after.is_some_and(|n| seen.len() >= n) {
            browser.click("#stop");
        }
        std::thread::sleep(Duration::from_millis(15));
    }
}

#[test]
fn the_web_app_pairs_chats_and_keeps_its_conversations_in_headless_chromium() {
    let Some((chromium, chromedriver)) = crate::common::browser::find_browser() else {
        return;
    };
    let model = crate::common::services::test_model("LLAMABOX_TEST_MODEL");

    let started = Instant::now();
    let web = xtask::web::build(&Project::locate()).expect("building the web app");
    eprintln!("web app assembled in {:?}", started.elapsed());

    let (_inference, inference_url) = start_inference(
        &model,
        &["--threads", "2", "--parallel", "2", "--ctx-size", "4096"],
    );

    let state = tempfile::tempdir().unwrap();
    let (http, https) = (free_port(), free_port());
    // At first nothing listens for the voice service: the voice screen must cope (502).
    let no_voice = format!("http://127.0.0.1:{}", free_port());
    let gateway = start_gateway(
        state.path(),
        &web,
        LOOPBACK,
        (http, https),
        CODE,
        &Services {
            inference: &inference_url,
            voice: &no_voice,
        },
    );
    let origin = format!("http://127.0.0.1:{http}");
    let pairing: Value = client()
        .get(format!("{origin}/v1/pairing"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let device = pairing["device"].as_str().unwrap().to_string();
    let fingerprint = pairing["fingerprint"].as_str().unwrap().to_uppercase();
    // What the app keeps for this box (api.js: per-box storage), sealed with the key
    // the box gives on plain HTTP (never over HTTPS: the pairing test checks that).
    let stored = |name: &str| {
        format!(
            "return localStorage.getItem('llamabox.{}.{name}');",
            fingerprint.to_lowercase()
        )
    };
    let storage_key: [u8; phone_storage::KEY_LEN] = BASE64
        .decode(
            pairing["storage_key"]
                .as_str()
                .expect("a storage key on loopback"),
        )
        .unwrap()
        .try_into()
        .expect("a 32-byte storage key");
    let opened = |browser: &Browser, name: &str| -> Value {
        let raw = browser.exec(&stored(name));
        let sealed = raw
            .as_str()
            .unwrap_or_else(|| panic!("no {name} kept: {raw}"));
        let sealed = sealed
            .strip_prefix("sealed:v1:")
            .unwrap_or_else(|| panic!("{name} kept unsealed: {sealed}"));
        let plain = phone_storage::open(&storage_key, &BASE64.decode(sealed).unwrap())
            .unwrap_or_else(|e| panic!("{name} does not open with the box's key: {e}"));
        serde_json::from_slice(&plain).unwrap()
    };

    let browser = Browser::start(&chromium, &chromedriver);
    browser.goto(&format!("{origin}/"));

    // Pairing: the box's name and state, a wrong code refused, then the right one.
    browser.wait(
        "the pairing screen",
        &format!(
            "return document.querySelector('#pair-device').textContent === {device:?}
                && document.querySelector('#pair-state').textContent.includes('Pairing is open');"
        ),
        Duration::from_secs(30),
    );
    assert_eq!(
        browser.exec("return document.querySelector('#pair-name').value;"),
        "Android phone"
    );
    browser.type_into("#pair-code", WRONG_CODE);
    browser.click("#pair-button");
    let error = browser.wait(
        "the wrong code's error",
        "const e = document.querySelector('#pair-error'); return !e.hidden && e.textContent;",
        Duration::from_secs(30),
    );
    assert_eq!(
        error,
        "Wrong setup code. 19 attempts left before pairing closes."
    );
    browser.wait(
        "the attempts left in the state line",
        "return document.querySelector('#pair-state').textContent.includes('19 attempts left');",
        Duration::from_secs(10),
    );
    browser.type_into("#pair-code", &format!("{} {}", &CODE[..4], &CODE[4..]));
    assert_eq!(
        browser.exec("return document.querySelector('#pair-code').value;"),
        "2718 2818"
    );
    browser.screenshot("pairing");
    browser.click("#pair-button");
    browser.wait(
        "pairing to finish",
        &browser.visible("#pair-done"),
        Duration::from_secs(30),
    );
    let shown = browser.text_of("#paired-fingerprint");
    assert_eq!(shown.replace(':', ""), fingerprint, "fingerprint shown");
    assert_eq!(browser.text_of("#paired-device"), device);
    let credential = opened(&browser, "credential");
    let token = credential["token"].as_str().unwrap().to_string();
    let phone_id = credential["phoneId"].as_str().unwrap().to_string();
    let phones: Value = client()
        .get(format!("{origin}/v1/phones"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(phones["you"], phone_id.as_str());
    assert_eq!(phones["phones"][0]["name"], "Android phone");
    browser.click("#pair-continue");

    // Chat: the model list from the box, settings, then a streamed answer.
    browser.wait(
        "the model picker",
        "const o = document.querySelector('#set-model option'); return !!o && o.value;",
        Duration::from_secs(30),
    );
    browser.click("#settings-toggle");
    browser.type_into("#set-max-tokens", "200");
    browser.type_into("#set-temperature", "0");
    browser.click("#settings-close");
    let settings = opened(&browser, "settings");
    assert_eq!(settings["max_tokens"], "200", "{settings}");
    assert_eq!(settings["temperature"], "0", "{settings}");

    browser.type_into("#prompt", QUESTION);
    browser.click("#send");
    let t0 = Instant::now();
    let (seen, done) = watch_stream(&browser, None);
    let answer = done["text"].as_str().unwrap().to_string();
    eprintln!(
        "answer streamed in {:?}: {} distinct texts seen while streaming; {answer:?}",
        t0.elapsed(),
        seen.len(),
    );
    assert_eq!(done["state"], "done", "{done}");
    assert!(!answer.trim().is_empty(), "an empty answer");
    assert!(
        seen.len() >= 3,
        "the answer did not grow while streaming: {seen:?}"
    );
    assert!(
        seen.windows(2).filter(|w| w[1].len() > w[0].len()).count() >= 2,
        "the answer did not grow: {seen:?}"
    );
    assert_eq!(
        browser.text_of("#messages .msg.user .body"),
        QUESTION,
        "the question is shown"
    );
    browser.exec("document.querySelector('#messages').scrollTop = 0;");
    browser.screenshot("chat");

    // Markdown from the model is rendered safely: no markup of its own gets through.
    let rendered = browser.exec_async(
        r#"import('/markdown.js').then((m) => {
            const html = m.renderMarkdown([
              '<img src=x onerror="window.pwned=1"> **bold** and `<b>code</b>`',
              '[click](javascript:alert(1)) [ok](https://example.org/?a=1&b="2")',
              '```html', '<script>window.pwned=1</script>', '```',
              '- item *one*', '- item two',
            ].join('\n'));
            const doc = new DOMParser().parseFromString(html, 'text/html');
            const tags = [...doc.body.querySelectorAll('*')].map((e) => e.tagName.toLowerCase());
            const attrs = [...doc.body.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => a.name));
            const hrefs = [...doc.body.querySelectorAll('a')].map((a) => a.getAttribute('href'));
            done({tags: [...new Set(tags)].sort(), attrs: [...new Set(attrs)].sort(), hrefs,
                  text: doc.body.textContent});
        });"#,
    );
    let allowed_tags = [
        "a", "br", "button", "code", "div", "em", "li", "p", "pre", "span", "strong", "ul",
    ];
    for tag in rendered["tags"].as_array().unwrap() {
        assert!(
            allowed_tags.contains(&tag.as_str().unwrap()),
            "markdown made a <{tag}>: {rendered}"
        );
    }
    for attr in rendered["attrs"].as_array().unwrap() {
        assert!(
            ["class", "href", "rel", "target", "type"].contains(&attr.as_str().unwrap()),
            "markdown made an attribute {attr}: {rendered}"
        );
    }
    assert_eq!(
        rendered["hrefs"],
        json!(["https://example.org/?a=1&b=\"2\""]),
        "{rendered}"
    );
    let text = rendered["text"].as_str().unwrap();
    assert!(
        text.contains("<img src=x onerror=") && text.contains("<script>window.pwned=1</script>")
    );

    // Stop, then regenerate the stopped answer.
    browser.type_into("#prompt", SECOND_QUESTION);
    browser.click("#send");
    let (seen, stopped) = watch_stream(&browser, Some(2));
    assert_eq!(stopped["state"], "stopped", "{stopped} after {seen:?}");
    assert!(browser.exec(&browser.visible("#send")) == true);
    browser.click("#messages .msg.assistant:last-child button.regenerate");
    let (_, regenerated) = watch_stream(&browser, None);
    assert_eq!(regenerated["state"], "done", "{regenerated}");
    assert_eq!(regenerated["count"], 2, "the stopped answer was replaced");

    // The offline shell is in place before the reload.
    let worker = browser.exec_async(
        "navigator.serviceWorker.ready.then((r) => done(r.active ? r.active.state : null));",
    );
    assert!(worker == "activated" || worker == "activating", "{worker}");

    // Reload: still paired, the conversation is still here, the worker controls the page.
    browser.refresh();
    browser.wait(
        "the chat after the reload",
        &format!(
            "return !!document.querySelector('#messages .msg.user')
                && document.querySelector('#messages .msg.user .body').textContent === {QUESTION:?};"
        ),
        Duration::from_secs(30),
    );
    assert_eq!(browser.exec(&browser.visible("#pairing")), false);
    assert_eq!(
        browser.exec("return document.querySelectorAll('#messages .msg.assistant')[0].querySelector('.body').textContent;"),
        answer.as_str()
    );
    assert_eq!(
        browser.exec("return !!navigator.serviceWorker.controller;"),
        true,
        "the service worker controls the page after a reload"
    );
    browser.click("#conv-toggle");
    let titles = browser.exec(
        "return [...document.querySelectorAll('#conv-list button.open')].map((b) => b.textContent);",
    );
    assert_eq!(titles, json!([QUESTION]));
    browser.click("#conv-list li.current button.open");
    assert_eq!(browser.exec(&browser.visible("#drawer")), false);

    // Device: this phone, marked; the device status's parts that a host lacks (boot
    // record, supervisor, data partition) say why they are missing.
    browser.click(".tabs button[data-tab=device]");
    browser.wait(
        "the phone list",
        "return [...document.querySelectorAll('#phone-list li')].some((li) =>
            li.textContent.includes('Android phone') && li.textContent.includes('this phone'));",
        Duration::from_secs(30),
    );
    browser.wait(
        "the device status",
        "return document.querySelector('#dev-status').textContent.includes('not available:');",
        Duration::from_secs(30),
    );
    assert_eq!(browser.text_of("#dev-name"), device);
    browser.screenshot("device");

    // Voice: the service is not running; the screen says so.
    browser.click(".tabs button[data-tab=voice]");
    browser.wait(
        "the voice screen's state",
        "return document.querySelector('#voice-state').textContent.includes('not running');",
        Duration::from_secs(30),
    );
    browser.click(".tabs button[data-tab=chat]");

    // Offline: the box is gone. The app opens from its cache, but what it keeps for the
    // box stays sealed without the box's key: nothing shown, nothing lost.
    drop(gateway);
    browser.refresh();
    let locked = browser.wait(
        "the app from the offline cache, its data sealed",
        "const e = document.querySelector('#pair-error');
         return !document.querySelector('#pairing').hidden && !e.hidden && e.textContent;",
        Duration::from_secs(30),
    );
    assert!(locked.as_str().unwrap().contains("connect"), "{locked}");
    assert_eq!(
        browser.exec("return document.querySelectorAll('#messages .msg').length;"),
        0
    );
    assert!(browser.exec(&stored("credential")).is_string());

    // A rogue gadget the phone is plugged into answers at the same origin with its own
    // page; its script reads the whole origin's storage (WebDriver runs this one there).
    // It finds neither the token nor a word of the conversation.
    let rogue = RoguePage::serve(http);
    browser.goto(&format!("{origin}/"));
    let everything = browser.exec("return JSON.stringify(Object.entries(localStorage));");
    let everything = everything.as_str().unwrap();
    assert!(everything.contains("sealed:v1:"), "{everything}");
    for secret in [token.as_str(), QUESTION, "Python"] {
        assert!(
            !everything.contains(secret),
            "a page at the same origin read {secret:?}: {everything}"
        );
    }
    drop(rogue);

    // The box is back, now with a voice service: the conversation opens again, and live
    // transcripts and answers arrive.
    let (_voice_process, voice, _voice_audio) = voice_service(&inference_url);
    let services = Services {
        inference: &inference_url,
        voice: &voice,
    };
    let gateway = start_gateway(state.path(), &web, LOOPBACK, (http, https), CODE, &services);
    browser.goto(&format!("{origin}/"));
    browser.wait(
        "the conversation, opened with the box's key",
        &first_question_shown(),
        Duration::from_secs(30),
    );
    browser.click(".tabs button[data-tab=voice]");
    browser.wait(
        "the transcript and its answer",
        "return [...document.querySelectorAll('#voice-list li')].some((li) =>
            li.querySelector('.heard').textContent.toLowerCase().includes('capital')
            && li.querySelector('.answer').textContent.trim().length > 0);",
        Duration::from_secs(300),
    );
    assert!(browser.text_of("#voice-state").contains("Listening"));
    browser.screenshot("voice");

    // Another box at the same origin (every box's USB link is http://10.55.0.1): the app
    // sends it neither this box's token nor shows it this box's conversations; pairing
    // with it leaves this box's credential alone, and the first box gets its own back.
    drop(gateway);
    let other_state = tempfile::tempdir().unwrap();
    let other = start_gateway(
        other_state.path(),
        &web,
        LOOPBACK,
        (http, https),
        CODE,
        &services,
    );
    let other_pairing: Value = client()
        .get(format!("{origin}/v1/pairing"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_ne!(
        other_pairing["fingerprint"]
            .as_str()
            .unwrap()
            .to_uppercase(),
        fingerprint,
        "two boxes, two certificates"
    );
    browser.goto(&format!("{origin}/"));
    browser.wait(
        "the other box's pairing screen",
        &browser.visible("#pair-code"),
        Duration::from_secs(30),
    );
    // Had the token been sent, the other box's 401 would read "no longer paired" and the
    // app would have forgotten this box's credential.
    assert_eq!(browser.text_of("#pair-error"), "", "no token was refused");
    assert!(browser.exec(&stored("credential")).is_string());
    browser.type_into("#pair-code", CODE);
    browser.click("#pair-button");
    browser.wait(
        "pairing with the other box",
        &browser.visible("#pair-done"),
        Duration::from_secs(30),
    );
    browser.click("#pair-continue");
    browser.wait(
        "the other box's empty chat",
        &browser.visible("#prompt"),
        Duration::from_secs(30),
    );
    assert_eq!(
        browser.exec("return document.querySelectorAll('#messages .msg').length;"),
        0,
        "the first box's conversation shown for another box"
    );
    drop(other);
    let _gateway = start_gateway(state.path(), &web, LOOPBACK, (http, https), CODE, &services);
    browser.goto(&format!("{origin}/"));
    browser.wait(
        "the first box's conversation, back with its box",
        &first_question_shown(),
        Duration::from_secs(30),
    );

    // Revoked: this phone is not paired any more; its next request leads to pairing.
    let revoked = client()
        .delete(format!("{origin}/v1/phones/{phone_id}"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(revoked.status(), reqwest::StatusCode::NO_CONTENT);
    browser.click(".tabs button[data-tab=device]");
    browser.wait(
        "the pairing screen after revocation",
        &browser.visible("#pair-code"),
        Duration::from_secs(30),
    );
    assert!(browser.text_of("#pair-error").contains("no longer paired"));
    assert!(browser.exec(&stored("credential")).is_null());
    eprintln!("web app test done in {:?}", started.elapsed());
}

/// A page that is not the box, at the box's origin: every request gets the same small
/// HTML page, as from a rogue USB gadget serving `http://10.55.0.1`.
struct RoguePage {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RoguePage {
    fn serve(port: u16) -> RoguePage {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener =
            std::net::TcpListener::bind((LOOPBACK, port)).expect("the rogue page's port");
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let page = "<!doctype html><title>not your box</title><p>hello";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            }
        });
        RoguePage {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RoguePage {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
