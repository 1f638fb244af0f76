//! The test image's "microphone" in QEMU: the ALSA loopback card (snd-aloop, loaded by
//! stage 1 on the qemu-x86_64 board). A clip spoken on the host is written into the box
//! over the test agent, played into the loopback's playback side with `aplay`, and
//! recorded from its capture side with `arecord`, the way the voice service captures.
//! `voice` then does the same with the voice service listening.
//!
//! The voice test is the slowest of all (Whisper under TCG): here, at the front of
//! libtest's alphabetical order, it starts first and runs beside the others.

mod voice;

use std::time::{Duration, Instant};

use crate::common::audio::{self, Wav};
use crate::common::{files, TestMachine};
use xtask::qemu::Agent;

const TEST_IMAGE: &str = "llamabox-test";
const ANSWER: Duration = Duration::from_secs(60);
const DIR: &str = "/run/audio-test";
/// Where a test plays what the microphone hears, and where the box captures it.
const PLAYBACK: &str = "hw:Loopback,0,0";
const CAPTURE: &str = "hw:Loopback,1,0";
/// About 5.6 s of speech: a 180 KB clip at 16 kHz.
const SENTENCE: &str =
    "Hello Llama Box. What is the weather like today? Please tell me a short story about a llama.";

fn lines(agent: &mut Agent, command: &str) -> String {
    agent.command(command, ANSWER).unwrap().join("\n")
}

#[test]
fn a_clip_played_into_the_loopback_is_captured() {
    let mut vm = TestMachine::with_image("audio-loopback", TEST_IMAGE);
    let clip = audio::speak(SENTENCE, &vm.dir);
    let clip_wav = Wav::mono(clip.clone()).to_bytes();

    let booted = Instant::now();
    let mut machine = vm.boot();
    let mut agent = vm.agent(&mut machine);
    eprintln!(
        "test agent ready {:.1?} after QEMU started",
        booted.elapsed()
    );

    // The loopback card is there, with its device nodes in devtmpfs.
    let cards = lines(&mut agent, "cat /proc/asound/cards");
    assert!(cards.contains("[Loopback"), "{cards}");
    let devices = lines(&mut agent, "exec /usr/bin/arecord -l");
    assert!(devices.contains("card 0: Loopback"), "{devices}");

    let sent = Instant::now();
    files::write(&mut agent, &format!("{DIR}/clip.wav"), &clip_wav);
    let took = sent.elapsed();
    eprintln!(
        "wrote {} bytes over the agent in {took:.1?} ({:.0} KB/s)",
        clip_wav.len(),
        clip_wav.len() as f64 / 1000.0 / took.as_secs_f64()
    );

    // Record long enough for the clip plus the time aplay takes to start under TCG.
    let seconds = clip.len() as u32 / audio::RATE + 4;
    let reply = lines(
        &mut agent,
        &format!(
            "spawn /usr/bin/arecord -D {CAPTURE} -f S16_LE -r {} -c 1 -d {seconds} \
             {DIR}/captured.wav",
            audio::RATE
        ),
    );
    let pid = reply.strip_prefix("pid ").expect(&reply).to_string();
    // Play only once the capture runs, or the clip's start would be lost.
    let start = Instant::now();
    loop {
        let status = lines(&mut agent, "cat /proc/asound/Loopback/pcm1c/sub0/status");
        if status.contains("state: RUNNING") {
            break;
        }
        assert!(start.elapsed() < ANSWER, "arecord never started: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    lines(
        &mut agent,
        &format!("exec /usr/bin/aplay -D {PLAYBACK} {DIR}/clip.wav"),
    );
    lines(&mut agent, &format!("wait {pid} {}", seconds + 60));

    let fetched = Instant::now();
    let captured = files::read(&mut agent, &format!("{DIR}/captured.wav"));
    // Kept beside the console logs when the test fails.
    std::fs::write(vm.dir.join("captured.wav"), &captured).unwrap();
    std::fs::write(vm.dir.join("clip.wav"), &clip_wav).unwrap();
    let captured = Wav::parse(&captured);
    eprintln!(
        "read {} samples back in {:.1?}",
        captured.samples.len(),
        fetched.elapsed()
    );
    assert_eq!((captured.rate, captured.channels), (audio::RATE, 1));
    assert_eq!(captured.samples.len(), (seconds * audio::RATE) as usize);
    check_contains(&captured.samples, &clip);
}

/// The capture holds the clip: the loopback is digital, so before the clip there is
/// exact silence, and from its first sound on the capture follows the clip (bit for
/// bit, unless TCG was slow enough for an underrun), then silence again.
fn check_contains(captured: &[i16], clip: &[i16]) {
    let first = |s: &[i16]| s.iter().position(|&x| x != 0);
    let clip_first = first(clip).unwrap();
    let cap_first = first(captured).expect("the capture is all silence");
    assert!(cap_first >= clip_first, "sound before the clip started");
    let offset = cap_first - clip_first;
    let heard = &captured[offset..];
    assert!(
        heard.len() >= clip.len(),
        "the capture stopped {} ms before the clip ended",
        (clip.len() - heard.len()) as u32 * 1000 / audio::RATE
    );
    let heard = &heard[..clip.len()];

    let (clip_rms, heard_rms) = (audio::rms(clip), audio::rms(heard));
    let dot: f64 = clip
        .iter()
        .zip(heard)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum();
    let correlation = dot / (clip_rms * heard_rms * clip.len() as f64);
    let exact = clip.iter().zip(heard).filter(|(a, b)| a == b).count();
    eprintln!(
        "clip at {:.3} s of the capture: RMS {heard_rms:.0} (clip {clip_rms:.0}), \
         correlation {correlation:.4}, {exact} of {} samples identical",
        offset as f64 / audio::RATE as f64,
        clip.len()
    );
    assert!(
        heard_rms > clip_rms * 0.8,
        "too quiet: {heard_rms} vs {clip_rms}"
    );
    assert!(correlation > 0.95, "correlation {correlation}");
    // Nothing after the clip but silence, except for a few milliseconds: when the
    // playback stops, snd-aloop passes on what its timer (jiffies) advanced past the
    // last written frame, stale samples from the playback ring (7 ms seen).
    let after = &captured[offset + clip.len()..];
    let stale = after.iter().filter(|&&x| x != 0).count();
    assert!(
        stale < audio::RATE as usize / 50,
        "{stale} samples of sound after the clip"
    );
}
