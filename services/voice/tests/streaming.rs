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

/// Runs the pipeline over `samples` (16 kHz) as fast as it can read them, and returns
/// its events.
fn listen(samples: Vec<f32>) -> Vec<Event> {
    listen_at_pace(samples, false)
}

/// Runs the pipeline over `samples`, at real-time pace if `realtime` (as a microphone
/// delivers them: what drafts say then moves the end of a turn, docs/voice.md).
fn listen_at_pace(samples: Vec<f32>, realtime: bool) -> Vec<Event> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let transcriber = Transcriber::load(&common::whisper_model(), threads, "en").unwrap();
    let events = Events::default();
    let mut received = events.subscribe();
    let pipeline = Pipeline::new(Arc::new(Mutex::new(transcriber)), events);
    pipeline
        .run(&mut WavSource::from_samples(
            samples,
            speech::RATE,
            realtime,
        ))
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

/// A speaker who pauses inside a sentence, for 0.6 s of digital silence between the
/// words, is heard as one utterance, not two questions: at real-time pace, so the
/// drafts' transcripts ("Set a timer for,") have their say (the end-pointer ends a turn
/// after 0.4 s when a draft reads as a finished sentence, 0.7 s when unsure, 1.2 s when
/// it trails off). Each pause is spoken as a speaker who holds the floor speaks it: with
/// the rising, unfinished intonation espeak-ng gives a comma, its silence stretched.
#[test]
fn a_pause_of_0_6_s_inside_a_sentence_does_not_split_it() {
    let rate = speech::RATE as usize;
    let sentences = [
        ("Set a timer for, ten minutes please.", ["timer", "minutes"]),
        ("What is the capital of, France?", ["capital", "france"]),
        (
            "Add milk and eggs and, bread to the shopping list.",
            ["milk", "list"],
        ),
    ];
    let mut audio = vec![0.0; rate / 2];
    for (text, _) in &sentences {
        audio.extend(paused(text, 0.6));
        audio.extend(vec![0.0; rate * 2]);
    }
    let texts = transcripts(&listen_at_pace(audio, true));
    assert_eq!(
        texts.len(),
        sentences.len(),
        "a sentence was split: {texts:?}"
    );
    for (text, (_, words)) in texts.iter().zip(&sentences) {
        let text = text.to_lowercase();
        assert!(
            words.iter().all(|w| text.contains(w)),
            "heard {text:?}, want {words:?}"
        );
    }
}

/// `text` spoken, with the silence espeak-ng leaves at its one comma made `seconds` long.
fn paused(text: &str, seconds: f32) -> Vec<f32> {
    let samples = speech::trimmed(&speech::speak(text, "en-us").unwrap());
    let pause = speech::longest_pause(&samples);
    assert!(
        pause.len() >= speech::RATE as usize / 20,
        "espeak-ng left no pause at the comma of {text:?}"
    );
    let mut audio = samples[..pause.start].to_vec();
    audio.extend(vec![0.0; (seconds * speech::RATE as f32) as usize]);
    audio.extend_from_slice(&samples[pause.end..]);
    audio
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
