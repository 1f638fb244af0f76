//! Pairing and authentication against the real gateway binary over real HTTP/TLS.
//!
//! The phone's side is the `llamabox-pairing` crate (the same code the web app runs as
//! WebAssembly). Each test starts its own gateway with a known setup code.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use llamabox_pairing::{PhoneHandshake, SetupCode};
use rand_core::OsRng;
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CODE: &str = "27182818";

struct Gateway {
    child: Child,
    http: u16,
    https: u16,
    _state: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Gateway {
        Gateway::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Gateway {
        let state = tempfile::tempdir().unwrap();
        Gateway::start_in(state, extra)
    }

    fn start_in(state: tempfile::TempDir, extra: &[&str]) -> Gateway {
        let device = state.path().join("provisioned.json");
        std::fs::write(
            &device,
            format!(r#"{{"id": "0123456789abcdef", "setup-code": "{CODE}"}}"#),
        )
        .unwrap();
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let (http, https) = (free_port(), free_port());
        // With the box's file-descriptor limit (PID 1's default), so running out of them
        // shows up here as it would on the box.
        let child = Command::new("/bin/sh")
            .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_llamabox-gateway"))
            .arg("serve")
            .arg("--state")
            .arg(state.path().join("state"))
            .arg("--device-file")
            .arg(&device)
            .arg("--web")
            .arg(web)
            .args(["--http", &format!("[::]:{http}")])
            .args(["--https", &format!("[::]:{https}")])
            // Unless a test names its own, nothing listens there: forwarded requests
            // show they passed authentication by failing with 502 instead of 401.
            .args(
                ["--inference", "--voice"]
                    .into_iter()
                    .filter(|flag| !extra.contains(flag))
                    .flat_map(|flag| {
                        [
                            flag.to_string(),
                            format!("http://127.0.0.1:{}", free_port()),
                        ]
                    }),
            )
            .arg("--no-mdns")
            // This boot's pairing limits; removing the folder is a reboot.
            .arg("--pairing-limits")
            .arg(state.path().join("run").join("pairing.json"))
            .args(extra)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let gateway = Gateway {
            child,
            http,
            https,
            _state: state,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while client().get(gateway.url("/health")).send().is_err() {
            assert!(Instant::now() < deadline, "the gateway did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        gateway
    }

    /// Stops the gateway and hands back its state folder (a "reboot").
    fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self._state, tempfile::tempdir().unwrap())
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    fn pairing(&self) -> Value {
        client()
            .get(self.url("/v1/pairing"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// What crossed the wire during one pairing, as a listener would record it.
#[derive(Debug, Default)]
struct Transcript {
    phone_message: Vec<u8>,
    session: String,
    box_message: Vec<u8>,
    phone_proof: Vec<u8>,
    box_proof: Vec<u8>,
    sealed: Vec<u8>,
    raw: Vec<u8>,
}

enum Outcome {
    Paired {
        token: String,
        phone_id: String,
        fingerprint: String,
    },
    Refused(StatusCode, Value),
}

/// One request and its answer, both recorded as a listener on the link sees them.
fn exchange(
    gateway: &Gateway,
    path: &str,
    request: Value,
    transcript: &mut Transcript,
) -> (StatusCode, Value) {
    let response = client()
        .post(gateway.url(path))
        .json(&request)
        .send()
        .unwrap();
    let status = response.status();
    let body: Value = response.json().unwrap();
    transcript.raw.extend(request.to_string().bytes());
    transcript.raw.extend(body.to_string().bytes());
    (status, body)
}

fn pair(gateway: &Gateway, code: &str, name: &str, transcript: &mut Transcript) -> Outcome {
    let (phone, message) = PhoneHandshake::start(&SetupCode::parse(code).unwrap(), &mut OsRng);
    let (status, body) = exchange(
        gateway,
        "/v1/pairing/start",
        json!({"name": name, "message": B64.encode(&message)}),
        transcript,
    );
    if status != StatusCode::OK {
        return Outcome::Refused(status, body);
    }
    let session = body["session"].as_str().unwrap().to_string();
    let box_message = B64.decode(body["message"].as_str().unwrap()).unwrap();
    let keys = phone.finish(&box_message).unwrap();
    let proof = keys.phone_proof(session.as_bytes());
    let (status, body) = exchange(
        gateway,
        "/v1/pairing/finish",
        json!({"session": session, "proof": B64.encode(&proof)}),
        transcript,
    );
    *transcript = Transcript {
        phone_message: message,
        session: session.clone(),
        box_message,
        phone_proof: proof,
        raw: std::mem::take(&mut transcript.raw),
        ..Transcript::default()
    };
    if status != StatusCode::OK {
        return Outcome::Refused(status, body);
    }
    transcript.box_proof = B64.decode(body["proof"].as_str().unwrap()).unwrap();
    transcript.sealed = B64.decode(body["sealed"].as_str().unwrap()).unwrap();
    keys.verify_box_proof(session.as_bytes(), &transcript.box_proof)
        .expect("the box proves it knows the code");
    let credential: Value =
        serde_json::from_slice(&keys.open(session.as_bytes(), &transcript.sealed).unwrap())
            .unwrap();
    Outcome::Paired {
        token: credential["token"].as_str().unwrap().to_string(),
        phone_id: credential["phone_id"].as_str().unwrap().to_string(),
        fingerprint: credential["fingerprint"].as_str().unwrap().to_string(),
    }
}

fn pair_ok(gateway: &Gateway, name: &str) -> (String, String, String) {
    match pair(gateway, CODE, name, &mut Transcript::default()) {
        Outcome::Paired {
            token,
            phone_id,
            fingerprint,
        } => (token, phone_id, fingerprint),
        Outcome::Refused(status, body) => panic!("pairing refused: {status} {body}"),
    }
}

/// `DELETE /v1/phones/{id}` with `token`'s credential.
fn revoke(gateway: &Gateway, token: &str, id: &str) -> Response {
    client()
        .delete(gateway.url(&format!("/v1/phones/{id}")))
        .bearer_auth(token)
        .send()
        .unwrap()
}

fn get(gateway: &Gateway, path: &str, token: Option<&str>) -> Response {
    let mut request = client().get(gateway.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().unwrap()
}

#[test]
fn the_right_code_pairs_and_the_credential_opens_protected_routes() {
    let gateway = Gateway::start();
    assert_eq!(
        get(&gateway, "/v1/phones", None).status(),
        StatusCode::UNAUTHORIZED
    );
    let (token, phone_id, fingerprint) = pair_ok(&gateway, "Test phone");

    let phones: Value = get(&gateway, "/v1/phones", Some(&token)).json().unwrap();
    assert_eq!(phones["you"], phone_id);
    // On a host the device status's parts are missing; each says why, none fails it.
    let status: Value = get(&gateway, "/v1/device/status", Some(&token))
        .json()
        .unwrap();
    assert_eq!(status["device"], "llamabox-0123");
    for part in ["release", "services", "storage", "update"] {
        assert!(
            status[part].is_object() || status[part].is_array(),
            "{part}: {status}"
        );
    }
    assert_eq!(phones["phones"][0]["name"], "Test phone");
    assert!(
        phones.to_string().find(&token).is_none(),
        "the token is never shown again"
    );

    // Forwarded routes pass authentication (the services are not running here: 502).
    for (path, message) in [("/v1/models", "/error/message"), ("/api/tags", "/error")] {
        let models = get(&gateway, path, Some(&token));
        assert_eq!(models.status(), StatusCode::BAD_GATEWAY, "{path}");
        let body: Value = models.json().unwrap();
        assert!(
            body.pointer(message)
                .and_then(Value::as_str)
                .unwrap()
                .contains("inference service"),
            "{path}: {body}"
        );
    }

    // The fingerprint sealed into the credential is the certificate HTTPS presents.
    let tls = Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .build()
        .unwrap();
    let response = tls
        .get(format!("https://127.0.0.1:{}/health", gateway.https))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .unwrap();
    let der = info.peer_certificate().unwrap();
    assert_eq!(hex::encode(Sha256::digest(der)), fingerprint);
    assert_eq!(gateway.pairing()["fingerprint"], fingerprint);

    // Over HTTPS the same token works.
    let phones = tls
        .get(format!("https://127.0.0.1:{}/v1/phones", gateway.https))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(phones.status(), StatusCode::OK);
}

#[test]
fn a_wrong_code_fails_and_says_how_many_attempts_are_left() {
    let gateway = Gateway::start();
    match pair(&gateway, "31415926", "Guesser", &mut Transcript::default()) {
        Outcome::Refused(status, body) => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error"]["type"], "wrong_code");
            assert_eq!(body["error"]["attempts_left"], 19);
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("wrong setup code"));
        }
        Outcome::Paired { .. } => panic!("a wrong code paired"),
    }
    assert_eq!(gateway.pairing()["failures"], 1);
    // The right code still pairs.
    pair_ok(&gateway, "Owner");
}

#[test]
fn twenty_wrong_codes_close_pairing_until_the_box_restarts() {
    let gateway = Gateway::start();
    for attempt in 1..=20 {
        let wrong = format!("{:08}", 31415926 + attempt);
        match pair(&gateway, &wrong, "Guesser", &mut Transcript::default()) {
            Outcome::Refused(status, body) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
                assert_eq!(body["error"]["attempts_left"], 20 - attempt, "{body}");
            }
            Outcome::Paired { .. } => panic!("a wrong code paired"),
        }
    }
    // The 21st attempt is refused before any proof is looked at, even with the right code.
    match pair(&gateway, CODE, "Owner", &mut Transcript::default()) {
        Outcome::Refused(status, body) => {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert_eq!(body["error"]["type"], "pairing_closed");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("until the box restarts"),
                "{body}"
            );
        }
        Outcome::Paired { .. } => panic!("paired after 20 failures"),
    }
    let status = gateway.pairing();
    assert_eq!(status["open"], false);
    assert_eq!(status["attempts_left"], 0);

    // Restarting the gateway (a crash, or a guesser who makes it crash) resets nothing.
    let state = gateway.stop();
    let gateway = Gateway::start_in(state, &[]);
    let status = gateway.pairing();
    assert_eq!(status["open"], false);
    assert_eq!(status["failures"], 20);
    assert_eq!(status["attempts_left"], 0);

    // Restarting the box (a fresh /run) opens a new window with a new budget.
    let state = gateway.stop();
    std::fs::remove_dir_all(state.path().join("run")).unwrap();
    let gateway = Gateway::start_in(state, &[]);
    assert_eq!(gateway.pairing()["open"], true);
    pair_ok(&gateway, "Owner");
}

#[test]
fn only_the_owner_revokes_other_phones_and_anyone_may_unpair_itself() {
    let gateway = Gateway::start();
    let (owner, owner_id, _) = pair_ok(&gateway, "Owner");
    let (second, second_id, _) = pair_ok(&gateway, "Second");
    let (third, third_id, _) = pair_ok(&gateway, "Third");
    let revoke = |token: &str, id: &str| revoke(&gateway, token, id);
    // A later phone (an app on it) can neither lock the owner out nor remove a peer.
    for (id, what) in [(&owner_id, "the owner"), (&third_id, "a peer")] {
        let refused = revoke(&second, id);
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "revoking {what}");
        let body: Value = refused.json().unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains("owner"),
            "{body}"
        );
    }
    assert_eq!(
        get(&gateway, "/v1/phones", Some(&owner)).status(),
        StatusCode::OK
    );
    // A phone may unpair itself; the owner may remove anyone.
    assert_eq!(revoke(&second, &second_id).status(), StatusCode::NO_CONTENT);
    assert_eq!(revoke(&owner, &third_id).status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&gateway, "/v1/phones", Some(&third)).status(),
        StatusCode::UNAUTHORIZED
    );
    // When the owner unpairs, the next-oldest phone owns the box.
    let (fourth, _, _) = pair_ok(&gateway, "Fourth");
    let (fifth, fifth_id, _) = pair_ok(&gateway, "Fifth");
    assert_eq!(revoke(&owner, &owner_id).status(), StatusCode::NO_CONTENT);
    assert_eq!(revoke(&fourth, &fifth_id).status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&gateway, "/v1/phones", Some(&fifth)).status(),
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn revoking_a_phone_ends_its_open_streams() {
    // An upstream that streams server-sent events until the connection closes, as the
    // voice service's live transcripts do.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", upstream.local_addr().unwrap());
    std::thread::spawn(move || {
        for connection in upstream.incoming() {
            let Ok(mut connection) = connection else {
                continue;
            };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n")
                    && connection.read(&mut byte).unwrap_or(0) == 1
                {
                    request.push(byte[0]);
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if connection.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let event = "data: still listening\n\n";
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                while connection.write_all(chunk.as_bytes()).is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    let gateway = Gateway::start_with(&["--voice", &url]);
    let (owner, _, _) = pair_ok(&gateway, "Owner");
    let (lost, lost_id, _) = pair_ok(&gateway, "Lost");
    let streaming = Client::builder().build().unwrap();
    let mut events = streaming
        .get(gateway.url("/v1/voice/events"))
        .bearer_auth(&lost)
        .send()
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut events, &mut first).unwrap();
    assert_eq!(&first, b"data: still list");

    let revoked = revoke(&gateway, &owner, &lost_id);
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    // The stream ends (the upstream would go on for ever).
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut events, &mut rest);
        let _ = done.send(rest.len());
    });
    ended
        .recv_timeout(Duration::from_secs(10))
        .expect("the revoked phone's stream was still open 10 s later");
}

#[test]
fn a_revoked_phone_is_refused() {
    let gateway = Gateway::start();
    let (mine, my_id, _) = pair_ok(&gateway, "Mine");
    let (lost, lost_id, _) = pair_ok(&gateway, "Lost");
    assert_eq!(
        get(&gateway, "/v1/phones", Some(&lost)).status(),
        StatusCode::OK
    );

    let revoked = revoke(&gateway, &mine, &lost_id);
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let refused = get(&gateway, "/v1/phones", Some(&lost));
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let again = revoke(&gateway, &mine, &lost_id);
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    let phones: Value = get(&gateway, "/v1/phones", Some(&mine)).json().unwrap();
    let ids: Vec<&str> = phones["phones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [my_id.as_str()]);

    // Revocation survives a restart (the list is on the data partition).
    let state = gateway.stop();
    let gateway = Gateway::start_in(state, &[]);
    assert_eq!(
        get(&gateway, "/v1/phones", Some(&lost)).status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&gateway, "/v1/phones", Some(&mine)).status(),
        StatusCode::OK
    );
}

/// Every protected route of docs/api.md, and paths that do not exist: 401 without a
/// credential and with a made-up one, before anything else is looked at.
#[test]
fn unpaired_requests_get_401_on_every_protected_route() {
    let gateway = Gateway::start();
    let routes = [
        ("GET", "/v1/phones"),
        ("DELETE", "/v1/phones/0123456789ab"),
        ("POST", "/v1/pairing/window"),
        ("GET", "/v1/device/status"),
        ("POST", "/v1/update/check"),
        ("POST", "/v1/update/apply"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/smollm2"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/audio/transcriptions"),
        ("GET", "/v1/voice/events"),
        ("GET", "/v1/voice/status"),
        ("GET", "/api/tags"),
        ("POST", "/api/chat"),
        ("DELETE", "/api/delete"),
        ("GET", "/v1/no/such/route"),
        ("PUT", "/v1/pairing/start/extra"),
    ];
    for token in [None, Some("not-a-token"), Some("")] {
        for (method, path) in routes {
            let mut request = client().request(method.parse().unwrap(), gateway.url(path));
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let response = request.body("{}").send().unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().unwrap();
            if path.starts_with("/api/") {
                // Ollama's shape on Ollama's routes.
                assert!(
                    body["error"].as_str().unwrap().contains("credential"),
                    "{method} {path}: {body}"
                );
            } else {
                assert_eq!(body["error"]["type"], "unauthorized", "{method} {path}");
            }
        }
    }
    // The public ones answer.
    assert_eq!(get(&gateway, "/health", None).status(), StatusCode::OK);
    assert_eq!(get(&gateway, "/v1/pairing", None).status(), StatusCode::OK);
    let app = get(&gateway, "/", None);
    assert_eq!(app.status(), StatusCode::OK);
    assert!(app.text().unwrap().contains("<html"));
}

#[test]
fn malformed_pairing_requests_get_clear_errors_and_cost_nothing() {
    let gateway = Gateway::start();
    let post = |path: &str, body: &str| {
        let response = client()
            .post(gateway.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = response.status();
        (status, response.json::<Value>().unwrap())
    };
    let (status, body) = post("/v1/pairing/start", "{");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request body"),
        "{body}"
    );
    let (status, body) = post("/v1/pairing/start", r#"{"name": "x", "message": "***"}"#);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("message: not base64"),
        "{body}"
    );
    let (status, body) = post("/v1/pairing/start", r#"{"name": "x", "message": "AAAA"}"#);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["message"], "malformed pairing message");
    let (status, body) = post(
        "/v1/pairing/finish",
        r#"{"session": "nope", "proof": "AAAA"}"#,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "unknown_session");
    assert_eq!(gateway.pairing()["failures"], 0);
}

/// A listener who records a whole successful pairing cannot test codes offline.
///
/// The attack: for each candidate code, play the phone's side against the recorded
/// box message and compare the resulting proof with the recorded one. SPAKE2 makes the
/// key depend on the phone's secret scalar, so even the right code does not reproduce
/// the proof: the candidates are indistinguishable. (Against a scheme that sends, say,
/// HMAC(code, nonce), the same loop finds the code: see the pairing crate's tests.)
#[test]
fn a_captured_pairing_exchange_does_not_reveal_the_code() {
    let gateway = Gateway::start();
    let mut transcript = Transcript::default();
    let Outcome::Paired { .. } = pair(&gateway, CODE, "Phone", &mut transcript) else {
        panic!("pairing failed");
    };
    // The code is not on the wire in any plain form.
    let raw = String::from_utf8_lossy(&transcript.raw).to_string();
    for form in [CODE.to_string(), "2718-2818".to_string(), B64.encode(CODE)] {
        assert!(!raw.contains(&form), "{form} appears in the exchange");
    }
    for blob in [
        &transcript.phone_message,
        &transcript.box_message,
        &transcript.phone_proof,
        &transcript.box_proof,
        &transcript.sealed,
    ] {
        assert!(!blob.windows(8).any(|w| w == CODE.as_bytes()));
        assert!(!blob
            .windows(4)
            .any(|w| w == 27182818u32.to_le_bytes() || w == 27182818u32.to_be_bytes()));
    }
    // The offline dictionary attack, with the right code among 2000 candidates.
    let mut candidates: Vec<String> = (0..2000u32)
        .map(|i| format!("{:08}", 50_000_000 + i * 7919))
        .collect();
    candidates.push(CODE.to_string());
    let mut matches = Vec::new();
    for candidate in &candidates {
        let Ok(code) = SetupCode::parse(candidate) else {
            continue;
        };
        let (phone, _) = PhoneHandshake::start(&code, &mut OsRng);
        let keys = phone.finish(&transcript.box_message).unwrap();
        if keys.phone_proof(transcript.session.as_bytes()) == transcript.phone_proof
            || keys
                .open(transcript.session.as_bytes(), &transcript.sealed)
                .is_ok()
            || keys
                .verify_box_proof(transcript.session.as_bytes(), &transcript.box_proof)
                .is_ok()
        {
            matches.push(candidate.clone());
        }
    }
    assert!(
        matches.is_empty(),
        "the recording confirms candidate codes {matches:?}"
    );
}

#[test]
fn the_window_closes_and_a_paired_phone_can_reopen_it() {
    let gateway = Gateway::start_with(&["--pairing-window", "8s"]);
    let (token, _, _) = pair_ok(&gateway, "Owner");
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway.pairing()["open"] == true {
        assert!(Instant::now() < deadline, "the window never closed");
        std::thread::sleep(Duration::from_millis(200));
    }
    match pair(&gateway, CODE, "Second", &mut Transcript::default()) {
        Outcome::Refused(status, body) => {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("window has ended"),
                "{body}"
            );
        }
        Outcome::Paired { .. } => panic!("paired with the window closed"),
    }
    // Restarting the gateway does not reopen it.
    let state = gateway.stop();
    let gateway = Gateway::start_in(state, &["--pairing-window", "8s"]);
    assert_eq!(gateway.pairing()["open"], false);
    let reopened = client()
        .post(gateway.url("/v1/pairing/window"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(reopened.status(), StatusCode::OK);
    pair_ok(&gateway, "Second");
}

/// Plain HTTP is for loopback and the phone link (usblink0) only: from another interface
/// of this machine the gateway redirects to HTTPS and answers nothing protected in the
/// clear.
#[test]
fn plain_http_on_a_lan_address_redirects_to_https() {
    let Some(lan) = lan_address_or_skip() else {
        return;
    };
    let gateway = Gateway::start();
    let no_redirects = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(format!("http://{lan}:{}/v1/pairing", gateway.http))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers()["location"],
        format!("https://{lan}/v1/pairing")
    );
    // The box's own name is kept in the redirect; another site's name is never echoed
    // (it is refused: see `a_request_naming_another_site_gets_421`).
    let device = gateway.pairing()["device"].as_str().unwrap().to_string();
    let response = no_redirects
        .get(format!("http://{lan}:{}/v1/pairing", gateway.http))
        .header("host", format!("{device}.local"))
        .send()
        .unwrap();
    assert_eq!(
        response.headers()["location"],
        format!("https://{device}.local/v1/pairing")
    );
    let response = no_redirects
        .get(format!("http://{lan}:{}/v1/pairing", gateway.http))
        .header("host", "evil.example")
        .send()
        .unwrap();
    assert!(response.headers().get("location").is_none());
    assert_eq!(response.headers()["x-frame-options"], "DENY");
}

/// The key the web app seals its storage with (every box's USB link is one origin, so
/// another page there must read only ciphertext) is given on plain HTTP, which is only
/// served on the USB link and loopback, and never over HTTPS, where a LAN neighbour
/// could ask for it. It is the box's: the same after a restart, another box's differs.
#[test]
fn the_phone_storage_key_is_given_on_the_usb_link_and_loopback_only() {
    let gateway = Gateway::start();
    let key = gateway.pairing()["storage_key"]
        .as_str()
        .expect("a storage key on loopback")
        .to_string();
    let bytes = B64.decode(&key).unwrap();
    assert_eq!(bytes.len(), llamabox_pairing::phone_storage::KEY_LEN);
    let response = client().get(gateway.url("/v1/pairing")).send().unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");

    let tls = Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let over_tls: Value = tls
        .get(format!("https://127.0.0.1:{}/v1/pairing", gateway.https))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(over_tls["fingerprint"].is_string(), "{over_tls}");
    assert!(over_tls.get("storage_key").is_none(), "{over_tls}");

    let state = gateway.stop();
    let again = Gateway::start_in(state, &[]);
    assert_eq!(again.pairing()["storage_key"], key.as_str());
    let other = Gateway::start();
    assert_ne!(other.pairing()["storage_key"], key.as_str());
}

/// DNS rebinding: a page on attacker.example re-points its name at the box, so the
/// browser sends `Host: attacker.example`. The box answers only to names that are its own.
#[test]
fn a_request_naming_another_site_gets_421() {
    let gateway = Gateway::start();
    let device = gateway.pairing()["device"].as_str().unwrap().to_string();
    let with_host = |host: &str| {
        client()
            .get(gateway.url("/v1/pairing"))
            .header("host", host)
            .send()
            .unwrap()
    };
    let refused = with_host("attacker.example");
    assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST);
    let body: Value = refused.json().unwrap();
    assert_eq!(body["error"]["type"], "misdirected_request");
    for host in [
        format!("{device}.local"),
        "localhost".into(),
        "127.0.0.1".into(),
    ] {
        assert_eq!(with_host(&host).status(), StatusCode::OK, "{host}");
    }
}

#[test]
fn every_answer_carries_the_security_headers() {
    let gateway = Gateway::start();
    for (path, status) in [
        ("/health", StatusCode::OK),
        ("/", StatusCode::OK),
        ("/v1/phones", StatusCode::UNAUTHORIZED),
    ] {
        let response = get(&gateway, path, None);
        assert_eq!(response.status(), status, "{path}");
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(
            headers["content-security-policy"], "frame-ancestors 'none'",
            "{path}"
        );
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
}

/// A cross-site form can POST `text/plain` without the browser asking the box first; a
/// pairing attempt must be JSON, so such a form cannot spend the box's pairing attempts.
#[test]
fn pairing_posts_that_are_not_json_get_415_and_cost_nothing() {
    let gateway = Gateway::start();
    let (_, start) = PhoneHandshake::start(&SetupCode::parse("31415926").unwrap(), &mut OsRng);
    let body = json!({"name": "Form", "message": B64.encode(start)}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        for path in ["/v1/pairing/start", "/v1/pairing/finish"] {
            let mut request = client().post(gateway.url(path)).body(body.clone());
            if let Some(t) = content_type {
                request = request.header("content-type", t);
            }
            let response = request.send().unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} {content_type:?}"
            );
            let error: Value = response.json().unwrap();
            assert_eq!(error["error"]["type"], "unsupported_media_type");
        }
    }
    assert_eq!(gateway.pairing()["failures"], 0);
    // JSON with a charset parameter is JSON.
    let response = client()
        .post(gateway.url("/v1/pairing/start"))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A LAN neighbour opens 1,100 idle connections, more than the box's 1,024 file
/// descriptors. Those over its per-address cap are closed at once, the rest once they
/// have sent no request for the header timeout; loopback answers throughout.
#[test]
fn a_flood_of_idle_connections_from_the_lan_does_not_lock_out_loopback() {
    let Some(lan) = lan_address_or_skip() else {
        return;
    };
    let gateway = Gateway::start_with(&["--header-timeout", "3s"]);
    let mut flood = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = std::net::TcpStream::connect((lan, gateway.http)) {
            s.set_nonblocking(true).unwrap();
            flood.push(s);
        }
    }
    assert!(
        flood.len() > 1024,
        "only {} connections opened",
        flood.len()
    );
    let health = client().get(gateway.url("/health")).send().unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let still_open = |flood: &[std::net::TcpStream]| {
        flood
            .iter()
            .filter(|s| {
                let mut byte = [0u8; 1];
                matches!(std::io::Read::read(&mut &**s, &mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while still_open(&flood) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} idle connections are still open",
            still_open(&flood)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = client().get(gateway.url("/health")).send().unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// This machine's LAN address; None (the test skips) when it has none, which fails
/// instead when `LLAMABOX_REQUIRE_LAN` is set (`.ci/run` sets it).
fn lan_address_or_skip() -> Option<std::net::IpAddr> {
    let lan = lan_address();
    if lan.is_none() {
        assert!(
            std::env::var_os("LLAMABOX_REQUIRE_LAN").is_none(),
            "LLAMABOX_REQUIRE_LAN is set but this machine has no non-loopback IPv4 address"
        );
        eprintln!("SKIPPED: no non-loopback IPv4 address here (LLAMABOX_REQUIRE_LAN=1 makes this a failure)");
    }
    lan
}

fn lan_address() -> Option<std::net::IpAddr> {
    // The address this machine would use to reach a public address (no packet is sent).
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
