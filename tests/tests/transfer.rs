//! Two real nodes: every bundle in the test data is delivered byte-identical, with a verified
//! receipt, and is encrypted at rest.

use std::time::Duration;

use pki_tools::FacilityKind;

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
    let mut several = 0;
    for (name, bytes) in bundles() {
        // A bundle holding several patients' records is refused with their count: one patient
        // per transfer (the two official examples of that kind).
        let patients = policies::classify::classify_content(&bytes)
            .unwrap()
            .patient_count();
        if patients > 1 {
            let refused = a.send_bundle("clinic-b", &bytes).await;
            assert_eq!(refused.status, http::StatusCode::BAD_REQUEST, "{name}");
            let error = refused.body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(&format!("{patients} patients")),
                "{name}: {error}"
            );
            several += 1;
            continue;
        }
        // Most Synthea bundles hold sensitive categories: record the patient's explicit consent
        // naming the recipient, as the default policies require (policy tests cover refusals).
        if let Some(patient) = patient_id(&bytes) {
            a.consent_for_treatment(&patient, "clinic-b").await;
        }
        let submitted = a.send_bundle("clinic-b", &bytes).await;
        sent.push((name, bytes, submitted.transfer_id()));
    }
    assert_eq!(several, 2, "the shared data has two multi-patient bundles");
    assert_eq!(sent.len() + several, bundles().len());
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

/// `POST /v1/transfers?wait=receipt` answers once the receipt is verified (200), each waiting
/// caller with its own transfer's outcome, and answers a cancelled transfer with 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_receipt_answers_each_caller_with_its_own_outcome() {
    use axum::body::Body;
    use gateway::cli::client::collect_json;
    use http::{Method, StatusCode};

    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let bundle = tests::bundle_by_prefix("Clemente_Kreiger");
    let patient = patient_id(&bundle).unwrap();
    let path =
        format!("/v1/transfers?to=clinic-b&patient={patient}&purpose=treatment&wait=receipt");
    let post = |api: gateway::cli::client::ApiClient, path: String, body: Vec<u8>| async move {
        let resp = api
            .call(
                Method::POST,
                &path,
                Body::from(body),
                Some("application/fhir+json"),
            )
            .await
            .unwrap();
        collect_json(resp).await.unwrap()
    };

    // Six callers at once: each gets 200 for its own, delivered transfer.
    let calls: Vec<_> = (0..6)
        .map(|_| tokio::spawn(post(a.api(), path.clone(), bundle.clone())))
        .collect();
    let mut ids = Vec::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], "delivered", "{body}");
        let id = body["transfer_id"].as_str().unwrap().to_owned();
        assert_eq!(a.transfer(&id).await["receipt_held"], true);
        assert_eq!(b.fetch(&id).await, bundle);
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "every caller got its own transfer");

    // The recipient is down: the transfer stays queued until it is cancelled, and the waiting
    // caller then hears it was not delivered.
    b.kill9();
    let waiting = tokio::spawn(post(a.api(), path.clone(), bundle.clone()));
    let id = loop {
        let (status, list) = a
            .api()
            .json(Method::GET, "/v1/transfers", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let pending = list.as_array().unwrap().iter().find_map(|t| {
            (t["state"] != "delivered").then(|| t["transfer_id"].as_str().unwrap().to_owned())
        });
        if let Some(id) = pending {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = a
            .api()
            .json(Method::POST, &format!("/v1/transfers/{id}/cancel"), None)
            .await
            .unwrap();
        if status == StatusCode::OK {
            break;
        }
        // Refused while a delivery attempt owns it; try again shortly.
        assert!(
            std::time::Instant::now() < deadline,
            "never cancelled: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting caller was answered")
        .unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["state"], "cancelled", "{body}");
}
