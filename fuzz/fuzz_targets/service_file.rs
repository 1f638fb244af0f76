//! Service files come from the data partition (local overrides), so the parser must
//! take any bytes without panicking: it returns a service or a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match llamabox_supervisor::service::parse("fuzz", std::path::Path::new("fuzz.toml"), text) {
            Ok(service) => {
                assert!(service.command.starts_with('/'));
                assert!(service.restart.initial_delay <= service.restart.max_delay);
            }
            Err(message) => assert!(message.starts_with("fuzz.toml")),
        }
    }
});
