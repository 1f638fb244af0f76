//! Where sound comes from: a capture device (the box's microphone, through ALSA) or a WAV
//! file (tests, benchmarks, uploads). Every source hands out mono `f32` samples at its own
//! rate; [`Resampler`] brings them to the 16 kHz Whisper and the voice detector expect.
//! [`upload`] reads what phones upload for a transcription.

mod device;
mod resample;
pub mod upload;
mod wav;

pub use device::DeviceSource;
pub use resample::{to_whisper_rate, Resampler};
pub use wav::{decode_wav, WavSource};

use anyhow::{bail, Result};

/// Whisper's and earshot's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// A stream of mono samples.
pub trait AudioSource: Send {
    /// Samples per second of what [`AudioSource::read`] returns.
    fn sample_rate(&self) -> u32;
    /// The next samples, waiting for them if needed; `None` once the source has ended
    /// (a file's end; a device never ends unless it fails).
    fn read(&mut self) -> Result<Option<Vec<f32>>>;
}

/// A source named on the command line: `device:<ALSA PCM>` (e.g. `device:default`,
/// `device:hw:Loopback,1,0`), `wav:<path>` (played at real-time pace) or `wav-fast:<path>`
/// (as fast as it can be read: tests and benchmarks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Device(String),
    Wav {
        path: std::path::PathBuf,
        realtime: bool,
    },
}

impl std::str::FromStr for SourceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some(("device", name)) if !name.is_empty() => Ok(Self::Device(name.into())),
            Some(("wav", path)) if !path.is_empty() => Ok(Self::Wav {
                path: path.into(),
                realtime: true,
            }),
            Some(("wav-fast", path)) if !path.is_empty() => Ok(Self::Wav {
                path: path.into(),
                realtime: false,
            }),
            _ => bail!(
                "`{s}` is not an audio source: expected device:<ALSA PCM>, wav:<file> or wav-fast:<file>"
            ),
        }
    }
}

impl SourceSpec {
    pub fn open(&self) -> Result<Box<dyn AudioSource>> {
        Ok(match self {
            Self::Device(name) => Box::new(DeviceSource::open(name)?),
            Self::Wav { path, realtime } => Box::new(WavSource::open(path, *realtime)?),
        })
    }
}

/// Averages interleaved frames of `channels` samples into one channel.
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            "device:hw:Loopback,1,0".parse::<SourceSpec>().unwrap(),
            SourceSpec::Device("hw:Loopback,1,0".into())
        );
        assert_eq!(
            "wav-fast:/tmp/a.wav".parse::<SourceSpec>().unwrap(),
            SourceSpec::Wav {
                path: "/tmp/a.wav".into(),
                realtime: false
            }
        );
        let err = "mic".parse::<SourceSpec>().unwrap_err().to_string();
        assert!(err.contains("device:<ALSA PCM>"), "{err}");
    }

    #[test]
    fn downmix_averages_channels() {
        assert_eq!(downmix(&[1.0, 0.0, 0.5, 0.5], 2), vec![0.5, 0.5]);
        assert_eq!(downmix(&[0.25], 1), vec![0.25]);
    }
}
