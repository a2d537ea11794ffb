//! Every official FHIR R4 Consent example in tests/testdata/fhir/consent is imported with
//! `gateway consent import` against a running node, or refused with a reason; the per-file
//! outcome matches what the policies crate's own import tests expect
//! (policies/tests/consent_import.rs), and imported directives take effect.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{testdata, Fed};

/// File → Ok(patient the directive is for) or Err(substring of the refusal reason).
/// Mirrors policies/tests/consent_import.rs.
const EXPECTED: [(&str, Result<&str, &str>); 12] = [
    ("Emergency", Ok("f001")),
    ("Out", Ok("f001")),
    ("basic", Ok("f001")),
    ("notOrg", Ok("f001")),
    ("notTime", Ok("f001")),
    ("grantor", Err("not a facility")),
    ("notThem", Err("not a facility")),
    ("notAuthor", Err("custodian or author")),
    ("notThis", Err("provision.data")),
    ("pkb", Err("security label N")),
    ("signature", Err("not a facility")),
    ("smartonfhir", Err("nested provisions")),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fhir_consent_example_is_imported_or_refused_with_a_reason() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");

    // The test data holds exactly these twelve files.
    let mut on_disk: Vec<String> = std::fs::read_dir(testdata("fhir/consent"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = EXPECTED
        .iter()
        .map(|(n, _)| format!("Consent-consent-example-{n}.json"))
        .collect();
    expected.sort();
    assert_eq!(on_disk, expected);

    let mut imported_ids = Vec::new();
    for (name, outcome) in EXPECTED {
        let path = testdata(&format!("fhir/consent/Consent-consent-example-{name}.json"));
        let (code, out, err) = a.cli(&["consent", "import", path.to_str().unwrap()]);
        match outcome {
            Ok(patient) => {
                assert_eq!(code, 0, "{name}: {out}{err}");
                let ids: Vec<&str> = out
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                assert_eq!(ids.len(), 1, "{name}: one directive id expected: {out:?}");
                // The printed id is the stored directive, with its FHIR source.
                let (status, stored) = a.get(&format!("/v1/consents?patient={patient}")).await;
                assert_eq!(status, StatusCode::OK);
                let d = stored
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|d| d["id"] == ids[0])
                    .unwrap_or_else(|| panic!("{name}: {} not stored: {stored}", ids[0]))
                    .clone();
                assert_eq!(
                    d["source"],
                    format!("fhir:Consent/consent-example-{name}"),
                    "{name}: {d}"
                );
                imported_ids.push(ids[0].to_owned());
            }
            Err(reason) => {
                assert_eq!(code, 1, "{name}: refusal must exit 1: {out}{err}");
                assert!(
                    out.trim().is_empty(),
                    "{name}: refused import printed ids: {out}"
                );
                assert!(err.contains("consent not imported"), "{name}: {err}");
                assert!(
                    err.contains(reason),
                    "{name}: expected {reason:?} in {err:?}"
                );
                assert!(
                    !err.contains("Patient/"),
                    "{name}: reason names the patient: {err}"
                );
            }
        }
    }

    // Nothing from a refused file reached the store: only the five imports exist, and the
    // patients of refused-only examples have no directives.
    let (_, f001) = a.get("/v1/consents?patient=f001").await;
    let mut stored: Vec<String> = f001
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    stored.sort();
    imported_ids.sort();
    assert_eq!(stored, imported_ids);
    for patient in ["example", "72", "xcda"] {
        let (_, v) = a.get(&format!("/v1/consents?patient={patient}")).await;
        assert_eq!(v.as_array().map(Vec::len), Some(0), "{patient}: {v}");
    }
    let imported_audit: Vec<Value> = a
        .audit_events("consent-changed")
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "imported")
        .collect();
    assert_eq!(imported_audit.len(), 5);

    // The imported opt-out (consent-example-Out) is in force: patient f001's general data is
    // denied to any facility for treatment, while another patient's is not.
    let (code, out, _) = a.cli(&[
        "policy",
        "check",
        "--to",
        "clinic-b",
        "--patient",
        "f001",
        "--purpose",
        "treatment",
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("forbid-patient-deny"), "{out}");
    let (code, out, _) = a.cli(&[
        "policy",
        "check",
        "--to",
        "clinic-b",
        "--patient",
        "someone-else",
        "--purpose",
        "treatment",
    ]);
    assert_eq!(code, 0, "{out}");

    // A file that is not JSON is refused too, with a reason.
    let junk = fed.dir.path().join("junk.json");
    std::fs::write(&junk, b"not json").unwrap();
    let (code, _, err) = a.cli(&["consent", "import", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not JSON"), "{err}");
}
