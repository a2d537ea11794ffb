//! Peers witness each other's audit logs over their mutual-TLS links (C2SP tlog-witness):
//! each checkpoint comes back cosigned by the other members; a checkpoint that forks or
//! rewrites what a witness holds is refused, kept as evidence and audited there; a submission
//! from an old size is told the size held; a witness that was down catches up.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use pki_tools::FacilityKind;

use gateway::evidence::{checkpoint, witness};
use tests::{bundle_by_prefix, patient_id, raw_peer_post, Fed, Node, RawIdentity};

/// `POST /v1/witness` to `node` over mutual TLS as `ident`.
async fn post(
    node: &Node,
    ca: &[u8],
    body: Vec<u8>,
    ident: &RawIdentity,
) -> Result<(u16, Vec<u8>), String> {
    raw_peer_post(node.dir.peer, ca, ident, "/v1/witness", body).await
}

/// The checkpoint text of a note (before the blank line) and its signature lines.
fn split_note(note: &str) -> (String, Vec<String>) {
    let (text, sigs) = note.split_once("\n\n").unwrap();
    (
        format!("{text}\n"),
        sigs.lines().map(|l| format!("{l}\n")).collect(),
    )
}

fn add_checkpoint_body(old: u64, proof: &[&str], note: &[u8]) -> Vec<u8> {
    let mut body = format!("old {old}\n").into_bytes();
    for p in proof {
        body.extend_from_slice(p.as_bytes());
        body.push(b'\n');
    }
    body.push(b'\n');
    body.extend_from_slice(note);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_cosign_each_others_checkpoints_and_refuse_a_rewritten_history() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let mut c = fed.start("clinic-c");
    let record = bundle_by_prefix("Chet_Thompson");
    a.consent_for_treatment(&patient_id(&record).unwrap(), "clinic-b")
        .await;
    let id = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;

    let key_of = |id: &str| common::signing_key(&fed.nodes[id].dir);
    let origin = checkpoint::origin("hosp-a");

    // One checkpoint, cosigned by both other members.
    let note = a.checkpoint_now().await;
    let (size, root) = checkpoint::open(
        note.as_bytes(),
        &origin,
        &[key_of("hosp-a").verifying_key()],
    )
    .unwrap();
    let (text, lines) = split_note(&note);
    assert_eq!(
        lines.len(),
        3,
        "the log's signature and two cosignatures: {note}"
    );
    for witness_id in ["clinic-b", "clinic-c"] {
        let name = witness::witness_name(witness_id);
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no cosignature by {witness_id}: {note}"));
        let public = key_of(witness_id).verifying_key();
        witness::verify_cosignature(line, &name, &public, text.as_bytes()).unwrap();
        // Not transferable to another checkpoint.
        let other = text.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
        assert!(witness::verify_cosignature(line, &name, &public, other.as_bytes()).is_err());
    }
    let (_, held) = b.get("/v1/witness").await;
    assert_eq!(held["logs"][0]["origin"], origin.as_str(), "{held}");
    assert_eq!(held["logs"][0]["size"], size, "{held}");

    // hosp-a's own key and TLS identity, as a facility rewriting its history would use them.
    let ca = common::ca_pem(&fed);
    let as_a = RawIdentity::from_node_dir(&fed.nodes["hosp-a"].dir);
    let forged = |size: u64, root: [u8; 32]| {
        checkpoint::sign(&origin, size, root, &key_of("hosp-a")).unwrap()
    };

    // A submission from a stale size is told the size held.
    let (status, body) = post(&b, &ca, add_checkpoint_body(0, &[], note.as_bytes()), &as_a)
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert_eq!(String::from_utf8_lossy(&body).trim(), size.to_string());

    // A longer tree whose history differs (a rewrite): no proof can join it; refused.
    let mut other_root = root;
    other_root[0] ^= 1;
    let some_hash = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    for (bad, label) in [
        (forged(size + 3, other_root), "rewrite"),
        (forged(size, other_root), "fork at the same size"),
        (forged(size - 1, root), "a smaller tree"),
    ] {
        let (status, body) = post(
            &b,
            &ca,
            add_checkpoint_body(size, &[&some_hash], &bad),
            &as_a,
        )
        .await
        .unwrap();
        assert_eq!(status, 422, "{label}: {}", String::from_utf8_lossy(&body));
    }
    let (_, held) = b.get("/v1/witness").await;
    assert_eq!(
        held["logs"][0]["size"], size,
        "what is held does not move: {held}"
    );
    assert_eq!(held["conflicts"].as_array().unwrap().len(), 3, "{held}");
    let audited = b.audit_events("witness-conflict").await;
    assert_eq!(audited.len(), 3, "{audited:#?}");
    assert!(audited.iter().all(|e| e["peer"] == "hosp-a"));
    assert!(b.log_text().contains("witness_conflict"));

    // Another member cannot submit hosp-a's log: the origin is the submitter's own.
    let as_c = RawIdentity::from_node_dir(&fed.nodes["clinic-c"].dir);
    let (status, _) = post(&b, &ca, add_checkpoint_body(0, &[], note.as_bytes()), &as_c)
        .await
        .unwrap();
    assert_eq!(status, 403);

    // A witness that was down catches up when it returns.
    c.stop();
    let id = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    let while_down = a.checkpoint_now().await;
    let (grown, _) = split_note(&while_down);
    assert!(while_down.contains(&witness::witness_name("clinic-b")));
    assert!(!while_down.contains(&witness::witness_name("clinic-c")));
    let _c = fed.start("clinic-c");
    let caught_up = a.checkpoint_now().await;
    let (same, lines) = split_note(&caught_up);
    assert_eq!(same, grown, "no new checkpoint was needed");
    let name = witness::witness_name("clinic-c");
    let line = lines
        .iter()
        .find(|l| l.contains(&name))
        .expect("clinic-c cosigned on its return");
    witness::verify_cosignature(
        line,
        &name,
        &key_of("clinic-c").verifying_key(),
        same.as_bytes(),
    )
    .unwrap();
    assert!(a.audit_verifies().await);
    assert!(b.audit_verifies().await);
}
