//! The byte-level FHIR scanner (what `classify_content` runs) against the
//! serde_json streaming reader it replaced (`classify_fhir_stream`, also its
//! fallback): on every shared record (tests/testdata/fhir, every file) the
//! scanner decides alone and finds exactly the streaming reader's facts; on
//! adversarial and mutated documents it either finds exactly those facts or
//! leaves the document to the streaming reader, never anything else, and the
//! classifier's answer (facts or error, position included) is the same.

use std::path::{Path, PathBuf};

use policies::classify::{
    classify_content, classify_fhir_stream, detect_format, fhir_scan_check, ClassifyError,
    ContentFacts, Format, ScanCheck,
};
use policies::Category;

const FHIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/testdata/fhir/");

/// The classifier's answer equals the streaming reader's, and the scanner
/// alone either agrees with it or leaves the document to it. Returns what
/// the scanner did.
fn agree(name: &str, bytes: &[u8]) -> ScanCheck {
    // The FHIR reader runs only on what the format detection calls FHIR JSON.
    if detect_format(bytes) == Format::FhirJson {
        same_answer(name, &classify_content(bytes), &classify_fhir_stream(bytes));
    }
    let check = fhir_scan_check(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(check != ScanCheck::Differs, "{name}: the scanner differs");
    check
}

fn same_answer(
    name: &str,
    new: &Result<ContentFacts, ClassifyError>,
    old: &Result<ContentFacts, ClassifyError>,
) {
    match (new, old) {
        (Ok(n), Ok(o)) => {
            assert!(n.patients == o.patients, "{name}: patients differ");
            assert_eq!(n.categories, o.categories, "{name}");
            assert_eq!(n.matched_codes, o.matched_codes, "{name}");
            assert_eq!(n.resource_types, o.resource_types, "{name}");
            assert!(n == o, "{name}");
        }
        _ => assert_eq!(new, old, "{name}"),
    }
}

/// Every file under tests/testdata/fhir, sorted.
fn shared_files() -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(Path::new(FHIR), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), bytes)
        })
        .collect()
}

fn shared_json() -> Vec<(String, Vec<u8>)> {
    shared_files()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".json"))
        .collect()
}

#[test]
fn every_shared_record_is_decided_by_the_scanner_with_identical_facts() {
    let mut decided = 0;
    let mut sensitive = 0;
    let mut patients = 0;
    for (name, bytes) in shared_files() {
        let check = agree(&name, &bytes);
        if name.ends_with(".json") {
            assert_eq!(check, ScanCheck::Same, "{name}: left to the fallback");
            let facts = classify_content(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            sensitive += facts.matched_codes;
            patients += facts.patient_count();
            decided += 1;
        }
    }
    // 14 bundles, 12 consents, 9 audit events, 2 others, 8 genetics, 4 sensitive.
    assert_eq!(decided, 49);
    assert!(sensitive > 300, "{sensitive}");
    assert!(patients > 40, "{patients}");
}

fn bundle(entries: &str) -> String {
    format!(r#"{{"resourceType":"Bundle","type":"collection","entry":[{entries}]}}"#)
}

#[test]
fn escaped_codes_keys_and_ids_classify_as_plain_ones() {
    let plain = bundle(
        r#"{"fullUrl":"urn:uuid:p","resource":{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:mrn","value":"m1"}]}},
           {"resource":{"resourceType":"Condition","subject":{"reference":"urn:uuid:p"},
             "code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"F20.9"}]}}}"#,
    );
    let escaped = bundle(
        r#"{"full\u0055rl":"urn:uuid:\u0070","resource":{"resource\u0054ype":"Pat\u0069ent","\u0069d":"p\u0031",
             "identifier":[{"\u0073ystem":"urn:mrn","value":"m\u0031"}]}},
           {"resource":{"resourceType":"Condition","\u0073ubject":{"reference":"urn:uuid:p"},
             "\u0063ode":{"coding":[{"system":"http:\/\/hl7.org\/fhir\/sid\/icd-10-cm","\u0063ode":"\u0046\u0032\u0030.9"}]}}}"#,
    );
    let a = classify_content(plain.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let b = classify_content(escaped.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert!(a.categories.contains(&Category::MentalHealth));
    assert!(a == b, "escaped and plain differ");
    assert_eq!(b.patient_count(), 1);
    assert_eq!(b.single_patient_matches("m1"), Ok(()));
    for doc in [&plain, &escaped] {
        assert_eq!(agree("escaped", doc.as_bytes()), ScanCheck::Same);
    }
    // Escapes outside the strings the reader looks at, and non-ASCII text.
    let doc = bundle(
        r#"{"resource":{"resourceType":"Observation","note":[{"text":"caf\u00e9 \ud83d\ude00 é ☃ \"q\" \\ \/ \b\f\n\r\t"}],
             "code":{"text":"\u0066ree"}}}"#,
    );
    assert_eq!(agree("text escapes", doc.as_bytes()), ScanCheck::Same);
}

#[test]
fn repeated_keys_at_every_level_are_refused() {
    let base =
        std::fs::read(format!("{FHIR}bundles/Bundle-xds.json")).unwrap_or_else(|e| panic!("{e}"));
    let value: serde_json::Value = serde_json::from_slice(&base).unwrap_or_else(|e| panic!("{e}"));
    let compact = serde_json::to_string(&value).unwrap_or_else(|e| panic!("{e}"));
    let mut objects = 0;
    for (at, _) in compact.match_indices("{\"") {
        // Repeat the object's first key, plainly and with an escaped first letter.
        let rest = compact.get(at + 2..).unwrap_or_default();
        let Some(len) = rest.find('"') else { continue };
        let key = rest.get(..len).unwrap_or_default();
        let Some(first) = key.chars().next() else {
            continue;
        };
        let escaped = format!(
            "\\u{:04x}{}",
            u32::from(first),
            key.get(first.len_utf8()..).unwrap_or("")
        );
        for repeat in [key.to_owned(), escaped] {
            let doc = format!(
                "{}\"{repeat}\":null,{}",
                compact.get(..at + 1).unwrap_or_default(),
                compact.get(at + 1..).unwrap_or_default()
            );
            assert_eq!(agree("repeat", doc.as_bytes()), ScanCheck::Undecided);
            assert_eq!(
                classify_content(doc.as_bytes()).err(),
                Some(ClassifyError::RepeatedKey),
                "{repeat} at {at}"
            );
        }
        objects += 1;
    }
    assert!(objects > 30, "{objects}");
    // The same key in sibling or nested objects is no repeat.
    let doc = r#"{"resourceType":"Basic","code":{"code":{"code":"x"}},"x":[{"id":1},{"id":2}]}"#;
    assert_eq!(agree("siblings", doc.as_bytes()), ScanCheck::Same);
}

#[test]
fn nesting_is_decided_up_to_serde_jsons_limit_and_refused_past_it() {
    let mut accepted = 0;
    let mut refused = 0;
    for depth in 120..=132 {
        // The root object is one level; the arrays inside it the rest.
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            let doc = format!(
                r#"{{"resourceType":"Basic","x":{}1{}}}"#,
                open.repeat(depth - 1),
                close.repeat(depth - 1)
            );
            let check = agree(&format!("depth {depth}"), doc.as_bytes());
            if classify_fhir_stream(doc.as_bytes()).is_ok() {
                assert_eq!(check, ScanCheck::Same, "depth {depth}");
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    // serde_json takes 127 levels and refuses 128.
    assert_eq!((accepted, refused), (16, 10));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(agree("deep", deep.as_bytes()), ScanCheck::Undecided);
}

#[test]
fn other_types_where_strings_are_expected_agree() {
    for doc in [
        r#"{"resourceType":"Condition","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":5}]}}"#,
        r#"{"resourceType":"Condition","code":{"coding":[{"system":true,"code":"F20.9"}]}}"#,
        r#"{"resourceType":null}"#,
        r#"{"resourceType":["Patient"]}"#,
        r#"{"resourceType":{"x":"Patient"}}"#,
        r#"{"resourceType":"Patient","id":[],"identifier":[{"value":1.5e3},{"value":null},"x",7,{"value":"ok","system":false}]}"#,
        r#"{"resourceType":"Encounter","subject":{"reference":{}}}"#,
        r#"{"resourceType":"Encounter","subject":"Patient/x"}"#,
        r#"{"resourceType":"Encounter","subject":{"identifier":[{"value":"v"}]}}"#,
        r#"{"resourceType":"Bundle","entry":[{"fullUrl":-0,"resource":{"resourceType":"Patient"}},{"resource":[]},1,null]}"#,
        r#"{"resourceType":"Bundle","entry":{"resource":{"resourceType":"Patient"}}}"#,
        r#"{"resourceType":"Observation","code":{"text":1},"meta":{"profile":[1,"http://hl7.org/fhir/StructureDefinition/observation-genetics",{}]}}"#,
        r#"{"resourceType":"Observation","extension":[{"url":7},{"url":"http://hl7.org/fhir/StructureDefinition/observation-geneticsGene"}]}"#,
        r#"{"resourceType":"Basic","n":[0,-0,1.5,-2e-5,1E+2,123456789012345678901234567890,1e-400,9e299,true,false,null]}"#,
    ] {
        assert_eq!(agree(doc, doc.as_bytes()), ScanCheck::Same, "{doc}");
    }
    // Numbers near f64's limit are left to serde_json, which reads 1e308 and refuses 1e309.
    for (doc, ok) in [
        (r#"{"resourceType":"Basic","n":1e308}"#, true),
        (
            r#"{"resourceType":"Basic","n":-1.7976931348623157e308}"#,
            true,
        ),
        (r#"{"resourceType":"Basic","n":1e309}"#, false),
        (
            r#"{"resourceType":"Basic","n":0e999999999999999999999}"#,
            true,
        ),
    ] {
        assert_eq!(agree(doc, doc.as_bytes()), ScanCheck::Undecided, "{doc}");
        assert_eq!(classify_content(doc.as_bytes()).is_ok(), ok, "{doc}");
    }
}

#[test]
fn malformed_documents_are_left_to_the_streaming_reader() {
    for doc in [
        &b""[..],
        b"   ",
        br#"{"resourceType":"Bundle""#,
        br#"{"resourceType":"Bundle",}"#,
        br#"{"resourceType":"Bundle","entry":[1,]}"#,
        br#"{"resourceType":"Bundle"} x"#,
        br#"{"resourceType":"Bundle"}{}"#,
        br#"{"resourceType" "Bundle"}"#,
        br#"{"resourceType":"Bundle",1:2}"#,
        br#"{"resourceType":'Bundle'}"#,
        br#"{"resourceType":"Basic","n":01}"#,
        br#"{"resourceType":"Basic","n":1.}"#,
        br#"{"resourceType":"Basic","n":.5}"#,
        br#"{"resourceType":"Basic","n":+1}"#,
        br#"{"resourceType":"Basic","n":1e}"#,
        br#"{"resourceType":"Basic","n":-}"#,
        br#"{"resourceType":"Basic","n":NaN}"#,
        br#"{"resourceType":"Basic","n":tru}"#,
        br#"{"resourceType":"Basic","n":nulll}"#,
        br#"{"resourceType":"Basic","s":"\x"}"#,
        br#"{"resourceType":"Basic","s":"\ud800"}"#,
        br#"{"resourceType":"Basic","s":"\udc00"}"#,
        br#"{"resourceType":"Basic","s":"\ud800\ud800"}"#,
        br#"{"resourceType":"Basic","s":"\ud800\n"}"#,
        br#"{"resourceType":"Basic","\ud800":1}"#,
        b"{\"resourceType\":\"Basic\",\"s\":\"tab\there\"}",
        b"{\"resourceType\":\"Basic\",\"s\":\"nul\x00\"}",
        b"{\"resourceType\":\"Basic\",\x0c\"s\":1}",
        b"{\"resourceType\":\"Basic\",\"s\":\"\xff\"}",
        b"{\"resourceType\":\"Basic\",\"s\":\"\xc0\x80\"}",
        b"{\"resourceType\":\"Basic\",\"s\":\"\xed\xa0\x80\"}",
        b"{\"resourceType\":\"Basic\",\"\xe2\x98\":1}",
        b"{\"resourceType\":\"Basic\"}\xff",
        b"{\"resourceType\":\"Basic\",\"s\":\"\xe2\x98",
    ] {
        let name = String::from_utf8_lossy(doc).into_owned();
        assert_eq!(agree(&name, doc), ScanCheck::Undecided, "{name}");
        assert!(
            classify_content(doc).is_err() || !doc.starts_with(b"{"),
            "{name}"
        );
    }
}

#[test]
fn bom_whitespace_and_huge_strings_agree() {
    let doc = br#"{"resourceType":"Patient","id":"p"}"#;
    let with_bom = [&b"\xEF\xBB\xBF"[..], doc].concat();
    assert_eq!(agree("bom", &with_bom), ScanCheck::Same);
    assert!(classify_content(&with_bom) == classify_content(doc));
    let spaced = " \r\n\t{ \"resourceType\" :\n\"Patient\" ,\t\"id\"\r:\"p\" } \n";
    assert_eq!(agree("spaced", spaced.as_bytes()), ScanCheck::Same);
    assert!(classify_content(spaced.as_bytes()) == classify_content(doc));

    let big = "x".repeat(1 << 20);
    let escaped_big = "\\u0078\\n".repeat(1 << 16);
    for doc in [
        format!(r#"{{"resourceType":"Basic","text":"{big}"}}"#),
        format!(r#"{{"resourceType":"Basic","{big}":1,"id":"{escaped_big}"}}"#),
        format!(
            r#"{{"resourceType":"Patient","id":"{big}","identifier":[{{"value":"{escaped_big}"}}]}}"#
        ),
        format!(
            r#"{{"resourceType":"Condition","code":{{"coding":[{{"system":"http://snomed.info/sct","code":"{big}"}}]}}}}"#
        ),
    ] {
        assert_eq!(agree("huge", doc.as_bytes()), ScanCheck::Same);
    }
}

#[test]
fn every_truncation_of_a_small_record_agrees() {
    for file in [
        "genetics/Observation-example-genetics-1.json",
        "bundles/Bundle-xds.json",
    ] {
        let bytes = std::fs::read(format!("{FHIR}{file}")).unwrap_or_else(|e| panic!("{e}"));
        for cut in 0..bytes.len() {
            let part = bytes.get(..cut).unwrap_or_default();
            let check = agree(&format!("{file}[..{cut}]"), part);
            assert_eq!(check, ScanCheck::Undecided, "{file}[..{cut}]");
        }
        assert_eq!(agree(file, &bytes), ScanCheck::Same);
    }
}

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `bytes`: bytes that matter to JSON and to the reader
/// (quotes, escapes, brackets, digits, key names) changed, inserted,
/// deleted or repeated.
fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    const PIECES: [&[u8]; 24] = [
        b"\"",
        b"\\",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"0",
        b"-",
        b"e",
        b".",
        b" ",
        b"\n",
        b"\\u0063",
        b"\\ud800",
        b"\\udc00",
        b"\xff",
        b"\xc3",
        b"\"code\":",
        b"\"system\":",
        b"\"resourceType\":",
        b"null",
        b"1e999",
    ];
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 => {
                if let Some(b) = out.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let piece = PIECES[rng.below(PIECES.len())];
                out.splice(at..at, piece.iter().copied());
            }
            2 => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                if at < end {
                    out.drain(at..end);
                }
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                let span = out.get(at..end).unwrap_or_default().to_vec();
                out.splice(at..at, span);
            }
            _ => {
                let piece = PIECES[rng.below(PIECES.len())];
                let end = (at + piece.len()).min(out.len());
                out.splice(at..end, piece.iter().copied());
            }
        }
    }
    out
}

#[test]
fn mutations_of_the_shared_records_agree() {
    let records: Vec<(String, Vec<u8>)> = shared_json()
        .into_iter()
        .filter(|(_, bytes)| bytes.len() <= 45_000)
        .collect();
    assert!(records.len() >= 40, "{}", records.len());
    let mut rng = Rng(0x17_17_17_17);
    let (mut same, mut undecided) = (0, 0);
    for round in 0..400 {
        for (name, bytes) in &records {
            let mutant = mutate(&mut rng, bytes);
            match agree(&format!("{name} mutant {round}"), &mutant) {
                ScanCheck::Same => same += 1,
                _ => undecided += 1,
            }
        }
    }
    // Both outcomes were exercised: mutants that stay valid JSON and broken ones.
    assert!(same > 200 && undecided > 200, "{same} {undecided}");
}
