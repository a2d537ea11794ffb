//! Audit archives with real nodes: the head of a live log moves into a signed archive, the
//! archive and the live log verify as one history, transfers go on, proofs of later entries
//! and consistency from the archived checkpoint still verify, across a restart; a changed
//! archive, or one missing, is refused; `audit.keep_days` archives through the same path.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::Value;

use gateway_store::merkle::{verify_consistency, verify_inclusion, Hash};
use gateway_store::{AuditRecord, Store};
use tests::{bundle_by_prefix, patient_id, Fed, Node};

fn hash(v: &Value) -> Hash {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

async fn send_some(a: &Node, record: &[u8], n: usize) {
    for _ in 0..n {
        let id = a.send_bundle("clinic-b", record).await.transfer_id();
        a.wait_state(&id, "delivered", Duration::from_secs(30))
            .await;
    }
}

fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn now_ms() -> u64 {
    common::now_ms()
}

/// (size, root) of a checkpoint note, with the node's own key.
fn opened(fed: &Fed, note: &str) -> (u64, Hash) {
    let key = common::signing_key(&fed.nodes["hosp-a"].dir).verifying_key();
    gateway::evidence::checkpoint::open(
        note.as_bytes(),
        &gateway::evidence::checkpoint::origin("hosp-a"),
        &[key],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_log_is_archived_and_archive_plus_live_keep_every_proof() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let _c = fed.start("clinic-c");
    let record = bundle_by_prefix("Chet_Thompson");
    a.consent_for_treatment(&patient_id(&record).unwrap(), "clinic-b")
        .await;
    send_some(&a, &record, 3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    send_some(&a, &record, 3).await;
    let before_note = a.checkpoint_now().await;
    let (before_size, before_root) = opened(&fed, &before_note);
    let live_before = a.audit().await.len();

    let work = tempfile::tempdir().unwrap();
    let first = work.path().join("first.json");
    let first_s = first.display().to_string();
    let (code, out, err) = a.cli(&[
        "audit",
        "archive",
        "--before",
        &rfc3339_ms(cutoff),
        "--out",
        &first_s,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let archived_through: u64 = out
        .split("archived entries 1-")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        archived_through > 5 && archived_through < before_size,
        "about half archived: {archived_through} of {before_size}"
    );
    // Gone from the live log (listing), kept in the node's archive directory too.
    let listed = a.audit().await;
    assert!(listed
        .iter()
        .all(|e| e["seq"].as_u64().unwrap() > archived_through));
    assert!(listed.len() < live_before);
    let kept = std::fs::read_dir(fed.nodes["hosp-a"].dir.join("data/audit-archives"))
        .unwrap()
        .count();
    assert_eq!(kept, 1);

    // Archive + live verify together; live alone says what is archived.
    let (code, out, err) = a.cli(&["audit", "verify", "--archive", &first_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "archive of entries 1 to {archived_through} verified"
        )),
        "{out}"
    );
    assert!(out.contains("cosigned by [clinic-b, clinic-c]"), "{out}");
    assert!(out.contains("verified with the live log"), "{out}");
    let (code, out, _) = a.cli(&["audit", "verify"]);
    assert_eq!(code, 0);
    assert!(out.contains("pass --archive"), "{out}");

    // Keep sending; restart in between; proofs of later entries and consistency from the
    // checkpoint taken before the archive still verify.
    send_some(&a, &record, 2).await;
    a.stop();
    let a = fed.start("hosp-a");
    send_some(&a, &record, 2).await;
    let after_note = a.checkpoint_now().await;
    let (after_size, after_root) = opened(&fed, &after_note);
    for seq in [archived_through + 1, before_size, after_size] {
        let (status, proof) = a
            .get(&format!(
                "/v1/audit/tree/inclusion?seq={seq}&size={after_size}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{proof}");
        let path: Vec<Hash> = proof["path"].as_array().unwrap().iter().map(hash).collect();
        verify_inclusion(
            seq - 1,
            after_size,
            &hash(&proof["leaf_hash"]),
            &path,
            &after_root,
        )
        .unwrap_or_else(|e| panic!("entry {seq}: {e}"));
    }
    for first_size in [before_size, archived_through - 1] {
        let (status, proof) = a
            .get(&format!(
                "/v1/audit/tree/consistency?first={first_size}&second={after_size}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{proof}");
        let proof: Vec<Hash> = proof["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(hash)
            .collect();
        let first_root = if first_size == before_size {
            before_root
        } else {
            let (_, head) = a.get(&format!("/v1/audit/tree?size={first_size}")).await;
            hash(&head["root_hash"])
        };
        verify_consistency(first_size, after_size, &first_root, &after_root, &proof).unwrap();
    }
    let (code, out, err) = a.cli(&["audit", "verify", "--archive", &first_s]);
    assert_eq!(code, 0, "after the restart: {out}{err}");

    // A second archive continues the first; both verify with the live log, in order only.
    let second = work.path().join("second.json");
    let second_s = second.display().to_string();
    let (code, out, err) = a.cli(&[
        "audit",
        "archive",
        "--before",
        &rfc3339_ms(now_ms()),
        "--out",
        &second_s,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("archived entries {}-", archived_through + 1)),
        "{out}"
    );
    let (code, out, err) = a.cli(&["audit", "verify", "--archive", &first_s, &second_s]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = a.cli(&["audit", "verify", "--archive", &second_s]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the archive of the entries before is missing"),
        "{err}"
    );
    let (code, _, err) = a.cli(&["audit", "verify", "--archive", &first_s]);
    assert_eq!(code, 1);
    assert!(err.contains("the live log continues after seq"), "{err}");
    let (code, _, err) = a.cli(&["audit", "verify", "--archive", &second_s, &first_s]);
    assert_eq!(code, 1, "{err}");

    // A changed archive is refused, naming the part.
    let bytes = std::fs::read(&first).unwrap();
    let mut file: gateway::evidence::archive::ArchiveFile = serde_json::from_slice(&bytes).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entry = b64.decode(&file.entries[2]).unwrap();
    let last = entry.len() - 1;
    entry[last] ^= 1;
    file.entries[2] = b64.encode(entry);
    let bad = work.path().join("bad.json");
    std::fs::write(&bad, file.to_bytes()).unwrap();
    let (code, _, err) = a.cli(&[
        "audit",
        "verify",
        "--archive",
        &bad.display().to_string(),
        &second_s,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("archive 1: signature"), "{err}");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    std::fs::write(&bad, &flipped).unwrap();
    let (code, _, err) = a.cli(&[
        "audit",
        "verify",
        "--archive",
        &bad.display().to_string(),
        &second_s,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(a.audit_verifies().await);
    // Each archive is audited; the first one's entry is itself in the second archive.
    let archived = a.audit_events("audit-archived").await;
    assert_eq!(archived.len(), 1, "{archived:#?}");
    let reason = archived[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("entries {} to ", archived_through + 1)),
        "{reason}"
    );
}

/// `audit.keep_days` runs the same path: entries older than that (written offline with their
/// old times, as a long-running log would have them) are archived at the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_days_archives_old_entries_through_the_same_path() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        "\n[audit]\nkeep_days = 30\n",
    );
    let old = now_ms() - 40 * 86_400_000;
    {
        let store = Store::open(&fed.nodes["hosp-a"].dir.join("data")).unwrap();
        for i in 0..5u64 {
            store
                .audit_append(AuditRecord {
                    time_ms: old + i,
                    event: "submitted".into(),
                    transfer_id: None,
                    peer: Some("clinic-b".into()),
                    patient_ref: Some("Patient/old".into()),
                    purpose: Some("treatment".into()),
                    clinician: None,
                    outcome: "queued".into(),
                    reason: None,
                    policy_ids: Vec::new(),
                    break_glass: false,
                })
                .unwrap();
        }
        store.commit().await.unwrap();
    }
    let _b = fed.start("clinic-b");
    let a = fed.start("hosp-a");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !a.log_text().contains("audit retention: entries archived") {
        assert!(std::time::Instant::now() < deadline, "{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = fed.nodes["hosp-a"].dir.join("data/audit-archives");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let archive = files[0].display().to_string();
    let (code, out, err) = a.cli(&["audit", "verify", "--archive", &archive]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("archive of entries 1 to 5 verified"), "{out}");
    assert!(a
        .audit()
        .await
        .iter()
        .all(|e| e["seq"].as_u64().unwrap() > 5));
}
