//! Arbitrary bytes through `classify_content` (format detection, then the FHIR, CDA or DICOM
//! reader). Must never panic, and every accepted record has at least one category.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policies::classify::{classify_content, detect_format};

fuzz_target!(|data: &[u8]| {
    if let Ok(facts) = classify_content(data) {
        assert_eq!(facts.format, detect_format(data));
        assert!(!facts.categories.is_empty());
    }
});
