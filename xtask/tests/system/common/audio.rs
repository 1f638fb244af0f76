//! Speech clips for the audio tests: spoken on the host by espeak-ng, resampled to the
//! box's capture format (16 kHz, mono, signed 16-bit), and WAV files both ways.

use std::process::Command;

/// The capture format of the box's microphone (and of the loopback in QEMU).
pub const RATE: u32 = 16_000;

/// `text` spoken by espeak-ng (22050 Hz), resampled to `RATE`.
pub fn speak(text: &str, scratch: &std::path::Path) -> Vec<i16> {
    let path = scratch.join("espeak.wav");
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .expect("running espeak-ng (apt-get install espeak-ng)");
    assert!(status.success(), "espeak-ng failed: {status}");
    let wav = Wav::parse(&std::fs::read(&path).unwrap());
    assert_eq!(wav.channels, 1, "espeak-ng speaks mono");
    resample(&wav.samples, wav.rate, RATE)
}

/// Linear interpolation: plenty for speech that is then compared with itself.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let len = (samples.len() as u64 * to as u64 / from as u64) as usize;
    (0..len)
        .map(|i| {
            let pos = i as f64 * from as f64 / to as f64;
            let (k, frac) = (pos as usize, pos.fract());
            let a = samples[k] as f64;
            let b = *samples.get(k + 1).unwrap_or(&samples[k]) as f64;
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

/// Root mean square of the samples (0 for none).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// A PCM WAV file, signed 16-bit.
pub struct Wav {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
}

impl Wav {
    pub fn mono(samples: Vec<i16>) -> Wav {
        Wav {
            rate: RATE,
            channels: 1,
            samples,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let data = (self.samples.len() * 2) as u32;
        let mut out = Vec::with_capacity(44 + data as usize);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&self.channels.to_le_bytes());
        out.extend_from_slice(&self.rate.to_le_bytes());
        let block = self.channels * 2;
        out.extend_from_slice(&(self.rate * block as u32).to_le_bytes());
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data.to_le_bytes());
        for s in &self.samples {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    /// Parses a PCM s16 WAV. A data chunk whose size field is unset (0 or 0xffffffff,
    /// as a writer to a pipe leaves it) runs to the end of the file.
    pub fn parse(bytes: &[u8]) -> Wav {
        assert!(
            bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
            "not a WAV file ({} bytes)",
            bytes.len()
        );
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let (mut rate, mut channels, mut at) = (None, 0, 12);
        while at + 8 <= bytes.len() {
            let (id, size) = (&bytes[at..at + 4], u32_at(at + 4) as usize);
            let body = at + 8;
            match id {
                b"fmt " => {
                    assert_eq!(u16_at(body), 1, "not PCM");
                    assert_eq!(u16_at(body + 14), 16, "not 16-bit");
                    channels = u16_at(body + 2);
                    rate = Some(u32_at(body + 4));
                }
                b"data" => {
                    let end = match size {
                        0 | 0xffff_ffff => bytes.len(),
                        n => (body + n).min(bytes.len()),
                    };
                    let samples = bytes[body..end]
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    return Wav {
                        rate: rate.expect("a fmt chunk before the data"),
                        channels,
                        samples,
                    };
                }
                _ => {}
            }
            at = body + size + size % 2;
        }
        panic!("no data chunk in the WAV file");
    }
}
