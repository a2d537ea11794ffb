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

/// The test's rewriting tool, as a facility controlling its own disk would use it: from the
/// stopped node's store it builds a new one whose log lacks every entry of `victim` (padded
/// back to the size of the latest checkpoint with copies of another entry), with every hash
/// and the tree recomputed, a checkpoint of that size re-signed with the node's own key, and
/// the cosignatures and witness progress it held copied over; then swaps it in.
async fn rewrite_without(
    node_dir: &std::path::Path,
    key: &gateway_envelope::SigningKey,
    victim: [u8; 16],
    keep_cosignatures: bool,
) {
    use gateway_store::{AuditFilter, Store};
    let data = node_dir.join("data");
    let new_data = node_dir.join("data.rewritten");
    let old = Store::open(&data).unwrap();
    let entries = old.audit_list(&AuditFilter::default()).unwrap();
    let (size, _) = old.checkpoint_latest().unwrap().unwrap();
    let cosignatures = old.cosignatures(size).unwrap();
    let progress: Vec<(String, u64)> = ["clinic-b", "clinic-c"]
        .iter()
        .map(|w| (w.to_string(), old.cosigned_size(w).unwrap()))
        .collect();
    drop(old);
    let new = Store::open(&new_data).unwrap();
    let filler = entries
        .iter()
        .find(|e| e.record.transfer_id.is_none())
        .unwrap()
        .record
        .clone();
    let (head, tail): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.seq <= size);
    let mut kept = 0u64;
    for e in head
        .into_iter()
        .filter(|e| e.record.transfer_id != Some(victim))
    {
        new.audit_append(e.record).unwrap();
        kept += 1;
    }
    assert!(kept < size, "the victim had entries before the checkpoint");
    while new.audit_len() < size {
        new.audit_append(filler.clone()).unwrap();
    }
    for e in tail {
        new.audit_append(e.record).unwrap();
    }
    let origin = checkpoint::origin("hosp-a");
    let root = new.audit_tree_root(size).unwrap();
    new.checkpoint_put(size, &checkpoint::sign(&origin, size, root, key).unwrap())
        .unwrap();
    for line in cosignatures.into_iter().filter(|_| keep_cosignatures) {
        let text = String::from_utf8(line.clone()).unwrap();
        let name = text.split(' ').nth(1).unwrap().to_owned();
        new.cosignature_put(size, &name, &line).unwrap();
    }
    for (w, s) in progress {
        new.set_cosigned_size(&w, s).unwrap();
    }
    new.commit().await.unwrap();
    assert_eq!(
        new.audit_verify().map(|n| n >= size),
        Ok(true),
        "the chain itself verifies"
    );
    drop(new);
    // The rest of the data directory (the keyring) comes along; the old store is set aside.
    if data.join("keys").exists() {
        std::fs::rename(data.join("keys"), new_data.join("keys")).unwrap();
    }
    std::fs::rename(&data, node_dir.join("data.original")).unwrap();
    std::fs::rename(&new_data, &data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_rewritten_offline_fails_verification_naming_the_witness_and_is_refused_as_a_fork(
) {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let c = fed.start("clinic-c");
    let record = bundle_by_prefix("Chet_Thompson");
    a.consent_for_treatment(&patient_id(&record).unwrap(), "clinic-b")
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = a.send_bundle("clinic-b", &record).await.transfer_id();
        a.wait_state(&id, "delivered", Duration::from_secs(30))
            .await;
        ids.push(id);
    }
    let note = a.checkpoint_now().await;
    assert_eq!(split_note(&note).1.len(), 3, "cosigned by both: {note}");
    let (code, out, err) = a.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cosigned by [clinic-b, clinic-c]"), "{out}");
    let (code, out, err) = a.cli(&["audit", "verify", "--with-peers"]);
    assert_eq!(code, 0, "{out}{err}");
    for w in ["clinic-b", "clinic-c"] {
        assert!(
            out.contains(&format!("witness {w}: its checkpoint of")),
            "{out}"
        );
    }

    // Offline: the second transfer disappears from hosp-a's history.
    a.stop();
    let victim: [u8; 16] = hex::decode(&ids[1]).unwrap().try_into().unwrap();
    let key = common::signing_key(&fed.nodes["hosp-a"].dir);
    rewrite_without(&fed.nodes["hosp-a"].dir, &key, victim, true).await;
    let a = fed.start("hosp-a");

    // The chain holds, but the witnesses' cosignatures do not: verify fails and names one.
    let (code, out, err) = a.cli(&["audit", "verify"]);
    assert_eq!(code, 1, "a rewritten history verified: {out}");
    assert!(
        err.contains("the cosignature of witness clinic-b no longer matches the checkpoint"),
        "{err}"
    );
    // The next checkpoint submitted to the witnesses is refused as a fork, kept and alerted.
    let _ = a.checkpoint_now().await;
    for w in [&b, &c] {
        tests::assert_eventually!(
            Duration::from_secs(10),
            !w.audit_events("witness-conflict").await.is_empty(),
            "no witness-conflict on a witness"
        );
        let (_, held) = w.get("/v1/witness").await;
        let conflicts = held["conflicts"].as_array().unwrap();
        assert!(
            conflicts
                .iter()
                .any(|x| x["origin"] == "healthfed/hosp-a/audit"
                    && x["reason"]
                        .as_str()
                        .unwrap()
                        .contains("not an append-only extension")),
            "{held}"
        );
        assert!(w.log_text().contains("witness_conflict"));
    }
}

/// The witness route under abuse: a stranger's TLS identity, a note of an unknown origin or
/// with a bad signature, stale and oversized proofs, an oversized body, and a flood of
/// submissions: each refused, the witness's state unmoved, and the node still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_route_refuses_abuse_and_stays_responsive() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let record = bundle_by_prefix("Chet_Thompson");
    a.consent_for_treatment(&patient_id(&record).unwrap(), "clinic-b")
        .await;
    let id = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    let note = a.checkpoint_now().await;
    let (_, held) = b.get("/v1/witness").await;
    let held_size = held["logs"][0]["size"].as_u64().unwrap();
    let ca = common::ca_pem(&fed);
    let as_a = RawIdentity::from_node_dir(&fed.nodes["hosp-a"].dir);
    let key = common::signing_key(&fed.nodes["hosp-a"].dir);
    let hash = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);

    // A member of another federation does not get past the handshake.
    let other = Fed::new(&[("hosp-a", FacilityKind::Hospital)]);
    let stranger = RawIdentity::from_node_dir(&other.nodes["hosp-a"].dir);
    assert!(post(
        &b,
        &ca,
        add_checkpoint_body(held_size, &[], note.as_bytes()),
        &stranger
    )
    .await
    .is_err());
    // A log of an unknown origin, signed with hosp-a's own key: not hosp-a's log.
    let unknown = checkpoint::sign("healthfed/nobody/audit", held_size + 1, [1; 32], &key).unwrap();
    let (status, _) = post(
        &b,
        &ca,
        add_checkpoint_body(held_size, &[&hash], &unknown),
        &as_a,
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    // hosp-a's origin signed with another key (a bad signature).
    let other_key = common::signing_key(&fed.nodes["clinic-b"].dir);
    let forged = checkpoint::sign(
        &checkpoint::origin("hosp-a"),
        held_size + 1,
        [1; 32],
        &other_key,
    )
    .unwrap();
    let (status, body) = post(
        &b,
        &ca,
        add_checkpoint_body(held_size, &[&hash], &forged),
        &as_a,
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    // A stale size: 409 with the size held.
    let (status, body) = post(
        &b,
        &ca,
        add_checkpoint_body(held_size.saturating_sub(1), &[], note.as_bytes()),
        &as_a,
    )
    .await
    .unwrap();
    assert_eq!(status, 409);
    assert_eq!(String::from_utf8_lossy(&body).trim(), held_size.to_string());
    // A proof longer than any tree needs, and a body past the limit.
    let long: Vec<&str> = std::iter::repeat_n(hash.as_str(), 65).collect();
    let (status, _) = post(
        &b,
        &ca,
        add_checkpoint_body(held_size, &long, note.as_bytes()),
        &as_a,
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let huge = vec![b'a'; 128 * 1024];
    let (status, _) = post(&b, &ca, huge, &as_a).await.unwrap();
    assert_eq!(status, 413);

    // A flood: 300 submissions at once, half garbage, half valid-looking stale ones.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let body = if i % 2 == 0 {
            add_checkpoint_body(0, &[], note.as_bytes())
        } else {
            b"old 1\nnot base64!\n\n".to_vec()
        };
        let ca = ca.clone();
        let ident = RawIdentity::from_node_dir(&fed.nodes["hosp-a"].dir);
        let addr = b.dir.peer;
        tasks.push(tokio::spawn(async move {
            raw_peer_post(addr, &ca, &ident, "/v1/witness", body).await
        }));
    }
    for t in tasks {
        // An Err is a connection shed before it was served: bounded too.
        if let Ok((status, _)) = t.await.unwrap() {
            assert!(
                [400, 409, 503].contains(&status),
                "a flood submission got {status}"
            );
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // Nothing moved, nothing was cosigned by the flood, and the node still serves.
    let (_, after) = b.get("/v1/witness").await;
    assert_eq!(after["logs"][0]["size"], held_size, "{after}");
    assert!(after["conflicts"].as_array().unwrap().is_empty(), "{after}");
    assert!(b.audit_verifies().await);
    let id = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    let grown = a.checkpoint_now().await;
    assert!(
        grown.contains(&witness::witness_name("clinic-b")),
        "{grown}"
    );
}

/// A rewriter that also drops the cosignatures the node held passes the node's own verify (it
/// has nothing left to compare), but not `--with-peers`: each witness still holds the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_that_drops_the_cosignatures_is_caught_by_the_witnesses_views() {
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
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = a.send_bundle("clinic-b", &record).await.transfer_id();
        a.wait_state(&id, "delivered", Duration::from_secs(30))
            .await;
        ids.push(id);
    }
    let _ = a.checkpoint_now().await;
    a.stop();
    let victim: [u8; 16] = hex::decode(&ids[0]).unwrap().try_into().unwrap();
    let key = common::signing_key(&fed.nodes["hosp-a"].dir);
    rewrite_without(&fed.nodes["hosp-a"].dir, &key, victim, false).await;
    let a = fed.start("hosp-a");
    let (code, out, err) = a.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "the node alone cannot tell: {out}{err}");
    let (code, out, err) = a.cli(&["audit", "verify", "--with-peers"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("witness clinic-b's checkpoint of size")
            && err.contains("the log was changed after clinic-b witnessed it"),
        "{err}"
    );
}

/// `audit.witnesses` chooses who witnesses the log, `audit.max_witnesses` how many: with
/// `witnesses = ["clinic-c"]` only clinic-c cosigns; with the default list and
/// `max_witnesses = 1`, only the first active member by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witnesses_are_the_configured_members_at_most_max_witnesses() {
    let specs = [
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ];
    for (extra, expected, not_expected) in [
        (
            "\n[audit]\nwitnesses = [\"clinic-c\"]\n",
            "clinic-c",
            "clinic-b",
        ),
        ("\n[audit]\nmax_witnesses = 1\n", "clinic-b", "clinic-c"),
    ] {
        let fed = Fed::with_extra(&specs, extra);
        let a = fed.start("hosp-a");
        let b = fed.start("clinic-b");
        let c = fed.start("clinic-c");
        let record = bundle_by_prefix("Chet_Thompson");
        a.consent_for_treatment(&patient_id(&record).unwrap(), "clinic-b")
            .await;
        let id = a.send_bundle("clinic-b", &record).await.transfer_id();
        a.wait_state(&id, "delivered", Duration::from_secs(30))
            .await;
        let note = a.checkpoint_now().await;
        assert!(
            note.contains(&witness::witness_name(expected)),
            "{extra}: {note}"
        );
        assert!(
            !note.contains(&witness::witness_name(not_expected)),
            "{extra}: {note}"
        );
        let (w, other) = if expected == "clinic-b" {
            (&b, &c)
        } else {
            (&c, &b)
        };
        let (_, held) = w.get("/v1/witness").await;
        assert!(
            held["logs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["origin"] == "healthfed/hosp-a/audit"),
            "{held}"
        );
        let (_, held) = other.get("/v1/witness").await;
        assert!(
            !held["logs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["origin"] == "healthfed/hosp-a/audit"),
            "{extra}: {not_expected} witnesses hosp-a: {held}"
        );
    }
    // A typo is refused at start, with the key named.
    let fed = Fed::with_extra(&specs, "\n[audit]\nmax_witnesses = 0\n");
    let (code, _, err) = tests::gateway_cli(&[
        "check",
        "--config",
        &fed.nodes["hosp-a"].config_path.display().to_string(),
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("audit.max_witnesses"), "{err}");
}
