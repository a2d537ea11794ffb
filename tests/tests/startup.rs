//! A node refuses to start when any of its private key files is readable by group or others.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use pki_tools::FacilityKind;

use tests::Fed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refuses_to_start_with_a_group_readable_private_key() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let dir = fed.nodes["hosp-a"].dir.clone();
    let log = dir.join("node.log");
    for file in ["tls.key", "signing.key", "encryption.key"] {
        let path = dir.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let log_before = std::fs::read_to_string(&log).unwrap_or_default().len();
        let mut node = fed.spawn("hosp-a");
        let code = node.wait_exit(Duration::from_secs(20));
        assert_eq!(
            code,
            Some(64),
            "{file} mode 0640: expected exit 64\n{}",
            node.log_text()
        );
        let new_log = node
            .log_text()
            .get(log_before..)
            .unwrap_or_default()
            .to_owned();
        assert!(
            new_log.contains(file),
            "the refusal does not name {file}: {new_log}"
        );
        assert!(
            std::net::TcpStream::connect(fed.nodes["hosp-a"].local).is_err(),
            "the local API must not be listening"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Control: with every key back at 0600 the same node starts and answers.
    let node = fed.start("hosp-a");
    let (status, _) = node.get("/v1/transfers").await;
    assert_eq!(status, http::StatusCode::OK);
}

/// A store written before state changes and their audit entries shared a transaction can hold
/// transfers without their `submitted`/`delivered` entries. The first start writes them, once
/// (a later start neither repeats them nor scans the outbox for them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_backfills_missing_audit_entries_once() {
    use gateway_store::{OutboxEntry, Store, TransferState, TransferSummary};

    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let data_dir = fed.config("hosp-a").data_dir;
    let entry = |n: u8, state| OutboxEntry {
        transfer_id: [n; 16],
        recipient: "clinic-b".into(),
        state,
        created_ms: 1_790_000_000_000 + u64::from(n),
        updated_ms: 1_790_000_000_000 + u64::from(n),
        attempts: 1,
        next_attempt_ms: 0,
        last_error: None,
        envelope_len: 100,
        payload_len: 90,
        payload_digest: [n; 32],
        receipt: Some(vec![1; 64]),
        summary: TransferSummary {
            patient_ref: "pat-1".into(),
            purpose: "treatment".into(),
            clinician: None,
            content_type: "application/fhir+json".into(),
            categories: vec!["general".into()],
            break_glass: false,
        },
        request_id: None,
    };
    // As an old version left them: entries written without their audit entries.
    {
        let store = Store::open(&data_dir).unwrap();
        store
            .outbox_insert(&entry(1, TransferState::Delivered))
            .unwrap();
        store
            .outbox_insert(&entry(2, TransferState::Cancelled))
            .unwrap();
        store.commit().await.unwrap();
    }
    let recorded = |audit: &[serde_json::Value]| -> Vec<(String, String)> {
        audit
            .iter()
            .filter(|e| {
                e["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("recorded at restart"))
            })
            .map(|e| {
                (
                    e["transfer_id"].as_str().unwrap().to_owned(),
                    e["event"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (one, two) = ("01".repeat(16), "02".repeat(16));
    let mut a = fed.start("hosp-a");
    let first = recorded(&a.audit().await);
    assert_eq!(
        first,
        [
            (one.clone(), "submitted".to_owned()),
            (one.clone(), "delivered".to_owned()),
            (two.clone(), "submitted".to_owned()),
        ],
        "both transfers get `submitted`, the delivered one `delivered`"
    );
    assert!(a.audit_verifies().await);
    a.stop();

    // Another old-format entry appears after the job ran: the job is not run again.
    {
        let store = Store::open(&data_dir).unwrap();
        assert!(store.job_done("outbox-audit-pairs").unwrap());
        store
            .outbox_insert(&entry(3, TransferState::Delivered))
            .unwrap();
        store.commit().await.unwrap();
    }
    let a = fed.start("hosp-a");
    assert_eq!(recorded(&a.audit().await), first);
    let (status, view) = a.get(&format!("/v1/transfers/{two}")).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(view["state"], "cancelled");
}
