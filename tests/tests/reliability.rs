//! Delivery survives a receiver that is down and a sender killed with SIGKILL mid-burst: every
//! transfer the sender acknowledged (202) is delivered exactly once; a torn spool segment tail
//! left by a crash is cut at restart and nothing is lost.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Method, StatusCode};
use pki_tools::FacilityKind;
use serde_json::Value;

use gateway::cli::client::{collect_json, ApiClient};
use tests::{bundle, patient_id, Fed, Node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_waits_queued_while_the_receiver_is_down_then_delivers() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let payload = bundle("Bundle-micro.json");
    let id = a.send_bundle("clinic-b", &payload).await.transfer_id();

    // Several attempts fail to connect; the transfer stays queued for another try, not failed.
    let mut view: Value;
    tests::assert_eventually!(
        Duration::from_secs(30),
        {
            view = a.transfer(&id).await;
            view["attempts"].as_u64().unwrap_or(0) >= 3
        },
        "no retries recorded: {view}"
    );
    assert!(
        view["state"] == "queued" || view["state"] == "delivering",
        "{view}"
    );
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("clinic-b")),
        "{view}"
    );
    let retries = a.audit_events("retry-scheduled").await;
    assert!(
        retries
            .iter()
            .filter(|e| e["transfer_id"] == id.as_str())
            .count()
            >= 2,
        "{retries:#?}"
    );

    let b = fed.start("clinic-b");
    let view = a
        .wait_state(&id, "delivered", Duration::from_secs(60))
        .await;
    assert_eq!(view["receipt_held"], true);
    assert_eq!(b.fetch(&id).await, payload);
    assert_eq!(b.inbox().await.len(), 1);
    assert!(a.audit_verifies().await);
    assert!(b.audit_verifies().await);
}

const BURST: usize = 500;
const CONCURRENCY: usize = 16;
/// The sender is killed once this many submissions have been acknowledged.
const KILL_AFTER: usize = 150;

/// Submits without panicking: the node may die under us. `Some(id)` only for a 202.
async fn try_submit(api: &ApiClient, patient: &str, payload: &[u8]) -> Option<String> {
    let query = serde_urlencoded::to_string([
        ("to", "clinic-b"),
        ("patient", patient),
        ("purpose", "treatment"),
        ("content_type", "fhir"),
    ])
    .unwrap();
    let resp = api
        .call(
            Method::POST,
            &format!("/v1/transfers?{query}"),
            Body::from(payload.to_vec()),
            Some("application/octet-stream"),
        )
        .await
        .ok()?;
    let (status, body) = collect_json(resp).await.ok()?;
    (status == StatusCode::ACCEPTED).then(|| body["transfer_id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_burst_delivers_every_acknowledged_transfer_exactly_once() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let payload = Arc::new(bundle("Bundle-micro.json"));
    let patient = Arc::new(patient_id(&payload).unwrap_or_else(|| "no-patient".to_owned()));

    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, accepted, payload, patient) = (
            next.clone(),
            accepted.clone(),
            payload.clone(),
            patient.clone(),
        );
        let api = ApiClient::remote(&a.config).unwrap();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < BURST {
                match try_submit(&api, &patient, &payload).await {
                    Some(id) => accepted.lock().unwrap().push(id),
                    // The node is gone: stop submitting.
                    None => break,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted.lock().unwrap().len() < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} submissions accepted",
            accepted.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let accepted: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert!(
        accepted.len() >= KILL_AFTER && accepted.len() < BURST,
        "kill did not land mid-burst: {}",
        accepted.len()
    );

    // Restart the sender: it must pick up every queued or mid-delivery transfer.
    let a = fed.start("hosp-a");
    let deadline = Instant::now() + Duration::from_secs(180);
    let transfers: BTreeMap<String, Value> = loop {
        let (status, list) = a.get("/v1/transfers").await;
        assert_eq!(status, StatusCode::OK);
        let map: BTreeMap<String, Value> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["transfer_id"].as_str().unwrap().to_owned(), t.clone()))
            .collect();
        let pending = map.values().filter(|t| t["state"] != "delivered").count();
        if pending == 0 && accepted.iter().all(|id| map.contains_key(id)) {
            break map;
        }
        let failed: Vec<&Value> = map.values().filter(|t| t["state"] == "failed").collect();
        assert!(failed.is_empty(), "transfers failed: {failed:#?}");
        assert!(
            Instant::now() < deadline,
            "{pending} transfers still undelivered after 180 s\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Every acknowledged transfer is known to the restarted sender and delivered with a receipt.
    for id in &accepted {
        assert_eq!(transfers[id]["receipt_held"], true, "{}", transfers[id]);
    }
    // The receiver holds each delivered transfer exactly once: its inbox is exactly the
    // sender's delivered set (a submission cut by the kill may have been queued without its
    // 202 reaching us; at most one per concurrent submitter).
    let inbox = b.inbox().await;
    let inbox_ids: BTreeSet<String> = inbox
        .iter()
        .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(inbox.len(), inbox_ids.len(), "duplicate inbox entries");
    let sent_ids: BTreeSet<String> = transfers.keys().cloned().collect();
    assert_eq!(
        inbox_ids, sent_ids,
        "receiver inbox differs from the sender's delivered transfers"
    );
    assert!(accepted.is_subset(&inbox_ids));
    assert!(
        inbox.len() - accepted.len() <= CONCURRENCY,
        "{} unacknowledged deliveries",
        inbox.len() - accepted.len()
    );
    let received = b.audit_events("received").await;
    assert_eq!(
        received.len(),
        inbox.len(),
        "a transfer was stored more than once"
    );
    // The sender's audit log records every delivery exactly once, including those cut by the
    // kill and completed after the restart.
    let delivered: Vec<String> = a
        .audit_events("delivered")
        .await
        .iter()
        .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    let delivered_set: BTreeSet<String> = delivered.iter().cloned().collect();
    let missing: Vec<&String> = sent_ids.difference(&delivered_set).collect();
    assert!(
        missing.is_empty(),
        "delivered without a 'delivered' audit entry: {missing:?}"
    );
    assert_eq!(
        delivered.len(),
        sent_ids.len(),
        "a delivery was audited twice"
    );
    let submitted: BTreeSet<String> = a
        .audit_events("submitted")
        .await
        .iter()
        .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    let unsubmitted: Vec<&String> = sent_ids.difference(&submitted).collect();
    assert!(
        unsubmitted.is_empty(),
        "sent without a 'submitted' audit entry: {unsubmitted:?}"
    );
    assert!(
        a.audit_verifies().await,
        "sender audit chain broken after SIGKILL"
    );
    assert!(b.audit_verifies().await, "receiver audit chain broken");
    let recorded_at_restart = a
        .audit()
        .await
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("recorded at restart"))
        })
        .count();
    eprintln!(
        "burst: {} acknowledged before SIGKILL, {} transfers known after restart, {} received, \
         {recorded_at_restart} audit entries recorded at restart",
        accepted.len(),
        transfers.len(),
        inbox.len()
    );
}

/// Submits `count` transfers from [`CONCURRENCY`] clients and kills the receiver with SIGKILL
/// once it has stored a fifth of them, while more are arriving. Every submission is accepted
/// (the sender queues them); returns their ids.
async fn burst_killing_the_receiver(
    a: &Node,
    b: &mut Node,
    count: usize,
    payload: &Arc<Vec<u8>>,
    patient: &Arc<String>,
) -> BTreeSet<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, accepted, payload, patient) = (
            next.clone(),
            accepted.clone(),
            payload.clone(),
            patient.clone(),
        );
        let api = ApiClient::remote(&a.config).unwrap();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < count {
                let id = try_submit(&api, &patient, &payload)
                    .await
                    .expect("sender refused a submission");
                accepted.lock().unwrap().push(id);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.inbox().await.len() < count / 5 {
        assert!(Instant::now() < deadline, "the receiver stored too little");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let accepted: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert_eq!(accepted.len(), count);
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_mid_burst_still_stores_every_transfer_exactly_once() {
    const COUNT: usize = 200;
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let payload = Arc::new(bundle("Bundle-micro.json"));
    let patient = Arc::new(patient_id(&payload).unwrap_or_else(|| "no-patient".to_owned()));

    let accepted = burst_killing_the_receiver(&a, &mut b, COUNT, &payload, &patient).await;
    let b = fed.start("clinic-b");

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, list) = a.get("/v1/transfers").await;
        let list = list.as_array().unwrap().clone();
        let failed: Vec<&Value> = list.iter().filter(|t| t["state"] == "failed").collect();
        assert!(failed.is_empty(), "transfers failed: {failed:#?}");
        let pending = list.iter().filter(|t| t["state"] != "delivered").count();
        if pending == 0 {
            assert_eq!(list.len(), COUNT);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} transfers still undelivered after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let inbox = b.inbox().await;
    let inbox_ids: BTreeSet<String> = inbox
        .iter()
        .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(inbox.len(), inbox_ids.len(), "duplicate inbox entries");
    assert_eq!(
        inbox_ids, accepted,
        "receiver inbox differs from what was sent"
    );
    // Every stored record has exactly one `received` audit entry, even those whose receipt was
    // lost with the killed process (their resend is audited as a duplicate, not a second receipt).
    let received = b.audit_events("received").await;
    let received_ids: BTreeSet<String> = received
        .iter()
        .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    let recovered = received
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("recorded on the sender's resend"))
        })
        .count();
    eprintln!("receiver kill: {recovered} receipt audit entries recovered on resend");
    assert_eq!(received.len(), COUNT, "received audit entries");
    assert_eq!(received_ids, accepted);
    assert!(a.audit_verifies().await);
    assert!(
        b.audit_verifies().await,
        "receiver audit chain broken after SIGKILL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_without_failures_sends_each_transfer_once() {
    const COUNT: usize = 300;
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let payload = Arc::new(bundle("Bundle-micro.json"));
    let patient = Arc::new(patient_id(&payload).unwrap_or_else(|| "no-patient".to_owned()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, payload, patient) = (next.clone(), payload.clone(), patient.clone());
        let api = ApiClient::remote(&a.config).unwrap();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < COUNT {
                try_submit(&api, &patient, &payload)
                    .await
                    .expect("sender refused a submission");
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, list) = a.get("/v1/transfers").await;
        let list = list.as_array().unwrap().clone();
        if list.len() == COUNT && list.iter().all(|t| t["state"] == "delivered") {
            break;
        }
        assert!(Instant::now() < deadline, "burst not delivered in 120 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Nothing failed, so nothing may have been sent twice: no replay reached the receiver and
    // each transfer has one attempt and one delivery in the sender's audit log.
    let replays = b.audit_events("rejected").await;
    assert!(replays.is_empty(), "the receiver saw resends: {replays:#?}");
    assert_eq!(a.audit_events("sent").await.len(), COUNT, "attempts");
    assert_eq!(a.audit_events("delivered").await.len(), COUNT, "deliveries");
    assert_eq!(b.inbox().await.len(), COUNT);
}

/// The spool segments after a crash: the receiver is killed mid-burst of small transfers (each
/// envelope a record in its inbox segment), and a torn record, as a power cut during an append
/// would leave, is put at the end of its tail segment before it restarts. The restart cuts it
/// off and says so in the log (numbers only), and every transfer is stored exactly once and
/// opens byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_segment_tail_after_a_crash_is_cut_and_nothing_is_lost() {
    const COUNT: usize = 150;
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let payload = Arc::new(bundle("Bundle-micro.json"));
    let patient = Arc::new(patient_id(&payload).unwrap_or_else(|| "no-patient".to_owned()));

    let accepted = burst_killing_the_receiver(&a, &mut b, COUNT, &payload, &patient).await;

    // The envelopes went to segments, not files of their own.
    let data = fed.nodes["clinic-b"].dir.join("data");
    let records = tests::segment_records(&data, "inbox");
    assert!(!records.is_empty(), "no envelope in the inbox segments");
    assert!(
        std::fs::read_dir(data.join("spool/inbox"))
            .unwrap()
            .next()
            .is_none(),
        "a small envelope got a file of its own"
    );
    // A torn append at the end of the tail: a whole header, part of its envelope.
    let dir = data.join("spool/inbox-segments");
    let tail = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let whole_len = std::fs::metadata(&tail).unwrap().len();
    let mut torn = Vec::new();
    torn.extend_from_slice(&5000u32.to_be_bytes());
    torn.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    torn.extend_from_slice(&[0x5a; 16]);
    torn.extend_from_slice(&payload[..100.min(payload.len())]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&tail)
        .unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);

    let b = fed.start("clinic-b");
    let log = b.log_text();
    assert!(
        log.contains("spool segment ended in a torn or damaged record"),
        "{log}"
    );
    assert!(
        log.contains(&format!("dropped_bytes={}", torn.len())),
        "{log}"
    );
    assert!(!log.contains(patient.as_str()), "patient data in the log");
    assert!(std::fs::metadata(&tail).unwrap().len() >= whole_len);

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, list) = a.get("/v1/transfers").await;
        let list = list.as_array().unwrap().clone();
        let failed: Vec<&Value> = list.iter().filter(|t| t["state"] == "failed").collect();
        assert!(failed.is_empty(), "transfers failed: {failed:#?}");
        let pending = list.iter().filter(|t| t["state"] != "delivered").count();
        if pending == 0 {
            assert_eq!(list.len(), COUNT);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} transfers still undelivered after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let inbox = b.inbox().await;
    let inbox_ids: BTreeSet<String> = inbox
        .iter()
        .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(inbox.len(), inbox_ids.len(), "duplicate inbox entries");
    assert_eq!(
        inbox_ids, accepted,
        "receiver inbox differs from what was sent"
    );
    for id in &inbox_ids {
        assert_eq!(b.fetch(id).await, *payload, "{id}");
    }
    assert_eq!(b.audit_events("received").await.len(), COUNT);
    assert!(a.audit_verifies().await);
    assert!(b.audit_verifies().await, "receiver audit chain broken");
}
