//! The always-on path on real speech: espeak-ng sentences through the pipeline the
//! service runs (16 kHz, earshot end-pointing, Whisper per utterance), scored by word
//! error rate; and the things that must produce nothing.

mod common;

use std::sync::{Arc, Mutex};

use llamabox_speech as speech;
use llamabox_voice::audio::WavSource;
use llamabox_voice::events::{Event, Events};
use llamabox_voice::pipeline::Pipeline;
use llamabox_voice::transcribe::Transcriber;

/// Runs the pipeline over `samples` (16 kHz) and returns its events.
fn listen(samples: Vec<f32>) -> Vec<Event> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let transcriber = Transcriber::load(&common::whisper_model(), threads, "en").unwrap();
    let events = Events::default();
    let mut received = events.subscribe();
    let pipeline = Pipeline::new(Arc::new(Mutex::new(transcriber)), events);
    pipeline
        .run(&mut WavSource::from_samples(samples, speech::RATE, false))
        .unwrap();
    std::iter::from_fn(|| received.try_recv().ok()).collect()
}

fn transcripts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Transcript { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_minute_of_speech_is_transcribed_utterance_by_utterance() {
    let clip = speech::clip(speech::SENTENCES, 0.9).unwrap();
    let seconds = clip.len() as f32 / speech::RATE as f32;
    assert!(
        (50.0..=80.0).contains(&seconds),
        "the clip is {seconds:.1} s"
    );
    let events = listen(clip);
    let texts = transcripts(&events);
    let hypothesis = texts.join(" ");
    let reference = speech::SENTENCES.join(" ");
    let wer = speech::word_error_rate(&reference, &hypothesis);
    eprintln!(
        "{} utterances, WER {:.1}% over {seconds:.1} s:\n{}",
        texts.len(),
        wer * 100.0,
        texts.join("\n")
    );
    // End-pointing, not fixed windows: one utterance per sentence (give or take one
    // that a long pause splits).
    assert!(
        (14..=17).contains(&texts.len()),
        "{} utterances for 15 sentences",
        texts.len()
    );
    assert!(wer <= 0.15, "word error rate {:.1}% > 15%", wer * 100.0);
    let started = events
        .iter()
        .filter(|e| matches!(e, Event::SpeechStarted { .. }))
        .count();
    assert_eq!(
        started,
        texts.len(),
        "every utterance was announced when it began"
    );
}

/// A speaker who pauses inside a sentence, for up to 0.6 s of digital silence between the
/// words (the end-pointer ends an utterance after 0.7 s without voice), is heard as one
/// utterance, not two questions.
#[test]
fn a_pause_of_0_6_s_inside_a_sentence_does_not_split_it() {
    let rate = speech::RATE as usize;
    let mut audio = vec![0.0; rate / 2];
    audio.extend(trimmed(speech::speak("Set a timer for", "en-us").unwrap()));
    audio.extend(vec![0.0; rate * 6 / 10]);
    audio.extend(trimmed(
        speech::speak("ten minutes, please.", "en-us").unwrap(),
    ));
    audio.extend(vec![0.0; rate * 2]);
    let texts = transcripts(&listen(audio));
    assert_eq!(texts.len(), 1, "the sentence was split: {texts:?}");
    let text = texts[0].to_lowercase();
    assert!(
        text.contains("timer") && text.contains("minutes"),
        "heard {text:?}"
    );
}

/// `samples` without the near-silence espeak-ng puts before and after the words, so a
/// pause between two clips is exactly the silence put there.
fn trimmed(samples: Vec<f32>) -> Vec<f32> {
    let loud = |s: &f32| s.abs() > 1e-3;
    let start = samples.iter().position(loud).unwrap_or(0);
    let end = samples.iter().rposition(loud).map_or(0, |i| i + 1);
    samples[start..end.max(start)].to_vec()
}

#[test]
fn silence_and_pink_noise_produce_no_transcript() {
    let mut audio = vec![0.0; 10 * speech::RATE as usize];
    // Steady noise as loud as a fan next to the microphone (-26 dBFS RMS), as loud as
    // the speech in the other test (-20 dBFS), and louder (-14 dBFS), each switched on
    // abruptly: earshot alone takes the louder ones for voice.
    audio.extend(speech::pink_noise(15.0, 0.05, 1));
    audio.extend(speech::pink_noise(15.0, 0.1, 2));
    audio.extend(speech::pink_noise(15.0, 0.2, 3));
    let events = listen(audio);
    let texts: Vec<String> = transcripts(&events)
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect();
    assert!(texts.is_empty(), "transcripts from no speech: {texts:?}");
}
