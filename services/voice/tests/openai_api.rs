//! Runs `openai_api.py` (the official `openai` client) against the voice service on the
//! real model. `cargo xtask test` provides the model and a Python with `openai`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{required_env, Server};
use llamabox_speech as speech;

const SAID: &str = "Please set a timer for ten minutes and turn on the kitchen lights.";

#[test]
fn openai_client_transcribes_uploads() {
    let python = required_env("LLAMABOX_PYTHON");
    let dir = std::env::temp_dir().join(format!("llamabox-voice-openai-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let speech = speech::speak(SAID, "en-us").unwrap();
    let wav = dir.join("speech.wav");
    speech::write_wav(&wav, &speech).unwrap();

    // The same speech as a phone records it: 44.1 kHz stereo.
    let stereo_wav = dir.join("speech-stereo.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&stereo_wav, spec).unwrap();
    for s in speech::resample(&speech, speech::RATE, 44_100) {
        let s = (s.clamp(-1.0, 1.0) * 32767.0) as i16;
        writer.write_sample(s).unwrap();
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();

    let model = common::whisper_model();
    let model_name = model.file_stem().unwrap().to_str().unwrap();
    let server = Server::voice(&["--source", "none"]);
    let status = Command::new(python)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"))
        .args(["-m", "unittest", "-v", "openai_api"])
        .env("LLAMABOX_VOICE_URL", &server.url)
        .env("LLAMABOX_SPEECH_WAV", &wav)
        .env("LLAMABOX_SPEECH_STEREO_WAV", &stereo_wav)
        .env("LLAMABOX_SPEECH_TEXT", SAID)
        .env(
            "LLAMABOX_VOICE_MODEL",
            model_name.trim_start_matches("ggml-"),
        )
        .status()
        .expect("running python");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "openai_api.py failed (see above)");
}
