//! The always-on path: source → 16 kHz → end-pointing → Whisper → events (→ the LLM).
//! Capture and end-pointing run on the caller's thread and never wait for Whisper:
//! utterances queue for a transcription thread, transcripts queue for an answer thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::answer::Answerer;
use crate::audio::{AudioSource, Resampler, SAMPLE_RATE};
use crate::events::{Event, Events};
use crate::transcribe::{Options, Transcriber, Transcript};
use crate::turn::{self, Reading};
use crate::vad::{EndpointConfig, Endpointer, Utterance};

/// How a draft of utterance `.0` with `.1` samples reads: from transcription to capture.
type Verdict = (u64, usize, Reading);

/// The transcription thread's nice value: capture and end-pointing, at the service's
/// own priority, must never wait for Whisper.
const TRANSCRIBE_NICE: libc::c_int = 10;

/// What `Status` reports about the pipeline.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stats {
    /// Seconds of audio heard since the service started (is the microphone delivering?).
    pub heard_seconds: u64,
    /// Loudest sample of the last second, in dBFS (is anything reaching it?).
    pub level_dbfs: Option<i32>,
    /// Utterances detected; `utterances` counts those transcribed.
    pub speech_started: u64,
    pub utterances: u64,
    pub last_transcript: Option<String>,
    /// Transcripts handed to the LLM whose answers are not finished (queued or being
    /// written): while any are, the LLM is busy on the box's CPUs.
    pub answers_pending: u64,
    pub capture_error: Option<String>,
}

pub struct Pipeline {
    pub transcriber: Arc<Mutex<Transcriber>>,
    pub events: Events,
    pub endpoint: EndpointConfig,
    pub options: Options,
    pub answerer: Option<Answerer>,
    /// Off: audio is read and dropped (the microphone is muted), nothing is detected.
    pub listening: Arc<AtomicBool>,
    pub stats: Arc<Mutex<Stats>>,
    next_utterance: AtomicU64,
}

impl Pipeline {
    pub fn new(transcriber: Arc<Mutex<Transcriber>>, events: Events) -> Self {
        Self {
            transcriber,
            events,
            endpoint: EndpointConfig::for_cpus(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            options: Options::default(),
            answerer: None,
            listening: Arc::new(AtomicBool::new(true)),
            stats: Arc::default(),
            next_utterance: AtomicU64::new(1),
        }
    }

    /// Listens until the source ends (a file) or fails (a device); returns once every
    /// utterance heard has been transcribed (and answered).
    pub fn run(&self, source: &mut dyn AudioSource) -> Result<()> {
        let (utterances, queued) = mpsc::channel::<(u64, Utterance, Instant)>();
        let (verdicts, judged) = mpsc::channel::<Verdict>();
        let (questions, asked) = mpsc::channel::<(u64, String)>();
        let endpointer = Endpointer::new(self.endpoint.clone());
        let withdrawn = endpointer.withdrawn();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                yield_to_capture();
                self.transcribe_all(queued, &withdrawn, verdicts, questions)
            });
            scope.spawn(|| self.answer_all(asked));
            self.capture(source, endpointer, utterances, judged)
        })
    }

    fn capture(
        &self,
        source: &mut dyn AudioSource,
        mut endpointer: Endpointer,
        utterances: mpsc::Sender<(u64, Utterance, Instant)>,
        judged: mpsc::Receiver<Verdict>,
    ) -> Result<()> {
        let mut resampler = Resampler::new(source.sample_rate())?;
        let mut heard: u64 = 0;
        let mut peak: f32 = 0.0;
        let mut current = None;
        let new_id = || self.next_utterance.fetch_add(1, Ordering::Relaxed);
        let hand_over = |u: Utterance, current: &mut Option<u64>| {
            let id = if u.draft {
                *current.get_or_insert_with(new_id)
            } else {
                current.take().unwrap_or_else(new_id)
            };
            let _ = utterances.send((id, u, Instant::now()));
        };
        let result = loop {
            let samples = match source.read() {
                Ok(Some(s)) => s,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if !self.listening.load(Ordering::Relaxed) {
                continue;
            }
            // What the drafts transcribed since say (the utterance may end right here).
            while let Ok((id, len, reading)) = judged.try_recv() {
                if current == Some(id) {
                    if let Some(u) = endpointer.judge_draft(len, reading) {
                        hand_over(u, &mut current);
                    }
                }
            }
            let samples = resampler.push(&samples);
            let before = heard;
            heard += samples.len() as u64;
            peak = samples.iter().fold(peak, |p, s| p.max(s.abs()));
            if heard / SAMPLE_RATE as u64 != before / SAMPLE_RATE as u64 {
                let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                stats.heard_seconds += 1;
                stats.level_dbfs = Some((20.0 * peak.max(1e-5).log10()).round() as i32);
                peak = 0.0;
            }
            for u in endpointer.push(&samples) {
                hand_over(u, &mut current);
            }
            if endpointer.speaking() && current.is_none() {
                let id = new_id();
                current = Some(id);
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .speech_started += 1;
                self.events.publish(Event::SpeechStarted {
                    utterance: id,
                    at_ms: heard * 1000 / SAMPLE_RATE as u64,
                });
            }
        };
        let tail = resampler.finish();
        let mut done = endpointer.push(&tail);
        done.extend(endpointer.finish());
        for u in done {
            hand_over(u, &mut current);
        }
        result
    }

    fn transcribe_all(
        &self,
        queued: mpsc::Receiver<(u64, Utterance, Instant)>,
        withdrawn: &AtomicU64,
        verdicts: mpsc::Sender<Verdict>,
        questions: mpsc::Sender<(u64, String)>,
    ) {
        self.prepare_next();
        // The last draft's transcript: (utterance, its length in samples, the transcript).
        let mut draft: Option<(u64, usize, Transcript)> = None;
        for (id, utterance, ended) in queued {
            // Speech resumed after this draft: a later draft or the final replaces it.
            let stale =
                || utterance.draft && withdrawn.load(Ordering::Relaxed) != utterance.withdrawn;
            if stale() {
                continue;
            }
            let drafted = match draft.take() {
                Some((d, len, t)) if d == id && len == utterance.samples.len() => Some(t),
                _ => None,
            };
            let result = match drafted {
                // The silence lasted: the final utterance is the draft, already transcribed.
                Some(t) if !utterance.draft => Ok(Some(t)),
                _ => self
                    .transcriber
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .transcribe_unless(&utterance.samples, &self.options, &stale),
            };
            if utterance.draft {
                if let Ok(Some(t)) = result {
                    let reading = turn::read(&t.text, &t.language);
                    if std::env::var_os("LLAMABOX_VOICE_DEBUG").is_some() {
                        eprintln!("draft {id} reads {reading:?}: {:?}", t.text);
                    }
                    let _ = verdicts.send((id, utterance.samples.len(), reading));
                    draft = Some((id, utterance.samples.len(), t));
                }
                self.prepare_next();
                continue;
            }
            let transcript = match result {
                Ok(Some(t)) => t,
                // Only drafts give up.
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("utterance {id}: {e:#}");
                    continue;
                }
            };
            let ask = self.answerer.is_some() && !transcript.text.is_empty();
            {
                // Counted before the transcript is published: whoever sees the
                // transcript also sees its answer pending.
                let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                stats.utterances += 1;
                stats.answers_pending += u64::from(ask);
                if !transcript.text.is_empty() {
                    stats.last_transcript = Some(transcript.text.clone());
                }
            }
            self.events.publish(Event::Transcript {
                utterance: id,
                text: transcript.text.clone(),
                language: transcript.language.clone(),
                start_ms: utterance.start * 1000 / SAMPLE_RATE as u64,
                duration_ms: utterance.duration_ms(),
                latency_ms: ended.elapsed().as_millis() as u64,
            });
            if ask {
                let _ = questions.send((id, transcript.text));
            }
            self.prepare_next();
        }
    }

    /// Readies the transcriber for the next utterance while nobody is waiting.
    fn prepare_next(&self) {
        self.transcriber
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .prepare();
    }

    fn answer_all(&self, asked: mpsc::Receiver<(u64, String)>) {
        let Some(answerer) = &self.answerer else {
            return;
        };
        for (id, question) in asked {
            let answered = answerer.answer(id, &question, &self.events);
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.answers_pending = stats.answers_pending.saturating_sub(1);
            drop(stats);
            if let Err(e) = answered {
                self.events.publish(Event::AnswerFailed {
                    utterance: id,
                    error: format!("{e:#}"),
                });
            }
        }
    }
}

/// Lowers the calling thread's scheduling priority (nice 10; Linux's nice is per thread).
/// Whisper takes whatever CPU it gets for seconds — on a one-CPU box (QEMU) for minutes —
/// and capture at the same priority fell behind the microphone while it ran (in QEMU,
/// 14 s of audio read per 20 s), which ends in a full queue and lost audio. Threads
/// whisper.cpp starts from here inherit the priority.
fn yield_to_capture() {
    // SAFETY: setpriority has no memory-safety preconditions; `who` 0 is this thread.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, TRANSCRIBE_NICE) } != 0;
    if failed {
        eprintln!(
            "cannot lower the transcription thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
