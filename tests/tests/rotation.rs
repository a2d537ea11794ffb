//! Key rotation while running, as an operator does it: `pki rotate` writes a facility's new
//! certificate and keys into its node directory, `pki publish` writes the directory that lists
//! old and new, and the nodes pick both up on SIGHUP or on their reload interval. Traffic flows
//! both ways the whole time; nothing may fail, nothing may be lost or doubled, every record held
//! must still open (also after a restart), and the node must present its new certificate.
//!
//! Settings: the shipped defaults throughout (`[delivery]` included: 500 ms .. 60 s backoff,
//! the 10 s reload interval). The interval path is exercised by waiting for it, not by
//! shortening it.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pki_tools::FacilityKind;

use tests::{testdata, Fed, Node};

/// A C-CDA document of the shared test data whose patient has no sensitive category: the
/// default policies permit it for treatment without a consent directive, both ways.
fn document() -> Vec<u8> {
    std::fs::read(testdata("fhir/cda/CCD1_C-CDA2.1_CCD.xml")).unwrap()
}

const PATIENT: &str = "444222222";

/// The `pki` binary of this workspace, built when missing (like the gateway's).
fn pki_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = tests::gateway_bin().with_file_name("pki");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let status = Command::new(cargo)
                .args(["build", "-p", "pki-tools", "--bin", "pki"])
                .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
                .status()
                .unwrap();
            assert!(status.success(), "building the pki binary failed");
        }
        bin
    })
    .clone()
}

fn pki(args: &[&str]) {
    let out = Command::new(pki_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "pki {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pki rotate` then `pki publish`, as the operator runs them.
fn rotate_and_publish(fed: &Fed, id: &str) {
    rotate(fed, id);
    publish(fed);
}

fn rotate(fed: &Fed, id: &str) {
    let dir = fed.federation_dir();
    let out = fed.nodes[id].dir.clone();
    pki(&[
        "rotate",
        "--dir",
        dir.to_str().unwrap(),
        "--id",
        id,
        "--out",
        out.to_str().unwrap(),
    ]);
}

fn publish(fed: &Fed) {
    let dir = fed.federation_dir();
    pki(&["publish", "--dir", dir.to_str().unwrap()]);
}

fn sighup(node: &Node) {
    let status = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SHA-256 of the certificate a node's peer listener presents, read with a real TLS client
/// (`openssl s_client`, authenticating as `client_dir`'s facility).
fn presented_fingerprint(addr: SocketAddr, ca: &Path, client_dir: &Path) -> Option<[u8; 32]> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_3",
            "-CAfile",
        ])
        .arg(ca)
        .arg("-cert")
        .arg(client_dir.join("tls.crt"))
        .arg("-key")
        .arg(client_dir.join("tls.key"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = out.stdout;
    let cert = rustls_pemfile::certs(&mut text.as_slice()).next()?.ok()?;
    Some(pki_tools::cert_fingerprint(&cert))
}

fn file_fingerprint(cert_path: &Path) -> [u8; 32] {
    let pem = std::fs::read(cert_path).unwrap();
    let cert = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    pki_tools::cert_fingerprint(&cert)
}

/// Waits (bounded) until the node presents the certificate now in its `tls.crt`.
async fn wait_presents_current(fed: &Fed, node: &Node, observer: &str, timeout: Duration) {
    let want = file_fingerprint(&node.dir.dir.join("tls.crt"));
    let ca = fed.federation_dir().join("ca.crt");
    let observer = fed.nodes[observer].dir.clone();
    let deadline = Instant::now() + timeout;
    loop {
        if presented_fingerprint(node.dir.peer, &ca, &observer) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not present its rotated certificate:\n{}",
            node.dir.id,
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the traffic loop submitted: transfer id → (sender, recipient).
type Submitted = Arc<Mutex<BTreeMap<String, (String, String)>>>;

/// Submits the document both ways, alternating, until `stop`.
fn traffic(nodes: [Arc<Node>; 2], stop: Arc<AtomicBool>, submitted: Submitted) {
    tokio::spawn(async move {
        let mut turn = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let (from, to) = if turn % 2 == 0 {
                (&nodes[0], &nodes[1])
            } else {
                (&nodes[1], &nodes[0])
            };
            let to_id = to.dir.id.clone();
            let s = from
                .send(&to_id, PATIENT, "treatment", "ccda", document(), &[])
                .await;
            assert_eq!(s.status, http::StatusCode::ACCEPTED, "{}", s.body);
            submitted
                .lock()
                .unwrap()
                .insert(s.transfer_id(), (from.dir.id.clone(), to_id));
            turn += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
}

/// Waits until every transfer `node` sent is delivered; no transfer may fail on the way.
async fn wait_all_delivered(node: &Node, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let transfers = node.transfers().await;
        for t in &transfers {
            assert!(
                t["state"] != "failed" && t["state"] != "cancelled",
                "{} transfer {} ended {}: {}\n{}",
                node.dir.id,
                t["transfer_id"],
                t["state"],
                t["last_error"],
                node.log_text()
            );
        }
        if transfers.iter().all(|t| t["state"] == "delivered") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not every transfer was delivered: {:?}",
            node.dir.id,
            transfers
                .iter()
                .filter(|t| t["state"] != "delivered")
                .map(|t| (t["state"].clone(), t["last_error"].clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that no transfer of `node` failed so far.
async fn none_failed(node: &Node) {
    for t in node.transfers().await {
        assert!(
            t["state"] != "failed" && t["state"] != "cancelled",
            "{} transfer {} ended {}: {}",
            node.dir.id,
            t["transfer_id"],
            t["state"],
            t["last_error"]
        );
    }
}

/// Lets traffic run for a while (several deliveries each way under the new keys).
async fn flow(a: &Node, b: &Node, period: Duration) {
    tokio::time::sleep(period).await;
    none_failed(a).await;
    none_failed(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_each_side_twice_with_traffic_flowing_fails_nothing_and_every_record_opens() {
    // `lab-c` is never started: its identity is the TLS client that looks at the certificates.
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
            ("lab-c", FacilityKind::Lab),
        ],
        "",
    );
    assert_eq!(fed.config("hosp-a").federation.reload_interval_secs, 10);
    assert_eq!(fed.config("hosp-a").delivery.initial_backoff_ms, 500);
    let a = Arc::new(fed.start("hosp-a"));
    let mut b = Arc::new(fed.start("clinic-b"));
    let ca = fed.federation_dir().join("ca.crt");
    let observer = fed.nodes["lab-c"].dir.clone();
    let mut seen: BTreeMap<&str, Vec<[u8; 32]>> = BTreeMap::new();
    for node in [&a, &b] {
        let fp = presented_fingerprint(node.dir.peer, &ca, &observer).unwrap();
        seen.entry(if node.dir.id == "hosp-a" {
            "hosp-a"
        } else {
            "clinic-b"
        })
        .or_default()
        .push(fp);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let submitted: Submitted = Arc::default();
    traffic([a.clone(), b.clone()], stop.clone(), submitted.clone());
    flow(&a, &b, Duration::from_secs(2)).await;

    // 1. The receiver's first rotation. The sender is signalled first, so it seals to
    //    clinic-b's new key before clinic-b has loaded it (the case that failed for good);
    //    clinic-b itself is left to its default 10 s reload interval.
    rotate_and_publish(&fed, "clinic-b");
    sighup(&a);
    flow(&a, &b, Duration::from_secs(2)).await;
    wait_presents_current(&fed, &b, "lab-c", Duration::from_secs(30)).await;
    flow(&a, &b, Duration::from_secs(2)).await;

    // 2. The sender's first rotation: hosp-a takes its keys on SIGHUP, before clinic-b has read
    //    the directory that lists them (clinic-b reads it when the first new signature or
    //    certificate needs it, or on its interval).
    rotate_and_publish(&fed, "hosp-a");
    sighup(&a);
    wait_presents_current(&fed, &a, "lab-c", Duration::from_secs(30)).await;
    flow(&a, &b, Duration::from_secs(3)).await;

    // Before each side's second rotation, what it sealed under its first keys is delivered:
    // the second rotation drops those keys from the directory (the operator procedure says
    // the same: let the queue drain of envelopes signed before the previous rotation).
    wait_all_delivered(&a, Duration::from_secs(120)).await;
    wait_all_delivered(&b, Duration::from_secs(120)).await;

    // 3. The receiver's second rotation, both nodes signalled as an operator distributing the
    //    directory would.
    rotate_and_publish(&fed, "clinic-b");
    sighup(&b);
    sighup(&a);
    wait_presents_current(&fed, &b, "lab-c", Duration::from_secs(30)).await;
    flow(&a, &b, Duration::from_secs(3)).await;

    // 4. The sender's second rotation, left to both nodes' reload intervals.
    wait_all_delivered(&a, Duration::from_secs(120)).await;
    rotate_and_publish(&fed, "hosp-a");
    wait_presents_current(&fed, &a, "lab-c", Duration::from_secs(40)).await;
    flow(&a, &b, Duration::from_secs(3)).await;

    stop.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_all_delivered(&a, Duration::from_secs(120)).await;
    wait_all_delivered(&b, Duration::from_secs(120)).await;

    // The presented certificate changed at each rotation: three different ones per node.
    for node in [&a, &b] {
        let fp = presented_fingerprint(node.dir.peer, &ca, &observer).unwrap();
        assert_eq!(fp, file_fingerprint(&node.dir.dir.join("tls.crt")));
        let id = if node.dir.id == "hosp-a" {
            "hosp-a"
        } else {
            "clinic-b"
        };
        seen.get_mut(id).unwrap().push(fp);
    }
    for (id, fps) in &seen {
        let distinct: BTreeSet<_> = fps.iter().collect();
        assert_eq!(distinct.len(), 2, "{id}: {fps:?}");
    }
    for node in [&a, &b] {
        let log = node.log_text();
        assert_eq!(
            log.matches("node identity reloaded").count(),
            2,
            "{}: {log}",
            node.dir.id
        );
    }

    // Nothing lost, nothing doubled: each submitted transfer is in its recipient's inbox once,
    // and nothing else is.
    let submitted = submitted.lock().unwrap().clone();
    assert!(
        submitted.len() > 20,
        "too little traffic: {}",
        submitted.len()
    );
    for node in [&a, &b] {
        let inbox: Vec<String> = node
            .inbox()
            .await
            .iter()
            .map(|e| e["transfer_id"].as_str().unwrap().to_owned())
            .collect();
        let unique: BTreeSet<&String> = inbox.iter().collect();
        assert_eq!(unique.len(), inbox.len(), "{}: an id twice", node.dir.id);
        let expected: BTreeSet<&String> = submitted
            .iter()
            .filter(|(_, (_, to))| *to == node.dir.id)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(unique, expected, "{}", node.dir.id);
    }

    // Every held record still opens: received under keys both sides have since rotated away
    // (the sender's first signing key is no longer in the directory).
    let doc = document();
    for node in [&a, &b] {
        for entry in node.inbox().await {
            let id = entry["transfer_id"].as_str().unwrap();
            assert!(node.fetch(id).await == doc, "{}: {id}", node.dir.id);
        }
    }
    // ... and after a restart, when the keys from before the last rotation are no longer
    // in the node directory (pki keeps one previous set) but in the node's keyring.
    drop(a);
    Arc::get_mut(&mut b).unwrap().stop();
    let b = fed.start("clinic-b");
    for entry in b.inbox().await {
        let id = entry["transfer_id"].as_str().unwrap();
        assert!(b.fetch(id).await == doc, "after restart: {id}");
    }
    assert!(b.audit_verifies().await);
}

async fn send(from: &Node, to: &str) -> String {
    from.send(to, PATIENT, "treatment", "ccda", document(), &[])
        .await
        .transfer_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_key_set_is_refused_and_the_old_identity_keeps_working() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
            ("lab-c", FacilityKind::Lab),
        ],
        "",
    );
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let ca = fed.federation_dir().join("ca.crt");
    let observer = fed.nodes["lab-c"].dir.clone();
    let a_original = presented_fingerprint(a.dir.peer, &ca, &observer).unwrap();
    let b_original = presented_fingerprint(b.dir.peer, &ca, &observer).unwrap();
    let b_dir = b.dir.dir.clone();
    let first = send(&a, "clinic-b").await;
    a.wait_state(&first, "delivered", Duration::from_secs(30))
        .await;

    // 1. hosp-a's new files, not yet published: it keeps signing and presenting its current
    //    ones, which its peers know, and says why.
    rotate(&fed, "hosp-a");
    sighup(&a);
    tests::assert_eventually!(
        Duration::from_secs(10),
        a.log_text()
            .contains("does not list their signing key and certificate yet"),
        "hosp-a did not report new keys waiting for the directory:\n{}",
        a.log_text()
    );
    let t = send(&a, "clinic-b").await;
    a.wait_state(&t, "delivered", Duration::from_secs(30)).await;
    assert_eq!(
        presented_fingerprint(a.dir.peer, &ca, &observer),
        Some(a_original)
    );

    // 2. clinic-b's rotation arrives as a mismatched set: the new certificate with the previous
    //    TLS key. It is made in a copy of the node directory and moved in with the certificate
    //    first, so that the node never sees a consistent new set on its way in.
    let staging = fed.dir.path().join("clinic-b-staging");
    std::fs::create_dir(&staging).unwrap();
    for name in [
        "ca.crt",
        "tls.crt",
        "tls.key",
        "signing.key",
        "encryption.key",
        "facility.json",
    ] {
        std::fs::copy(b_dir.join(name), staging.join(name)).unwrap();
    }
    pki(&[
        "rotate",
        "--dir",
        fed.federation_dir().to_str().unwrap(),
        "--id",
        "clinic-b",
        "--out",
        staging.to_str().unwrap(),
    ]);
    let new_tls_key = std::fs::read(staging.join("tls.key")).unwrap();
    std::fs::copy(staging.join("tls-previous.key"), staging.join("tls.key")).unwrap();
    for name in [
        "tls.crt",
        "tls.key",
        "signing.key",
        "encryption.key",
        "tls-previous.crt",
        "tls-previous.key",
        "signing-previous.key",
        "encryption-previous.key",
        "facility.json",
    ] {
        std::fs::rename(staging.join(name), b_dir.join(name)).unwrap();
    }
    // Published: hosp-a takes its new keys, and seals to clinic-b's new encryption key, which
    // clinic-b refuses to take with this set.
    publish(&fed);
    sighup(&a);
    sighup(&b);
    wait_presents_current(&fed, &a, "lab-c", Duration::from_secs(15)).await;
    tests::assert_eventually!(
        Duration::from_secs(10),
        b.log_text()
            .contains("does not match the public key of the certificate"),
        "clinic-b did not refuse the mismatched set:\n{}",
        b.log_text()
    );
    // The old identity keeps working: clinic-b still presents its first certificate, and its
    // transfers, signed with its first key (still listed), are delivered.
    assert_eq!(
        presented_fingerprint(b.dir.peer, &ca, &observer),
        Some(b_original)
    );
    let from_b = send(&b, "hosp-a").await;
    b.wait_state(&from_b, "delivered", Duration::from_secs(30))
        .await;
    // A transfer to clinic-b is sealed to the key it has not loaded: answered "retry later",
    // so it waits queued instead of failing.
    let waiting = send(&a, "clinic-b").await;
    tests::assert_eventually!(
        Duration::from_secs(20),
        a.transfer(&waiting).await["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503") && e.contains("has not loaded")),
        "no retryable answer: {}",
        a.transfer(&waiting).await
    );
    assert_eq!(a.transfer(&waiting).await["state"], "queued");

    // 3. The right TLS key back, but the encryption key readable by others: refused too.
    std::fs::set_permissions(
        b_dir.join("encryption.key"),
        PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    pki_tools::files::write_atomic(&b_dir.join("tls.key"), &new_tls_key, true).unwrap();
    sighup(&b);
    tests::assert_eventually!(
        Duration::from_secs(10),
        b.log_text()
            .contains("encryption.key: private key file has mode 0644"),
        "clinic-b did not refuse a 0644 key:\n{}",
        b.log_text()
    );
    assert_eq!(
        presented_fingerprint(b.dir.peer, &ca, &observer),
        Some(b_original)
    );
    assert_eq!(a.transfer(&waiting).await["state"], "queued");

    // 4. Fixed: taken at the next reload; the waiting transfer is delivered, nothing failed.
    std::fs::set_permissions(
        b_dir.join("encryption.key"),
        PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    sighup(&b);
    wait_presents_current(&fed, &b, "lab-c", Duration::from_secs(15)).await;
    a.wait_state(&waiting, "delivered", Duration::from_secs(90))
        .await;
    assert!(b.fetch(&waiting).await == document());
    assert!(b.fetch(&first).await == document());
    none_failed(&a).await;
    none_failed(&b).await;
}
