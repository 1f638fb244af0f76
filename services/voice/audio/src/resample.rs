//! Sample-rate conversion to 16 kHz with rubato's FFT resampler (band-limited, so a
//! 48 kHz microphone's highs do not fold back into the speech band).

use anyhow::{Context, Result};
use rubato::{FftFixedIn, Resampler as _};

use super::SAMPLE_RATE;

/// Converts a stream from one rate to 16 kHz, chunk by chunk.
pub struct Resampler {
    inner: Option<FftFixedIn<f32>>,
    pending: Vec<f32>,
    /// Output samples still to drop: the filter's delay, so output lines up with input.
    skip: usize,
    consumed: u64,
    produced: u64,
    rate: u32,
}

impl Resampler {
    pub fn new(rate: u32) -> Result<Self> {
        let inner = if rate == SAMPLE_RATE {
            None
        } else {
            Some(
                FftFixedIn::new(rate as usize, SAMPLE_RATE as usize, 1024, 2, 1)
                    .with_context(|| format!("cannot resample from {rate} Hz"))?,
            )
        };
        let skip = inner.as_ref().map_or(0, |r| r.output_delay());
        Ok(Self {
            inner,
            pending: Vec::new(),
            skip,
            consumed: 0,
            produced: 0,
            rate,
        })
    }

    /// Resamples what `input` completes; keeps the rest for the next call.
    pub fn push(&mut self, input: &[f32]) -> Vec<f32> {
        let Some(inner) = self.inner.as_mut() else {
            return input.to_vec();
        };
        self.pending.extend_from_slice(input);
        self.consumed += input.len() as u64;
        let mut out = Vec::new();
        while self.pending.len() >= inner.input_frames_next() {
            let n = inner.input_frames_next();
            let chunk = inner
                .process(&[&self.pending[..n]], None)
                .expect("chunk sized as the resampler asked");
            self.pending.drain(..n);
            out.extend_from_slice(&chunk[0]);
        }
        self.trim(out)
    }

    /// Flushes the rest: the output then has the input's duration.
    pub fn finish(&mut self) -> Vec<f32> {
        let Some(inner) = self.inner.as_mut() else {
            return Vec::new();
        };
        let expected = self.consumed * SAMPLE_RATE as u64 / self.rate as u64;
        let mut out = Vec::new();
        // Zeros push the tail (and the filter's delay) through.
        while self.produced + (out.len() as u64) < expected + self.skip as u64 {
            let n = inner.input_frames_next();
            let mut chunk = std::mem::take(&mut self.pending);
            chunk.resize(n, 0.0);
            let resampled = inner
                .process(&[&chunk[..]], None)
                .expect("chunk sized as the resampler asked");
            out.extend_from_slice(&resampled[0]);
        }
        let mut out = self.trim(out);
        out.truncate(expected.saturating_sub(self.produced - out.len() as u64) as usize);
        out
    }

    fn trim(&mut self, mut out: Vec<f32>) -> Vec<f32> {
        let drop = self.skip.min(out.len());
        out.drain(..drop);
        self.skip -= drop;
        self.produced += out.len() as u64;
        out
    }
}

/// A whole recording at 16 kHz.
pub fn to_whisper_rate(samples: &[f32], rate: u32) -> Result<Vec<f32>> {
    let mut resampler = Resampler::new(rate)?;
    let mut out = resampler.push(samples);
    out.extend(resampler.finish());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, seconds: f32) -> Vec<f32> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| (i as f32 / rate as f32 * hz * std::f32::consts::TAU).sin() * 0.5)
            .collect()
    }

    #[test]
    fn output_has_the_inputs_duration_and_keeps_the_tone() {
        for rate in [8_000, 22_050, 44_100, 48_000] {
            let input = tone(rate, 440.0, 1.3);
            let out = to_whisper_rate(&input, rate).unwrap();
            let expected = input.len() as u64 * 16_000 / rate as u64;
            assert_eq!(out.len() as u64, expected, "{rate} Hz");
            // The same tone at 16 kHz, aligned: compare the middle.
            let reference = tone(16_000, 440.0, 1.3);
            let error: f32 = (4000..16000)
                .map(|i| (out[i] - reference[i]).abs())
                .fold(0.0, f32::max);
            assert!(error < 0.05, "{rate} Hz: max error {error}");
        }
    }

    #[test]
    fn streaming_in_small_pieces_matches_the_whole() {
        let input = tone(48_000, 300.0, 0.7);
        let whole = to_whisper_rate(&input, 48_000).unwrap();
        let mut r = Resampler::new(48_000).unwrap();
        let mut pieces = Vec::new();
        for chunk in input.chunks(333) {
            pieces.extend(r.push(chunk));
        }
        pieces.extend(r.finish());
        assert_eq!(pieces.len(), whole.len());
        assert!(pieces.iter().zip(&whole).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn sixteen_khz_passes_through() {
        let input = tone(16_000, 440.0, 0.1);
        assert_eq!(to_whisper_rate(&input, 16_000).unwrap(), input);
    }
}
