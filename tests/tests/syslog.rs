//! The audit stream to a SIEM against a real rsyslog (Debian's `rsyslogd`, started here on
//! loopback with its own config: imtcp on a free port, omfile to a temp file): every entry of
//! the node's log arrives with its seq and fields, including entries written while the
//! collector was down and after it was restarted mid-stream, and transfers do not wait for
//! the collector.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::StatusCode;
use pki_tools::{Endpoint, FacilityKind, Federation};
use serde_json::Value;

use gateway::evidence::checkpoint;
use tests::{bundle_by_prefix, patient_id, raw_peer_post, Fed, Node, RawIdentity};

const DELIVERY: Duration = Duration::from_secs(90);

/// The rsyslog daemon and its TLS driver, installed with apt-get when missing (as `.ci/run`
/// does); the test fails, saying so, when they cannot be.
fn rsyslogd() -> PathBuf {
    let bin = PathBuf::from("/usr/sbin/rsyslogd");
    let gtls_present = || {
        std::fs::read_dir("/usr/lib")
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("rsyslog/lmnsd_gtls.so").exists())
    };
    if !bin.exists() || !gtls_present() {
        let status = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsyslog rsyslog-gnutls",
            ])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()) && bin.exists() && gtls_present(),
            "rsyslogd and its GnuTLS driver are required (Debian packages rsyslog, rsyslog-gnutls) and could not be installed"
        );
    }
    bin
}

/// One rsyslogd on 127.0.0.1:`port`, writing what it receives to `out`, one line per message:
/// facility, severity, hostname, app-name, msgid, structured data, message.
struct Collector {
    dir: PathBuf,
    port: u16,
    out: PathBuf,
    tls: Option<CollectorTls>,
    child: Option<Child>,
}

/// The collector's TLS material: a CA made here and a certificate for 127.0.0.1 it signed.
struct CollectorTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl CollectorTls {
    /// Made with the openssl command line (what an operator's PKI tooling does): a P-256 CA
    /// and a server certificate for IP 127.0.0.1.
    fn make(dir: &Path) -> CollectorTls {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is required");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-subj",
                    "/CN=test SIEM CA",
                    "-days",
                    "2",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    "key.pem",
                    "-out",
                    "cert.csr",
                    "-subj",
                    "/CN=collector",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "cert.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        CollectorTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

impl Collector {
    fn start(dir: &Path, tls: Option<CollectorTls>) -> Collector {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = Collector {
            dir: dir.to_path_buf(),
            port,
            out: dir.join("received.log"),
            tls,
            child: None,
        };
        c.restart();
        c
    }

    fn restart(&mut self) {
        let work = self.dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let conf = self.dir.join("rsyslog.conf");
        // TLS (RFC 5425) with the GnuTLS driver: the collector authenticates itself only.
        let (global, module) = match &self.tls {
            None => (String::new(), "module(load=\"imtcp\")".to_owned()),
            Some(t) => (
                format!(
                    " DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\"",
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                ),
                "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")".to_owned(),
            ),
        };
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}"{global})
{module}
template(name="fields" type="string"
         string="%syslogfacility% %syslogseverity% %hostname% %app-name% %msgid% %structured-data% %msg%\n")
ruleset(name="audit") {{
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="audit")
"#,
                work = work.display(),
                out = self.out.display(),
                port = self.port,
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))
            .unwrap();
        // Its own process group: signals rsyslogd sends its group at start and exit must not
        // reach the test runner's.
        let child = Command::new(rsyslogd())
            .process_group(0)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "rsyslogd exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen: {}",
                std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as a collector being restarted gets; waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            if tests::wait_child_exit(&mut c, Duration::from_secs(15)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Every message received so far, by seq (a seq received twice keeps its first message and
    /// counts the copies).
    fn received(&self) -> (BTreeMap<u64, Received>, usize) {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut by_seq = BTreeMap::new();
        let mut copies = 0;
        for line in text.lines() {
            let r = Received::parse(line);
            match by_seq.entry(r.seq) {
                std::collections::btree_map::Entry::Occupied(_) => copies += 1,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(r);
                }
            }
        }
        (by_seq, copies)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as rsyslog wrote it.
#[derive(Debug)]
struct Received {
    facility: String,
    severity: String,
    hostname: String,
    app: String,
    msgid: String,
    seq: u64,
    params: Vec<(String, String)>,
    msg: String,
}

impl Received {
    fn parse(line: &str) -> Received {
        let mut head = line.splitn(6, ' ');
        let mut next = || head.next().unwrap_or_else(|| panic!("short line: {line}"));
        let (facility, severity, hostname, app, msgid) = (
            next().to_owned(),
            next().to_owned(),
            next().to_owned(),
            next().to_owned(),
            next().to_owned(),
        );
        let rest = next();
        let rest = rest
            .strip_prefix("[healthfed@32473")
            .unwrap_or_else(|| panic!("no structured data: {line}"));
        // PARAM-VALUEs escape '"', '\' and ']' with a backslash.
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        let msg;
        loop {
            match chars.next() {
                Some(' ') => {
                    let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => value.push(chars.next().unwrap()),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    params.push((name, value));
                }
                Some(']') => {
                    msg = chars.collect::<String>().trim_start().to_owned();
                    break;
                }
                other => panic!("bad structured data at {other:?}: {line}"),
            }
        }
        let seq = params
            .iter()
            .find(|(n, _)| n == "seq")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or_else(|| panic!("no seq: {line}"));
        Received {
            facility,
            severity,
            hostname,
            app,
            msgid,
            seq,
            params,
            msg,
        }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn params_named(&self, name: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Waits (bounded) until the collector holds every seq up to `last`.
async fn wait_for_all(
    c: &Collector,
    node: &Node,
    last: u64,
    timeout: Duration,
) -> BTreeMap<u64, Received> {
    wait_for(c, node, &(1..=last).collect::<Vec<_>>(), timeout).await
}

/// Waits (bounded) until the collector holds every one of `seqs`.
async fn wait_for(
    c: &Collector,
    node: &Node,
    seqs: &[u64],
    timeout: Duration,
) -> BTreeMap<u64, Received> {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, _) = c.received();
        let missing: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| !got.contains_key(s))
            .collect();
        if missing.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "rsyslog is missing {} of {} entries, e.g. {:?}\nnode: {}\nrsyslogd: {}",
            missing.len(),
            seqs.len(),
            &missing[..missing.len().min(10)],
            node.log_text()
                .lines()
                .filter(|l| l.contains("syslog"))
                .collect::<Vec<_>>()
                .join("\n"),
            std::fs::read_to_string(c.dir.join("rsyslogd.stderr")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the node's log says, field by field, is what rsyslog received.
fn assert_matches(log: &[Value], got: &BTreeMap<u64, Received>, facility: &str) {
    for e in log {
        let seq = e["seq"].as_u64().unwrap();
        let r = &got[&seq];
        let s = |k: &str| e[k].as_str();
        assert_eq!(r.hostname, facility, "{r:?}");
        assert_eq!(r.app, "healthfed-test", "{r:?}");
        assert_eq!(r.facility, "20", "local4: {r:?}");
        assert_eq!(Some(r.msgid.as_str()), s("event"), "{r:?}");
        assert_eq!(r.param("event"), s("event"), "{r:?}");
        assert_eq!(r.param("outcome"), s("outcome"), "{r:?}");
        assert_eq!(r.param("transfer"), s("transfer_id"), "{r:?}");
        assert_eq!(r.param("peer"), s("peer"), "{r:?}");
        assert_eq!(r.param("purpose"), s("purpose"), "{r:?}");
        assert_eq!(r.param("clinician"), s("clinician"), "{r:?}");
        assert_eq!(r.param("hash"), s("hash"), "{r:?}");
        let bg = e["break_glass"].as_bool().unwrap();
        assert_eq!(
            r.param("break_glass"),
            Some(if bg { "true" } else { "false" })
        );
        let policies: Vec<&str> = e["policy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(r.params_named("policy"), policies, "{r:?}");
        // The patient is a keyed pseudonym, never the reference.
        match s("patient") {
            Some(patient) => {
                let tag = r.param("patient_tag").unwrap();
                assert_eq!(tag.len(), 64, "{r:?}");
                assert!(!tag.contains(patient) && !r.msg.contains(patient), "{r:?}");
            }
            None => assert_eq!(r.param("patient_tag"), None, "{r:?}"),
        }
        let identity_refused =
            s("event") == Some("rejected") && s("outcome") == Some("connection-refused");
        let expected_severity = if s("event") == Some("witness-conflict") {
            "1"
        } else if bg || identity_refused {
            "4"
        } else if matches!(
            s("outcome"),
            Some("deny" | "refused" | "rejected" | "failed" | "duplicate")
        ) {
            "5"
        } else {
            "6"
        };
        assert_eq!(r.severity, expected_severity, "{r:?}");
        assert!(
            r.msg.starts_with(&format!(
                "{} {}",
                s("event").unwrap(),
                s("outcome").unwrap()
            )),
            "{r:?}"
        );
    }
}

fn syslog_toml(port: u16, tls_ca: Option<&Path>) -> String {
    let transport = match tls_ca {
        Some(ca) => format!("transport = \"tls\"\nca_file = \"{}\"", ca.display()),
        None => "transport = \"tcp\"".to_owned(),
    };
    format!(
        "\n[audit.syslog]\naddress = \"127.0.0.1:{port}\"\n{transport}\napp_name = \"healthfed-test\"\nfacility = \"local4\"\n"
    )
}

fn append_config(fed: &Fed, id: &str, text: &str) {
    let path = &fed.nodes[id].config_path;
    std::fs::write(path, std::fs::read_to_string(path).unwrap() + text).unwrap();
}

/// A real run: a delivered transfer, a refused one, a break-glass one (both delivered).
async fn transfers(a: &Node) {
    let general = bundle_by_prefix("Clemente_Kreiger");
    let sensitive = bundle_by_prefix("Eliseo_Cummings");
    let first = a.send_bundle("clinic-b", &general).await.transfer_id();
    let refused = a.send_bundle("clinic-b", &sensitive).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let bg = a
        .send(
            "clinic-b",
            &patient_id(&sensitive).unwrap(),
            "treatment",
            "fhir",
            sensitive.clone(),
            &[
                ("clinician", "dr-er"),
                ("clinician_role", "emergency-physician"),
                ("break_glass_reason", "unconscious patient"),
            ],
        )
        .await
        .transfer_id();
    a.wait_state(&first, "delivered", DELIVERY).await;
    a.wait_state(&bg, "delivered", DELIVERY).await;
}

/// The last seq of the node's log (this read's own entry).
async fn last_seq(node: &Node) -> u64 {
    node.audit().await.last().unwrap()["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_entry_reaches_rsyslog_across_a_collector_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(tmp.path(), None);
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    // Only hosp-a streams; clinic-b is its peer.
    append_config(&fed, "hosp-a", &syslog_toml(collector.port, None));
    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let general = bundle_by_prefix("Clemente_Kreiger");
    let sensitive_patient = patient_id(&bundle_by_prefix("Eliseo_Cummings")).unwrap();

    // 1. Collector up: a transfer, a refusal, a break-glass transfer, and a connection from a
    //    foreign federation's certificate refused by the peer listener (an identity refusal).
    transfers(&a).await;
    let foreign_dir = tempfile::tempdir().unwrap();
    let mut foreign =
        Federation::init(&foreign_dir.path().join("fed"), "Foreign Federation", false).unwrap();
    let endpoint: Endpoint = format!("https://{}", fed.nodes["hosp-a"].peer)
        .parse()
        .unwrap();
    foreign
        .add_facility(
            &"clinic-b".parse().unwrap(),
            "Impostor",
            &endpoint,
            FacilityKind::Clinic,
            &foreign_dir.path().join("node"),
        )
        .unwrap();
    let ca = std::fs::read(fed.nodes["hosp-a"].dir.join("ca.crt")).unwrap();
    let impostor = RawIdentity::from_node_dir(&foreign_dir.path().join("node"));
    let refused = raw_peer_post(a.dir.peer, &ca, &impostor, "/v1/envelopes", b"x".to_vec()).await;
    assert!(refused.is_err(), "{refused:?}");
    tests::assert_eventually!(
        Duration::from_secs(10),
        a.audit()
            .await
            .iter()
            .any(|e| e["outcome"] == "connection-refused"),
        "the refused connection was not audited"
    );
    // ... and a fork of clinic-b's log, which hosp-a witnesses: clinic-b's own key and TLS
    // identity submit a checkpoint of the same size with another root (refused, audited
    // witness-conflict).
    let b_dir = &fed.nodes["clinic-b"].dir;
    let note = b.checkpoint_now().await;
    let origin = checkpoint::origin("clinic-b");
    let b_key = common::signing_key(b_dir);
    let (size, root) =
        checkpoint::open(note.as_bytes(), &origin, &[b_key.verifying_key()]).unwrap();
    let mut other_root = root;
    other_root[0] ^= 1;
    let fork = checkpoint::sign(&origin, size, other_root, &b_key).unwrap();
    let mut body = format!("old {size}\n").into_bytes();
    body.extend_from_slice(
        format!(
            "{}\n\n",
            base64::engine::general_purpose::STANDARD.encode([9u8; 32])
        )
        .as_bytes(),
    );
    body.extend_from_slice(&fork);
    let (status, answer) = raw_peer_post(
        a.dir.peer,
        &ca,
        &RawIdentity::from_node_dir(b_dir),
        "/v1/witness",
        body,
    )
    .await
    .unwrap();
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&answer));
    assert!(!a.audit_events("witness-conflict").await.is_empty());
    wait_for_all(&collector, &a, last_seq(&a).await, Duration::from_secs(30)).await;

    // 2. Collector down: transfers go on without waiting for it.
    collector.stop();
    let mut while_down = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let id = a.send_bundle("clinic-b", &general).await.transfer_id();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a submission waited {:?} while the collector was down",
            started.elapsed()
        );
        while_down.push(id);
    }
    for id in &while_down {
        a.wait_state(id, "delivered", DELIVERY).await;
    }

    // 3. Collector back (same port, same file): what was missed arrives, and new entries too.
    collector.restart();
    let after = a.send_bundle("clinic-b", &general).await.transfer_id();
    a.wait_state(&after, "delivered", DELIVERY).await;
    let got = wait_for_all(&collector, &a, last_seq(&a).await, Duration::from_secs(60)).await;
    let (_, copies_before_restart) = collector.received();

    // 4. The node restarts: the stream resumes from its durable cursor, not from the start.
    a.stop();
    let a = fed.start("hosp-a");
    let again = a.send_bundle("clinic-b", &general).await.transfer_id();
    a.wait_state(&again, "delivered", DELIVERY).await;
    let log = a.audit().await;
    let last = log.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(log.len() as u64, last, "the listing is the whole log");
    let got_all = wait_for_all(&collector, &a, last, Duration::from_secs(60)).await;
    assert!(got.len() < got_all.len());
    assert_matches(&log, &got_all, "hosp-a");
    let (_, copies) = collector.received();
    // At least once: copies are allowed (deduped by seq), but only of what was written shortly
    // before the collector stopped or the node restarted, never the whole log again.
    assert!(
        copies < log.len() / 2 && copies - copies_before_restart < 20,
        "{copies} copies ({copies_before_restart} before the node restarted) for {} entries",
        log.len()
    );
    eprintln!(
        "rsyslog received all {} entries; {} sent again around the collector restart, {} around the node restart",
        log.len(),
        copies_before_restart,
        copies - copies_before_restart
    );
    let by_event = |event: &str, outcome: &str| {
        log.iter()
            .filter(|e| e["event"] == event && e["outcome"] == outcome)
            .map(|e| &got_all[&e["seq"].as_u64().unwrap()])
            .collect::<Vec<_>>()
    };
    // The break-glass decision and the identity refusal went at warning, the refusal's
    // decision at notice (assert_matches checks every entry; these say the cases occurred).
    assert!(!by_event("policy-decision", "deny").is_empty());
    assert!(by_event("policy-decision", "deny")
        .iter()
        .all(|r| r.severity == "5"));
    assert!(by_event("policy-decision", "permit")
        .iter()
        .any(|r| r.severity == "4" && r.param("break_glass") == Some("true")));
    assert!(by_event("rejected", "connection-refused")
        .iter()
        .any(|r| r.severity == "4"));
    assert!(!by_event("witness-conflict", "refused").is_empty());
    assert!(by_event("witness-conflict", "refused")
        .iter()
        .all(|r| r.severity == "1"));
    assert!(!a.log_text().contains(&sensitive_patient));
}

/// RFC 5425: the stream over TLS to rsyslog's GnuTLS driver, the collector's certificate
/// checked against the CA the config names; a node given another CA sends nothing and says
/// why in its log, and its transfers go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_runs_over_tls_to_a_verified_collector_only() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = CollectorTls::make(&tmp.path().join("tls"));
    let ca = tls.ca.clone();
    let collector = Collector::start(tmp.path(), Some(tls));
    let other_ca = CollectorTls::make(&tmp.path().join("other")).ca;
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    append_config(&fed, "hosp-a", &syslog_toml(collector.port, Some(&ca)));
    append_config(
        &fed,
        "clinic-b",
        &syslog_toml(collector.port, Some(&other_ca)),
    );
    // A CA file that cannot be read refuses the start (gateway check says so, naming the key).
    let broken = fed.nodes["hosp-a"].dir.join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&fed.nodes["hosp-a"].config_path)
            .unwrap()
            .replace(&ca.display().to_string(), "/nonexistent/siem-ca.pem"),
    )
    .unwrap();
    let (code, _, err) = tests::gateway_cli(&["check", "--config", &broken.display().to_string()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("audit.syslog.ca_file"), "{err}");
    assert!(
        !err.contains("/nonexistent"),
        "the path is not echoed: {err}"
    );

    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    transfers(&a).await;
    let log = a.audit().await;
    let got = wait_for_all(
        &collector,
        &a,
        log.last().unwrap()["seq"].as_u64().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_matches(&log, &got, "hosp-a");
    // clinic-b's log grew too (it received both transfers), but none of it reached a
    // collector it cannot verify.
    let b_log = b.audit().await;
    assert_eq!(
        b_log.iter().filter(|e| e["event"] == "received").count(),
        2,
        "{b_log:?}"
    );
    tests::assert_eventually!(
        Duration::from_secs(20),
        b.log_text().contains("audit syslog collector unavailable"),
        "clinic-b did not report the collector: {}",
        b.log_text()
    );
    let text = std::fs::read_to_string(&collector.out).unwrap();
    assert!(
        text.lines().all(|l| l.split(' ').nth(2) == Some("hosp-a")),
        "a message from a node that could not verify the collector arrived"
    );
    let log_b = b.log_text();
    assert!(log_b.contains("collector: TLS handshake"), "{log_b}");
}

/// Archiving never outruns the stream: while the collector is down the entries it has not been
/// sent stay live (the archive is refused, naming the stream); once it has caught up they are
/// archived, and the collector holds every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_archived_only_once_the_stream_has_sent_them() {
    let tmp = tempfile::tempdir().unwrap();
    // The collector's port is known, but it is down when the archive is first asked for.
    let mut collector = Collector::start(tmp.path(), None);
    collector.stop();
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    append_config(&fed, "hosp-a", &syslog_toml(collector.port, None));
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    transfers(&a).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let general = bundle_by_prefix("Clemente_Kreiger");
    let id = a.send_bundle("clinic-b", &general).await.transfer_id();
    a.wait_state(&id, "delivered", DELIVERY).await;
    a.checkpoint_now().await;
    let out = tmp.path().join("archive.json");
    let out = out.display().to_string();
    let archive = ["audit", "archive", "--before", &cutoff, "--out", &out];
    let before: Vec<u64> = a
        .audit()
        .await
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let (code, said, err) = a.cli(&archive);
    assert_ne!(code, 0, "archived past the stream: {said}{err}");
    assert!(err.contains("SIEM stream"), "{said}{err}");
    let live: Vec<u64> = a
        .audit()
        .await
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        before.iter().all(|s| live.contains(s)),
        "an entry left the live log while the stream was behind"
    );

    collector.restart();
    let got = wait_for(&collector, &a, &live, Duration::from_secs(60)).await;
    // The cursor moves once the connection has held a second past the write.
    let (mut code, mut said, mut err) = (1, String::new(), String::new());
    for _ in 0..20 {
        (code, said, err) = a.cli(&archive);
        if code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(code, 0, "{said}{err}");
    let through: u64 = said
        .split("archived entries 1-")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!((1..=through).all(|s| got.contains_key(&s)), "{through}");
    assert!(
        !a.log_text().contains("audit_stream_gap"),
        "{}",
        a.log_text()
    );
}
