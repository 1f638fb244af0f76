//! A request's sampling parameters and the llama.cpp sampler chain built from them.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
pub use llamabox_inference_protocol::SamplingParams;

/// The index of the largest logit, the first one on a tie: what llama.cpp's greedy
/// sampler picks.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate().skip(1) {
        if logit > logits[best] {
            best = i;
        }
    }
    best
}

/// Builds the chain in llama-server's order: grammar, penalties, top-k, top-p, min-p,
/// temperature, then the final pick (greedy or seeded random).
pub fn build(model: &LlamaModel, p: &SamplingParams) -> Result<LlamaSampler, String> {
    let mut chain = Vec::new();
    if let Some(grammar) = &p.grammar {
        let sampler = if p.grammar_triggers.is_empty() {
            LlamaSampler::grammar(model, grammar, "root")
        } else {
            LlamaSampler::grammar_lazy(model, grammar, "root", &p.grammar_triggers, &[])
        };
        chain.push(sampler.map_err(|e| format!("the output grammar is not usable: {e}"))?);
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 || p.repeat_penalty != 1.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            p.penalty_last_n,
            p.repeat_penalty,
            p.frequency_penalty,
            p.presence_penalty,
        ));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(p.top_k));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        let seed = p.seed.unwrap_or_else(rand_seed);
        chain.push(LlamaSampler::dist(seed));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

fn rand_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per process and perturbed per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as u32
}

#[cfg(test)]
mod argmax_tests {
    use super::*;

    #[test]
    fn the_first_of_equal_maxima_wins() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1e30, -1e29]), 2);
    }

    #[test]
    fn only_a_bare_greedy_request_skips_the_chain() {
        let greedy = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        assert!(greedy.is_plain_greedy());
        assert!(!SamplingParams::default().is_plain_greedy());
        assert!(!SamplingParams {
            repeat_penalty: 1.1,
            ..greedy.clone()
        }
        .is_plain_greedy());
        assert!(!SamplingParams {
            grammar: Some("root ::= \"x\"".into()),
            ..greedy
        }
        .is_plain_greedy());
    }
}

/// llama.cpp's JSON-schema-to-grammar converter, the one llama-server uses: the grammars
/// of `response_format` and of offered tools. It refuses schemas it cannot express.
pub fn schema_to_grammar(schema: &str) -> Result<String, String> {
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| e.to_string())
}

#[cfg(test)]
mod grammar_tests {
    use llamabox_inference_protocol::tools::{Convention, ToolChoice, ToolDef, Tools};
    use serde_json::json;

    use super::schema_to_grammar;

    #[test]
    fn tool_grammars_compile_with_llama_cpps_converter() {
        let defs: Vec<ToolDef> = serde_json::from_value(json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time"}},
        ]))
        .unwrap();
        for convention in [Convention::Generic, Convention::Hermes] {
            for choice in [
                ToolChoice::Auto,
                ToolChoice::Required,
                ToolChoice::Named("get_weather".into()),
            ] {
                let tools = Tools::new(&defs, choice.clone(), true, convention)
                    .unwrap()
                    .unwrap();
                let (gbnf, triggers) = tools.grammar(&schema_to_grammar).unwrap().unwrap();
                assert!(gbnf.contains("f0-root ::="), "{gbnf}");
                assert_eq!(triggers.is_empty(), choice != ToolChoice::Auto);
            }
        }
        assert!(schema_to_grammar("{\"type\": \"no-such-type\"}").is_err());
    }
}
