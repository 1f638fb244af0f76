//! The release check (`services/update/src/release_check.rs`, docs/updates.md "Health
//! gate") against the real inference and voice services on the host, with the image's
//! own `check.toml`, factory models and golden clip. The QEMU boards skip its Whisper
//! part (minutes under TCG for a 3 s clip), so this is where that part is proved; the
//! QEMU update tests prove the gate around it (`update.rs`).

use std::process::{Command, Stdio};

use llamabox_update::release_check::{self, Config};
use xtask::project::Project;

use crate::common::browser::Process;
use crate::common::services::{start_inference, test_model, wait_healthy};
use crate::common::{free_port, service_binary};

/// The voice service with the product's Whisper model, no microphone (`--source none`):
/// it answers transcription uploads only.
fn start_voice() -> (Process, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut process = Process(
        Command::new(service_binary("llamabox-voice"))
            .arg("serve")
            .arg("--model")
            .arg(test_model("LLAMABOX_TEST_WHISPER_MODEL"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--bus", "none"])
            .args(["--source", "none"])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting llamabox-voice"),
    );
    wait_healthy(&mut process, &url, "the voice service");
    (process, url)
}

fn check(config: &Config) -> Result<String, String> {
    release_check::run(config, &mut |step| eprintln!("release check: {step}"))
}

#[test]
fn the_release_check_passes_the_factory_models_and_names_each_wrong_answer() {
    let project = Project::locate();
    let dir = project
        .root
        .join("overlays/update/usr/share/llamabox/release-check");
    let (_inference, inference_url) = start_inference(
        &test_model("LLAMABOX_TEST_MODEL"),
        &["--threads", "2", "--ctx-size", "2048"],
    );
    let (_voice, voice_url) = start_voice();
    let image_config = || {
        let mut config = Config::read(&dir.join("check.toml")).unwrap();
        config.llm.url = inference_url.clone();
        let voice = config.voice.as_mut().expect("the image checks Whisper");
        voice.url = voice_url.clone();
        voice.clip = dir.join(voice.clip.file_name().unwrap());
        config
    };

    // The image's check as shipped: both parts pass.
    let heard = check(&image_config()).unwrap();
    assert!(
        heard.contains("Paris") && heard.contains("Whisper heard"),
        "{heard}"
    );

    // Each part refuses, in words the update status shows, when its answer is wrong.
    let mut config = image_config();
    config.llm.answer = "Berlin".into();
    let refusal = check(&config).unwrap_err();
    assert!(
        refusal.contains("the language model answered the golden prompt wrongly")
            && refusal.contains("expected \"Berlin\""),
        "{refusal}"
    );
    let mut config = image_config();
    config.voice.as_mut().unwrap().words = "what is the capital of Spain".into();
    let refusal = check(&config).unwrap_err();
    assert!(
        refusal.contains("Whisper transcribed the golden clip wrongly")
            && refusal.contains("missing spain"),
        "{refusal}"
    );
}
