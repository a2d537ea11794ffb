//! The audit log's evidence, as an inspector outside the facility checks it: a signed C2SP
//! checkpoint that opens with the facility's signing key (the key its directory entry lists),
//! inclusion proofs of every entry against the checkpoint's root, and a consistency proof
//! from an earlier checkpoint to a later one, across a restart.

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

use gateway::evidence::checkpoint;
use gateway_store::merkle::{verify_consistency, verify_inclusion, Hash};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_open_with_the_directory_key_and_every_entry_is_proven_in_them() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let record = bundle_by_prefix("Chet_Thompson");
    a.consent_for_treatment(&patient_id(&record).unwrap(), "clinic-b")
        .await;
    send_some(&a, &record, 3).await;

    // What an inspector holds: the facility's signing key as the directory lists it.
    let key = common::signing_key(&fed.nodes["hosp-a"].dir).verifying_key();
    let origin = checkpoint::origin("hosp-a");

    let first_note = a.checkpoint_now().await;
    assert!(
        first_note.starts_with("healthfed/hosp-a/audit\n"),
        "{first_note}"
    );
    let (first_size, first_root) =
        checkpoint::open(first_note.as_bytes(), &origin, &[key]).unwrap();
    assert!(first_size >= 10, "{first_size}");
    // The node serves the same head for that size, and keeps the note.
    let (_, head) = a.get(&format!("/v1/audit/tree?size={first_size}")).await;
    assert_eq!(hash(&head["root_hash"]), first_root);
    // Every entry up to the checkpoint is in it.
    for seq in 1..=first_size {
        let (status, proof) = a
            .get(&format!(
                "/v1/audit/tree/inclusion?seq={seq}&size={first_size}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{proof}");
        let path: Vec<Hash> = proof["path"].as_array().unwrap().iter().map(hash).collect();
        verify_inclusion(
            seq - 1,
            first_size,
            &hash(&proof["leaf_hash"]),
            &path,
            &first_root,
        )
        .unwrap_or_else(|e| panic!("entry {seq}: {e}"));
    }
    // A forged note (another size) does not open; a key the directory does not list neither.
    let forged = first_note.replacen(&format!("\n{first_size}\n"), "\n1\n", 1);
    assert!(checkpoint::open(forged.as_bytes(), &origin, &[key]).is_err());
    let stranger = common::signing_key(&fed.nodes["clinic-b"].dir).verifying_key();
    assert!(checkpoint::open(first_note.as_bytes(), &origin, &[stranger]).is_err());

    // More traffic and a restart; the node signs a checkpoint of the grown log at start.
    send_some(&a, &record, 2).await;
    a.stop();
    let a = fed.start("hosp-a");
    // The checkpointer's first round runs as the node starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.log_text().contains("audit checkpoint signed") {
        assert!(std::time::Instant::now() < deadline, "{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second_note = a.checkpoint_now().await;
    let (second_size, second_root) =
        checkpoint::open(second_note.as_bytes(), &origin, &[key]).unwrap();
    assert!(second_size > first_size, "{second_size} after {first_size}");
    let (status, proof) = a
        .get(&format!(
            "/v1/audit/tree/consistency?first={first_size}&second={second_size}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{proof}");
    let proof: Vec<Hash> = proof["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(hash)
        .collect();
    verify_consistency(first_size, second_size, &first_root, &second_root, &proof).unwrap();
    // The same proof does not make a different history consistent.
    let mut other_root = first_root;
    other_root[0] ^= 1;
    assert!(
        verify_consistency(first_size, second_size, &other_root, &second_root, &proof).is_err()
    );

    // Both notes are kept, by size.
    let (status, kept) = a
        .get(&format!("/v1/audit/checkpoint?size={first_size}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept.as_str(), Some(first_note.as_str()));
    let (status, _) = a.get("/v1/audit/tree/inclusion?seq=1&size=999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(a.audit_verifies().await);
}
