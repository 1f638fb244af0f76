//! Bundle indexes come from the network (after their hash is checked, but the parser
//! must not rely on that): any bytes parse to a consistent index or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabox_format::update::BundleIndex;
use llamabox_format::Slot;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = BundleIndex::parse(data) {
        for file in [index.slot(), index.uki(Slot::A), index.uki(Slot::B)] {
            let total: u64 = file.chunks.iter().map(|c| u64::from(c.length)).sum();
            assert_eq!(total, file.length);
            for chunk in &file.chunks {
                assert!(chunk.offset + u64::from(chunk.length) <= index.data_length);
            }
        }
        let _ = index.manifest_block();
        let _ = index.check_board("qemu-x86_64");
    }
});
