//! WAV files come from the network (`POST /v1/audio/transcriptions`, a paired phone's
//! upload): any bytes decode to samples at a usable rate or a named error, never a panic
//! or an allocation the file's header alone asks for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabox_audio::decode_wav;

fuzz_target!(|data: &[u8]| {
    if let Ok((samples, rate)) = decode_wav(data) {
        assert!(rate > 0);
        assert!(samples.len() <= data.len());
    }
});
