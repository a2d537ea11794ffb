//! Envelope retention on two real nodes: once a transfer is delivered (sender) or acknowledged
//! (receiver) and its retention has run out, the sealed envelope is removed, the removal is
//! audited and the API says so; envelopes still needed stay.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::{json, Value};

use tests::{bundles, patient_id, Fed, Node};

/// Retention 0 h, swept every second: what is settled goes at the next sweep.
const RETENTION: &str = "\n[retention]\nenvelope_hours = 0\nsweep_interval_secs = 1\n";

/// Polls `view` (≤ 15 s) until its `envelope_removed_ms` is set.
async fn wait_removed(node: &Node, what: &str, view: impl AsyncFn() -> Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = view().await;
        if v["envelope_removed_ms"].is_u64() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: envelope not removed: {v}\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls (≤ 10 s) until `path` is gone: the API reports a removal once it is committed, and the
/// file is unlinked just after.
async fn wait_gone(path: PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() {
        assert!(Instant::now() < deadline, "{} still exists", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_envelopes_are_removed_after_retention_and_needed_ones_kept() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        RETENTION,
    );
    // Every envelope in a file of its own, so that its removal shows on disk: a record in a
    // spool segment stays until its whole segment goes (the store's tests cover that path).
    for node in fed.nodes.values() {
        let text = std::fs::read_to_string(&node.config_path).unwrap();
        let text = text.replacen("[node]\n", "[node]\nspool_segment_kib = 0\n", 1);
        std::fs::write(&node.config_path, text).unwrap();
    }
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");

    let mut sent = Vec::new();
    let one_patient = bundles()
        .into_iter()
        .filter(|(_, bytes)| patient_id(bytes).is_some());
    for (_, bytes) in one_patient.take(2) {
        let patient = patient_id(&bytes).expect("bundle names its patient");
        a.consent_for_treatment(&patient, "clinic-b").await;
        let id = a.send_bundle("clinic-b", &bytes).await.transfer_id();
        sent.push((id, bytes));
    }
    let (acked, acked_bytes) = &sent[0];
    let (unacked, unacked_bytes) = &sent[1];

    // Sender: delivered transfers lose their sealed envelope; entry and receipt stay.
    for (id, _) in &sent {
        a.wait_state(id, "delivered", Duration::from_secs(30)).await;
        let view = wait_removed(&a, "outbox", || a.transfer(id)).await;
        assert_eq!(view["state"], "delivered");
        assert_eq!(view["receipt_held"], true);
        wait_gone(a.spool_path("outbox", id)).await;
    }

    // Receiver: nothing goes before the EMR acknowledges it.
    assert_eq!(b.fetch(acked).await, *acked_bytes);
    assert!(b.spool_path("inbox", acked).exists());
    let (status, body) = b
        .post_json(&format!("/v1/inbox/{acked}/ack"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let inbox_entry = |id: String| {
        let b = &b;
        async move || {
            b.inbox()
                .await
                .into_iter()
                .find(|e| e["transfer_id"] == id.as_str())
                .unwrap_or(Value::Null)
        }
    };
    wait_removed(&b, "inbox", inbox_entry(acked.clone())).await;
    wait_gone(b.spool_path("inbox", acked)).await;
    for path in ["", "/payload"] {
        let (status, body) = b.get(&format!("/v1/inbox/{acked}{path}")).await;
        assert_eq!(status, StatusCode::GONE, "{path}: {body}");
        assert!(
            body.to_string().contains("removed after acknowledgement"),
            "{body}"
        );
    }

    // What an operator sees: the CLI names the removal on both sides.
    let config = b.dir.config_path.display().to_string();
    let (code, out, err) = tests::gateway_cli(&["inbox", "--config", &config, "list"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(acked.as_str()))
        .unwrap_or("");
    assert!(line.contains("envelope removed by retention"), "{out}");
    let (code, out, err) = a.cli(&["transfers"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.matches("receipt verified; envelope removed by retention")
            .count(),
        2,
        "{out}"
    );

    // The unacknowledged one survives further sweeps and still opens byte-identical.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(b.spool_path("inbox", unacked).exists());
    assert!(inbox_entry(unacked.clone())().await["envelope_removed_ms"].is_null());
    assert_eq!(b.fetch(unacked).await, *unacked_bytes);

    // Every removal is in the audit log, once, and both chains verify.
    let removed_ids = |entries: Vec<Value>| {
        let mut ids: Vec<String> = entries
            .iter()
            .map(|e| e["transfer_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let mut expected: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    expected.sort();
    assert_eq!(
        removed_ids(a.audit_events("envelope-removed").await),
        expected
    );
    assert_eq!(
        removed_ids(b.audit_events("envelope-removed").await),
        vec![acked.clone()]
    );
    assert!(a.audit_verifies().await);
    assert!(b.audit_verifies().await);
}
