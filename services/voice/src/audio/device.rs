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
    /// capture, at 16 kHz mono if it offers that, else at its default configuration.
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
        let config = supported
            .iter()
            .filter(|c| {
                c.channels() == 1
                    && (c.min_sample_rate()..=c.max_sample_rate()).contains(&SAMPLE_RATE)
            })
            .find(|c| usable(c.sample_format()))
            .map(|c| c.with_sample_rate(SAMPLE_RATE))
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
        let stream = match format {
            cpal::SampleFormat::F32 => device.build_input_stream(
                stream_config,
                move |data: &[f32], _: &_| {
                    let _ = tx.try_send(Ok(downmix(data, channels)));
                },
                on_error,
                None,
            ),
            cpal::SampleFormat::I16 => device.build_input_stream(
                stream_config,
                move |data: &[i16], _: &_| {
                    let floats: Vec<f32> = data.iter().map(|s| *s as f32 / 32768.0).collect();
                    let _ = tx.try_send(Ok(downmix(&floats, channels)));
                },
                on_error,
                None,
            ),
            _ => device.build_input_stream(
                stream_config,
                move |data: &[i32], _: &_| {
                    let floats: Vec<f32> = data.iter().map(|s| *s as f32 / 2147483648.0).collect();
                    let _ = tx.try_send(Ok(downmix(&floats, channels)));
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
