//! Two real nodes: every bundle in the test data is delivered byte-identical, with a verified
//! receipt, and is encrypted at rest.

use std::time::Duration;

use pki_tools::FacilityKind;
use serde_json::json;

use tests::{bundles, patient_id, patient_names, Fed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bundle_is_delivered_byte_identical_with_a_verified_receipt() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let mut sent = Vec::new();
    for (name, bytes) in bundles() {
        // Most Synthea bundles hold sensitive categories: record the patient's explicit consent
        // naming the recipient, as the default policies require (policy tests cover refusals).
        if let Some(patient) = patient_id(&bytes) {
            let (status, body) = a
                .post_json(
                    "/v1/consents",
                    json!({"patient": patient, "effect": "permit", "facilities": ["clinic-b"],
                           "purposes": ["treatment"], "recorded_by": "test"}),
                )
                .await;
            assert_eq!(status, http::StatusCode::CREATED, "{body}");
        }
        let submitted = a.send_bundle("clinic-b", &bytes).await;
        sent.push((name, bytes, submitted.transfer_id()));
    }
    assert_eq!(sent.len(), bundles().len());
    for (name, bytes, id) in &sent {
        let view = a.wait_state(id, "delivered", Duration::from_secs(60)).await;
        assert_eq!(view["receipt_held"], true, "{name}");
        let got = b.fetch(id).await;
        assert!(
            got == *bytes,
            "{name}: fetched payload differs from what was sent"
        );
    }
    assert_eq!(b.inbox().await.len(), sent.len());
    assert!(a.audit_verifies().await);
    assert!(b.audit_verifies().await);

    drop(a);
    drop(b);
    // No plaintext at rest: no file of either node's store holds a patient name from the bundles.
    let names: Vec<String> = sent.iter().flat_map(|(_, b, _)| patient_names(b)).collect();
    assert!(!names.is_empty());
    for node in ["hosp-a", "clinic-b"] {
        let data = fed.nodes[node].dir.join("data");
        for entry in walk(&data) {
            // Names are ASCII: a lossy view keeps them intact and lets std's (optimized)
            // substring search do the scan.
            let content = std::fs::read(&entry).unwrap();
            let content = String::from_utf8_lossy(&content);
            for name in &names {
                assert!(
                    !content.contains(name.as_str()),
                    "{} contains a patient name in plaintext",
                    entry.display()
                );
            }
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
