//! `/metrics`, the alert rules and `gateway status`, against real programs: two real nodes
//! exchange records and the figures on their ops listeners follow (transfers, latency,
//! attempts, refusals, decisions, a queue to a stopped peer, the certificate's and the trust
//! files' deadlines, checked against the files themselves with openssl); `promtool check
//! metrics` accepts the output, `promtool check rules` and `promtool test rules` the rules in
//! deploy/; a real Prometheus (Debian's `prometheus`) scrapes a running node, loads the rules
//! and answers a query for a node's metric through its HTTP API; `gateway status` (text and
//! `--json`) shows the stopped peer unreachable with its queue and its last error.
//!
//! Missing programs are installed with apt-get (as .ci/run does), never skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{testdata, wait_child_exit, Fed, Node};

/// Held while apt-get runs (the lock tests/packaging.rs takes too), so the two never race for
/// dpkg's lock.
const DPKG_LOCK: &str = "/tmp/healthfed-tests-dpkg.lock";

/// A C-CDA document of the shared test data whose patient has no sensitive category: the
/// default policies permit it for treatment without a consent directive.
fn document() -> Vec<u8> {
    std::fs::read(testdata("fhir/cda/CCD1_C-CDA2.1_CCD.xml")).unwrap()
}

/// The document's own patient (its recordTarget id).
const PATIENT: &str = "444222222";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Makes sure `bin` is on PATH, installing Debian's `package` when it is not.
fn ensure_apt(bin: &str, package: &str) {
    let on_path = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if on_path() {
        return;
    }
    let mut child = Command::new("flock")
        .args(["-w", "900", DPKG_LOCK, "sh", "-c"])
        .arg(format!(
            "apt-get -o DPkg::Lock::Timeout=600 update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq {package}"
        ))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    if wait_child_exit(&mut child, Duration::from_secs(900)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        on_path(),
        "{bin} is needed and `apt-get install {package}` did not provide it"
    );
}

/// Runs a program for at most `timeout`, with `stdin` as its input: (exit code, stdout+stderr).
fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> (Option<i32>, String) {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::options().append(true).open(&out).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let code = wait_child_exit(&mut child, timeout);
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (code, std::fs::read_to_string(&out).unwrap_or_default())
}

/// One HTTP/1.1 GET on a fresh connection: (status, body). Bounded by socket timeouts.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    // Prometheus answers chunked; the ops listener with a length.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// A scrape of a node's `/metrics`: the text, and each sample by `name{labels}` as written.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn of(node: &Node) -> Scrape {
        let (status, text) = http_get(node.dir.ops, "/metrics");
        assert_eq!(status, 200, "{text}\n{}", node.log_text());
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_owned(), value.parse::<f64>().unwrap())
            })
            .collect();
        Scrape { text, samples }
    }

    /// The sample's value, 0 when the series is absent (a counter not incremented yet).
    fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from\n{}", self.text))
    }
}

/// Scrapes until `ok` holds (≤ 30 s); returns that scrape.
fn scrape_until(node: &Node, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = Scrape::of(node);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}:\n{}", s.text);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Unix time of a certificate's notAfter, read by openssl from the file.
fn openssl_not_after(cert: &Path) -> i64 {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // notAfter=2027-12-03 06:00:00Z
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text
        .trim()
        .trim_start_matches("notAfter=")
        .trim_end_matches('Z');
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(date, &fmt)
        .unwrap()
        .assume_utc()
        .unix_timestamp()
}

/// The CRL's nextUpdate, read by openssl from the file.
fn openssl_next_update(crl: &Path) -> i64 {
    let out = Command::new("openssl")
        .args([
            "crl",
            "-noout",
            "-nextupdate",
            "-dateopt",
            "iso_8601",
            "-in",
        ])
        .arg(crl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text
        .trim()
        .trim_start_matches("nextUpdate=")
        .trim_end_matches('Z');
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(date, &fmt)
        .unwrap()
        .assume_utc()
        .unix_timestamp()
}

/// The version inside a signed directory file (its base64 payload, read without the node).
fn directory_version(path: &Path) -> f64 {
    use base64::Engine as _;
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(file["payload"].as_str().unwrap())
        .unwrap();
    let directory: Value = serde_json::from_slice(&payload).unwrap();
    directory["version"].as_f64().unwrap()
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A free loopback port (bound and released: Prometheus binds it next).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn promtool_check_metrics(text: &str) -> (Option<i32>, String) {
    run(
        Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
        Duration::from_secs(30),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_transfers_refusals_queues_and_trust_deadlines() {
    ensure_apt("promtool", "prometheus");
    ensure_apt("openssl", "openssl");
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");

    let before = Scrape::of(&a);
    let submitted = r#"healthfed_transfers_total{direction="outbound",outcome="submitted"}"#;
    let delivered = r#"healthfed_transfers_total{direction="outbound",outcome="delivered"}"#;
    // The fixed classes are there from the start, at 0 (so the first event is an increase).
    assert_eq!(before.get(submitted), 0.0, "{}", before.text);
    assert_eq!(
        before.get(r#"healthfed_refusals_total{direction="inbound",reason="envelope"}"#),
        0.0
    );
    assert_eq!(
        before.get(r#"healthfed_policy_reloads_total{result="failure"}"#),
        0.0
    );
    assert_eq!(before.get("healthfed_ready"), 1.0);
    assert_eq!(
        before.get(&format!(
            r#"healthfed_build_info{{version="{}",facility="hosp-a"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    let (code, out) = promtool_check_metrics(&before.text);
    assert_eq!(
        code,
        Some(0),
        "promtool check metrics: {out}\n{}",
        before.text
    );

    // One record delivered: counted on both sides, with its latency and its decisions.
    let id = a
        .send("clinic-b", PATIENT, "treatment", "ccda", document(), &[])
        .await
        .transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    let s = scrape_until(&a, "delivery counted", |s| s.value(delivered) == 1.0);
    assert_eq!(s.get(submitted), 1.0);
    assert_eq!(
        s.get("healthfed_transfer_receipt_latency_seconds_count"),
        1.0
    );
    let latency = s.get("healthfed_transfer_receipt_latency_seconds_sum");
    assert!(latency > 0.0 && latency < 30.0, "{latency}");
    assert_eq!(
        s.get(r#"healthfed_delivery_attempts_total{peer="clinic-b",outcome="delivered"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"healthfed_policy_decisions_total{action="send",outcome="permit"}"#),
        1.0
    );
    assert_eq!(s.get(r#"healthfed_queue_transfers{peer="clinic-b"}"#), 0.0);
    assert_eq!(s.get(r#"healthfed_peer_reachable{peer="clinic-b"}"#), 1.0);
    assert!(s.get("healthfed_audit_entries") >= 3.0, "{}", s.text);
    assert!(
        s.get(r#"healthfed_store_size_bytes{part="database"}"#) > 0.0,
        "{}",
        s.text
    );
    // The envelope is in the spool until retention removes it.
    assert!(s.get(r#"healthfed_store_size_bytes{part="spool"}"#) > 0.0);
    let on_b = Scrape::of(&b);
    assert_eq!(
        on_b.get(r#"healthfed_transfers_total{direction="inbound",outcome="received"}"#),
        1.0
    );
    assert_eq!(
        on_b.get(r#"healthfed_policy_decisions_total{action="receive",outcome="permit"}"#),
        1.0
    );

    // The start-up verification of the audit chain passed.
    let s = scrape_until(&a, "audit verified", |s| {
        s.value("healthfed_audit_verify_ok") == 1.0
    });
    assert!(s.get("healthfed_audit_verify_timestamp_seconds") > 0.0);

    // Deadlines, against the files as openssl reads them (a minute of slack for the scrape).
    let now = now_unix();
    let near = |metric: f64, expected: i64| (metric as i64 - expected).abs() <= 60;
    let cert = openssl_not_after(&a.config.keys.tls_cert);
    let node_expiry = s.get(r#"healthfed_certificate_expiry_seconds{certificate="node"}"#);
    assert!(
        near(node_expiry, cert - now),
        "{node_expiry} vs {}",
        cert - now
    );
    assert!(node_expiry > 30.0 * 86_400.0, "{node_expiry}");
    let ca = openssl_not_after(&a.config.keys.ca_cert);
    let ca_expiry = s.get(r#"healthfed_certificate_expiry_seconds{certificate="ca"}"#);
    assert!(near(ca_expiry, ca - now), "{ca_expiry} vs {}", ca - now);
    let next = openssl_next_update(&a.config.federation.crl);
    let crl = s.get("healthfed_crl_next_update_seconds");
    assert!(near(crl, next - now), "{crl} vs {}", next - now);
    // The harness publishes directories valid for 7 days, a moment ago.
    let dir_expiry = s.get("healthfed_directory_expiry_seconds");
    assert!(near(
        dir_expiry,
        7 * 86_400 - s.get("healthfed_directory_age_seconds") as i64
    ));
    assert!(dir_expiry > 6.0 * 86_400.0 && dir_expiry <= 7.0 * 86_400.0);
    let version = directory_version(&a.config.federation.directory);
    assert_eq!(s.get("healthfed_directory_version"), version);

    // Refused submissions, by class: a recipient the directory does not list.
    let refused = a
        .send("nowhere", PATIENT, "treatment", "ccda", document(), &[])
        .await;
    assert_eq!(
        refused.status,
        http::StatusCode::BAD_REQUEST,
        "{:?}",
        refused
    );
    let s = Scrape::of(&a);
    assert_eq!(
        s.get(r#"healthfed_refusals_total{direction="outbound",reason="recipient"}"#),
        1.0
    );
    assert_eq!(s.value(submitted), 1.0, "a refusal is not a submission");

    // A policy reload through the API is counted.
    let (status, body) = a
        .post_json("/v1/policy/reload", serde_json::json!({}))
        .await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let s = Scrape::of(&a);
    assert_eq!(
        s.get(r#"healthfed_policy_reloads_total{result="success"}"#),
        1.0
    );
    assert_eq!(
        s.value(r#"healthfed_policy_reloads_total{result="failure"}"#),
        0.0
    );

    // A checkpoint while the peer is up: the peer, a witness, cosigns it at once.
    a.checkpoint_now().await;
    let s = Scrape::of(&a);
    let checkpointed = s.get("healthfed_audit_checkpoint_entries");
    assert!(checkpointed >= 3.0, "{}", s.text);
    assert_eq!(
        s.get(r#"healthfed_witness_lag_entries{witness="clinic-b"}"#),
        0.0,
        "{}",
        s.text
    );
    assert!(s.get("healthfed_audit_checkpoint_age_seconds") < 30.0);

    // The peer stops: what is sent to it queues, its circuit opens, retries are counted.
    b.kill9();
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(
            a.send("clinic-b", PATIENT, "treatment", "ccda", document(), &[])
                .await
                .transfer_id(),
        );
    }
    let s = scrape_until(&a, "queue to the stopped peer", |s| {
        s.value(r#"healthfed_queue_transfers{peer="clinic-b"}"#) == 2.0
            && s.value(r#"healthfed_peer_reachable{peer="clinic-b"}"#) == 0.0
            && s.value(r#"healthfed_delivery_retries_total{peer="clinic-b"}"#) >= 1.0
    });
    assert!(
        s.get(r#"healthfed_delivery_attempts_total{peer="clinic-b",outcome="unreachable"}"#) >= 1.0
    );
    assert_eq!(s.get(submitted), 3.0);
    // A checkpoint the stopped witness cannot cosign: it lags by what the log grew since.
    a.checkpoint_now().await;
    let s = Scrape::of(&a);
    let grown = s.get("healthfed_audit_checkpoint_entries") - checkpointed;
    assert!(grown > 0.0, "{}", s.text);
    assert_eq!(
        s.get(r#"healthfed_witness_lag_entries{witness="clinic-b"}"#),
        grown,
        "{}",
        s.text
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = Scrape::of(&a);
    let age = s.get(r#"healthfed_queue_oldest_age_seconds{peer="clinic-b"}"#);
    assert!((2.0..60.0).contains(&age), "{age}");

    // Nothing of the record, its patient or its transfer ids is in the output.
    for text in [&s.text, &on_b.text] {
        assert!(!text.contains(PATIENT), "patient id in metrics:\n{text}");
        for t in queued.iter().chain([&id]) {
            assert!(!text.contains(t.as_str()), "transfer id in metrics");
        }
    }
    let (code, out) = promtool_check_metrics(&s.text);
    assert_eq!(code, Some(0), "promtool check metrics: {out}\n{}", s.text);

    // `gateway status`: the same picture for IT.
    let (code, stdout, stderr) = a.cli(&["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let st: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(st["facility"], "hosp-a");
    let peers = st["peers"].as_array().unwrap();
    let to_b = peers.iter().find(|p| p["facility"] == "clinic-b").unwrap();
    assert_eq!(to_b["reachable"], false, "{st}");
    assert_eq!(to_b["pending"], 2, "{st}");
    assert!(
        to_b["circuit"]["failed_probes"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert_eq!(st["pending_total"], 2);
    let errors = st["last_errors"].as_array().unwrap();
    assert!(!errors.is_empty(), "{st}");
    assert!(errors.iter().all(|e| e["peer"] == "clinic-b"), "{st}");
    assert!(
        errors
            .iter()
            .all(|e| e["state"] == "queued" || e["state"] == "delivering"),
        "{st}"
    );
    assert!(queued.contains(&errors[0]["transfer_id"].as_str().unwrap().to_owned()));
    let cert_in = st["identity"]["certificate_expires"]["in_secs"]
        .as_i64()
        .unwrap();
    assert!((cert_in - (cert - now_unix())).abs() <= 60, "{st}");
    assert_eq!(st["directory"]["version"].as_f64(), Some(version));
    assert_eq!(st["directory"]["fresh"], true);
    assert_eq!(st["crl"]["fresh"], true);
    assert!(st["crl"]["age_secs"].as_i64().unwrap() >= 0, "{st}");
    let fingerprint = st["identity"]["tls_certificate_sha256"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 64);
    assert!(!stdout.contains(PATIENT));

    let (code, text, stderr) = a.cli(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains("facility     hosp-a"), "{text}");
    assert!(text.contains(fingerprint), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("clinic-b"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..3], ["clinic-b", "NO", "2"], "{row}");
    assert!(row.contains("unreachable since"), "{row}");
    assert!(text.contains("last errors (pending"), "{text}");
    assert!(text.contains("queued after attempt"), "{text}");
    assert!(!text.contains(PATIENT));
    assert!(!text.contains("not running"), "{text}");
    assert_eq!(st["node_running"], true);

    // With the node stopped, status reads its data dir: the queue is there, reachability is not.
    let mut a = a;
    a.stop();
    let (code, stdout, stderr) = a.cli(&["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let st: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(st["node_running"], false, "{st}");
    assert_eq!(st["pending_total"], 2, "{st}");
    let (code, text, stderr) = a.cli(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        text.contains("not running: read from its data dir"),
        "{text}"
    );
    let row = text.lines().find(|l| l.starts_with("clinic-b")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..3], ["clinic-b", "?", "2"], "{row}");
}

/// The receiver takes envelopes of at most 64 KiB and the document is 172 KiB: it refuses it
/// (413), the sender fails the transfer at once, and each side counts its half; `gateway
/// status` lists the failure.
/// An audit chain broken on disk (one byte of a middle entry changed in sled while the node was
/// stopped, as a disk fault or a careless edit would) is found by the node's own start-up
/// verification: the gauge the `HealthfedAuditVerifyFailed` rule reads drops to 0 and the log
/// carries the alert; the node keeps serving (the log is evidence, not a reason to stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_audit_chain_is_reported_by_the_verify_gauge_and_an_alert_line() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let record = tests::bundle_by_prefix("Clemente_Kreiger");
    for _ in 0..3 {
        let id = a.send_bundle("clinic-b", &record).await.transfer_id();
        a.wait_state(&id, "delivered", Duration::from_secs(30))
            .await;
    }
    scrape_until(&a, "first verification", |s| {
        s.value("healthfed_audit_verify_ok") == 1.0
    });
    a.stop();

    {
        let db = sled::open(a.config.data_dir.join("sled")).unwrap();
        let audit = db.open_tree("audit").unwrap();
        let n = audit.len();
        assert!(n >= 6, "{n} audit entries");
        let (key, value) = audit.iter().nth(n / 2).unwrap().unwrap();
        let mut broken = value.to_vec();
        let last = broken.len() - 1;
        broken[last] ^= 0x01;
        audit.insert(key, broken).unwrap();
        db.flush().unwrap();
    }

    let a = fed.start("hosp-a");
    let s = scrape_until(&a, "the broken chain found", |s| {
        s.value("healthfed_audit_verify_ok") == 0.0
            && s.value("healthfed_audit_verify_timestamp_seconds") > 0.0
    });
    assert_eq!(s.get("healthfed_ready"), 1.0, "{}", s.text);
    let log = a.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("audit_verify_failed") && l.contains("verification failed")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_peer_is_counted_on_both_sides_and_shown_by_status() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let path = &fed.nodes["clinic-b"].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("[peer]\n"), "config template changed");
    std::fs::write(
        path,
        text.replace("[peer]\n", "[peer]\nmax_envelope_bytes = 65536\n"),
    )
    .unwrap();
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let id = a
        .send("clinic-b", PATIENT, "treatment", "ccda", document(), &[])
        .await
        .transfer_id();
    a.wait_state(&id, "failed", Duration::from_secs(30)).await;

    let on_a = scrape_until(&a, "failure counted", |s| {
        s.value(r#"healthfed_transfers_total{direction="outbound",outcome="failed"}"#) == 1.0
    });
    assert_eq!(
        on_a.get(r#"healthfed_delivery_attempts_total{peer="clinic-b",outcome="refused"}"#),
        1.0
    );
    assert_eq!(
        on_a.get(r#"healthfed_transfers_total{direction="outbound",outcome="delivered"}"#),
        0.0
    );
    assert_eq!(
        on_a.value(r#"healthfed_delivery_retries_total{peer="clinic-b"}"#),
        0.0
    );
    // A refusal is an answer: the peer stays reachable, and nothing waits for it.
    assert_eq!(
        on_a.get(r#"healthfed_peer_reachable{peer="clinic-b"}"#),
        1.0
    );
    assert_eq!(
        on_a.get(r#"healthfed_queue_transfers{peer="clinic-b"}"#),
        0.0
    );
    let on_b = Scrape::of(&b);
    assert_eq!(
        on_b.get(r#"healthfed_refusals_total{direction="inbound",reason="too_large"}"#),
        1.0,
        "{}",
        on_b.text
    );
    assert_eq!(
        on_b.get(r#"healthfed_transfers_total{direction="inbound",outcome="received"}"#),
        0.0
    );

    let (code, stdout, stderr) = a.cli(&["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let st: Value = serde_json::from_str(&stdout).unwrap();
    let errors = st["last_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{st}");
    assert_eq!(errors[0]["transfer_id"], id.as_str());
    assert_eq!(errors[0]["state"], "failed");
    assert_eq!(errors[0]["peer"], "clinic-b");
    assert!(errors[0]["error"].as_str().unwrap().contains("413"), "{st}");
    let (code, text, stderr) = a.cli(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        text.contains(&format!("clinic-b  {id}  failed after attempt 1: ")),
        "{text}"
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    ensure_apt("promtool", "prometheus");
    let deploy = repo().join("deploy");
    let (code, out) = run(
        Command::new("promtool")
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&deploy),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (code, out) = run(
        Command::new("promtool")
            .args(["test", "rules", "alerts.test.yml"])
            .current_dir(&deploy),
        b"",
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A Prometheus server of the test's, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `prometheus` on a free loopback port scraping `target` every second, with the
    /// shipped alert rules loaded; waits (≤ 60 s) until it is ready.
    fn start(target: SocketAddr) -> Prometheus {
        // The port is found free and then bound by Prometheus: a test running beside this one
        // can take it in between; that start fails naming the address, so it is tried again
        // on a new port, at most three times.
        let mut last = String::new();
        for _ in 0..3 {
            match Prometheus::try_start(target) {
                Ok(p) => return p,
                Err(log) => last = log,
            }
        }
        panic!("prometheus did not start on three ports:\n{last}");
    }

    fn try_start(target: SocketAddr) -> Result<Prometheus, String> {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: healthfed\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("prometheus.log");
        let addr = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut p = Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if p.child.try_wait().unwrap().is_some() {
                let log = p.log_text();
                assert!(
                    log.contains("address already in use"),
                    "prometheus exited:\n{log}"
                );
                return Err(log);
            }
            if TcpStream::connect(addr).is_ok() && http_get(addr, "/-/ready").0 == 200 {
                return Ok(p);
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/api/v1/query`: the result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let q = serde_urlencoded::to_string([("query", promql)]).unwrap();
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?{q}"));
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Queries until one series answers `want` (≤ 60 s).
    fn wait_value(&self, promql: &str, want: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql);
            if result.len() == 1 && result[0]["value"][1] == want {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: {result:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_node_and_answers_for_its_metrics() {
    ensure_apt("prometheus", "prometheus");
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let id = a
        .send("clinic-b", PATIENT, "treatment", "ccda", document(), &[])
        .await
        .transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;

    let prom = Prometheus::start(a.dir.ops);
    let up = prom.wait_value(r#"up{job="healthfed"}"#, "1");
    assert_eq!(up[0]["metric"]["instance"], a.dir.ops.to_string());
    let delivered = prom.wait_value(
        r#"healthfed_transfers_total{job="healthfed",direction="outbound",outcome="delivered"}"#,
        "1",
    );
    assert_eq!(
        delivered[0]["metric"]["instance"],
        a.dir.ops.to_string(),
        "{delivered:?}"
    );
    // A gauge computed at scrape time, as Prometheus stored it.
    prom.wait_value(r#"healthfed_queue_transfers{peer="clinic-b"}"#, "0");
    // The shipped rules are loaded and evaluated against the node: none fires on a healthy one.
    let (status, body) = http_get(prom.addr, "/api/v1/rules");
    assert_eq!(status, 200);
    let rules: Value = serde_json::from_str(&body).unwrap();
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "healthfed", "{rules}");
    assert!(group["rules"].as_array().unwrap().len() >= 10, "{rules}");
    let firing = prom.query(r#"ALERTS{alertstate="firing"}"#);
    assert!(firing.is_empty(), "{firing:?}");
    drop(prom);
}
