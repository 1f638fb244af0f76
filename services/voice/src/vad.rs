//! End-pointing: earshot's voice-activity scores on 16 ms frames turn a continuous
//! stream into utterances. Timing follows Home Assistant's Assist pipeline: speech starts
//! after 0.3 s of voice, an utterance ends after 0.7 s of silence, and none runs past 15 s.
//! What was said moves the end: at the first silence the utterance is handed out as a
//! draft, and how its transcript reads ([`Reading`]) ends the turn sooner (a finished
//! sentence) or later (a trailing "and").

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use earshot::Detector;

use crate::pitch::{self, Tracker};
use crate::turn::Reading;

/// earshot's frame: 256 samples, 16 ms at 16 kHz.
pub const FRAME: usize = 256;
const FRAME_MS: u32 = 16;

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// A frame scoring at least this is voice.
    pub threshold: f32,
    /// Voice needed before an utterance starts (filters clicks and coughs): four in five
    /// frames of this span.
    pub start_ms: u32,
    /// Silence that ends an utterance when its draft's transcript does not say otherwise.
    pub end_silence_ms: u32,
    /// Silence that ends an utterance whose draft reads as a finished sentence and
    /// whose voice ended falling, as a statement does (the end of a question or a
    /// pause to go on does not: then `end_silence_ms`).
    pub complete_silence_ms: u32,
    /// Silence that ends an utterance whose draft trails off ("…and", "um").
    pub unfinished_silence_ms: u32,
    /// Longest utterance; a longer one is cut and the rest starts a new one.
    pub max_ms: u32,
    /// Silence after which a draft of the utterance is handed out, so transcription can
    /// start while the end is still being confirmed, and what it says can move the end
    /// (0: no drafts).
    pub draft_after_ms: u32,
    /// Trailing silence kept on an utterance (a little room after the last word). Also
    /// the earliest point for a draft: a draft's samples must be the final ones.
    pub keep_trailing_ms: u32,
    /// Audio kept from before the start was detected, so first syllables are not lost.
    pub pre_roll_ms: u32,
    /// Voice must stand this far (dB) above the noise floor: the neural detector takes
    /// loud steady noise (a fan, a hum) for voice; speech rises and falls above it.
    pub above_floor_db: f32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            start_ms: 300,
            end_silence_ms: 700,
            // Longer than the gaps between words, about as long as Whisper base takes
            // with a 5 s command on 2 cores (docs/perf.md). Only when the pitch fell too:
            // Whisper completes fragments ("Set a timer for" → "Set a timer for it.").
            complete_silence_ms: 400,
            unfinished_silence_ms: 1200,
            max_ms: 15_000,
            draft_after_ms: FAST_DRAFT_MS,
            keep_trailing_ms: FAST_DRAFT_MS,
            pre_roll_ms: 300,
            above_floor_db: 6.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Silence,
    /// Reached `max_ms`.
    Timeout,
    /// The source ended mid-utterance.
    EndOfStream,
}

#[derive(Debug, Clone)]
pub struct Utterance {
    /// 16 kHz mono samples, with the pre-roll and a little of the trailing silence.
    pub samples: Vec<f32>,
    /// Position of the first sample in the stream, in samples since the stream began.
    pub start: u64,
    pub end_reason: EndReason,
    /// A draft: the utterance as it stands after `draft_after_ms` of silence. If the
    /// silence lasts, the final utterance has exactly these samples; if speech resumes,
    /// a later draft or the final one replaces it.
    pub draft: bool,
    /// Drafts withdrawn before this one was handed out ([`Endpointer::withdrawn`]):
    /// while the count is unchanged, this draft may still become the final utterance.
    pub withdrawn: u64,
}

impl Utterance {
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / 16_000
    }
}

pub struct Endpointer {
    config: EndpointConfig,
    detector: Box<Detector>,
    /// Samples not yet making a whole frame.
    partial: Vec<f32>,
    /// Frames seen so far.
    frames: u64,
    /// Energies (dB) of the last [`FLOOR_FRAMES`] frames: their minimum is the noise floor.
    energies: VecDeque<f32>,
    state: State,
    /// Drafts that speech resuming made stale, shared with whoever transcribes them (so
    /// a stale draft's transcription can stop early).
    withdrawn: Arc<AtomicU64>,
    pitch: Tracker,
}

/// The noise floor is the quietest frame of the last second.
const FLOOR_FRAMES: usize = 62;
/// Digital silence counts as this quiet.
const SILENCE_DB: f32 = -90.0;

enum State {
    Idle {
        /// The last frames (pre-roll plus the start window), oldest first.
        recent: VecDeque<Vec<f32>>,
        /// Voice decisions over the start window, oldest first.
        window: VecDeque<bool>,
    },
    Speaking {
        samples: Vec<f32>,
        start: u64,
        /// Unvoiced frames since the last voiced one.
        silent: u32,
        /// Each frame's energy (dB), to judge the utterance against the floor after it.
        energies: Vec<f32>,
        /// The draft handed out in this silence (its length in samples), if any.
        draft: Option<usize>,
        /// The pitch (semitones) of each voiced frame with one.
        pitches: Vec<f32>,
        /// Whether the voice ended falling when the draft was handed out.
        falling: bool,
        /// Silent frames that end this utterance: set by what the draft says.
        end_after: u32,
    },
}

/// Drafts at the first silence: worth it where Whisper has a core of its own and a
/// draft can be ready before the end is decided (docs/voice.md).
const FAST_DRAFT_MS: u32 = 32;
/// Drafts, and the silence kept, where it has not: a draft started at every short gap
/// runs its encoder to the end even when speech resumes (whisper.cpp cannot stop it
/// there), and on one slow CPU that costs more than the draft saves.
const SLOW_DRAFT_MS: u32 = 200;

impl EndpointConfig {
    /// The defaults for a machine with `cpus` CPUs: early drafts only with two or more.
    pub fn for_cpus(cpus: usize) -> Self {
        let config = Self::default();
        if cpus >= 2 {
            config
        } else {
            Self {
                draft_after_ms: SLOW_DRAFT_MS,
                keep_trailing_ms: SLOW_DRAFT_MS,
                ..config
            }
        }
    }
}

impl Endpointer {
    pub fn new(mut config: EndpointConfig) -> Self {
        if config.draft_after_ms > 0 {
            config.draft_after_ms = config.draft_after_ms.max(config.keep_trailing_ms);
        }
        Self {
            config,
            detector: Detector::default_boxed(),
            partial: Vec::new(),
            frames: 0,
            energies: VecDeque::new(),
            state: idle(),
            withdrawn: Arc::default(),
            pitch: Tracker::default(),
        }
    }

    /// The count of drafts withdrawn so far, as it changes: a transcription of a draft
    /// whose [`Utterance::withdrawn`] no longer matches it is wasted work.
    pub fn withdrawn(&self) -> Arc<AtomicU64> {
        self.withdrawn.clone()
    }

    /// What the current utterance's draft of `len` samples reads as. If no voice came
    /// since that draft, the utterance now ends after the silence the reading calls
    /// for; if that much has passed already, it ends now and is returned.
    pub fn judge_draft(&mut self, len: usize, reading: Reading) -> Option<Utterance> {
        let c = &self.config;
        let State::Speaking {
            samples,
            start,
            silent,
            draft,
            end_after,
            falling,
            ..
        } = &mut self.state
        else {
            return None;
        };
        if *draft != Some(len) {
            return None;
        }
        *end_after = frames_in(match reading {
            Reading::Complete if *falling => c.complete_silence_ms,
            Reading::Complete | Reading::Unsure => c.end_silence_ms,
            Reading::Unfinished => c.unfinished_silence_ms,
        });
        if *silent < *end_after {
            return None;
        }
        // The draft was judged spoken (not noise) when it was handed out.
        samples.truncate(len);
        let utterance = Utterance {
            samples: std::mem::take(samples),
            start: *start,
            end_reason: EndReason::Silence,
            draft: false,
            withdrawn: self.withdrawn.load(Ordering::Relaxed),
        };
        self.state = idle();
        Some(utterance)
    }

    /// Feeds 16 kHz samples; returns the utterances they complete.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Utterance> {
        let mut done = Vec::new();
        self.partial.extend_from_slice(samples);
        let mut offset = 0;
        while self.partial.len() - offset >= FRAME {
            let frame = self.partial[offset..offset + FRAME].to_vec();
            offset += FRAME;
            done.extend(self.frame(frame));
        }
        self.partial.drain(..offset);
        done
    }

    /// The stream ended: the utterance in progress, if any.
    pub fn finish(&mut self) -> Option<Utterance> {
        let state = std::mem::replace(&mut self.state, idle());
        match state {
            State::Speaking {
                mut samples, start, ..
            } => {
                samples.append(&mut self.partial);
                Some(Utterance {
                    samples,
                    start,
                    end_reason: EndReason::EndOfStream,
                    draft: false,
                    withdrawn: self.withdrawn.load(Ordering::Relaxed),
                })
            }
            State::Idle { .. } => None,
        }
    }

    /// Whether an utterance is in progress.
    pub fn speaking(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    fn frame(&mut self, frame: Vec<f32>) -> Option<Utterance> {
        // earshot wants [-1, 1]; a clipping microphone can overshoot after resampling.
        let clamped: Vec<f32> = frame.iter().map(|s| s.clamp(-1.0, 1.0)).collect();
        let energy = energy_db(&clamped);
        let floor = self
            .energies
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min)
            .min(energy);
        self.energies.push_back(energy);
        if self.energies.len() > FLOOR_FRAMES {
            self.energies.pop_front();
        }
        let voiced = self.detector.predict_f32(&clamped) >= self.config.threshold
            && energy >= floor + self.config.above_floor_db;
        let pitch = self.pitch.push(&clamped, voiced && self.speaking());
        let index = self.frames;
        self.frames += 1;
        let c = &self.config;
        match &mut self.state {
            State::Idle { recent, window } => {
                recent.push_back(frame);
                let keep = frames_in(c.pre_roll_ms + c.start_ms) as usize;
                while recent.len() > keep {
                    recent.pop_front();
                }
                window.push_back(voiced);
                let span = frames_in(c.start_ms) as usize;
                while window.len() > span {
                    window.pop_front();
                }
                let voiced_frames = window.iter().filter(|v| **v).count();
                if window.len() == span && voiced_frames * 5 >= span * 4 {
                    let start = (index + 1 - recent.len() as u64) * FRAME as u64;
                    let samples = recent.drain(..).flatten().collect();
                    self.state = State::Speaking {
                        samples,
                        start,
                        silent: 0,
                        energies: vec![energy],
                        draft: None,
                        end_after: frames_in(c.end_silence_ms),
                        pitches: Vec::new(),
                        falling: false,
                    };
                }
                None
            }
            State::Speaking {
                samples,
                start,
                silent,
                energies,
                draft,
                end_after,
                pitches,
                falling,
            } => {
                samples.extend_from_slice(&frame);
                energies.push(energy);
                if voiced {
                    pitches.extend(pitch.map(pitch::semitones));
                    *silent = 0;
                    if draft.take().is_some() {
                        // Speech resumed: the draft is stale, and so is its verdict.
                        self.withdrawn.fetch_add(1, Ordering::Relaxed);
                        *end_after = frames_in(c.end_silence_ms);
                    }
                } else {
                    *silent += 1;
                }
                let keep = frames_in(c.keep_trailing_ms).min(*silent);
                let trimmed_len = samples.len() - (*silent - keep) as usize * FRAME;
                // Judged against the floor heard since: noise that began with this
                // "utterance" (a fan switched on) is no louder than what followed it.
                let spoken = || loudness(energies) >= floor + c.above_floor_db;
                if c.draft_after_ms > 0
                    && *silent == frames_in(c.draft_after_ms)
                    && *silent < *end_after
                    && spoken()
                {
                    *draft = Some(trimmed_len);
                    *falling = pitch::ends_falling(pitches);
                    if std::env::var_os("LLAMABOX_VOICE_DEBUG").is_some() {
                        eprintln!(
                            "draft of {} ms at frame {index}: {} pitched frames, ends falling: {}, last {:?}",
                            trimmed_len / 16,
                            pitches.len(),
                            falling,
                            &pitches[pitches.len().saturating_sub(4)..]
                        );
                    }
                    return Some(Utterance {
                        samples: samples[..trimmed_len].to_vec(),
                        start: *start,
                        end_reason: EndReason::Silence,
                        draft: true,
                        withdrawn: self.withdrawn.load(Ordering::Relaxed),
                    });
                }
                let reason = if *silent >= *end_after {
                    samples.truncate(trimmed_len);
                    Some(EndReason::Silence)
                } else if samples.len() as u64 >= c.max_ms as u64 * 16 {
                    Some(EndReason::Timeout)
                } else {
                    None
                };
                let end_reason = reason?;
                let spoken = end_reason != EndReason::Silence || spoken();
                let utterance = Utterance {
                    samples: std::mem::take(samples),
                    start: *start,
                    end_reason,
                    draft: false,
                    withdrawn: self.withdrawn.load(Ordering::Relaxed),
                };
                self.state = idle();
                spoken.then_some(utterance)
            }
        }
    }
}

fn idle() -> State {
    State::Idle {
        recent: VecDeque::new(),
        window: VecDeque::new(),
    }
}

fn frames_in(ms: u32) -> u32 {
    ms.div_ceil(FRAME_MS)
}

/// Mean power of a frame in dB relative to full scale.
fn energy_db(frame: &[f32]) -> f32 {
    let power = frame.iter().map(|s| s * s).sum::<f32>() / frame.len().max(1) as f32;
    if power > 0.0 {
        (10.0 * power.log10()).max(SILENCE_DB)
    } else {
        SILENCE_DB
    }
}

/// How loud an utterance is: the energy its loudest quarter of frames reaches.
fn loudness(energies: &[f32]) -> f32 {
    let mut sorted = energies.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted
        .get(sorted.len() * 3 / 4)
        .copied()
        .unwrap_or(SILENCE_DB)
}
