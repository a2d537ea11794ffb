//! Trust files checked while the node runs, not only at load, with real files written by the
//! `pki-tools` library as the operator's `pki publish` writes them:
//!
//! - a directory that expires while the nodes run stops new sends (transfers stay queued, the
//!   submit answers 503) and receives (the peer API answers 503), with an alert in the log and
//!   an audit entry, until a fresh one is published; then both resume by themselves;
//! - the highest directory version a node has used survives a restart: an older one is refused
//!   on reload and refuses the start;
//! - a directory of the same version with other content is refused on reload and at start;
//! - a CRL whose signature does not verify with the CA is refused on reload (handshakes keep
//!   working with the current one) and refuses the start;
//! - a CRL past its nextUpdate is used through the grace, then new handshakes fail closed until
//!   a fresh one is loaded.
//!
//! Settings: the shipped defaults (no `[delivery]` override, the 10 s reload interval, SIGHUP
//! as the operator sends it), except where a case says why: a directory or CRL published with a
//! validity of seconds instead of the default 7 days, and one node with a grace of seconds, so
//! that their end comes within the test.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use pki_tools::{FacilityKind, Federation, CRL_VALIDITY};

use tests::{assert_eventually, raw_peer_post, testdata, Fed, Node, RawIdentity};

/// A C-CDA document whose patient has no sensitive category: the default policies permit it
/// for treatment without a consent directive.
fn document() -> Vec<u8> {
    std::fs::read(testdata("fhir/cda/CCD1_C-CDA2.1_CCD.xml")).unwrap()
}

const PATIENT: &str = "444222222";
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn federation(ids: &[&str]) -> Fed {
    let specs: Vec<(&str, FacilityKind)> = ids
        .iter()
        .map(|id| {
            let kind = if id.starts_with("hosp") {
                FacilityKind::Hospital
            } else {
                FacilityKind::Clinic
            };
            (*id, kind)
        })
        .collect();
    // Shipped defaults: no TOML appended.
    Fed::with_extra(&specs, "")
}

/// The operator's federation, opened from disk as `pki` does.
fn operator(fed: &Fed) -> Federation {
    Federation::open(&fed.federation_dir()).unwrap()
}

fn sighup(node: &Node) {
    let status = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn sleep_until_unix(t: i64) {
    let wait = t.saturating_sub(now_unix()).max(0);
    tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap())).await;
}

async fn send(from: &Node, to: &str) -> tests::Submitted {
    from.send(to, PATIENT, "treatment", "ccda", document(), &[])
        .await
}

/// One HTTP/2 request over a new mutual-TLS connection to `to`'s peer listener, presenting
/// `from`'s certificate: Err is a refused handshake (or connection).
async fn new_peer_connection(fed: &Fed, from: &Node, to: &Node) -> Result<(u16, String), String> {
    let ca = std::fs::read(fed.federation_dir().join("ca.crt")).unwrap();
    raw_peer_post(
        to.dir.peer,
        &ca,
        &RawIdentity::from_node_dir(&from.dir.dir),
        "/v1/envelopes",
        Vec::new(),
    )
    .await
    .map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
}

/// Starts a node that must refuse to start: its exit code (non-zero) and log.
fn refused_start(fed: &Fed, id: &str) -> String {
    let mut node = fed.spawn(id);
    let code = node.wait_exit(Duration::from_secs(30));
    let log = node.log_text();
    assert!(
        matches!(code, Some(c) if c != 0),
        "{id} started (exit {code:?}) although it should refuse:\n{log}"
    );
    log
}

/// Sets `federation.crl_grace_secs` in a node's config (written by the harness).
fn set_crl_grace(fed: &Fed, id: &str, secs: u64) {
    let path = &fed.nodes[id].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("[federation]\n"));
    let text = text.replace(
        "[federation]\n",
        &format!("[federation]\ncrl_grace_secs = {secs}\n"),
    );
    std::fs::write(path, text).unwrap();
}

async fn audit_has(node: &Node, event: &str, outcome: &str) -> bool {
    node.audit()
        .await
        .iter()
        .any(|e| e["event"] == event && e["outcome"] == outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_directory_stops_sends_and_receives_until_a_fresh_one_arrives() {
    let mut fed = federation(&["hosp-a", "clinic-b", "clinic-c"]);
    // 25 s instead of the default 7 days: the directory must expire while the nodes run.
    let published = operator(&fed)
        .publish_with(Duration::from_secs(25), CRL_VALIDITY)
        .unwrap();
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");

    let first = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&first, "delivered", Duration::from_secs(20))
        .await;
    // clinic-c is down: its transfer waits queued, through the expiry and after it.
    let waiting = send(&a, "clinic-c").await.transfer_id();

    sleep_until_unix(published.directory_expires_at + 1).await;

    // The sender's local API: 503 with the reason, nothing queued.
    let refused = send(&a, "clinic-b").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    let reason = refused.body["error"].as_str().unwrap();
    assert!(
        reason.contains("federation directory expired at")
            && reason.contains("publish a fresh one"),
        "{reason}"
    );
    // The receiver's peer API: 503 with the reason, on a connection it accepted.
    let (status, body) = new_peer_connection(&fed, &a, &b).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("federation directory expired"), "{body}");
    // The alert in both logs, the audit entry on both sides.
    for node in [&a, &b] {
        assert_eventually!(
            Duration::from_secs(10),
            node.log_text().contains("alert=\"directory_expired\""),
            "no alert in the log of {}:\n{}",
            node.dir.id,
            node.log_text()
        );
        assert_eventually!(
            Duration::from_secs(10),
            audit_has(node, "trust-freshness", "directory_expired").await,
            "no audit entry on {}",
            node.dir.id
        );
    }
    // The queued transfer stays queued: not failed, no attempt spent while it waits.
    let before = a.transfer(&waiting).await;
    assert_eq!(before["state"], "queued", "{before}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = a.transfer(&waiting).await;
    assert_eq!(after["state"], "queued", "{after}");
    assert_eq!(after["attempts"], before["attempts"], "{before} {after}");

    // A fresh directory (default validity), loaded on SIGHUP: both resume by themselves.
    fed.pki = operator(&fed);
    fed.publish();
    sighup(&a);
    sighup(&b);
    assert_eventually!(
        Duration::from_secs(10),
        audit_has(&a, "trust-freshness", "resolved").await
            && audit_has(&b, "trust-freshness", "resolved").await,
        "the fresh directory was not taken:\n{}",
        a.log_text()
    );
    let again = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&again, "delivered", Duration::from_secs(20))
        .await;
    let c = fed.start("clinic-c");
    // Its next attempt comes on its own backoff (shipped defaults: at most 60 s).
    a.wait_state(&waiting, "delivered", Duration::from_secs(120))
        .await;
    assert_eq!(c.inbox().await.len(), 1);
    assert_eq!(b.inbox().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_directory_is_refused_on_reload_and_after_a_restart() {
    let mut fed = federation(&["hosp-a", "clinic-b"]);
    let directory = fed.federation_dir().join("directory.json");
    // Version 1 (published by the harness), kept as a stale copy would be.
    let v1 = std::fs::read(&directory).unwrap();
    fed.publish();
    let v2 = std::fs::read(&directory).unwrap();

    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(20)).await;

    // Running: the rollback is refused and version 2 stays in force.
    std::fs::write(&directory, &v1).unwrap();
    sighup(&a);
    assert_eventually!(
        Duration::from_secs(10),
        a.log_text()
            .contains("version 1 is older than version 2, which this node has already used"),
        "no refusal:\n{}",
        a.log_text()
    );
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(20)).await;

    // Restarted on version 1: the node refuses to start, saying why.
    a.stop();
    let log = refused_start(&fed, "hosp-a");
    assert!(
        log.contains("version 1 is older than version 2, which this node has already used"),
        "{log}"
    );

    // Version 2 back: it starts and delivers.
    std::fs::write(&directory, &v2).unwrap();
    let a = fed.start("hosp-a");
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(20)).await;
    drop(b);
}

/// Copies the operator's federation directory (CA key, state, published files), as a backup
/// restored elsewhere would be.
fn copy_federation(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            // std::fs::copy keeps the mode: ca.key stays 0600.
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_the_same_version_with_other_content_is_refused() {
    let mut fed = federation(&["hosp-a", "clinic-b"]);
    // A second copy of the operator's state at version 1: each copy publishes its own
    // version 2. The copy's revokes clinic-b.
    let other = fed.dir.path().join("federation-copy");
    copy_federation(&fed.federation_dir(), &other);
    fed.publish();
    let mut copy = Federation::open(&other).unwrap();
    copy.revoke(&"clinic-b".parse().unwrap(), None).unwrap();
    let conflicting = copy.publish(WEEK).unwrap();
    assert_eq!(conflicting.version, 2);

    let mut a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(20)).await;

    // Running: refused; the version 2 in force (clinic-b active) stays.
    let directory = fed.federation_dir().join("directory.json");
    std::fs::copy(&conflicting.directory_path, &directory).unwrap();
    sighup(&a);
    let refusal = "version 2 has other content than the version 2 this node has already used";
    assert_eventually!(
        Duration::from_secs(10),
        a.log_text().contains(refusal),
        "no refusal:\n{}",
        a.log_text()
    );
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(20)).await;

    // At start: refused too.
    a.stop();
    let log = refused_start(&fed, "hosp-a");
    assert!(log.contains(refusal), "{log}");
}

/// The CRL file with one bit of its signature flipped (the last byte of the DER is the last
/// byte of the ECDSA signature's s), re-encoded as PEM.
fn tampered_crl(path: &Path) -> Vec<u8> {
    use base64::Engine as _;
    let pem = std::fs::read(path).unwrap();
    let mut der = rustls_pemfile::crls(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut out = String::from("-----BEGIN X509 CRL-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END X509 CRL-----\n");
    out.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_with_a_bad_signature_is_refused_and_the_current_one_stays() {
    let fed = federation(&["hosp-a", "clinic-b"]);
    let a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(20)).await;

    let crl = fed.federation_dir().join("crl.pem");
    let good = std::fs::read(&crl).unwrap();
    std::fs::write(&crl, tampered_crl(&crl)).unwrap();
    sighup(&b);
    assert_eventually!(
        Duration::from_secs(10),
        b.log_text()
            .contains("CRL refused: CRL signature does not verify with the federation CA key"),
        "no refusal:\n{}",
        b.log_text()
    );
    // New handshakes still succeed with the CRL in force (the request itself is refused: an
    // empty body is no envelope).
    let (status, body) = new_peer_connection(&fed, &a, &b).await.unwrap();
    assert_ne!(status, 503, "{body}");

    // At start: refused.
    b.stop();
    let log = refused_start(&fed, "clinic-b");
    assert!(
        log.contains("CRL refused: CRL signature does not verify with the federation CA key"),
        "{log}"
    );
    std::fs::write(&crl, good).unwrap();
    let b = fed.start("clinic-b");
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(60)).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_past_next_update_is_used_through_the_grace_then_handshakes_fail_closed() {
    let mut fed = federation(&["hosp-a", "clinic-b"]);
    // A CRL whose nextUpdate is 12 s away instead of the default 7 days, and a grace of 8 s on
    // both nodes instead of the default 7 days: both must pass within the test.
    let published = operator(&fed)
        .publish_with(WEEK, Duration::from_secs(12))
        .unwrap();
    let grace = 8;
    set_crl_grace(&fed, "hosp-a", grace);
    set_crl_grace(&fed, "clinic-b", grace);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(20)).await;

    // Past nextUpdate, within the grace: still used, with a warning.
    sleep_until_unix(published.crl_next_update + 2).await;
    let (status, body) = new_peer_connection(&fed, &a, &b).await.unwrap();
    assert_ne!(status, 503, "{body}");
    assert_eventually!(
        Duration::from_secs(5),
        b.log_text().contains("alert=\"crl_in_grace\""),
        "no warning:\n{}",
        b.log_text()
    );

    // Past the grace: a new handshake fails closed, the reason and the alert are in the log.
    let deadline = published.crl_next_update + i64::try_from(grace).unwrap();
    sleep_until_unix(deadline + 2).await;
    let refused = new_peer_connection(&fed, &a, &b).await;
    assert!(refused.is_err(), "handshake accepted: {refused:?}");
    assert_eventually!(
        Duration::from_secs(5),
        b.log_text().contains("federation CRL is stale since")
            && b.log_text().contains("alert=\"crl_stale\""),
        "no reason in the log:\n{}",
        b.log_text()
    );
    let submit = send(&a, "clinic-b").await;
    assert_eq!(
        submit.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        submit.body
    );
    assert!(audit_has(&b, "trust-freshness", "crl_stale").await);

    // A fresh CRL: taken at the next reload, handshakes and sends resume.
    fed.pki = operator(&fed);
    fed.publish();
    sighup(&a);
    sighup(&b);
    assert_eventually!(
        Duration::from_secs(10),
        new_peer_connection(&fed, &a, &b).await.is_ok(),
        "handshakes did not resume:\n{}",
        b.log_text()
    );
    let t = send(&a, "clinic-b").await.transfer_id();
    a.wait_state(&t, "delivered", Duration::from_secs(30)).await;
}
