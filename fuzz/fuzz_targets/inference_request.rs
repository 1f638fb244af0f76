//! What a client sends the inference service: a route's JSON body, read and checked as
//! the service does before any model runs (OpenAI's chat, completions, Responses and
//! embeddings; Ollama's chat, generate, embed and the model-name bodies), then the tool
//! calls found in a reply, since prompts can make the model write anything. Any bytes
//! give a checked request or an error naming the problem — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabox_inference_protocol::openai::GenerateRequest;
use llamabox_inference_protocol::tools::{CallParser, Convention};
use llamabox_inference_protocol::{
    embeddings, ollama, parse_json, responses, ApiError, SamplingParams,
};

/// Stands in for llama.cpp's converter (C++, outside this fuzzer's reach): it reads the
/// schema as JSON, as that one does, and gives a grammar the composer can prefix.
fn to_grammar(schema: &str) -> Result<String, String> {
    serde_json::from_str::<serde_json::Value>(schema)
        .map(|_| "root ::= \"{\" space \"}\"\nspace ::= \" \"?\n".to_string())
        .map_err(|e| e.to_string())
}

/// A chat request as `generate::start` checks it (the same calls), for both tool
/// conventions, and a reply read for calls.
fn chat(request: &GenerateRequest, reply: &str) -> Result<(), ApiError> {
    request.generation_from(4, &SamplingParams::default(), &to_grammar)?;
    let messages = request.chat_messages()?;
    for convention in [Convention::Generic, Convention::Hermes] {
        let chat = request.chat_tools(&messages, convention, &to_grammar)?;
        if let Some(rewrite) = &chat.rewrite {
            for tool_role in [true, false] {
                rewrite.generic_messages(messages.clone(), tool_role);
            }
        }
        let mut parser = CallParser::new(chat.tools);
        for piece in reply.as_bytes().chunks(7) {
            parser.push(&String::from_utf8_lossy(piece));
        }
        parser.finish();
    }
    Ok(())
}

fn completion(request: &GenerateRequest) -> Result<(), ApiError> {
    request.generation_from(4, &SamplingParams::default(), &to_grammar)?;
    request.prompt_text().map(drop)
}

fn route(path: &str, body: &[u8]) -> Result<(), ApiError> {
    let reply = String::from_utf8_lossy(body);
    match path {
        "/v1/chat/completions" => chat(&parse_json(body)?, &reply),
        "/v1/completions" => completion(&parse_json(body)?),
        "/v1/responses" => chat(&responses::chat_request(&parse_json(body)?)?, &reply),
        "/v1/embeddings" => parse_json::<embeddings::EmbeddingsRequest>(body)?
            .base64()
            .map(drop),
        "/api/chat" => {
            let r: ollama::ChatBody = parse_json(body)?;
            ollama::parse_keep_alive(r.keep_alive.as_ref())?;
            ollama::check_capabilities(&r.model, r.think.as_ref(), false)?;
            let mut openai = ollama::translate(
                &r.model,
                r.options,
                r.format.as_ref(),
                r.logprobs,
                r.top_logprobs,
            )?;
            openai.messages = Some(ollama::chat_messages(r.messages)?);
            openai.tools = r.tools;
            chat(&openai, &reply)
        }
        "/api/generate" => {
            let r: ollama::GenerateBody = parse_json(body)?;
            ollama::parse_keep_alive(r.keep_alive.as_ref())?;
            r.check_supported()?;
            let openai = ollama::translate(
                &r.model,
                r.options,
                r.format.as_ref(),
                r.logprobs,
                r.top_logprobs,
            )?;
            completion(&GenerateRequest {
                prompt: Some(llamabox_inference_protocol::openai::PromptInput::One(
                    r.prompt.unwrap_or_default(),
                )),
                ..openai
            })
        }
        "/api/embed" => {
            let r: ollama::EmbedBody = parse_json(body)?;
            ollama::parse_keep_alive(r.keep_alive.as_ref()).map(drop)
        }
        "/api/embeddings" => {
            let r: ollama::LegacyEmbedBody = parse_json(body)?;
            ollama::parse_keep_alive(r.keep_alive.as_ref()).map(drop)
        }
        // A model name is taken from the body, never longer than it.
        _ => parse_json::<ollama::NameBody>(body).map(|r| assert!(r.name().len() <= body.len())),
    }
}

const ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
];

fuzz_target!(|data: &[u8]| {
    // The first line names the route and the rest is its body; input without one is
    // tried as the body of every route.
    match data.iter().position(|&b| b == b'\n') {
        Some(split) if data.starts_with(b"/") => {
            let path = String::from_utf8_lossy(&data[..split]);
            let _ = route(&path, &data[split + 1..]);
        }
        _ => {
            for path in ROUTES {
                let _ = route(path, data);
            }
        }
    }
});
