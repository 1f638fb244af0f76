//! The box's microphone: an ALSA capture device through cpal. The callback runs on
//! cpal's audio thread and only hands buffers over; all work happens on the reader's side.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use super::{downmix, AudioSource, SAMPLE_RATE};

/// How long a silent device may stay silent before the source reports it as failed:
/// a capture device delivers buffers continuously, even of silence.
const STALL: Duration = Duration::from_secs(10);

pub struct DeviceSource {
    _stream: cpal::Stream,
    buffers: mpsc::Receiver<Result<Vec<f32>, String>>,
    rate: u32,
    name: String,
}

impl DeviceSource {
    /// Opens the ALSA PCM `name` (`default`, `hw:1,0`, `plughw:Loopback,1,0`, …) for
    /// capture, at the first of [`RATES`] it offers, else at its default configuration.
    pub fn open(name: &str) -> Result<Self> {
        let host = cpal::default_host();
        let device = if name == "default" {
            host.default_input_device()
        } else {
            let id = cpal::DeviceId::new(host.id(), name);
            host.device_by_id(&id)
        }
        .ok_or_else(|| anyhow!("no capture device `{name}`"))?;
        let supported = device
            .supported_input_configs()
            .with_context(|| format!("capture device `{name}`"))?
            .collect::<Vec<_>>();
        let config = choose_config(&supported)
            .map_or_else(|| device.default_input_config(), Ok)
            .with_context(|| format!("capture device `{name}` has no usable configuration"))?;
        let format = config.sample_format();
        if !usable(format) {
            bail!("capture device `{name}` delivers {format:?} samples, which are not supported");
        }
        let channels = config.channels() as usize;
        let rate = config.sample_rate();
        let (tx, buffers) = mpsc::sync_channel(256);
        let errors = tx.clone();
        let on_error = move |e: cpal::Error| {
            // An overrun (the reader fell behind: a busy or emulated CPU) loses a few
            // milliseconds; cpal has already restarted the stream. Anything else is fatal.
            if e.kind() == cpal::ErrorKind::Xrun {
                eprintln!("capture overrun: some audio was lost");
            } else {
                let _ = errors.try_send(Err(e.to_string()));
            }
        };
        let stream_config = config.config();
        let mut queue = Queue {
            tx,
            dropping: false,
        };
        let stream = match format {
            cpal::SampleFormat::F32 => device.build_input_stream(
                stream_config,
                move |data: &[f32], _: &_| queue.hand_over(downmix(data, channels)),
                on_error,
                None,
            ),
            cpal::SampleFormat::I16 => device.build_input_stream(
                stream_config,
                move |data: &[i16], _: &_| {
                    let floats: Vec<f32> = data.iter().map(|s| *s as f32 / 32768.0).collect();
                    queue.hand_over(downmix(&floats, channels))
                },
                on_error,
                None,
            ),
            _ => device.build_input_stream(
                stream_config,
                move |data: &[i32], _: &_| {
                    let floats: Vec<f32> = data.iter().map(|s| *s as f32 / 2147483648.0).collect();
                    queue.hand_over(downmix(&floats, channels))
                },
                on_error,
                None,
            ),
        }
        .with_context(|| format!("cannot capture from `{name}`"))?;
        stream
            .play()
            .with_context(|| format!("cannot start capturing from `{name}`"))?;
        Ok(Self {
            _stream: stream,
            buffers,
            rate,
            name: name.into(),
        })
    }
}

/// The audio thread's end of the buffer queue.
struct Queue {
    tx: mpsc::SyncSender<Result<Vec<f32>, String>>,
    /// The reader is behind and buffers are being dropped (said once per episode).
    dropping: bool,
}

impl Queue {
    fn hand_over(&mut self, samples: Vec<f32>) {
        match self.tx.try_send(Ok(samples)) {
            Ok(()) => self.dropping = false,
            Err(mpsc::TrySendError::Full(_)) if !self.dropping => {
                self.dropping = true;
                eprintln!("capture queue full (the reader fell behind): audio is being dropped");
            }
            Err(_) => {}
        }
    }
}

/// Capture rates, best first: 48 kHz, the native rate of codecs, USB microphones and
/// ALSA's `dsnoop` (what `default` captures through), then 44.1 kHz; our band-limited
/// resampler takes them to 16 kHz. 16 kHz itself comes last: asked of ALSA's `plug`
/// (every `default` device), it is made by plug's linear converter, which folds the
/// highs into the speech band (through the QEMU loopback Whisper heard "Was the middle
/// friends?" for "What is the capital of France?").
const RATES: [u32; 3] = [48_000, 44_100, SAMPLE_RATE];

/// The configuration to capture with: a preferred rate, fewest channels.
fn choose_config(
    supported: &[cpal::SupportedStreamConfigRange],
) -> Option<cpal::SupportedStreamConfig> {
    RATES.iter().find_map(|&rate| {
        supported
            .iter()
            .filter(|c| usable(c.sample_format()))
            .filter(|c| (c.min_sample_rate()..=c.max_sample_rate()).contains(&rate))
            .min_by_key(|c| c.channels())
            .map(|c| c.with_sample_rate(rate))
    })
}

fn usable(format: cpal::SampleFormat) -> bool {
    matches!(
        format,
        cpal::SampleFormat::F32 | cpal::SampleFormat::I16 | cpal::SampleFormat::I32
    )
}

impl AudioSource for DeviceSource {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn read(&mut self) -> Result<Option<Vec<f32>>> {
        match self.buffers.recv_timeout(STALL) {
            Ok(Ok(samples)) => Ok(Some(samples)),
            Ok(Err(e)) => bail!("capture device `{}`: {e}", self.name),
            Err(_) => bail!(
                "capture device `{}` delivered nothing for {} s",
                self.name,
                STALL.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpal::{SampleFormat, SupportedBufferSize, SupportedStreamConfigRange};

    fn range(
        channels: u16,
        min: u32,
        max: u32,
        format: SampleFormat,
    ) -> SupportedStreamConfigRange {
        SupportedStreamConfigRange::new(channels, min, max, SupportedBufferSize::Unknown, format)
    }

    #[test]
    fn a_plug_device_is_captured_at_48_khz_not_converted_to_16_by_alsa() {
        // ALSA's `plug` offers every rate and channel count.
        let plug = [
            range(2, 4_000, 192_000, SampleFormat::I16),
            range(1, 4_000, 192_000, SampleFormat::I16),
        ];
        let chosen = choose_config(&plug).unwrap();
        assert_eq!((chosen.sample_rate(), chosen.channels()), (48_000, 1));
    }

    #[test]
    fn a_device_that_only_has_16_khz_or_only_unusable_formats() {
        let mic = [range(1, 16_000, 16_000, SampleFormat::I16)];
        assert_eq!(choose_config(&mic).unwrap().sample_rate(), 16_000);
        let cd = [range(2, 44_100, 44_100, SampleFormat::I32)];
        assert_eq!(choose_config(&cd).unwrap().sample_rate(), 44_100);
        let odd = [range(1, 8_000, 96_000, SampleFormat::U8)];
        assert!(choose_config(&odd).is_none());
    }
}
