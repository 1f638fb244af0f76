//! Test speech: sentences spoken by espeak-ng (Debian's `espeak-ng`), brought to the
//! 16 kHz mono the box listens at, and the word error rate to score a transcript. Used
//! by the voice service's and the gateway's tests, the QEMU audio tests and
//! `cargo xtask bench voice`; a crate of its own so service tests need not build xtask.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The box's capture rate.
pub const RATE: u32 = 16_000;

/// Fifteen sentences, about a minute spoken with pauses: everyday words, no numbers (a
/// transcript may write "three" or "3", and neither is wrong).
pub const SENTENCES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please turn off the lights in the kitchen before you go to bed.",
    "My grandmother baked fresh bread every morning when I was a child.",
    "The weather today will be cloudy with a chance of rain in the afternoon.",
    "Could you remind me to call the doctor tomorrow morning?",
    "We walked along the beach and watched the sun set over the ocean.",
    "The library closes early on Sundays, so return your books on Saturday.",
    "He forgot his umbrella at the train station again.",
    "Music can change the mood of a room in just a few seconds.",
    "The children planted tomatoes and carrots in the garden this spring.",
    "Our flight was delayed because of a storm over the mountains.",
    "Remember to water the plants while I am away on holiday.",
    "She learned to play the piano by listening to old records.",
    "The museum has a new exhibition about ancient Egypt.",
    "Good night, and thank you for listening to this short story.",
];

/// espeak-ng voices the sentences cycle through: American and British English, male and
/// female variants, so the test does not hear one voice only.
pub const VOICES: &[&str] = &["en-us", "en", "en-us+f3", "en-gb-x-rp", "en-us+f2"];

/// A spoken question for the end-to-end tests.
pub const QUESTION: &str = "What is the capital of France?";

/// `text` spoken by espeak-ng in `voice`, at [`RATE`].
pub fn speak(text: &str, voice: &str) -> Result<Vec<f32>> {
    // One file per call (tests speak from several threads), removed once read.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "llamabox-speech-{}-{call}-{:x}.wav",
        std::process::id(),
        fxhash(text, voice)
    ));
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&path)
        .arg(text)
        .status()
        .context("cannot run espeak-ng (apt-get install espeak-ng)")?;
    if !status.success() {
        bail!("espeak-ng failed ({status}) for voice {voice}");
    }
    let (samples, rate) = read_wav(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(resample(&samples, rate, RATE))
}

/// Sentences one after another, each in the next voice, with `pause` seconds of
/// silence before, between and after them.
pub fn clip(sentences: &[&str], pause: f32) -> Result<Vec<f32>> {
    let silence = vec![0.0; (pause * RATE as f32) as usize];
    let mut out = silence.clone();
    for (i, sentence) in sentences.iter().enumerate() {
        out.extend(speak(sentence, VOICES[i % VOICES.len()])?);
        out.extend_from_slice(&silence);
    }
    Ok(out)
}

/// Pink (1/f) noise at the given RMS level, reproducible from `seed` (Paul Kellet's filter).
pub fn pink_noise(seconds: f32, rms: f32, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    let mut white = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
    };
    let mut b = [0f32; 7];
    let mut out: Vec<f32> = (0..(seconds * RATE as f32) as usize)
        .map(|_| {
            let w = white();
            b[0] = 0.99886 * b[0] + w * 0.0555179;
            b[1] = 0.99332 * b[1] + w * 0.0750759;
            b[2] = 0.96900 * b[2] + w * 0.153852;
            b[3] = 0.86650 * b[3] + w * 0.3104856;
            b[4] = 0.55000 * b[4] + w * 0.5329522;
            b[5] = -0.7616 * b[5] - w * 0.0168980;
            let pink = b[..6].iter().sum::<f32>() + b[6] + w * 0.5362;
            b[6] = w * 0.115926;
            pink
        })
        .collect();
    let actual = (out.iter().map(|s| s * s).sum::<f32>() / out.len().max(1) as f32).sqrt();
    if actual > 0.0 {
        out.iter_mut().for_each(|s| *s *= rms / actual);
    }
    out
}

/// Word error rate of `hypothesis` against `reference`: (substitutions + deletions +
/// insertions) / reference words, after lowercasing and dropping punctuation.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| c.is_whitespace() || c == '-')
            .map(|w| {
                w.chars()
                    .filter(|c| c.is_alphanumeric() || *c == '\'')
                    .collect::<String>()
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let (r, h) = (words(reference), words(hypothesis));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut previous: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut row = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let substitution = previous[j] + usize::from(rw != hw);
            row[j + 1] = substitution.min(previous[j + 1] + 1).min(row[j] + 1);
        }
        previous = row;
    }
    previous[h.len()] as f64 / r.len() as f64
}

/// Writes 16 kHz mono samples as a 16-bit PCM WAV.
pub fn write_wav(path: &Path, samples: &[f32]) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer =
        hound::WavWriter::create(path, spec).with_context(|| format!("{}", path.display()))?;
    for s in samples {
        writer.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)?;
    }
    writer.finalize()?;
    Ok(())
}

fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let reader = hound::WavReader::open(path).with_context(|| format!("{}", path.display()))?;
    let spec = reader.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 {
        bail!("{}: expected 16-bit mono", path.display());
    }
    let samples = reader
        .into_samples::<i16>()
        .map(|s| s.map(|s| s as f32 / 32768.0))
        .collect::<Result<_, _>>()?;
    Ok((samples, spec.sample_rate))
}

/// Windowed-sinc resampling (Blackman window, cutoff just below the lower Nyquist):
/// good enough that Whisper hears espeak as espeak, without a resampler dependency.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to {
        return samples.to_vec();
    }
    const HALF: i64 = 32;
    let ratio = to as f64 / from as f64;
    let cutoff = 0.95 * ratio.min(1.0);
    let len = (samples.len() as f64 * ratio) as usize;
    (0..len)
        .map(|i| {
            let center = i as f64 / ratio;
            let first = center.floor() as i64 - HALF + 1;
            let mut sum = 0.0;
            for k in first..first + 2 * HALF {
                let Some(&s) = usize::try_from(k).ok().and_then(|k| samples.get(k)) else {
                    continue;
                };
                let x = k as f64 - center;
                let sinc = if x == 0.0 {
                    1.0
                } else {
                    (std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x) / cutoff
                };
                let t = (x / HALF as f64 + 1.0) / 2.0;
                let window = 0.42 - 0.5 * (std::f64::consts::TAU * t).cos()
                    + 0.08 * (2.0 * std::f64::consts::TAU * t).cos();
                sum += s as f64 * sinc * window * cutoff;
            }
            sum as f32
        })
        .collect()
}

fn fxhash(a: &str, b: &str) -> u64 {
    a.bytes()
        .chain([0])
        .chain(b.bytes())
        .fold(0xcbf29ce484222325, |h, c| {
            (h ^ c as u64).wrapping_mul(0x100000001b3)
        })
}

/// `samples` without the near-silence espeak-ng puts before and after the words, so a
/// pause put between two clips is exactly that long.
pub fn trimmed(samples: &[f32]) -> Vec<f32> {
    let loud = |s: &f32| s.abs() > 1e-3;
    let start = samples.iter().position(loud).unwrap_or(0);
    let end = samples.iter().rposition(loud).map_or(0, |i| i + 1);
    samples[start..end.max(start)].to_vec()
}

/// The longest run of near-silence in `samples`: in a trimmed clip of one sentence with
/// one comma, espeak-ng's pause at that comma (gaps between words are milliseconds).
pub fn longest_pause(samples: &[f32]) -> std::ops::Range<usize> {
    let quiet = |s: &f32| s.abs() <= 1e-3;
    let mut longest = 0..0;
    let mut i = 0;
    while i < samples.len() {
        if quiet(&samples[i]) {
            let start = i;
            while i < samples.len() && quiet(&samples[i]) {
                i += 1;
            }
            if i - start > longest.len() {
                longest = start..i;
            }
        } else {
            i += 1;
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_error_rate_counts_edits_over_reference_words() {
        assert_eq!(
            word_error_rate("Turn on the light.", "turn on the light"),
            0.0
        );
        assert_eq!(word_error_rate("turn on the light", "turn the lights"), 0.5);
        assert_eq!(word_error_rate("a b", "a b c d"), 1.0);
        assert_eq!(word_error_rate("", ""), 0.0);
    }

    #[test]
    fn pink_noise_has_the_asked_level_and_is_reproducible() {
        let a = pink_noise(1.0, 0.1, 7);
        let rms = (a.iter().map(|s| s * s).sum::<f32>() / a.len() as f32).sqrt();
        assert!((rms - 0.1).abs() < 1e-3);
        assert_eq!(a, pink_noise(1.0, 0.1, 7));
    }

    #[test]
    fn resampling_keeps_a_tone() {
        let tone: Vec<f32> = (0..22050)
            .map(|i| (i as f32 / 22050.0 * 440.0 * std::f32::consts::TAU).sin())
            .collect();
        let out = resample(&tone, 22050, 16000);
        assert_eq!(out.len(), 16000);
        let max_error = (100..15900)
            .map(|i| (out[i] - (i as f32 / 16000.0 * 440.0 * std::f32::consts::TAU).sin()).abs())
            .fold(0.0, f32::max);
        assert!(max_error < 0.02, "{max_error}");
    }
}
