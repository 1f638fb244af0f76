//! The pitch of the voice, frame by frame (YIN, de Cheveigné & Kawahara 2002), and what
//! the end of an utterance does with it. A statement ends with the pitch falling below
//! where the speaker has been; a speaker who pauses to go on holds it level or lets it
//! rise. Whisper cannot tell those apart (it completes a fragment into a sentence), so
//! the end-pointer asks the audio. It runs only while someone speaks.

use std::collections::VecDeque;

/// The tracker works at half the stream's rate (pairs of samples averaged): a quarter of
/// the work, which matters where floating point is slow (QEMU's TCG), and the voice's
/// fundamental stays far below 4 kHz.
const RATE: f32 = 8_000.0;
/// Voices between 70 Hz and 400 Hz: lags of 20 to 114 samples.
const MIN_LAG: usize = (RATE / 400.0) as usize;
const MAX_LAG: usize = (RATE / 70.0) as usize;
/// Samples compared at each lag (16 ms).
const WINDOW: usize = 128;
/// Samples kept: a window plus the longest lag (and the one past it).
const SPAN: usize = WINDOW + MAX_LAG + 2;
/// YIN's threshold on the normalised difference: below it, a lag is a period.
const THRESHOLD: f32 = 0.15;

/// Tracks the pitch over a 16 kHz stream.
#[derive(Default)]
pub struct Tracker {
    recent: VecDeque<f32>,
}

impl Tracker {
    /// Feeds the next 16 kHz samples (an even count); returns the pitch (Hz) of the
    /// latest ones, if voiced. `listen` false only keeps the history (no work).
    pub fn push(&mut self, samples: &[f32], listen: bool) -> Option<f32> {
        self.recent.extend(
            samples
                .chunks(2)
                .map(|p| p.iter().sum::<f32>() / p.len() as f32),
        );
        while self.recent.len() > SPAN {
            self.recent.pop_front();
        }
        if !listen || self.recent.len() < SPAN {
            return None;
        }
        let x = self.recent.make_contiguous();
        yin(x)
    }
}

/// The pitch of `x` (at least [`SPAN`] samples) by YIN, or `None` when no lag repeats
/// the signal well enough (unvoiced, silence, noise).
fn yin(x: &[f32]) -> Option<f32> {
    let mut diff = [0.0f32; MAX_LAG + 2];
    let head = &x[..WINDOW];
    for (lag, d) in diff.iter_mut().enumerate().skip(1) {
        let shifted = &x[lag..lag + WINDOW];
        *d = head
            .iter()
            .zip(shifted)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
    }
    // Cumulative mean normalised difference.
    let mut running = 0.0;
    let mut normalised = [1.0f32; MAX_LAG + 2];
    for lag in 1..MAX_LAG + 2 {
        running += diff[lag];
        normalised[lag] = if running > 0.0 {
            diff[lag] * lag as f32 / running
        } else {
            1.0
        };
    }
    let mut lag = MIN_LAG;
    while lag <= MAX_LAG {
        if normalised[lag] < THRESHOLD {
            // The bottom of this dip, refined between samples by a parabola.
            while lag < MAX_LAG && normalised[lag + 1] < normalised[lag] {
                lag += 1;
            }
            let (a, b, c) = (normalised[lag - 1], normalised[lag], normalised[lag + 1]);
            let denominator = a - 2.0 * b + c;
            let shift = if denominator.abs() > f32::EPSILON {
                (0.5 * (a - c) / denominator).clamp(-0.5, 0.5)
            } else {
                0.0
            };
            return Some(RATE / (lag as f32 + shift));
        }
        lag += 1;
    }
    None
}

/// Semitones above 1 Hz: pitch on the scale people hear it.
pub fn semitones(hz: f32) -> f32 {
    12.0 * hz.log2()
}

/// Pitched frames that make an utterance's final pitch (~50 ms: the last syllable's end).
const FINAL_FRAMES: usize = 3;
/// Fewer pitched frames than this (~0.16 s of voice) are too few to tell.
const MIN_FRAMES: usize = 10;
/// How far (semitones) below the speaker's median the end must be to count as falling.
/// Measured on espeak-ng (docs/voice.md): statements end 4.3–4.7 below, a pause at a
/// comma 0.5 above to 0.2 below.
const FALL: f32 = 2.5;

/// Whether the pitches of an utterance's pitched frames (semitones, in order) end
/// falling: the median of the last [`FINAL_FRAMES`] clearly below the median of all.
/// Too few to tell: not falling.
pub fn ends_falling(pitches: &[f32]) -> bool {
    if pitches.len() < MIN_FRAMES {
        return false;
    }
    median(&pitches[pitches.len() - FINAL_FRAMES..]) < median(pitches) - FALL
}

fn median(values: &[f32]) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted[sorted.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16 kHz tone.
    fn tone(hz: f32, samples: usize) -> Vec<f32> {
        (0..samples)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                // A fundamental with two harmonics, like a voice.
                0.5 * (2.0 * std::f32::consts::PI * hz * t).sin()
                    + 0.3 * (4.0 * std::f32::consts::PI * hz * t).sin()
                    + 0.2 * (6.0 * std::f32::consts::PI * hz * t).sin()
            })
            .collect()
    }

    #[test]
    fn finds_the_pitch_of_a_voice_like_tone() {
        for hz in [90.0, 120.0, 200.0, 310.0] {
            let mut tracker = Tracker::default();
            let found = tracker.push(&tone(hz, 2 * SPAN), true).expect("no pitch");
            assert!((found - hz).abs() < hz * 0.02, "{hz} Hz heard as {found}");
        }
    }

    #[test]
    fn silence_and_noise_have_no_pitch() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.push(&[0.0; 2 * SPAN], true), None);
        let mut seed = 1u32;
        let noise: Vec<f32> = (0..2 * SPAN)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        assert_eq!(Tracker::default().push(&noise, true), None);
    }

    #[test]
    fn a_falling_end_is_told_from_a_level_or_rising_one() {
        let level: Vec<f32> = vec![semitones(150.0); 30];
        assert!(!ends_falling(&level));
        let mut falling = level.clone();
        falling.extend(vec![semitones(110.0); FINAL_FRAMES]);
        assert!(ends_falling(&falling));
        let mut rising = level.clone();
        rising.extend(vec![semitones(190.0); FINAL_FRAMES]);
        assert!(!ends_falling(&rising));
        assert!(
            !ends_falling(&falling[falling.len() - 8..]),
            "too short to tell"
        );
    }
}
