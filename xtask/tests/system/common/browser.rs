//! Headless Chromium driven through chromedriver's W3C WebDriver HTTP API, with a
//! phone's screen and user agent: the web app's tests (`web_app`, on the host, and
//! `inference`, against a box in QEMU).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};
use xtask::project::Project;

/// A phone's user agent: the app names the phone after it ("Android phone").
pub const USER_AGENT: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36";
/// W3C WebDriver's key for element references.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A child process, killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Chromium and chromedriver. Missing, they fail the test in CI (`CI` set: it installs
/// both) or when `LLAMABOX_REQUIRE_BROWSER` is set; otherwise the caller skips.
pub fn find_browser() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var_os("LLAMABOX_REQUIRE_BROWSER").is_some()
        || std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let chromium = ["/usr/lib/chromium/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_program(&["chromium", "chromium-browser"]));
    let chromedriver = find_program(&["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some((chromium, chromedriver)),
        _ => {
            assert!(
                !required,
                "LLAMABOX_REQUIRE_BROWSER is set but chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
            );
            eprintln!("SKIPPED: chromium and chromedriver are not installed (apt-get install chromium chromium-driver; LLAMABOX_REQUIRE_BROWSER=1 makes this a failure)");
            None
        }
    }
}

/// A WebDriver session in headless Chromium with a phone's screen.
pub struct Browser {
    http: Client,
    session: String,
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        Browser::start_with(chromium, chromedriver, &[])
    }

    /// With more Chromium arguments, e.g. `--ignore-certificate-errors` for a box's
    /// self-signed certificate.
    pub fn start_with(chromium: &Path, chromedriver: &Path, extra_args: &[&str]) -> Browser {
        let port = super::free_port();
        let driver = Process(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting chromedriver"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while client()
            .get(format!("{base}/status"))
            .send()
            .is_err_and(|_| Instant::now() < deadline)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--window-size=390,844",
        ]
        .into_iter()
        .chain(extra_args.iter().copied())
        .map(String::from)
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args,
                "mobileEmulation": {
                    "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 1.0, "touch": true},
                    "userAgent": USER_AGENT,
                },
            },
            "timeouts": {"script": 60000, "pageLoad": 60000, "implicit": 0},
        }}});
        let response: Value = client()
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .expect("creating a WebDriver session")
            .json()
            .unwrap();
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {response}"))
            .to_string();
        Browser {
            http: client(),
            session: format!("{base}/session/{session}"),
            _driver: driver,
            _profile: profile,
        }
    }

    pub fn command(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let response = request.send().map_err(|e| e.to_string())?;
        let ok = response.status().is_success();
        let value: Value = response.json().map_err(|e| e.to_string())?;
        if ok {
            Ok(value["value"].clone())
        } else {
            Err(value["value"].to_string())
        }
    }

    pub fn must(&self, method: &str, path: &str, body: Value) -> Value {
        self.command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", json!({ "url": url }));
    }

    pub fn refresh(&self) {
        self.must("POST", "/refresh", json!({}));
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub fn exec(&self, script: &str) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Runs `script` with a callback `done` for asynchronous results.
    pub fn exec_async(&self, script: &str) -> Value {
        let script = format!("const done = arguments[arguments.length - 1];\n{script}");
        self.must(
            "POST",
            "/execute/async",
            json!({"script": script, "args": []}),
        )
    }

    /// Polls `script` until it returns something truthy.
    pub fn wait(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.command(
                "POST",
                "/execute/sync",
                json!({"script": script, "args": []}),
            ) {
                Ok(v) if !(v.is_null() || v == false || v == "" || v == 0) => return v,
                Ok(v) => last = v,
                Err(e) => last = Value::String(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // What the page showed, so a timeout says more than "false".
        let page = self
            .command(
                "POST",
                "/execute/sync",
                json!({"script": "return location.href + '\\n' + document.body.innerText.slice(0, 2000);", "args": []}),
            )
            .unwrap_or_else(Value::String);
        panic!("timed out waiting for {what}; last: {last}; the page: {page}");
    }

    pub fn element(&self, css: &str) -> String {
        let found = self.must(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found[ELEMENT].as_str().unwrap().to_string()
    }

    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.must("POST", &format!("/element/{id}/click"), json!({}));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.must("POST", &format!("/element/{id}/clear"), json!({}));
        self.must(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    pub fn visible(&self, css: &str) -> String {
        format!("const e = document.querySelector({css:?}); return !!e && e.offsetParent !== null;")
    }

    pub fn text_of(&self, css: &str) -> String {
        self.exec(&format!(
            "const e = document.querySelector({css:?}); return e ? e.textContent : null;"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(
                self.must("GET", "/screenshot", Value::Null)
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let project = Project::locate();
        let mut dirs = vec![project.build_dir().join("screenshots")];
        if std::env::var_os("LLAMABOX_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
            dirs.push(project.root.join("docs").join("screenshots"));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
            eprintln!("screenshot: {}", dir.join(format!("{name}.png")).display());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.command("DELETE", "", Value::Null);
    }
}
