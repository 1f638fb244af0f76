//! End to end on the host: a spoken question, heard by the voice service from a
//! real-time source, answered by the real inference service, the answer streamed to an
//! event subscriber (the phone's view).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, required_env, Server};
use llamabox_speech as speech;
use serde_json::Value;

#[test]
fn a_spoken_question_gets_a_streamed_answer() {
    let llm = required_env("LLAMABOX_TEST_MODEL");
    let inference_bin =
        Path::new(env!("CARGO_BIN_EXE_llamabox-voice")).with_file_name("llamabox-inference");
    assert!(
        inference_bin.exists(),
        "{} is missing: `cargo build -p llamabox-inference` (cargo xtask test builds it)",
        inference_bin.display()
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let inference = Server::start(
        &inference_bin,
        &[
            "--model",
            llm.to_str().unwrap(),
            "--listen",
            &listen,
            "--threads",
            "2",
        ],
        port,
    );

    // Silence first, so the subscription below is in place before the question.
    let mut audio = vec![0.0; 3 * speech::RATE as usize];
    audio.extend(speech::speak(speech::QUESTION, "en-us").unwrap());
    audio.extend(vec![0.0; 2 * speech::RATE as usize]);
    let wav = std::env::temp_dir().join(format!("llamabox-question-{}.wav", std::process::id()));
    speech::write_wav(&wav, &audio).unwrap();
    let source = format!("wav:{}", wav.display());
    let voice = Server::voice(&["--source", &source, "--answer-url", &inference.url]);
    let events = voice.events();

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen: Vec<Value> = Vec::new();
    let done = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no answer in time; events so far: {seen:#?}"));
        match event["type"].as_str() {
            Some("answer-done") => break event,
            Some("answer-failed") => panic!("the answer failed: {event}"),
            _ => seen.push(event),
        }
    };
    let _ = std::fs::remove_file(&wav);

    let transcript = seen
        .iter()
        .find(|e| e["type"] == "transcript")
        .expect("a transcript before the answer");
    let heard = transcript["text"].as_str().unwrap().to_lowercase();
    assert!(
        heard.contains("capital") && heard.contains("france"),
        "heard {heard:?}"
    );
    let deltas: Vec<&str> = seen
        .iter()
        .filter(|e| e["type"] == "answer-delta")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    let answer = done["text"].as_str().unwrap();
    eprintln!(
        "heard {heard:?}; answered in {} pieces: {answer:?}",
        deltas.len()
    );
    assert!(
        deltas.len() > 1,
        "the answer came in one piece, not streamed"
    );
    assert_eq!(deltas.concat(), answer);
    assert!(!answer.trim().is_empty());
    assert!(seen
        .iter()
        .all(|e| e["utterance"] == transcript["utterance"]));
}
