//! `Idempotency-Key` on `POST /v1/transfers` and `gateway send --key`: an EMR's retry of a
//! submission (same key, same request) answers with the transfer the first one created, also
//! after the sender was killed between its commit and its answer; the same key with another
//! request is 409; a malformed key is 400; after the window the key makes a new transfer.
//!
//! Nodes run the shipped defaults (`Fed::with_extra(.., "")`) unless a test says otherwise.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use http::{Method, StatusCode};
use pki_tools::FacilityKind;
use serde_json::Value;

use gateway::cli::client::collect_json;
use tests::{bundle, bundle_by_prefix, patient_id, Fed, Node};

const SPECS: [(&str, FacilityKind); 2] = [
    ("hosp-a", FacilityKind::Hospital),
    ("clinic-b", FacilityKind::Clinic),
];
const DELIVERED: Duration = Duration::from_secs(60);

/// A submit's answer.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
    /// The `Idempotent-Replayed: true` header.
    replayed: bool,
}

impl Answer {
    fn id(&self) -> String {
        assert!(
            self.status == StatusCode::ACCEPTED || self.status == StatusCode::OK,
            "submit refused: {self:?}"
        );
        self.body["transfer_id"].as_str().unwrap().to_owned()
    }
}

/// `POST /v1/transfers` of a FHIR bundle about its own patient to clinic-b, with the raw
/// `Idempotency-Key` header values given (none, one, or several).
async fn submit(node: &Node, keys: &[&str], record: &[u8], purpose: &str) -> Answer {
    let (sent, replayed) = node.send_keyed("clinic-b", record, purpose, keys).await;
    Answer {
        status: sent.status,
        body: sent.body,
        replayed,
    }
}

/// Transfer ids, as a set.
fn ids(listing: &[Value]) -> BTreeSet<String> {
    listing
        .iter()
        .map(|t| t["transfer_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_request_twice_make_one_transfer() {
    let fed = Fed::with_extra(&SPECS, "");
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let record = bundle("Bundle-micro.json");

    let first = submit(&a, &["order-2026-0001"], &record, "treatment").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    assert!(
        !first.replayed && first.body.get("replayed").is_none(),
        "{first:?}"
    );
    let id = first.id();
    let again = submit(&a, &["order-2026-0001"], &record, "treatment").await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{again:?}");
    assert_eq!(again.id(), id);
    assert!(
        again.replayed && again.body["replayed"] == true,
        "{again:?}"
    );
    // The draft's structured-field form of the same key is the same key.
    let quoted = submit(&a, &["\"order-2026-0001\""], &record, "treatment").await;
    assert_eq!(quoted.id(), id);
    assert!(quoted.replayed);

    a.wait_state(&id, "delivered", DELIVERED).await;
    // A replay after delivery still answers with the transfer, now delivered.
    let late = submit(&a, &["order-2026-0001"], &record, "treatment").await;
    assert_eq!(
        (late.id(), late.body["state"].as_str()),
        (id.clone(), Some("delivered"))
    );
    assert_eq!(ids(&a.transfers().await), BTreeSet::from([id.clone()]));
    assert_eq!(ids(&b.inbox().await), BTreeSet::from([id.clone()]));
    // One submission, one of each audit entry.
    let submitted = a.audit_events("submitted").await;
    assert_eq!(submitted.len(), 1, "{submitted:#?}");
    // The key is the caller's: it is not in the log.
    assert!(!a.log_text().contains("order-2026-0001"));

    // Without a key, nothing changes: the same request twice is two transfers.
    let x = submit(&a, &[], &record, "treatment").await.id();
    let y = submit(&a, &[], &record, "treatment").await.id();
    assert_ne!(x, y);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_request_is_409_and_sends_nothing() {
    let fed = Fed::with_extra(&SPECS, "");
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let record = bundle("Bundle-micro.json");
    let id = submit(&a, &["k-1"], &record, "treatment").await.id();

    // Another body (another record, another patient).
    let other = bundle_by_prefix("Clemente_Kreiger");
    let conflict = submit(&a, &["k-1"], &other, "treatment").await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{conflict:?}");
    let reason = conflict.body["error"].as_str().unwrap();
    assert!(reason.contains("different request"), "{reason}");
    assert_eq!(conflict.body["transfer_id"], id.as_str());
    // The same body with another parameter that defines the transfer.
    let conflict = submit(&a, &["k-1"], &record, "operations").await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{conflict:?}");

    assert_eq!(ids(&a.transfers().await), BTreeSet::from([id.clone()]));
    // The original request still replays.
    assert_eq!(submit(&a, &["k-1"], &record, "treatment").await.id(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_make_one_transfer() {
    let fed = Fed::with_extra(&SPECS, "");
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let record = bundle_by_prefix("Clemente_Kreiger");
    let answers = futures_util::future::join_all(
        (0..6).map(|_| submit(&a, &["burst-key"], &record, "treatment")),
    )
    .await;
    let accepted: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .collect();
    // Each answer is the transfer (new or replayed) or "still being processed" (409).
    for answer in &answers {
        if answer.status == StatusCode::CONFLICT {
            let reason = answer.body["error"].as_str().unwrap();
            assert!(reason.contains("still being processed"), "{reason}");
        } else {
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
        }
    }
    let new: Vec<&&Answer> = accepted.iter().filter(|a| !a.replayed).collect();
    assert_eq!(new.len(), 1, "{answers:#?}");
    let id = new[0].id();
    assert!(accepted.iter().all(|a| a.id() == id), "{answers:#?}");
    assert_eq!(ids(&a.transfers().await), BTreeSet::from([id]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_sender_is_killed_gets_the_original_transfer() {
    let fed = Fed::with_extra(&SPECS, "");
    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let record = bundle("Bundle-micro.json");

    // Answered, then SIGKILL before anything else happens: the key was committed with the
    // transfer, so the retry after the restart finds it.
    let id = submit(&a, &["crash-0"], &record, "treatment").await.id();
    a.kill9();
    a = fed.start("hosp-a");
    let retry = submit(&a, &["crash-0"], &record, "treatment").await;
    assert_eq!(retry.id(), id);
    assert!(retry.replayed, "{retry:?}");
    let mut expected = BTreeSet::from([id]);

    // The answer lost: SIGKILL while the request is in flight (at several points of its
    // processing), the caller never hears back and retries after the restart. Whether the
    // kill came before or after the commit, the retry leaves exactly one transfer for the key.
    for (n, delay_ms) in [0u64, 2, 5, 10, 20, 40].into_iter().enumerate() {
        let key = format!("crash-{}", n + 1);
        let inflight = {
            let api = a.api();
            let record = record.clone();
            let key = key.clone();
            let patient = patient_id(&record).unwrap();
            tokio::spawn(async move {
                let query = serde_urlencoded::to_string([
                    ("to", "clinic-b"),
                    ("patient", patient.as_str()),
                    ("purpose", "treatment"),
                    ("content_type", "fhir"),
                ])
                .unwrap();
                api.call_with_headers(
                    Method::POST,
                    &format!("/v1/transfers?{query}"),
                    Body::from(record),
                    Some("application/octet-stream"),
                    &[("idempotency-key", key.as_str())],
                )
                .await
                .map(|r| r.status())
            })
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        a.kill9();
        let answered = inflight.await.unwrap();
        a = fed.start("hosp-a");
        let retry = submit(&a, &[&key], &record, "treatment").await;
        // A caller that did get its 202 before the kill must get the same transfer now.
        if matches!(answered, Ok(StatusCode::ACCEPTED)) {
            assert!(retry.replayed, "key {key}: {retry:?}");
        }
        expected.insert(retry.id());
        assert_eq!(ids(&a.transfers().await), expected, "key {key}: {retry:?}");
    }
    for id in &expected {
        a.wait_state(id, "delivered", DELIVERED).await;
    }
    // Each key's record reached the receiver once.
    let inbox = b.inbox().await;
    assert_eq!(inbox.len(), expected.len(), "{inbox:#?}");
    assert_eq!(ids(&inbox), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_send_with_the_same_key_twice_sends_once() {
    let fed = Fed::with_extra(&SPECS, "");
    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let record = bundle("Bundle-micro.json");
    let patient = patient_id(&record).unwrap();
    let file = fed.dir.path().join("record.json");
    std::fs::write(&file, &record).unwrap();
    let file = file.display().to_string();
    let send = |a: &Node, key: &str| {
        a.cli(&[
            "send",
            "--to",
            "clinic-b",
            "--patient",
            &patient,
            "--purpose",
            "treatment",
            "--file",
            &file,
            "--key",
            key,
        ])
    };
    let (code, first, err) = send(&a, "emr-msg-77");
    assert_eq!(code, 0, "{err}");
    let (code, second, err) = send(&a, "emr-msg-77");
    assert_eq!(code, 0, "{err}");
    assert_eq!(first.trim(), second.trim());
    assert!(err.contains("already accepted"), "{err}");
    let id = first.trim().to_owned();
    a.wait_state(&id, "delivered", DELIVERED).await;
    assert_eq!(ids(&a.transfers().await), BTreeSet::from([id.clone()]));
    assert_eq!(ids(&b.inbox().await), BTreeSet::from([id.clone()]));

    // With the node stopped the CLI opens the store itself: the key is still there.
    a.stop();
    let (code, offline, err) = send(&a, "emr-msg-77");
    assert_eq!(code, 0, "{err}");
    assert_eq!(offline.trim(), id);
    // A key the node would refuse is refused before anything is read or sent.
    let (code, _, err) = send(&a, &"k".repeat(256));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_window_the_same_key_makes_a_new_transfer() {
    let fed = Fed::with_extra(&SPECS, "");
    // The shipped window is a day, which no test can wait out: this node remembers keys for
    // 2 s, so the test can see one expire.
    let path = &fed.nodes["hosp-a"].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("[local_api]\n"), "config template changed");
    std::fs::write(
        path,
        text.replace(
            "[local_api]\n",
            "[local_api]\nidempotency_window_secs = 2\n",
        ),
    )
    .unwrap();
    let mut a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let record = bundle("Bundle-micro.json");

    let first = submit(&a, &["daily-batch"], &record, "treatment")
        .await
        .id();
    assert_eq!(
        submit(&a, &["daily-batch"], &record, "treatment")
            .await
            .id(),
        first
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let later = submit(&a, &["daily-batch"], &record, "treatment").await;
    assert!(!later.replayed, "{later:?}");
    let second = later.id();
    assert_ne!(second, first);
    // The key now names the new transfer, for its own window.
    let replay = submit(&a, &["daily-batch"], &record, "treatment").await;
    assert_eq!((replay.id(), replay.replayed), (second.clone(), true));
    let transfers = BTreeSet::from([first, second]);
    assert_eq!(ids(&a.transfers().await), transfers);

    // Expired keys are removed by the retention sweep (at start and every
    // retention.sweep_interval_secs); the transfers stay.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    a.stop();
    let mut a = fed.start("hosp-a");
    tests::assert_eventually!(
        Duration::from_secs(20),
        a.log_text().contains("expired idempotency keys removed"),
        "no sweep: {}",
        a.log_text()
    );
    a.stop();
    let store = gateway_store::Store::open(&a.dir.dir.join("data")).unwrap();
    assert_eq!(store.idempotency_len(), 0);
    drop(store);
    let a = fed.start("hosp-a");
    assert_eq!(ids(&a.transfers().await), transfers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_is_400_and_queues_nothing() {
    let fed = Fed::with_extra(&SPECS, "");
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let record = bundle("Bundle-micro.json");
    let too_long = "k".repeat(256);
    let longest = "k".repeat(255);
    for keys in [
        vec![too_long.as_str()],
        vec!["secret\tkey"],
        vec!["\"secret\tkey\""],
        vec!["caf\u{e9}"],
        vec!["\"unterminated"],
        vec!["\"\""],
        vec!["one", "two"],
    ] {
        let answer = submit(&a, &keys, &record, "treatment").await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{keys:?}: {answer:?}"
        );
        let reason = answer.body["error"].as_str().unwrap();
        assert!(reason.contains("Idempotency-Key"), "{reason}");
        // The refusal does not echo the key.
        assert!(
            !reason.contains("secret") && !reason.contains("kkkk"),
            "{reason}"
        );
    }
    assert!(a.transfers().await.is_empty());
    // 255 characters is the limit, not past it.
    submit(&a, &[&longest], &record, "treatment").await.id();
}

/// A large upload that declares its length and digest is sealed as it arrives; its key is
/// looked up from the declared digest before any of it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_with_a_key_is_sent_once() {
    use base64::Engine as _;
    let fed = Fed::with_extra(&SPECS, "");
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    // Over the 8 MiB the node holds in memory, so it is streamed into the sealer.
    let upload: Vec<u8> = (0..9 * 1024 * 1024 + 7u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let digest_of = |bytes: &[u8]| {
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD
                .encode(ring::digest::digest(&ring::digest::SHA256, bytes))
        )
    };
    let post = |bytes: Vec<u8>, digest: String, key: &'static str| {
        let api = a.api();
        async move {
            let len = bytes.len().to_string();
            let resp = api
                .call_with_headers(
                    Method::POST,
                    "/v1/transfers?to=clinic-b&patient=pat-idem-stream&purpose=treatment&content_type=application%2Foctet-stream&categories=general&clinician=dr-x&clinician_role=physician",
                    Body::from(bytes),
                    Some("application/octet-stream"),
                    &[
                        ("content-length", len.as_str()),
                        ("content-digest", digest.as_str()),
                        ("idempotency-key", key),
                    ],
                )
                .await
                .unwrap();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let (status, body) = collect_json(resp).await.unwrap();
            Answer {
                status,
                body,
                replayed,
            }
        }
    };

    // Bytes that do not match their declared digest are refused, and the key is not used up.
    let refused = post(upload.clone(), digest_of(b"other"), "scan-1").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(a.transfers().await.is_empty());

    let first = post(upload.clone(), digest_of(&upload), "scan-1").await;
    assert!(!first.replayed, "{first:?}");
    let id = first.id();
    let again = post(upload.clone(), digest_of(&upload), "scan-1").await;
    assert_eq!((again.id(), again.replayed), (id.clone(), true));
    // Another upload under the key: 409, before its body is used.
    let mut changed = upload.clone();
    changed[0] ^= 1;
    let conflict = post(changed.clone(), digest_of(&changed), "scan-1").await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{conflict:?}");

    a.wait_state(&id, "delivered", DELIVERED).await;
    assert_eq!(ids(&a.transfers().await), BTreeSet::from([id.clone()]));
    assert_eq!(ids(&b.inbox().await), BTreeSet::from([id]));
}

/// A client that gives up on its request (a timeout in the EMR's interface engine) and retries
/// with the same key while the first submission is still being processed: the first one runs
/// to its end, the retry is told to wait (409) or gets its transfer, never a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_client_gave_up_gets_the_first_transfer() {
    let fed = Fed::with_extra(&SPECS, "");
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    // A large record, so that its inspection outlasts the client's patience; its sensitive
    // categories need the patient's consent to go anywhere.
    let record = bundle_by_prefix("Fletcher_Hyatt");
    a.consent_for_treatment(&patient_id(&record).unwrap(), "clinic-b")
        .await;
    // Sent by hand on a socket that is then closed (the CLI's client would keep its connection
    // open until the answer).
    let patient = patient_id(&record).unwrap();
    let token = std::fs::read_to_string(a.dir.dir.join("api.token")).unwrap();
    let mut head = format!(
        "POST /v1/transfers?to=clinic-b&patient={patient}&purpose=treatment&content_type=fhir HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nidempotency-key: impatient\r\n\r\n",
        a.dir.local,
        token.trim(),
        record.len()
    )
    .into_bytes();
    head.extend_from_slice(&record);
    {
        use tokio::io::AsyncWriteExt as _;
        let mut socket = tokio::net::TcpStream::connect(a.dir.local).await.unwrap();
        socket.write_all(&head).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Dropped: the connection closes before the answer.
    }
    // Asked at once, while the first is still being inspected: it is still being processed
    // (were it given up with its request, this would make another transfer under the key).
    let probe = submit(
        &a,
        &["impatient"],
        &bundle("Bundle-micro.json"),
        "treatment",
    )
    .await;
    assert_eq!(probe.status, StatusCode::CONFLICT, "{probe:?}");
    let mut answers = Vec::new();
    let id = loop {
        let retry = submit(&a, &["impatient"], &record, "treatment").await;
        if retry.status != StatusCode::CONFLICT {
            break retry.id();
        }
        answers.push(retry.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Whatever the retries met, one transfer exists, and it is the key's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ids(&a.transfers().await),
        BTreeSet::from([id]),
        "{answers:?}"
    );
}
