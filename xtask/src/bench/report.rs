//! Medians of the repetitions, the ratios ours / reference, and the targets.

use super::client::Reply;
use super::llama_bench::{self, Ceiling};
use super::measure::Aggregate;

/// Every sample of one side, one per repetition.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub decode: Vec<f64>,
    pub prompt: Vec<f64>,
    pub cold_ms: Vec<f64>,
    pub follow_up_ms: Vec<f64>,
    pub aggregate: Vec<f64>,
    /// Single-stream decode while a busy thread competes for the cores.
    pub contended: Vec<f64>,
    /// The work of the last repetition, to show both sides did the same.
    pub work: Work,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Work {
    pub decode_tokens: u64,
    pub prompt_tokens: u64,
    pub cold_prompt_tokens: u64,
    pub follow_up_prompt_tokens: u64,
    pub aggregate_tokens: Vec<u64>,
}

impl Samples {
    pub fn add_decode(&mut self, reply: &Reply) -> anyhow::Result<()> {
        self.decode.push(reply.decode_rate()?);
        self.work.decode_tokens = reply.completion_tokens;
        Ok(())
    }

    pub fn add_prompt(&mut self, reply: &Reply) {
        self.prompt
            .push(reply.prompt_tokens as f64 / reply.ttft().as_secs_f64());
        self.work.prompt_tokens = reply.prompt_tokens;
    }

    pub fn add_conversation(&mut self, cold: &Reply, follow_up: &Reply) {
        self.cold_ms.push(cold.ttft().as_secs_f64() * 1000.0);
        self.follow_up_ms
            .push(follow_up.ttft().as_secs_f64() * 1000.0);
        self.work.cold_prompt_tokens = cold.prompt_tokens;
        self.work.follow_up_prompt_tokens = follow_up.prompt_tokens;
    }

    pub fn add_aggregate(&mut self, a: &Aggregate) {
        self.aggregate.push(a.rate());
        self.work.aggregate_tokens = a.streams.iter().map(|r| r.completion_tokens).collect();
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.1} [{min:.1}–{max:.1}]", median(values))
}

/// A target and whether the medians meet it.
pub struct Verdict {
    pub what: &'static str,
    pub want: String,
    pub got: f64,
    pub met: bool,
}

pub fn verdicts(ours: &Samples, reference: &Samples, ceiling: &Ceiling) -> Vec<Verdict> {
    let ratio = |o: &[f64], r: &[f64]| median(o) / median(r);
    let decode = ratio(&ours.decode, &reference.decode);
    let engine = median(&ours.decode) / median(&ceiling.decode);
    let contended = ratio(&ours.contended, &ours.decode);
    let mut verdicts = vec![
        Verdict {
            what: "single-stream decode, ours / llama-bench tg128",
            want: "≥ 0.90".into(),
            got: engine,
            met: engine >= 0.9,
        },
        Verdict {
            what: "single-stream decode, ours / llama-server",
            want: "≥ 0.97".into(),
            got: decode,
            met: decode >= 0.97,
        },
        Verdict {
            what: "decode with a busy neighbour / idle, ours",
            want: "≥ 0.80".into(),
            got: contended,
            met: contended >= 0.8,
        },
    ];
    if !ours.aggregate.is_empty() {
        let aggregate = ratio(&ours.aggregate, &reference.aggregate);
        verdicts.push(Verdict {
            what: "aggregate decode (4 streams), ours / llama-server",
            want: "≥ 1.15".into(),
            got: aggregate,
            met: aggregate >= 1.15,
        });
    }
    let follow_up = median(&ours.follow_up_ms) / median(&ours.cold_ms);
    verdicts.push(Verdict {
        what: "follow-up TTFT / cold TTFT, ours",
        want: "≤ 0.30".into(),
        got: follow_up,
        met: follow_up <= 0.3,
    });
    verdicts
}

/// Decode against the engine's ceiling (llama-bench), idle and with a busy neighbour.
pub fn render_engine(
    ours_label: &str,
    ours: &Samples,
    reference: &Samples,
    ceiling: &Ceiling,
) -> String {
    let mut out = format!(
        "| decode, 1 stream (tok/s) | {ours_label} | llama-server | llama-bench tg{} |\n| --- | --- | --- | --- |\n",
        llama_bench::GENERATE
    );
    out.push_str(&format!(
        "| idle | {} | {} | {} |\n",
        spread(&ours.decode),
        spread(&reference.decode),
        spread(&ceiling.decode),
    ));
    out.push_str(&format!(
        "| ÷ llama-bench | {:.3} | {:.3} | 1 |\n",
        median(&ours.decode) / median(&ceiling.decode),
        median(&reference.decode) / median(&ceiling.decode)
    ));
    out.push_str(&format!(
        "| a busy thread competing | {} | {} | |\n",
        spread(&ours.contended),
        spread(&reference.contended)
    ));
    out.push_str(&format!(
        "| contended ÷ idle | {:.3} | {:.3} | |\n",
        median(&ours.contended) / median(&ours.decode),
        median(&reference.contended) / median(&reference.decode)
    ));
    out
}

/// The table: medians with [min–max] of the repetitions, and ours / reference.
pub fn render(ours_label: &str, ours: &Samples, reference: &Samples) -> String {
    let rows: [(&str, &[f64], &[f64]); 5] = [
        ("decode, 1 stream (tok/s)", &ours.decode, &reference.decode),
        ("prompt processing (tok/s)", &ours.prompt, &reference.prompt),
        ("TTFT, cold (ms)", &ours.cold_ms, &reference.cold_ms),
        (
            "TTFT, follow-up turn (ms)",
            &ours.follow_up_ms,
            &reference.follow_up_ms,
        ),
        (
            "decode, 4 streams together (tok/s)",
            &ours.aggregate,
            &reference.aggregate,
        ),
    ];
    let mut out = format!(
        "| metric | {ours_label} | llama-server | ours / llama-server |\n| --- | --- | --- | --- |\n"
    );
    for (name, o, r) in rows.into_iter().filter(|(_, o, _)| !o.is_empty()) {
        out.push_str(&format!(
            "| {name} | {} | {} | {:.3} |\n",
            spread(o),
            spread(r),
            median(o) / median(r)
        ));
    }
    out
}

pub fn render_work(ours: &Work, reference: &Work) -> String {
    let line = |w: &Work| {
        format!(
            "decode {} tokens; prompt {} tokens; conversation {} then {} prompt tokens; 4 streams {:?} tokens",
            w.decode_tokens,
            w.prompt_tokens,
            w.cold_prompt_tokens,
            w.follow_up_prompt_tokens,
            w.aggregate_tokens
        )
    };
    format!(
        "work per repetition (server-reported usage):\n  ours:         {}\n  llama-server: {}\n",
        line(ours),
        line(reference)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn targets() {
        let ours = Samples {
            decode: vec![97.0],
            aggregate: vec![150.0],
            cold_ms: vec![1000.0],
            follow_up_ms: vec![310.0],
            ..Samples::default()
        };
        let reference = Samples {
            decode: vec![100.0],
            aggregate: vec![151.0],
            ..Samples::default()
        };
        let ceiling = Ceiling {
            decode: vec![108.0, 110.0, 112.0],
            prompt: 800.0,
        };
        let ours = Samples {
            contended: vec![80.0],
            ..ours
        };
        let met: Vec<bool> = verdicts(&ours, &reference, &ceiling)
            .iter()
            .map(|v| v.met)
            .collect();
        // engine 97/110, llama-server 0.97, contended 80/97, aggregate 150/151, follow-up.
        assert_eq!(met, [false, true, true, false, false]);
    }
}
