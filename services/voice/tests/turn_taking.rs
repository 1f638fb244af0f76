//! When a turn ends: the end-pointer on real speech (espeak-ng), frame by frame, told
//! what its drafts read as the way the pipeline tells it. No Whisper and no clock: each
//! case knows exactly how much silence it has fed.

use llamabox_speech as speech;
use llamabox_voice::turn::Reading;
use llamabox_voice::vad::{EndpointConfig, Endpointer, Utterance, FRAME};

/// Milliseconds of audio in `samples` at 16 kHz.
fn ms(samples: usize) -> u32 {
    (samples * 1000 / speech::RATE as usize) as u32
}

/// Speech with silence before it (the end-pointer needs a noise floor first) and none
/// after: each case feeds its own.
fn spoken(text: &str) -> Vec<f32> {
    let mut audio = vec![0.0; speech::RATE as usize / 2];
    audio.extend(words(text));
    audio
}

/// `text` spoken, without the near-silence espeak-ng puts around the words.
fn words(text: &str) -> Vec<f32> {
    speech::trimmed(&speech::speak(text, "en-us").unwrap())
}

/// Feeds `audio` in frames; returns what came out, each with the milliseconds of
/// audio fed before it.
fn feed(endpointer: &mut Endpointer, audio: &[f32]) -> Vec<(u32, Utterance)> {
    let mut fed = 0;
    let mut out = Vec::new();
    for frame in audio.chunks(FRAME) {
        fed += frame.len();
        out.extend(endpointer.push(frame).into_iter().map(|u| (ms(fed), u)));
    }
    out
}

/// Feeds silence a frame at a time until an utterance comes out (or `limit_ms` passes):
/// the silence fed, and the utterance.
fn silence_until_utterance(endpointer: &mut Endpointer, limit_ms: u32) -> Option<(u32, Utterance)> {
    let frame = [0.0; FRAME];
    let mut fed = 0;
    while ms(fed) < limit_ms {
        fed += FRAME;
        if let Some(u) = endpointer.push(&frame).into_iter().next() {
            return Some((ms(fed), u));
        }
    }
    None
}

/// Speaks `text`, then feeds silence until the draft comes out: the draft, and the
/// silence fed so far (ms).
fn until_draft(endpointer: &mut Endpointer, text: &str) -> (Utterance, u32) {
    let out = feed(endpointer, &spoken(text));
    assert!(
        out.iter().all(|(_, u)| u.draft),
        "a final utterance while still speaking"
    );
    let (silence, draft) = silence_until_utterance(endpointer, 2000).expect("no draft");
    assert!(draft.draft, "the first thing after speech is not a draft");
    (draft, silence)
}

/// A statement: espeak-ng ends it with a falling pitch.
const COMMAND: &str =
    "Set a timer for the pasta and remind me to water the plants in the garden before dinner tonight.";

#[test]
fn a_draft_comes_at_the_first_silence() {
    let mut endpointer = Endpointer::new(EndpointConfig::default());
    let (_, silence) = until_draft(&mut endpointer, "Set a timer for ten minutes.");
    assert!(
        silence <= 100,
        "the draft came after {silence} ms of silence"
    );
}

#[test]
fn a_finished_statement_ends_the_turn_sooner() {
    let config = EndpointConfig::default();
    let mut endpointer = Endpointer::new(config.clone());
    let (draft, after_draft) = until_draft(&mut endpointer, COMMAND);
    // The transcript comes back before the short silence has passed: the end waits for it.
    assert!(endpointer
        .judge_draft(draft.samples.len(), Reading::Complete)
        .is_none());
    let (more, end) = silence_until_utterance(&mut endpointer, 2000).expect("no end");
    let silence = after_draft + more;
    assert!(!end.draft);
    assert_ended_after(silence, config.complete_silence_ms, "");
    assert_eq!(end.samples, draft.samples, "the final is not the draft");
}

#[test]
fn a_verdict_arriving_late_ends_the_turn_at_once() {
    let config = EndpointConfig::default();
    let mut endpointer = Endpointer::new(config.clone());
    let (draft, _) = until_draft(&mut endpointer, COMMAND);
    // Whisper took longer than the short silence: the turn ends when its verdict comes.
    let frame = [0.0; FRAME];
    for _ in 0..(config.complete_silence_ms / 16 + 2) {
        assert!(endpointer.push(&frame).is_empty());
    }
    let end = endpointer
        .judge_draft(draft.samples.len(), Reading::Complete)
        .expect("the turn did not end");
    assert_eq!(end.samples, draft.samples);
    assert!(!endpointer.speaking());
}

#[test]
fn a_sentence_that_trails_off_waits_longer() {
    let config = EndpointConfig::default();
    let mut endpointer = Endpointer::new(config.clone());
    let (draft, after_draft) = until_draft(&mut endpointer, "Set a timer for");
    assert!(endpointer
        .judge_draft(draft.samples.len(), Reading::Unfinished)
        .is_none());
    let (more, end) = silence_until_utterance(&mut endpointer, 3000).expect("no end");
    let silence = after_draft + more;
    assert_ended_after(silence, config.unfinished_silence_ms, "");
    assert_eq!(end.samples, draft.samples);
}

#[test]
fn without_a_verdict_the_usual_silence_ends_the_turn() {
    let config = EndpointConfig::default();
    let mut endpointer = Endpointer::new(config.clone());
    let (_, after_draft) = until_draft(&mut endpointer, "Set a timer");
    let (more, _) = silence_until_utterance(&mut endpointer, 3000).expect("no end");
    let silence = after_draft + more;
    assert_ended_after(silence, config.end_silence_ms, "");
}

#[test]
fn speech_resuming_withdraws_the_draft_and_its_verdict() {
    let config = EndpointConfig::default();
    let mut endpointer = Endpointer::new(config.clone());
    let withdrawn = endpointer.withdrawn();
    let (draft, _) = until_draft(&mut endpointer, "Set a timer for the pasta.");
    // Drafts at gaps between words were withdrawn as the words went on.
    let before = withdrawn.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(draft.withdrawn, before);
    // 0.3 s of pause, then the sentence goes on.
    let pause = vec![0.0; speech::RATE as usize * 3 / 10];
    assert!(feed(&mut endpointer, &pause).is_empty());
    let out = feed(
        &mut endpointer,
        &words("and remind me to water the plants."),
    );
    assert!(out.iter().all(|(_, u)| u.draft));
    let after = withdrawn.load(std::sync::atomic::Ordering::Relaxed);
    assert!(after > before, "the draft was not withdrawn");
    // A verdict on the old draft, arriving now, changes nothing.
    assert!(endpointer
        .judge_draft(draft.samples.len(), Reading::Complete)
        .is_none());
    let (_, second) = silence_until_utterance(&mut endpointer, 2000).expect("no second draft");
    assert!(second.draft);
    assert_eq!(second.withdrawn, after);
    assert!(second.samples.len() > draft.samples.len() + pause.len());
    let (more, end) = silence_until_utterance(&mut endpointer, 2000).expect("no end");
    assert!(!end.draft);
    assert_eq!(end.samples, second.samples, "one utterance, both parts");
    assert!(more > 500, "ended {more} ms after the second draft");
}

/// Whisper reads "Set a timer for", cut at a pause, as "Set a timer for it." — a finished
/// sentence. The voice says otherwise: a speaker who pauses to go on does not let the
/// pitch fall (espeak-ng's comma: level, then rising), so the usual silence decides.
#[test]
fn a_fragment_that_reads_finished_but_does_not_fall_waits_the_usual_silence() {
    for text in [
        "Set a timer for, ten minutes please.",
        "What is the capital of, France?",
        "Add milk and eggs and, bread to the shopping list.",
    ] {
        let config = EndpointConfig::default();
        let mut endpointer = Endpointer::new(config.clone());
        let mut audio = vec![0.0; speech::RATE as usize / 2];
        audio.extend(before_the_comma(text));
        let out = feed(&mut endpointer, &audio);
        assert!(out.iter().all(|(_, u)| u.draft));
        let (after_draft, draft) =
            silence_until_utterance(&mut endpointer, 2000).expect("no draft");
        assert!(draft.draft);
        assert!(endpointer
            .judge_draft(draft.samples.len(), Reading::Complete)
            .is_none());
        let (more, _) = silence_until_utterance(&mut endpointer, 2000).expect("no end");
        let silence = after_draft + more;
        assert_ended_after(silence, config.end_silence_ms, text);
    }
}

/// A question rises at its end: it waits the usual silence too.
#[test]
fn a_question_that_rises_waits_the_usual_silence() {
    let config = EndpointConfig::default();
    let mut endpointer = Endpointer::new(config.clone());
    let (draft, after_draft) = until_draft(&mut endpointer, "What is the capital of France?");
    assert!(endpointer
        .judge_draft(draft.samples.len(), Reading::Complete)
        .is_none());
    let (more, _) = silence_until_utterance(&mut endpointer, 2000).expect("no end");
    let silence = after_draft + more;
    assert_ended_after(silence, config.end_silence_ms, "");
}

/// The words of `text` up to its one comma (where espeak-ng pauses, with the pitch of
/// a speaker who goes on).
fn before_the_comma(text: &str) -> Vec<f32> {
    let samples = words(text);
    let pause = speech::longest_pause(&samples);
    assert!(
        pause.len() >= speech::RATE as usize / 20,
        "espeak-ng left no pause at the comma of {text:?}"
    );
    samples[..pause.start].to_vec()
}

/// The turn ended after `silence` ms, within two frames of `want`.
fn assert_ended_after(silence: u32, want: u32, what: &str) {
    assert!(
        silence.abs_diff(want) <= 32,
        "{what}: ended after {silence} ms of silence, want {want} ms"
    );
}
