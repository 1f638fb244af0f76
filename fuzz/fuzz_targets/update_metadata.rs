//! Repository metadata comes from the network: any bytes must parse to metadata or a
//! typed error, and verification must never accept what the trusted key did not sign.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use llamabox_format::update::{Root, Signed, Snapshot, Targets, Timestamp};
use llamabox_format::PublicKey;

/// A root trusting one key whose secret nobody has (its public half is a fixed point).
fn root() -> &'static Root {
    static ROOT: OnceLock<Root> = OnceLock::new();
    ROOT.get_or_init(|| {
        let key = PublicKey::from_hex("4f5e4611012179d529671bb81d534a9f4acbfad3aeaf29ffb996c76529f1ebd0")
            .unwrap();
        Root::with_keys(1, UNIX_EPOCH + Duration::from_secs(2_000_000_000), [(&[&key], 1); 4])
    })
}

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(m) = Signed::<Root>::parse(data) {
        let _ = m.signed.validate();
        let _ = m.verify_successor(root());
        let _ = m.check_fresh(now);
    }
    if let Ok(m) = Signed::<Timestamp>::parse(data) {
        // No valid signature can be forged by the fuzzer.
        assert!(m.verify(root()).is_err());
        let _ = m.check_fresh(now);
    }
    if let Ok(m) = Signed::<Snapshot>::parse(data) {
        assert!(m.verify(root()).is_err());
    }
    if let Ok(m) = Signed::<Targets>::parse(data) {
        assert!(m.verify(root()).is_err());
    }
});
