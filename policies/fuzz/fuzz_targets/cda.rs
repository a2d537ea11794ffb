//! Arbitrary bytes through the CDA reader: the input is put after a CDA root start tag (unless it
//! already is a CDA document), so the fuzzer spends its time inside the XML reader, not in format
//! detection. Must never panic; an accepted document is CDA and carries `general`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policies::classify::{classify_content, detect_format, Format};
use policies::Category;

const ROOT: &[u8] = b"<ClinicalDocument xmlns=\"urn:hl7-org:v3\">";

fuzz_target!(|data: &[u8]| {
    let doc = if detect_format(data) == Format::Cda {
        data.to_vec()
    } else {
        [ROOT, data].concat()
    };
    if let Ok(facts) = classify_content(&doc) {
        assert_eq!(facts.format, Format::Cda);
        assert!(facts.categories.contains(&Category::General));
        assert!(facts.patient_count() <= 1);
    }
});
