//! A 200 MB record goes through the streaming path end to end (upload, seal, send, receive,
//! fetch) byte-identical, while neither node's peak resident memory comes near the record's
//! size: proof that nothing buffers the whole payload.

#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use pki_tools::FacilityKind;

use gateway::cli::client::collect_json;
use tests::Fed;

const TOTAL: u64 = 200 * 1024 * 1024;
const BLOCK: usize = 1024 * 1024;
/// Peak RSS allowed per node (debug build): well under the record's size.
const MAX_RSS_KB: u64 = 200 * 1024;

/// A deterministic pseudo-random payload, generated block by block: block `i` is a random
/// 1 MiB pattern with `i` written over its first 8 bytes, so no two blocks are equal.
struct Generated {
    pattern: Arc<Vec<u8>>,
    index: u64,
    remaining: u64,
}

impl Generated {
    fn new(pattern: Arc<Vec<u8>>) -> Generated {
        Generated::with_len(pattern, TOTAL)
    }

    fn with_len(pattern: Arc<Vec<u8>>, len: u64) -> Generated {
        Generated {
            pattern,
            index: 0,
            remaining: len,
        }
    }

    fn next_block(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = usize::try_from(self.remaining.min(BLOCK as u64)).unwrap();
        let mut block = self.pattern[..n].to_vec();
        block[..8].copy_from_slice(&self.index.to_le_bytes());
        self.index += 1;
        self.remaining -= n as u64;
        Some(Bytes::from(block))
    }
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.next_block().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Peak resident set size of a process, in KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_record_streams_through_with_bounded_memory() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");

    let mut pattern = vec![0u8; BLOCK];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut pattern).unwrap();
    let pattern = Arc::new(pattern);
    let expected = {
        let mut gen = Generated::new(pattern.clone());
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        while let Some(block) = gen.next_block() {
            ctx.update(&block);
        }
        ctx.finish()
    };

    let started = Instant::now();
    let query = "to=clinic-b&patient=pat-stream-1&purpose=treatment&content_type=application%2Foctet-stream&categories=general&clinician=dr-stream&clinician_role=physician";
    let resp = a
        .api()
        .call(
            Method::POST,
            &format!("/v1/transfers?{query}"),
            Body::new(Generated::new(pattern)),
            Some("application/octet-stream"),
        )
        .await
        .unwrap();
    let (status, body) = collect_json(resp).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["transfer_id"].as_str().unwrap().to_owned();
    let accepted_after = started.elapsed();
    let view = a
        .wait_state(&id, "delivered", Duration::from_secs(180))
        .await;
    assert_eq!(view["payload_bytes"], TOTAL);
    assert_eq!(view["receipt_held"], true);
    let delivered_after = started.elapsed();

    // Fetch and hash as it streams; never hold the record in test memory.
    let (received, digest) = fetch_streamed(&b, &id).await;
    assert_eq!(received, TOTAL);
    assert_eq!(
        digest.as_ref(),
        expected.as_ref(),
        "fetched payload differs from what was sent"
    );
    eprintln!(
        "200 MB: accepted after {accepted_after:?}, delivered after {delivered_after:?}, fetched after {:?}",
        started.elapsed()
    );

    for node in [&a, &b] {
        let kb = peak_rss_kb(node.pid());
        eprintln!("{} peak RSS {} MiB", node.dir.id, kb / 1024);
        assert!(
            kb < MAX_RSS_KB,
            "{} peaked at {} MiB: the record was buffered",
            node.dir.id,
            kb / 1024
        );
    }
    assert!(a.audit_verifies().await);
    assert!(b.audit_verifies().await);
}

/// A body that sends `blocks` MiB of data and then fails, as a client that dies mid-upload.
struct BrokenUpload {
    blocks: usize,
}

impl hyper::body::Body for BrokenUpload {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.blocks == 0 {
            return Poll::Ready(Some(Err(std::io::Error::other("client gave up"))));
        }
        self.blocks -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0x5a; BLOCK])))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(100 * BLOCK as u64)
    }
}

fn upload_files(node: &tests::Node) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(node.dir.dir.join("data").join("uploads")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_interrupted_uploads_leave_no_plaintext_behind() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let config = &fed.nodes["hosp-a"].config_path;
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        text.replacen(
            "[local_api]\n",
            "[local_api]\nmax_body_bytes = 20000000\n",
            1,
        ),
    )
    .unwrap();
    let a = fed.start("hosp-a");
    let query = "to=clinic-b&patient=pat-upload-1&purpose=treatment&content_type=application%2Foctet-stream&categories=general&clinician=dr-stream&clinician_role=physician";

    // Over the limit: 30 MiB against 20 MB, large enough to have been spilled to disk first.
    let big = Bytes::from(vec![0x5a; 30 * BLOCK]);
    let resp = a
        .api()
        .call(
            Method::POST,
            &format!("/v1/transfers?{query}"),
            Body::from(big),
            Some("application/octet-stream"),
        )
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    tests::assert_eventually!(
        Duration::from_secs(10),
        upload_files(&a).is_empty(),
        "a refused upload left plaintext on disk: {:?}",
        upload_files(&a)
    );

    // Interrupted: the client dies after 12 MiB of a declared 100 MiB.
    let result = a
        .api()
        .call(
            Method::POST,
            &format!("/v1/transfers?{query}"),
            Body::new(BrokenUpload { blocks: 12 }),
            Some("application/octet-stream"),
        )
        .await;
    assert!(
        result.as_ref().map_or(true, |r| !r.status().is_success()),
        "a broken upload was accepted"
    );
    tests::assert_eventually!(
        Duration::from_secs(10),
        upload_files(&a).is_empty(),
        "an interrupted upload left plaintext on disk: {:?}",
        upload_files(&a)
    );
    let (_, list) = a.get("/v1/transfers").await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

fn random_pattern() -> Arc<Vec<u8>> {
    let mut pattern = vec![0u8; BLOCK];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut pattern).unwrap();
    Arc::new(pattern)
}

fn digest_of(mut gen: Generated) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    while let Some(block) = gen.next_block() {
        ctx.update(&block);
    }
    ctx.finish()
}

/// Fetches a received record and hashes it as it streams (never held in test memory):
/// its length and SHA-256.
async fn fetch_streamed(node: &tests::Node, id: &str) -> (u64, ring::digest::Digest) {
    let mut body = node.fetch_body(id).await;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
            ctx.update(&data);
        }
    }
    (received, ctx.finish())
}

fn spool_entries(node: &tests::Node, kind: &str) -> Vec<String> {
    match std::fs::read_dir(node.dir.dir.join("data").join("spool").join(kind)) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_stream_resends_the_record_whole() {
    const LEN: u64 = 48 * 1024 * 1024;
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let pattern = random_pattern();
    let expected = digest_of(Generated::with_len(pattern.clone(), LEN));

    let query = "to=clinic-b&patient=pat-stream-2&purpose=treatment&content_type=application%2Foctet-stream&categories=general&clinician=dr-stream&clinician_role=physician";
    let resp = a
        .api()
        .call(
            Method::POST,
            &format!("/v1/transfers?{query}"),
            Body::new(Generated::with_len(pattern, LEN)),
            Some("application/octet-stream"),
        )
        .await
        .unwrap();
    let (status, body) = collect_json(resp).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["transfer_id"].as_str().unwrap().to_owned();

    // SIGKILL the sender while clinic-b is part-way through writing the envelope.
    tests::assert_eventually!(
        Duration::from_secs(60),
        spool_entries(&b, "inbox")
            .iter()
            .any(|n| n.ends_with(".partial")),
        "the envelope never started streaming (or finished before it could be interrupted): {}",
        a.transfer(&id).await
    );
    a.kill9();

    // clinic-b refuses the cut-off envelope, stores nothing and keeps no partial file.
    tests::assert_eventually!(
        Duration::from_secs(30),
        spool_entries(&b, "inbox").is_empty(),
        "partial spool file left behind: {:?}",
        spool_entries(&b, "inbox")
    );
    assert!(b.inbox().await.is_empty());
    let cut = b.audit_events("rejected").await;
    assert!(
        cut.iter().any(|e| e["transfer_id"] == id.as_str()
            && e["reason"].as_str().is_some_and(|r| r.contains("cut off"))),
        "the interrupted envelope was not audited: {cut:#?}"
    );

    // The restarted sender resends it from the start; it arrives whole, once.
    let a = fed.start("hosp-a");
    let view = a
        .wait_state(&id, "delivered", Duration::from_secs(120))
        .await;
    assert!(view["attempts"].as_u64().unwrap() >= 2, "{view}");
    let (_, digest) = fetch_streamed(&b, &id).await;
    assert_eq!(digest.as_ref(), expected.as_ref());
    assert_eq!(b.inbox().await.len(), 1);
    assert_eq!(spool_entries(&b, "inbox"), vec![id.clone()]);
    assert_eq!(b.audit_events("received").await.len(), 1);
    assert!(a.audit_verifies().await);
    assert!(b.audit_verifies().await);
}

fn content_digest(digest: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

async fn post_with_digest(
    node: &tests::Node,
    query: &str,
    body: Body,
    content_type: &str,
    digest_header: &str,
) -> (StatusCode, serde_json::Value) {
    let resp = node
        .api()
        .call_with_headers(
            Method::POST,
            &format!("/v1/transfers?{query}"),
            body,
            Some(content_type),
            &[("content-digest", digest_header)],
        )
        .await
        .unwrap();
    collect_json(resp).await.unwrap()
}

async fn transfer_count(node: &tests::Node) -> usize {
    let resp = node
        .api()
        .call(Method::GET, "/v1/transfers", Body::empty(), None)
        .await
        .unwrap();
    let (status, body) = collect_json(resp).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().len()
}

/// With Content-Length and Content-Digest declared, a large upload is sealed while it arrives
/// (never spilled to a temp file) and delivered intact; a body that does not match its
/// declared digest, or a malformed header, is refused and leaves nothing queued or spooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_digest_lets_a_large_upload_be_sealed_as_it_arrives() {
    // Over the 8 MiB in-memory limit, and not a whole number of 64 KiB chunks.
    const LEN: u64 = 24 * 1024 * 1024 + 12_345;
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let pattern = random_pattern();
    let expected = digest_of(Generated::with_len(pattern.clone(), LEN));
    let query = "to=clinic-b&patient=pat-stream-3&purpose=treatment&content_type=application%2Foctet-stream&categories=general&clinician=dr-stream&clinician_role=physician";
    let octets = "application/octet-stream";

    let (status, body) = post_with_digest(
        &a,
        query,
        Body::new(Generated::with_len(pattern.clone(), LEN)),
        octets,
        &content_digest(expected.as_ref()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["transfer_id"].as_str().unwrap().to_owned();
    let view = a
        .wait_state(&id, "delivered", Duration::from_secs(120))
        .await;
    assert_eq!(view["payload_bytes"], LEN);
    let fetched = b.fetch(&id).await;
    assert_eq!(fetched.len() as u64, LEN);
    assert_eq!(
        ring::digest::digest(&ring::digest::SHA256, &fetched).as_ref(),
        expected.as_ref()
    );
    // The upload was sealed from the request stream: no temp file was ever made for it.
    assert!(
        !a.dir.dir.join("data").join("uploads").exists(),
        "the upload was spilled to a temp file"
    );
    assert_eq!(transfer_count(&a).await, 1);

    // The same bytes under another digest: refused after the upload, nothing kept.
    let (status, body) = post_with_digest(
        &a,
        query,
        Body::new(Generated::with_len(pattern.clone(), LEN)),
        octets,
        &content_digest(&[0u8; 32]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Content-Digest"),
        "{body}"
    );
    assert_eq!(transfer_count(&a).await, 1);
    assert_eq!(spool_entries(&a, "outbox"), vec![id.clone()]);

    // A malformed header is refused before anything is read or decided.
    for bad in [
        "sha-256=abc",
        "sha-256=:not base64!:",
        "md5=:AAAA:",
        "sha-256=:AAAA:",
    ] {
        let (status, body) = post_with_digest(
            &a,
            query,
            Body::new(Generated::with_len(pattern.clone(), 1024)),
            octets,
            bad,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    assert_eq!(transfer_count(&a).await, 1);

    // A small FHIR bundle (read into memory, not streamed) is checked against it too.
    let bundle = tests::bundle_by_prefix("Clemente");
    let patient = tests::patient_id(&bundle).unwrap();
    let fhir_query = format!("to=clinic-b&patient={patient}&purpose=treatment");
    let (status, body) = post_with_digest(
        &a,
        &fhir_query,
        Body::from(bundle.clone()),
        "application/fhir+json",
        &content_digest(&[7u8; 32]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(transfer_count(&a).await, 1);
    let right = ring::digest::digest(&ring::digest::SHA256, &bundle);
    let (status, body) = post_with_digest(
        &a,
        &fhir_query,
        Body::from(bundle),
        "application/fhir+json",
        &content_digest(right.as_ref()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(transfer_count(&a).await, 2);
}

/// An upload sealed while it arrives is still inspected first: its first bytes are read before
/// the envelope header is signed, so FHIR under another label, or any JSON or XML (which could
/// be a parsed format further in), is refused and nothing is queued; a PDF goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_is_inspected_before_it_is_sealed() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    // Over the 8 MiB in-memory limit, so a declared digest streams it.
    let padded = |head: &[u8], tail: &[u8]| -> Vec<u8> {
        let mut body = head.to_vec();
        body.resize(9 * 1024 * 1024, b' ');
        body.extend_from_slice(tail);
        body
    };
    let fhir = padded(
        br#"{"resourceType":"Bundle","type":"collection","entry":[]"#,
        b"}",
    );
    let json = padded(br#"{"note":"#, br#""x"}"#);
    let xml = padded(b"<notes>", b"</notes>");
    let pdf = padded(b"%PDF-1.7\n", b"\n%%EOF\n");
    let declared = "&categories=general&clinician=dr-stream&clinician_role=physician";
    let cases: [(&str, &Vec<u8>, Option<&str>); 4] = [
        ("application%2Foctet-stream", &fhir, Some("declare fhir")),
        (
            "application%2Fjson",
            &json,
            Some("JSON content is classified whole"),
        ),
        (
            "application%2Fxml",
            &xml,
            Some("XML content is classified whole"),
        ),
        ("pdf", &pdf, None),
    ];
    for (label, bytes, refusal) in cases {
        let query = format!(
            "to=clinic-b&patient=pat-stream-4&purpose=treatment&content_type={label}{declared}"
        );
        let digest = content_digest(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        let (status, body) = post_with_digest(
            &a,
            &query,
            Body::from(bytes.clone()),
            "application/octet-stream",
            &digest,
        )
        .await;
        match refusal {
            Some(needle) => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{label}: {body}");
                let error = body["error"].as_str().unwrap_or("");
                assert!(error.contains(needle), "{label}: {error}");
            }
            None => {
                assert_eq!(status, StatusCode::ACCEPTED, "{label}: {body}");
                let id = body["transfer_id"].as_str().unwrap().to_owned();
                a.wait_state(&id, "delivered", Duration::from_secs(60))
                    .await;
                let (_, fetched) = fetch_streamed(&b, &id).await;
                assert_eq!(
                    fetched.as_ref(),
                    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()
                );
            }
        }
    }
    assert_eq!(transfer_count(&a).await, 1);
    assert!(upload_files(&a).is_empty(), "{:?}", upload_files(&a));
}
