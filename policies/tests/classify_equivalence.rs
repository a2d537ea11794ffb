//! The streaming `classify_fhir_bundle` against the tree-based original
//! (`classify_fhir_bundle_reference`): identical facts or identical errors on
//! every shared FHIR file (tests/testdata/fhir) and on crafted edge cases.

use std::collections::BTreeSet;
use std::path::Path;

use policies::classify::{
    classify_content, classify_fhir_bundle, classify_fhir_bundle_reference,
    classify_fhir_reference, BundleFacts, ClassifyError, ContentFacts,
};
use policies::Category;

const FHIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/testdata/fhir/");

/// Both implementations' answers, asserted equal field by field (the Debug of
/// `BundleFacts` redacts patient ids, so compare them explicitly).
fn same(name: &str, bytes: &[u8]) -> Result<BundleFacts, ClassifyError> {
    let new = classify_fhir_bundle(bytes);
    let old = classify_fhir_bundle_reference(bytes);
    match (&new, &old) {
        // Refused by design (see repeated_keys_are_refused); the reference keeps the last value.
        (Err(ClassifyError::RepeatedKey), _) => {}
        (Ok(n), Ok(o)) => {
            assert!(n.patient_ids == o.patient_ids, "{name}: patient ids differ");
            assert_eq!(n.resource_types, o.resource_types, "{name}");
            assert_eq!(n.categories, o.categories, "{name}");
            assert_eq!(n.matched_codes, o.matched_codes, "{name}");
            assert!(n == o, "{name}");
        }
        _ => assert_eq!(new, old, "{name}"),
    }
    new
}

fn files(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(FHIR).join(dir);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
            (path.display().to_string(), bytes)
        })
        .filter(|(name, _)| name.ends_with(".json"))
        .collect();
    out.sort();
    out
}

#[test]
fn every_shared_bundle_gives_identical_facts() {
    let bundles = files("bundles");
    assert_eq!(bundles.len(), 14);
    let mut patients = 0;
    let mut sensitive = 0;
    for (name, bytes) in &bundles {
        let facts = same(name, bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        patients += facts.patient_ids.len();
        sensitive += facts.matched_codes;
    }
    // The comparison covered real content, not 14 empty answers.
    assert!(patients > 20, "{patients}");
    assert!(sensitive > 3, "{sensitive}");
}

#[test]
fn consent_auditevent_and_other_resources_give_the_same_error() {
    let mut checked = 0;
    for dir in ["consent", "auditevent", "other"] {
        for (name, bytes) in files(dir) {
            assert_eq!(same(&name, &bytes).err(), Some(ClassifyError::NotBundle));
            checked += 1;
        }
    }
    assert_eq!(checked, 12 + 9 + 2);
}

#[test]
fn every_truncation_and_corruption_agrees() {
    for file in [
        "bundles/Bundle-xds.json",
        "consent/Consent-consent-example-pkb.json",
    ] {
        let bytes = std::fs::read(format!("{FHIR}{file}")).unwrap_or_else(|e| panic!("{e}"));
        for cut in 0..bytes.len() {
            let got = same(&format!("{file}[..{cut}]"), &bytes[..cut]);
            assert!(
                matches!(got, Err(ClassifyError::NotJson { .. })),
                "{file}[..{cut}]"
            );
        }
        let mut corrupted = bytes.clone();
        for i in (0..corrupted.len()).step_by(11) {
            if let Some(byte) = corrupted.get_mut(i) {
                *byte = byte.wrapping_add(1);
            }
            let _ = same(&format!("{file} corrupted at {i}"), &corrupted);
        }
    }
}

fn bundle(entries: &str) -> String {
    format!(r#"{{"resourceType":"Bundle","type":"collection","entry":[{entries}]}}"#)
}

#[test]
fn escaped_strings_are_unescaped_before_matching() {
    // "http://snomed.info/sct" with escaped slashes, "47505003" (mental
    // health) with an escaped digit, an escaped Patient id and identifier.
    let doc = bundle(
        r#"{"resource":{"resourceType":"Condition","code":{"coding":[
            {"system":"http:\/\/snomed.info\/sct","code":"4750\u00350\u0030\u0033"}]}}},
           {"resource":{"resource\u0054ype":"Pat\u0069ent","id":"p\"1",
            "identifier":[{"value":"mrn\\7"},{"value":"mrn-8"},{"system":"x"}]}}"#,
    );
    let f = same("escaped", doc.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert!(f.categories.contains(&Category::MentalHealth));
    assert_eq!(f.matched_codes, 1);
    let ids: BTreeSet<String> = ["p\"1", "mrn\\7", "mrn-8"].map(String::from).into();
    assert!(f.patient_ids == ids, "patient ids");
    assert_eq!(
        f.resource_types,
        ["Condition", "Patient"].map(String::from).into()
    );
}

#[test]
fn codings_and_patients_count_anywhere_in_the_record() {
    let doc = bundle(
        r#"{"resource":{"resourceType":"Observation",
             "meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"GDIS"}]},
             "contained":[{"resourceType":"Patient","id":"contained-patient",
               "contained":[{"resourceType":"Condition","code":{"coding":[
                 {"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"f10.20"}]}}]}],
             "component":[[[{"system":"http://loinc.org","code":"7918-6"}]]],
             "extension":[{"valueCoding":{"code":"B20","system":"http://hl7.org/fhir/sid/icd-10"}}]}},
           {"resource":{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"nested"}}]}},
           {"resource":"not an object"}, ["not", "an", "entry"], {"fullUrl":"x"},
           {"resource":{"id":"no-type","identifier":[{"value":"v"}]}},
           {"resource":{"identifier":[{"value":"before-type"}, "odd", [1]],"resourceType":"Patient"}},
           {"resource":{"resourceType":"Patient","identifier":{"value":"not-an-array"},"id":7}},
           {"resource":{"resourceType":"Practitioner","id":"pr","identifier":[{"value":"npi"}]}}"#,
    );
    let f = same("nested", doc.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        f.categories,
        BTreeSet::from([
            Category::General,
            Category::Genetic,
            Category::SubstanceUse,
            Category::HivSti,
        ])
    );
    assert_eq!(f.matched_codes, 4);
    // Contained Patients and those of a nested Bundle are patients too.
    let ids: BTreeSet<String> = ["before-type", "contained-patient", "nested"]
        .map(String::from)
        .into();
    assert!(f.patient_ids == ids, "patient ids");
    assert_eq!(
        f.resource_types,
        [
            "Bundle",
            "Condition",
            "Observation",
            "Patient",
            "Practitioner"
        ]
        .map(String::from)
        .into()
    );
}

#[test]
fn non_bundles_and_bad_entries_give_the_same_errors() {
    for (doc, want) in [
        (
            r#"{"resourceType":"Patient","id":"secret-id"}"#,
            ClassifyError::NotBundle,
        ),
        (r#"{"resourceType":5,"entry":[]}"#, ClassifyError::NotBundle),
        (r#"{"entry":[]}"#, ClassifyError::NotBundle),
        (r#"[{"resourceType":"Bundle"}]"#, ClassifyError::NotBundle),
        (r#""Bundle""#, ClassifyError::NotBundle),
        ("null", ClassifyError::NotBundle),
        (
            r#"{"resourceType":"Bundle","entry":{}}"#,
            ClassifyError::BadEntries,
        ),
        (
            r#"{"resourceType":"Bundle","entry":null}"#,
            ClassifyError::BadEntries,
        ),
        (
            r#"{"entry":"x","resourceType":"Bundle"}"#,
            ClassifyError::BadEntries,
        ),
    ] {
        assert_eq!(same(doc, doc.as_bytes()).err(), Some(want), "{doc}");
    }
    let empty = same("empty", br#"{"resourceType":"Bundle"}"#).unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.patient_ids.is_empty() && empty.resource_types.is_empty());
    assert_eq!(empty.categories, BTreeSet::from([Category::General]));
}

#[test]
fn malformed_json_gives_the_same_position_and_no_content() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!(
        r#"{{"resourceType":"Bundle","entry":[{}]}}"#,
        r#"{"a":"#.repeat(200) + "1" + &"}".repeat(200)
    );
    for doc in [
        "",
        "secret-patient-id not json",
        r#"{"resourceType":"Bundle","entry":[{"resource":{"id":"secret-patient-id"}}]"#,
        r#"{"resourceType":"Bundle"} trailing-secret"#,
        r#"{"resourceType":"Bundle","x":"\ud800 secret"}"#,
        r#"{"resourceType":"Bundle","x":1e400}"#,
        r#"{"resourceType":"Bundle","x":"bad \q escape"}"#,
        "{\"resourceType\":\"Bundle\",\"x\":\"raw\tcontrol\"}",
        r#"{"resourceType":"Bundle",}"#,
        &deep,
        &deep_object,
    ] {
        let err = same(doc, doc.as_bytes()).err();
        assert!(
            matches!(err, Some(ClassifyError::NotJson { .. })),
            "{doc:.40}: {err:?}"
        );
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(!text.contains("secret"), "{text}");
    }
    let invalid_utf8 = b"{\"resourceType\":\"Bundle\",\"x\":\"\xff\"}";
    assert!(matches!(
        same("utf8", invalid_utf8),
        Err(ClassifyError::NotJson { .. })
    ));
}

#[test]
fn repeated_keys_are_refused() {
    // A parsed tree keeps the last of repeated keys, so a sensitive code followed by a
    // harmless repeat would vanish from the check: the reference shows the hole...
    let doc = bundle(
        r#"{"resource":{"resourceType":"Condition",
             "code":{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"F20.9","code":"Z00"}}}"#,
    );
    let hidden = classify_fhir_bundle_reference(doc.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hidden.categories, BTreeSet::from([Category::General]));
    // ...and the classifier the gateway uses refuses such a document instead.
    assert_eq!(
        classify_fhir_bundle(doc.as_bytes()).err(),
        Some(ClassifyError::RepeatedKey)
    );
    for repeated in [
        &br#"{"resourceType":"Patient","resourceType":"Bundle"}"#[..],
        br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"a","id":"b"}}]}"#,
    ] {
        assert_eq!(
            classify_fhir_bundle(repeated).err(),
            Some(ClassifyError::RepeatedKey)
        );
    }
    // Repeated keys in different objects are not repeats.
    let doc = bundle(
        r#"{"resource":{"resourceType":"Patient","id":"a"}},{"resource":{"resourceType":"Patient","id":"b"}}"#,
    );
    let f = same("siblings", doc.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.patient_ids.len(), 2);
}

/// `classify_content` (streaming) against `classify_fhir_reference` (tree):
/// the same format, patients, categories, counts and resource types.
fn same_content(name: &str, bytes: &[u8]) -> Result<ContentFacts, ClassifyError> {
    let new = classify_content(bytes);
    let old = classify_fhir_reference(bytes);
    match (&new, &old) {
        (Err(ClassifyError::RepeatedKey), _) => {}
        (Ok(n), Ok(o)) => {
            assert!(n.patients == o.patients, "{name}: patients differ");
            assert_eq!(n.categories, o.categories, "{name}");
            assert_eq!(n.matched_codes, o.matched_codes, "{name}");
            assert_eq!(n.resource_types, o.resource_types, "{name}");
            assert!(n == o, "{name}");
        }
        _ => assert_eq!(new, old, "{name}"),
    }
    new
}

#[test]
fn every_shared_fhir_file_gives_identical_content_facts() {
    let mut checked = 0;
    let mut patients = 0;
    let mut sensitive = 0;
    for dir in [
        "bundles",
        "consent",
        "auditevent",
        "other",
        "genetics",
        "sensitive",
    ] {
        for (name, bytes) in files(dir) {
            let facts = same_content(&name, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            patients += facts.patient_count();
            sensitive += facts.matched_codes;
            checked += 1;
        }
    }
    assert_eq!(checked, 14 + 12 + 9 + 2 + 8 + 4);
    assert!(patients > 40, "{patients}");
    assert!(sensitive > 300, "{sensitive}");
}

#[test]
fn signals_and_patient_references_agree() {
    let docs = [
        // Security labels, genetics category, profile, extension, MolecularSequence, text-only code.
        r#"{"resourceType":"Bundle","entry":[
            {"fullUrl":"urn:uuid:p1","resource":{"resourceType":"Patient","id":"p1",
               "identifier":[{"system":"urn:mrn","value":"m1"},{"value":"bare"}]}},
            {"fullUrl":"urn:uuid:o1","resource":{"resourceType":"Observation",
               "meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],
                       "profile":["http://hl7.org/fhir/StructureDefinition/observation-genetics","x"]},
               "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0074","code":"GE"}]}],
               "subject":{"reference":"urn:uuid:p1"},
               "extension":[{"url":"http://hl7.org/fhir/StructureDefinition/observation-geneticsGene"}],
               "code":{"text":"free text"}}},
            {"resource":{"resourceType":"MolecularSequence","patient":{"reference":"Patient/p1"}}},
            {"resource":{"resourceType":"Claim","patient":{"reference":"urn:uuid:o1"}}},
            {"resource":{"resourceType":"Coverage","beneficiary":{"type":"Patient","identifier":{"system":"urn:mrn","value":"m1"}}}},
            {"resource":{"resourceType":"Encounter","subject":{"reference":"urn:uuid:dangling"}}},
            {"resource":{"resourceType":"Encounter","subject":{"reference":"Group/g1"}}},
            {"resource":{"resourceType":"Encounter","subject":{"reference":"https://x.example/fhir/Patient/p2/_history/3"}}},
            {"resource":{"resourceType":"Encounter","subject":{"reference":7,"identifier":{"value":"v"}}}}
        ]}"#,
        // A single resource with contained patients and local references.
        r##"{"resourceType":"CarePlan","subject":{"reference":"#pat"},
            "contained":[{"resourceType":"Patient","id":"pat"},
                         {"resourceType":"Condition","id":"c","subject":{"reference":"#c"},"code":{"text":"t","coding":[]}}]}"##,
        r#"{"resourceType":"Observation","code":{"text":"t"},"meta":{"profile":"http://hl7.org/fhir/StructureDefinition/observation-genetics"}}"#,
        r#"{"resourceType":"Patient","id":"solo","identifier":{"value":"not-an-array"}}"#,
    ];
    let mut counts = Vec::new();
    for doc in docs {
        let f = same_content(doc, doc.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        counts.push(f.patient_count());
    }
    // p1 (resource, urn, Patient/p1, urn:mrn|m1), the dangling urn, p2 and the identifier
    // "v" without a system (it cannot be linked, so it counts on its own); then #pat;
    // none; solo. Group/g1 and the reference to an Observation are not patients.
    assert_eq!(counts, vec![4, 1, 0, 1]);
    let first = classify_content(docs[0].as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first.categories,
        BTreeSet::from([Category::General, Category::Genetic, Category::Unclassified])
    );
}
