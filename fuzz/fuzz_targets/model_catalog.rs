//! Model catalogs and model indexes come from the network (after their hash is checked,
//! but the parsers must not rely on that): any bytes parse to names that are safe file
//! names and chunk lists that cover their file end to end, or to a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llamabox_format::update::models::{is_model_name, ModelCatalog, ModelIndex};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the parser; the rest is the file.
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(catalog) = ModelCatalog::parse(file) {
            for entry in &catalog.models {
                assert!(is_model_name(&entry.name));
                assert!(!entry.name.contains('/'));
            }
        }
    } else {
        let Ok(catalog) = ModelCatalog::parse(SEED_CATALOG) else {
            panic!("the seed catalog parses");
        };
        if let Ok(index) = ModelIndex::parse(file, &catalog.models[0]) {
            let total: u64 = index.chunks.iter().map(|c| u64::from(c.length)).sum();
            assert_eq!(total, index.length);
        }
    }
});

const SEED_CATALOG: &[u8] = include_bytes!("../corpus/model_catalog/catalog.json");
