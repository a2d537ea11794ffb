//! The audit stream to a SIEM against a real rsyslog (Debian's `rsyslogd`, started here on
//! loopback with its own config: imtcp on a free port, omfile to a temp file): every entry of
//! the node's log arrives with its seq and fields, including entries written while the
//! collector was down and after it was restarted mid-stream, and transfers do not wait for
//! the collector.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{bundle_by_prefix, patient_id, Fed};

const DELIVERY: Duration = Duration::from_secs(90);

/// The rsyslog daemon, installed with apt-get when it is missing (as `.ci/run` does).
fn rsyslogd() -> PathBuf {
    let bin = PathBuf::from("/usr/sbin/rsyslogd");
    if !bin.exists() {
        let status = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsyslog",
            ])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()) && bin.exists(),
            "rsyslogd is required (Debian package rsyslog) and could not be installed"
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
    child: Option<Child>,
}

impl Collector {
    fn start(dir: &Path) -> Collector {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = Collector {
            dir: dir.to_path_buf(),
            port,
            out: dir.join("received.log"),
            child: None,
        };
        c.restart();
        c
    }

    fn restart(&mut self) {
        let work = self.dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let conf = self.dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}")
module(load="imtcp")
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
        let child = Command::new(rsyslogd())
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
async fn wait_for_all(c: &Collector, last: u64, timeout: Duration) -> BTreeMap<u64, Received> {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, _) = c.received();
        if (1..=last).all(|s| got.contains_key(&s)) {
            return got;
        }
        let missing: Vec<u64> = (1..=last).filter(|s| !got.contains_key(s)).collect();
        assert!(
            Instant::now() < deadline,
            "rsyslog is missing {} of {last} entries, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
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
        let expected_severity = if bg {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_entry_reaches_rsyslog_across_a_collector_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(tmp.path());
    let syslog_toml = format!(
        "\n[audit.syslog]\naddress = \"127.0.0.1:{}\"\ntransport = \"tcp\"\napp_name = \"healthfed-test\"\nfacility = \"local4\"\n",
        collector.port
    );
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    // Only hosp-a streams; clinic-b is its peer.
    std::fs::write(
        &fed.nodes["hosp-a"].config_path,
        std::fs::read_to_string(&fed.nodes["hosp-a"].config_path).unwrap() + &syslog_toml,
    )
    .unwrap();
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");

    let general = bundle_by_prefix("Clemente_Kreiger");
    let sensitive = bundle_by_prefix("Eliseo_Cummings");
    let sensitive_patient = patient_id(&sensitive).unwrap();

    // 1. Collector up: a transfer, a refusal, a break-glass transfer.
    let first = a.send_bundle("clinic-b", &general).await.transfer_id();
    let refused = a.send_bundle("clinic-b", &sensitive).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let bg = a
        .send(
            "clinic-b",
            &sensitive_patient,
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
    let so_far = a.audit().await;
    let last = so_far.last().unwrap()["seq"].as_u64().unwrap();
    wait_for_all(&collector, last, Duration::from_secs(30)).await;

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
    let log = a.audit().await;
    let last = log.last().unwrap()["seq"].as_u64().unwrap();
    let got = wait_for_all(&collector, last, Duration::from_secs(60)).await;
    assert_eq!(log.len() as u64, last, "the listing is the whole log");
    assert_matches(&log, &got, "hosp-a");
    let (_, copies) = collector.received();
    // At least once: copies are allowed (and deduped by seq), but the stream resends only
    // around the restart, not the whole log.
    assert!(
        copies < log.len(),
        "{copies} copies for {} entries",
        log.len()
    );
    eprintln!(
        "rsyslog received all {} entries ({} sent again around the restart)",
        log.len(),
        copies
    );
    // The break-glass decision went at warning, the refusal's decision at notice.
    let by_event = |event: &str, outcome: &str| {
        log.iter()
            .filter(|e| e["event"] == event && e["outcome"] == outcome)
            .map(|e| &got[&e["seq"].as_u64().unwrap()])
            .collect::<Vec<_>>()
    };
    assert!(by_event("policy-decision", "deny")
        .iter()
        .all(|r| r.severity == "5"));
    assert!(by_event("policy-decision", "permit")
        .iter()
        .any(|r| r.severity == "4" && r.param("break_glass") == Some("true")));
    assert!(!a.log_text().contains(&sensitive_patient));
}
