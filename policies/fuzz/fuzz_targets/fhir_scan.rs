//! Differential: arbitrary bytes through the byte-level FHIR scanner alone and the serde_json
//! streaming reader (`fhir_scan_check`). The scanner may leave a document to the streaming
//! reader, but whatever it decides must be exactly what that reader finds, and a document the
//! streaming reader refuses must never be decided.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policies::classify::{fhir_scan_check, ScanCheck};

fuzz_target!(|data: &[u8]| {
    assert_ne!(fhir_scan_check(data).ok(), Some(ScanCheck::Differs));
});
