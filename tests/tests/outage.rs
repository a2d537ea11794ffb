//! Delivery through a receiver outage with the shipped `[delivery]` defaults (not the harness's
//! fast retries), and the operator's way back for a transfer that failed: `gateway requeue`.
//!
//! Time: a 30-minute outage cannot take 30 minutes of test time, and the node is a separate
//! process whose clock cannot be advanced. The outage test therefore sets
//! `delivery.danger_time_scale = 60` (`tests::SHIPPED_DEFAULTS_TIMES_60`) and nothing else in
//! `[delivery]`: every default (5-day age bound, no attempt cap, 500 ms .. 60 s backoff) stays,
//! divided by 60, so 30 s of receiver downtime are 30 minutes of the node's delivery timings.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{testdata, Fed, Node, SHIPPED_DEFAULTS_TIMES_60};

/// 30 minutes at the time scale of 60.
const OUTAGE: Duration = Duration::from_secs(30);
const SCALE: u64 = 60;
const QUEUED_DURING_OUTAGE: usize = 20;

/// A C-CDA document of the shared test data, for a patient with no sensitive category
/// declared: the default policies permit it for treatment without a consent directive.
fn document() -> Vec<u8> {
    std::fs::read(testdata("fhir/cda/CCD1_C-CDA2.1_CCD.xml")).unwrap()
}

/// The document's own patient (its recordTarget id).
const PATIENT: &str = "444222222";

/// Submits the document again: each submission is a transfer of its own.
async fn submit(a: &Node) -> String {
    a.send("clinic-b", PATIENT, "treatment", "ccda", document(), &[])
        .await
        .transfer_id()
}

async fn sent_attempts(node: &Node) -> usize {
    node.audit_events("sent").await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_minute_outage_with_the_shipped_defaults_fails_nothing_and_delivers_each_once() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        SHIPPED_DEFAULTS_TIMES_60,
    );
    let a = fed.start("hosp-a");
    // The shipped defaults, not the harness's: retried for days, no attempt cap.
    let d = &a.config.delivery;
    assert_eq!(d.max_attempts, None);
    assert_eq!(d.max_age_secs, 5 * 24 * 3600);
    assert_eq!((d.initial_backoff_ms, d.max_backoff_ms), (500, 60_000));
    assert_eq!(d.danger_time_scale as u64, SCALE);

    let mut b = fed.start("clinic-b");
    let warm_up = submit(&a).await;
    a.wait_state(&warm_up, "delivered", Duration::from_secs(30))
        .await;

    // The receiver goes away (a link that drops does not say goodbye either).
    b.kill9();
    let down_at = Instant::now();
    let before = sent_attempts(&a).await;
    let mut ids = vec![warm_up.clone()];
    for _ in 0..QUEUED_DURING_OUTAGE {
        ids.push(submit(&a).await);
    }
    // Through the outage nothing fails; every transfer is still queued (or being probed).
    while down_at.elapsed() < OUTAGE {
        for t in a.transfers().await {
            assert!(
                t["state"] != "failed" && t["state"] != "cancelled",
                "a transfer failed during the outage after {:?}: {t}\n{}",
                down_at.elapsed(),
                a.log_text()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let during = sent_attempts(&a).await - before;
    eprintln!("delivery attempts during the outage: {during}");
    // Without the circuit every queued transfer retries on its own: 20 transfers × ~40 backoff
    // steps in 30 minutes ≈ 800 attempts. With it, at most one probe per backoff step: each
    // step after the first few is at least half the 60 s cap (30 s, 0.5 s scaled), so 30
    // minutes hold at most 60 of them, plus the ~8 doubling steps from 500 ms up to the cap.
    // A submission may go straight to a worker until the first failure opens the circuit,
    // which costs at most one attempt each.
    let steps = (OUTAGE.as_millis() as usize) / (60_000 / 2 / SCALE as usize) + 8;
    assert!(
        during <= QUEUED_DURING_OUTAGE + steps,
        "{during} delivery attempts during the outage (bound {})\n{}",
        QUEUED_DURING_OUTAGE + steps,
        a.log_text()
    );
    assert!(
        during >= 10,
        "the peer was hardly probed: {during} attempts"
    );
    let log = a.log_text();
    assert!(
        log.contains("peer unreachable; one probe delivery at a time"),
        "{log}"
    );
    for t in a.transfers().await {
        if t["transfer_id"] != warm_up.as_str() {
            assert!(t["state"] == "queued" || t["state"] == "delivering", "{t}");
            // The transfer view says why it waits.
            assert_eq!(t["peer_circuit"]["state"], "open", "{t}");
        }
    }

    // The receiver returns: the next probe gets through (within one 60 s step, 1 s scaled),
    // the circuit closes and the queue drains.
    let b = fed.start("clinic-b");
    let back_at = Instant::now();
    for id in &ids {
        a.wait_state(id, "delivered", Duration::from_secs(30)).await;
    }
    let drained_in = back_at.elapsed();
    eprintln!("queue drained {drained_in:?} after the receiver returned");
    assert!(a.transfer(&ids[1]).await["peer_circuit"].is_null());
    assert!(
        a.log_text()
            .contains("peer reachable again; its queue drains"),
        "{}",
        a.log_text()
    );
    // Each transfer reached the receiver exactly once: one inbox entry and one `received`
    // entry per transfer id, nothing else.
    let inbox: Vec<String> = b
        .inbox()
        .await
        .iter()
        .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(inbox.len(), ids.len(), "{inbox:?}");
    assert_eq!(inbox.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let received: Vec<Value> = b.audit_events("received").await;
    assert_eq!(received.len(), ids.len(), "{received:#?}");
    assert_eq!(
        a.audit_events("delivered").await.len(),
        ids.len(),
        "deliveries"
    );
    // After the outage each waiting transfer was sent once more at most (the drain), not
    // retried in a storm.
    let total = sent_attempts(&a).await;
    assert!(
        total <= before + during + QUEUED_DURING_OUTAGE + 2,
        "{total} attempts in all ({before} before, {during} during the outage)"
    );
    assert!(drained_in < Duration::from_secs(20), "{drained_in:?}");
    assert!(a.audit_verifies().await);
    assert!(b.audit_verifies().await);
}

/// A transfer that failed (here: its age bound, set to 3 s, passed while the receiver was
/// down) is requeued by the operator and delivered; requeue refuses what is not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transfer_is_requeued_audited_and_delivered() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        "\n[delivery]\ninitial_backoff_ms = 100\nmax_backoff_ms = 500\nmax_age_secs = 3\n",
    );
    let a = fed.start("hosp-a");
    let id = submit(&a).await;
    let failed = a.wait_state(&id, "failed", Duration::from_secs(30)).await;
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("expired") && e.contains("max_age_secs")),
        "{failed}"
    );

    let b = fed.start("clinic-b");
    let (code, out, err) = a.cli(&["requeue", "--id", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("requeued {id}")), "{out}");
    // Its age bound restarts at the requeue: delivered, not expired again at once.
    let view = a
        .wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    assert_eq!(view["receipt_held"], true);
    assert_eq!(b.inbox().await.len(), 1);

    let requeued: Vec<Value> = a
        .audit_events("requeued")
        .await
        .into_iter()
        .filter(|e| e["transfer_id"] == id.as_str())
        .collect();
    assert_eq!(requeued.len(), 1, "{requeued:#?}");
    let reason = requeued[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("requeued by cli"), "{reason}");

    // Only a failed transfer: a delivered one is refused with its state, an unknown one is 404.
    let (status, body) = a
        .post_json(&format!("/v1/transfers/{id}/requeue"), Value::Null)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("only a failed transfer") && e.contains("delivered")),
        "{body}"
    );
    let (status, _) = a
        .api()
        .json(
            Method::POST,
            &format!("/v1/transfers/{}/requeue", "0".repeat(32)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(a.audit_verifies().await);
}

/// Once retention removed a failed transfer's envelope there is nothing to send: 410, and the
/// transfer stays failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transfer_whose_envelope_was_removed_is_not_requeued() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        "\n[delivery]\ninitial_backoff_ms = 100\nmax_backoff_ms = 500\nmax_age_secs = 2\n\
         \n[retention]\nenvelope_hours = 0\nsweep_interval_secs = 1\n",
    );
    let a = fed.start("hosp-a");
    let id = submit(&a).await;
    a.wait_state(&id, "failed", Duration::from_secs(30)).await;
    let mut view: Value;
    tests::assert_eventually!(
        Duration::from_secs(30),
        {
            view = a.transfer(&id).await;
            view["envelope_removed_ms"].is_u64()
        },
        "retention did not remove the envelope: {view}"
    );
    let (code, out, err) = a.cli(&["requeue", "--id", &id]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("removed by retention") && err.contains("410"),
        "{err}"
    );
    assert_eq!(a.transfer(&id).await["state"], "failed");
    assert!(a.audit_events("requeued").await.is_empty());
}
