//! Every action on patient data or on the audit log itself leaves an audit entry naming who
//! acted (the API token's name): acknowledgements, consent changes, records stored for pull
//! requests, and reads of the audit log. State changes and their entries are one transaction:
//! a node killed right after answering still holds both.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::time::Duration;

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::{json, Value};

use tests::{bundle_by_prefix, patient_id, Fed};

/// The harness's API token is named `cli` in every node's config.
const TOKEN_NAME: &str = "cli";

fn reason(e: &Value) -> &str {
    e["reason"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_consents_and_record_puts_are_audited_with_who_and_survive_a_kill() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let record = bundle_by_prefix("Chet_Thompson");
    let patient = patient_id(&record).unwrap();
    a.consent_for_treatment(&patient, "clinic-b").await;

    let sent = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&sent, "delivered", Duration::from_secs(30))
        .await;

    // Acknowledged twice: both calls are recorded, the second as a repeat.
    for _ in 0..2 {
        let (status, body) = b
            .post_json(&format!("/v1/inbox/{sent}/ack"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A consent recorded, then revoked.
    let (status, body) = b
        .post_json(
            "/v1/consents",
            json!({"patient": patient, "effect": "permit", "facilities": ["hosp-a"],
                "purposes": ["treatment"], "recorded_by": "dr-test"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let directive = body["directive_id"].as_str().unwrap().to_owned();
    let (status, body) = b
        .post_json(&format!("/v1/consents/{directive}/revoke"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A record stored for pull requests.
    assert_eq!(b.put_record(&patient, &record).await, StatusCode::CREATED);

    // Killed without a clean shutdown right after the last answer: what was answered is on
    // disk, state and entry alike.
    b.kill9();
    let b = fed.start("clinic-b");

    let acks: Vec<Value> = b.audit_events("acknowledged").await;
    let outcomes: Vec<&str> = acks
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["acknowledged", "already-acknowledged"],
        "{acks:#?}"
    );
    for e in &acks {
        assert_eq!(e["transfer_id"], sent.as_str());
        assert_eq!(e["peer"], "hosp-a");
        assert!(reason(e).contains(TOKEN_NAME), "{e}");
    }
    let inbox = b.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["acknowledged"], true, "{inbox:#?}");

    let consents = b.audit_events("consent-changed").await;
    let outcomes: Vec<&str> = consents
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["recorded", "revoked"], "{consents:#?}");
    for e in &consents {
        assert_eq!(e["patient"], patient.as_str());
        assert!(reason(e).contains(&directive), "{e}");
        assert!(reason(e).contains(TOKEN_NAME), "{e}");
    }
    let (status, listed) = b.get(&format!("/v1/consents?patient={patient}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed.as_array().unwrap()[0]["revoked_at"].is_number(),
        "{listed}"
    );

    let stored = b.audit_events("record-stored").await;
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(stored[0]["patient"], patient.as_str());
    assert!(reason(&stored[0]).contains(TOKEN_NAME));
    assert!(b.audit_verifies().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_of_the_audit_log_is_itself_audited_and_paging_still_ends() {
    let fed = Fed::new(&[("hosp-a", FacilityKind::Hospital)]);
    let a = fed.start("hosp-a");
    let record = bundle_by_prefix("Chet_Thompson");
    let patient = patient_id(&record).unwrap();
    // Some entries to page through.
    for _ in 0..3 {
        assert_eq!(a.put_record(&patient, &record).await, StatusCode::CREATED);
    }

    // Pages of one entry: each page request appends an `audit-read` entry, so without the
    // listing's snapshot a client following `Link: next` would never reach the end.
    let mut pages = 0;
    let mut seen = Vec::new();
    let mut next = Some("/v1/audit?limit=1".to_owned());
    while let Some(path) = next.take() {
        let page = a.api().page(&path).await.unwrap();
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        seen.extend(page.body.as_array().cloned().unwrap_or_default());
        next = page.next;
        pages += 1;
        assert!(pages < 50, "paging did not end");
    }
    // The listing ends with its own first read: three record puts, then that read.
    let events: Vec<&str> = seen.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        events.iter().filter(|e| **e == "record-stored").count(),
        3,
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&"audit-read"), "{events:?}");

    // Afterwards the log holds one read per page requested, each naming the token.
    let (status, v) = a.get("/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let reads = a.audit_events("audit-read").await;
    // `pages` page reads, one verification, and the read made by `audit_events` itself.
    assert_eq!(reads.len(), pages + 2, "{reads:#?}");
    assert!(reads.iter().all(|e| reason(e).contains(TOKEN_NAME)));
    assert!(reads
        .iter()
        .any(|e| reason(e).starts_with("audit chain verified")));

    // A read filtered by patient is itself filed under that patient: a patient asking who
    // looked at their records also learns who looked at their audit trail.
    let (status, _) = a.get(&format!("/v1/audit?patient={patient}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, by_patient) = a.get(&format!("/v1/audit?patient={patient}")).await;
    assert_eq!(status, StatusCode::OK);
    let patient_reads: Vec<&Value> = by_patient
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "audit-read")
        .collect();
    assert_eq!(patient_reads.len(), 2, "{by_patient:#}");
    assert!(reason(patient_reads[0]).contains("by patient"));
    assert!(!reason(patient_reads[0]).contains(&patient));
}
