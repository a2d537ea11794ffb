//! Delivery survives a receiver that is down and a sender killed with SIGKILL mid-burst: every
//! transfer the sender acknowledged (202) is delivered exactly once; a torn spool segment tail
//! left by a crash is cut at restart and nothing is lost; an entry whose envelope a power cut
//! lost before it was acknowledged (sled wrote it back, the envelope never reached the disk)
//! is not answered as held: a received one is stored again on the resend, exactly once, and a
//! queued one fails and its idempotency key makes a new transfer.

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

/// Cuts the last record of the only segment of `kind` in `data` in half, as a power cut leaves
/// an append that never reached the disk while sled had already written back its entry; the
/// record must be `id`'s, of `len` envelope bytes. Returns the segment's path.
fn tear_last_record(
    data: &std::path::Path,
    kind: &str,
    id: &str,
    len: usize,
) -> std::path::PathBuf {
    let records = tests::segment_records(data, kind);
    assert_eq!(
        records
            .iter()
            .map(|(rid, _)| rid.as_str())
            .collect::<Vec<_>>(),
        vec![id],
        "the {kind} segments hold this one record"
    );
    let dir = data.join(format!("spool/{kind}-segments"));
    let tail = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let whole = std::fs::metadata(&tail).unwrap().len();
    assert_eq!(whole, (24 + len) as u64, "one record: header and envelope");
    let f = std::fs::OpenOptions::new().write(true).open(&tail).unwrap();
    f.set_len(24 + len as u64 / 2).unwrap();
    tail
}

/// `from`'s envelope posted again to `to`'s peer listener over `from`'s own mTLS identity, as
/// its delivery retry does: the status and body of the answer.
async fn resend(fed: &Fed, from: &str, to: &Node, envelope: &[u8]) -> (u16, Vec<u8>) {
    let ca = std::fs::read(to.dir.dir.join("ca.crt")).unwrap();
    let ident = tests::RawIdentity::from_node_dir(&fed.nodes[from].dir);
    tests::raw_peer_post(to.dir.peer, &ca, &ident, "/v1/envelopes", envelope.to_vec())
        .await
        .unwrap()
}

/// The receiver side of the crash window between sled's own write-back (every ~500 ms) and the
/// group commit: clinic-b's inbox entry and the index entry of its segment record are on disk,
/// the record itself is not, and the sender, which never got a receipt, resends. The inbox entry
/// must not be taken for a duplicate (the sender would drop a record clinic-b does not hold):
/// at restart it is removed, audited `envelope-lost`, and the resend is stored, exactly once.
///
/// The state is made with real nodes: hosp-a delivers one record, clinic-b is killed and the
/// record torn off its inbox segment; hosp-a's retry is then made with the envelope hosp-a
/// sealed, over hosp-a's own mTLS identity (its first receipt stands for the one a crash in the
/// window would never have sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_envelope_torn_off_its_segment_is_stored_again_on_the_resend_exactly_once() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let payload = bundle("Bundle-micro.json");
    let id = a.send_bundle("clinic-b", &payload).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(60))
        .await;
    let envelope = a
        .envelope_on_disk("outbox", &id)
        .expect("hosp-a's sealed envelope");
    assert_eq!(b.inbox().await.len(), 1);

    b.kill9();
    let data = fed.nodes["clinic-b"].dir.join("data");
    tear_last_record(&data, "inbox", &id, envelope.len());
    let b = fed.start("clinic-b");
    let log = b.log_text();
    assert!(
        log.contains("spool segment ended in a torn or damaged record"),
        "{log}"
    );
    assert!(
        log.contains("envelopes lost in a crash before they were acknowledged"),
        "{log}"
    );
    assert!(log.contains("inbox_entries_removed=1"), "{log}");
    // Nothing is served without its envelope: the entry is gone, and the log says why.
    assert!(
        b.inbox().await.is_empty(),
        "an inbox entry without its envelope"
    );
    let lost = b.audit_events("envelope-lost").await;
    assert_eq!(lost.len(), 1, "{lost:#?}");
    assert_eq!(lost[0]["transfer_id"], id.as_str());
    assert_eq!(lost[0]["outcome"], "removed");

    // hosp-a's resend is stored (200 and a receipt), not answered as a duplicate (409).
    let (status, receipt) = resend(&fed, "hosp-a", &b, &envelope).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&receipt));
    let inbox = b.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["transfer_id"], id.as_str());
    assert_eq!(b.fetch(&id).await, payload);
    // Now it is held, so a further resend is the duplicate it looks like.
    let (status, _) = resend(&fed, "hosp-a", &b, &envelope).await;
    assert_eq!(status, 409);
    assert_eq!(b.inbox().await.len(), 1, "stored exactly once");
    // The trail: received, envelope-lost, received again; one duplicate refused.
    let trail: Vec<String> = b
        .audit_without_reads()
        .await
        .iter()
        .filter(|e| e["transfer_id"] == id.as_str())
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .filter(|e| ["received", "envelope-lost", "rejected"].contains(&e.as_str()))
        .collect();
    assert_eq!(trail, ["received", "envelope-lost", "received", "rejected"]);
    assert!(b.audit_verifies().await, "receiver audit chain broken");
}

/// The same window with a received envelope over the segment size (a file of its own, here
/// every one: `spool_segment_kib = 0`) whose rename into the spool never reached the disk:
/// nothing at start-up names it, so the resend finds it. The receiver answers "duplicate" only
/// for an entry that holds its envelope; this one is removed, audited, and the resend stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_envelope_file_lost_in_a_crash_is_stored_again_on_the_resend_exactly_once() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let config = &fed.nodes["clinic-b"].config_path;
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        text.replacen("[node]\n", "[node]\nspool_segment_kib = 0\n", 1),
    )
    .unwrap();
    let a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let payload = bundle("Bundle-micro.json");
    let id = a.send_bundle("clinic-b", &payload).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(60))
        .await;
    let envelope = a
        .envelope_on_disk("outbox", &id)
        .expect("hosp-a's sealed envelope");

    b.kill9();
    let file = b.spool_path("inbox", &id);
    std::fs::remove_file(&file).expect("clinic-b held the envelope in a file of its own");
    let b = fed.start("clinic-b");
    assert_eq!(b.inbox().await.len(), 1, "not known at start-up");

    let (status, receipt) = resend(&fed, "hosp-a", &b, &envelope).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&receipt));
    assert!(file.exists());
    let inbox = b.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(b.fetch(&id).await, payload);
    let lost = b.audit_events("envelope-lost").await;
    assert_eq!(lost.len(), 1, "{lost:#?}");
    assert_eq!(lost[0]["transfer_id"], id.as_str());
    assert_eq!(b.audit_events("received").await.len(), 2);
    let (status, _) = resend(&fed, "hosp-a", &b, &envelope).await;
    assert_eq!(status, 409);
    assert_eq!(b.inbox().await.len(), 1, "stored exactly once");
    assert!(b.audit_verifies().await, "receiver audit chain broken");
}

/// The sender side of the same window: a keyed submission queued (its entry and idempotency
/// key written back by sled) whose segment record never reached the disk, so its 202 was never
/// sent. At restart the transfer is failed, audited `envelope-lost`, and its key forgotten:
/// the client's retry with the same key makes a new transfer, delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_envelope_torn_off_its_segment_fails_and_the_keyed_retry_makes_a_new_transfer() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    // clinic-b is not started yet: the transfer stays queued at hosp-a.
    let mut a = fed.start("hosp-a");
    let payload = bundle("Bundle-micro.json");
    async fn submit(a: &Node, payload: &[u8]) -> (String, bool) {
        let (sent, replayed) = a
            .send_keyed("clinic-b", payload, "treatment", &["\"order-4711\""])
            .await;
        assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.body);
        (sent.transfer_id(), replayed)
    }
    // Its first attempt (clinic-b unreachable) may or may not have started: either way the
    // envelope never left hosp-a.
    let (first, _) = submit(&a, &payload).await;
    let envelope = a
        .envelope_on_disk("outbox", &first)
        .expect("sealed envelope");

    a.kill9();
    let data = fed.nodes["hosp-a"].dir.join("data");
    tear_last_record(&data, "outbox", &first, envelope.len());
    let a = fed.start("hosp-a");
    assert!(
        a.log_text().contains("outbox_transfers_failed=1"),
        "{}",
        a.log_text()
    );
    let failed = a.transfer(&first).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("lost in a crash")),
        "{failed}"
    );
    let lost = a.audit_events("envelope-lost").await;
    assert_eq!(lost.len(), 1, "{lost:#?}");
    assert_eq!(lost[0]["transfer_id"], first.as_str());
    assert_eq!(lost[0]["outcome"], "failed");

    // The retry with the same key is a new submission, not a replay of the lost one.
    let b = fed.start("clinic-b");
    let (second, replayed) = submit(&a, &payload).await;
    assert_ne!(second, first);
    assert!(!replayed);
    a.wait_state(&second, "delivered", Duration::from_secs(60))
        .await;
    let inbox = b.inbox().await;
    assert_eq!(inbox.len(), 1, "{inbox:#?}");
    assert_eq!(inbox[0]["transfer_id"], second.as_str());
    assert_eq!(b.fetch(&second).await, payload);
    assert_eq!(a.transfer(&first).await["state"], "failed");
    assert!(a.audit_verifies().await, "sender audit chain broken");
}
