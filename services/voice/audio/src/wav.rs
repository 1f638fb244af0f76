//! WAV files: decoded to mono `f32` (8/16/24/32-bit integer or 32-bit float PCM).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{downmix, AudioSource};

/// Sample rates a WAV file may have. The header is untrusted: a file that claims 1 Hz
/// would make the resampler to 16 kHz allocate 16,000 samples per sample it holds.
pub const RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;

/// Longest audio a WAV file may hold, in seconds.
pub const MAX_SECONDS: u64 = 30 * 60;

/// Decodes a whole WAV file: its mono samples and their rate.
pub fn decode_wav(reader: impl Read) -> Result<(Vec<f32>, u32)> {
    let reader = hound::WavReader::new(reader).context("not a WAV file")?;
    let spec = reader.spec();
    if spec.channels == 0 {
        bail!("the WAV header says 0 channels");
    }
    if !RATES.contains(&spec.sample_rate) {
        bail!(
            "the WAV header says {} Hz; the sample rate must be {} to {} Hz",
            spec.sample_rate,
            RATES.start(),
            RATES.end()
        );
    }
    let seconds = u64::from(reader.duration()) / u64::from(spec.sample_rate);
    if seconds > MAX_SECONDS {
        bail!("the WAV file holds {seconds} s of audio; at most {MAX_SECONDS} s are accepted");
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float if spec.bits_per_sample == 32 => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .context("the WAV data is cut short or corrupt")?,
        hound::SampleFormat::Int if (8..=32).contains(&spec.bits_per_sample) => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
                .context("the WAV data is cut short or corrupt")?
        }
        format => bail!(
            "unsupported WAV sample format: {}-bit {:?}",
            spec.bits_per_sample,
            format
        ),
    };
    Ok((
        downmix(&interleaved, spec.channels as usize),
        spec.sample_rate,
    ))
}

/// A WAV file as a stream, in 20 ms chunks; at real-time pace (as a microphone would
/// deliver it) or as fast as the reader takes it.
pub struct WavSource {
    samples: Vec<f32>,
    rate: u32,
    position: usize,
    realtime: Option<Instant>,
}

impl WavSource {
    pub fn open(path: &Path, realtime: bool) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        let (samples, rate) = decode_wav(std::io::BufReader::new(file))
            .with_context(|| format!("{}", path.display()))?;
        Ok(Self::from_samples(samples, rate, realtime))
    }

    pub fn from_samples(samples: Vec<f32>, rate: u32, realtime: bool) -> Self {
        Self {
            samples,
            rate,
            position: 0,
            realtime: realtime.then(Instant::now),
        }
    }
}

impl AudioSource for WavSource {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn read(&mut self) -> Result<Option<Vec<f32>>> {
        if self.position >= self.samples.len() {
            return Ok(None);
        }
        let chunk = (self.rate as usize / 50).max(1);
        let end = (self.position + chunk).min(self.samples.len());
        if let Some(start) = self.realtime {
            let due = start + Duration::from_secs_f64(end as f64 / self.rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let out = self.samples[self.position..end].to_vec();
        self.position = end;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav_bytes(spec: hound::WavSpec, samples: &[i16]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    #[test]
    fn stereo_16_bit_is_mixed_to_mono() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let (mono, rate) = decode_wav(&wav_bytes(spec, &[16384, 0, -16384, -16384])[..]).unwrap();
        assert_eq!(rate, 48_000);
        assert_eq!(mono, vec![0.25, -0.5]);
    }

    #[test]
    fn garbage_and_truncated_files_are_named_errors() {
        let err = decode_wav(&b"hello, not audio"[..]).unwrap_err();
        assert!(format!("{err:#}").contains("not a WAV file"), "{err:#}");

        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut bytes = wav_bytes(spec, &[1; 100]);
        bytes.truncate(bytes.len() - 51);
        let err = decode_wav(&bytes[..]).unwrap_err();
        assert!(format!("{err:#}").contains("cut short"), "{err:#}");
    }

    #[test]
    fn a_header_rate_out_of_range_is_refused() {
        // 400 kB of samples that claim 1 Hz: resampled to 16 kHz that would be gigabytes.
        for rate in [1, 7_999, 192_001] {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let err = decode_wav(&wav_bytes(spec, &[0; 200_000])[..]).unwrap_err();
            assert!(
                format!("{err:#}").contains(&format!("{rate} Hz")),
                "{err:#}"
            );
        }
    }

    #[test]
    fn more_than_half_an_hour_is_refused() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8_000,
            bits_per_sample: 8,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for _ in 0..8_000 * (MAX_SECONDS + 1) {
            w.write_sample(0i8).unwrap();
        }
        w.finalize().unwrap();
        let err = decode_wav(&out.into_inner()[..]).unwrap_err();
        assert!(format!("{err:#}").contains("at most 1800 s"), "{err:#}");
    }

    #[test]
    fn a_file_streams_in_20_ms_chunks_then_ends() {
        let mut source = WavSource::from_samples(vec![0.0; 16_000], 16_000, false);
        let mut total = 0;
        while let Some(chunk) = source.read().unwrap() {
            assert!(chunk.len() <= 320);
            total += chunk.len();
        }
        assert_eq!(total, 16_000);
    }
}
