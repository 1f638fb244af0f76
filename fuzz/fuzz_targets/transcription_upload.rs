//! What a phone uploads for a transcription: a `multipart/form-data` body (the boundary
//! from its `Content-Type`), its fields and the WAV inside. Any bytes give a form, a
//! refusal naming the field, or samples — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabox_audio::upload::read_multipart;

fuzz_target!(|data: &[u8]| {
    // The first line is the Content-Type, the rest the body; and the whole input as a
    // body under a fixed boundary, so the fuzzer need not find one first.
    if let Some(split) = data.iter().position(|&b| b == b'\n') {
        if let Ok(content_type) = std::str::from_utf8(&data[..split]) {
            let _ = read_multipart(content_type, &data[split + 1..]).and_then(|u| u.check());
        }
    }
    let _ = read_multipart("multipart/form-data; boundary=X", data).and_then(|u| u.check());
});
