//! Classification of the shared FHIR bundles (tests/testdata/fhir/bundles).

use std::collections::BTreeSet;

use policies::classify::{classify_codes, classify_fhir_bundle, BundleFacts};
use policies::Category;

const BUNDLES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/testdata/fhir/bundles/"
);

fn facts(file: &str) -> BundleFacts {
    let bytes = std::fs::read(format!("{BUNDLES}{file}")).unwrap_or_else(|e| panic!("{file}: {e}"));
    classify_fhir_bundle(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn bundles_without_sensitive_codes_are_general() {
    for file in [
        "Bundle-b248b1b2-1686-4b94-9936-37d7a5f94b51.json",
        "Bundle-bundle-transaction.json",
        "Bundle-father.json",
        "Bundle-micro.json",
        "Bundle-xds.json",
        "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json",
        "practitionerInformation1559319163815.json",
    ] {
        let f = facts(file);
        assert_eq!(f.categories, BTreeSet::from([Category::General]), "{file}");
        assert_eq!(f.matched_codes, 0, "{file}");
    }
}

#[test]
fn synthea_bundles_match_the_manifest() {
    let expect = [
        (
            "Milan_Beatty_e78d0ed2-1b54-4c30-90ae-f7405af1e402.json",
            vec![Category::MentalHealth],
        ),
        (
            "Trenton_Turner_54a45132-91fc-485e-b401-8c7644a0d517.json",
            vec![Category::SubstanceUse],
        ),
        (
            "Chet_Thompson_eda17701-070d-4fae-9f7d-c8cd6263b63a.json",
            // LOINC 28245-9 Abuse Status [OMAHA] (HL7 SDV).
            vec![
                Category::HivSti,
                Category::ReproductiveHealth,
                Category::AbuseViolence,
            ],
        ),
    ];
    for (file, sensitive) in expect {
        let f = facts(file);
        let mut want: BTreeSet<Category> = sensitive.into_iter().collect();
        want.insert(Category::General);
        assert_eq!(f.categories, want, "{file}");
        assert!(f.matched_codes > 0, "{file}");
    }
}

#[test]
fn patient_ids_and_resource_types() {
    let f = facts("Bundle-b248b1b2-1686-4b94-9936-37d7a5f94b51.json");
    assert_eq!(f.resource_types, BTreeSet::from(["Patient".to_owned()]));
    assert!(f.patient_ids.len() >= 12, "{} ids", f.patient_ids.len());

    let f = facts("Bundle-micro.json");
    assert!(
        f.patient_ids.is_empty(),
        "micro bundle has no Patient resource"
    );
    assert!(f.resource_types.contains("DiagnosticReport"));

    let f = facts("Eliseo_Cummings_55c373ad-af55-46ed-8f69-9c7a40a89d46.json");
    assert!(f
        .patient_ids
        .contains("55c373ad-af55-46ed-8f69-9c7a40a89d46"));
    assert!(f.resource_types.contains("Claim") && f.resource_types.contains("Condition"));
    let debug = format!("{f:?}");
    assert!(!debug.contains("55c373ad"), "{debug}");
}

#[test]
fn security_labels_and_icd10_codes_count_anywhere_in_the_bundle() {
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {
            "resourceType": "Condition",
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "GDIS"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F20.9"}]},
            "contained": [{"resourceType": "Observation",
                           "code": {"coding": [{"system": "http://loinc.org", "code": "7918-6"}]}}]
        }}]
    });
    let bytes = serde_json::to_vec(&bundle).unwrap_or_default();
    let f = classify_fhir_bundle(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        f.categories,
        BTreeSet::from([
            Category::Genetic,
            Category::MentalHealth,
            Category::HivSti,
            Category::General
        ])
    );
    assert_eq!(f.matched_codes, 3);
    assert!(f.patient_ids.is_empty());
}

#[test]
fn classify_codes_always_includes_general() {
    assert_eq!(
        classify_codes(std::iter::empty()),
        BTreeSet::from([Category::General])
    );
    let got = classify_codes(
        [
            ("http://loinc.org", "55277-8"),
            ("http://snomed.info/sct", "7200002"),
        ]
        .into_iter(),
    );
    assert_eq!(
        got,
        BTreeSet::from([Category::HivSti, Category::SubstanceUse, Category::General])
    );
}

#[test]
fn truncated_and_corrupted_input_is_an_error_not_a_panic() {
    let bytes =
        std::fs::read(format!("{BUNDLES}Bundle-xds.json")).unwrap_or_else(|e| panic!("{e}"));
    let mut errors = 0;
    for cut in (0..bytes.len()).step_by(7) {
        if classify_fhir_bundle(&bytes[..cut]).is_err() {
            errors += 1;
        }
    }
    // Every strict prefix of a JSON object is invalid JSON.
    assert_eq!(errors, bytes.len().div_ceil(7));
    let mut corrupted = bytes.clone();
    for i in (0..corrupted.len()).step_by(13) {
        corrupted[i] = corrupted[i].wrapping_add(1);
        let _ = classify_fhir_bundle(&corrupted);
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(classify_fhir_bundle(deep.as_bytes()).is_err());
}
