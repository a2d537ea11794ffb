//! The ops listener (`[ops] listen`): a real `gateway run` answers `/livez` and `/readyz` on
//! its own loopback address; readiness is lost, with its reason, when the federation directory
//! in force expires; the node refuses to start when the ops address is taken; `gateway check`
//! refuses a non-loopback ops address unless `allow_remote = true`.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pki_tools::FacilityKind;
use serde_json::Value;
use tests::{gateway_cli, Fed};

/// One HTTP/1.1 GET on a fresh connection: (status, body). Bounded by socket timeouts.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, body.to_owned())
}

#[test]
fn a_running_node_is_live_and_ready_on_its_ops_address() {
    let fed = Fed::new(&[("hosp-a", FacilityKind::Hospital)]);
    let node = fed.start("hosp-a");
    let ops = node.dir.ops;
    assert!(ops.ip().is_loopback());

    assert_eq!(
        get(ops, "/livez"),
        (200, "ok".to_owned()),
        "{}",
        node.log_text()
    );
    let (status, body) = get(ops, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ok"), "{}", node.log_text());
    // Only the ops endpoints are served there (the local API's routes are not).
    assert_eq!(get(ops, "/v1/transfers").0, 404);
    assert!(
        node.log_text().contains("ops listener started"),
        "{}",
        node.log_text()
    );
}

/// The directory is published with a 4-second validity (the harness's is a week) so that the
/// one in force expires while the node runs: the node keeps using it (a reload refuses an
/// expired directory, and no newer one arrives), but it is no longer ready, and says why.
#[test]
fn readiness_is_lost_with_its_reason_when_the_directory_in_force_expires() {
    let mut fed = Fed::new(&[("hosp-a", FacilityKind::Hospital)]);
    let validity = Duration::from_secs(4);
    let published_at = Instant::now();
    fed.pki.publish(validity).unwrap();
    let node = fed.start("hosp-a");
    let ops = node.dir.ops;
    assert_eq!(
        get(ops, "/readyz"),
        (200, "ok".to_owned()),
        "{}",
        node.log_text()
    );

    // Past the expiry (whole seconds in the directory, so one more second of margin).
    let (status, body) = wait_unready(ops, published_at + validity + Duration::from_secs(1));
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not ready", "{v}");
    assert_eq!(
        v["reasons"],
        serde_json::json!(["federation directory expired"]),
        "{v}"
    );
    // The process is still up: liveness is not readiness.
    assert_eq!(get(ops, "/livez").0, 200);
}

/// The CRL is published with a 4-second validity and the node given no grace past its
/// nextUpdate (`federation.crl_grace_secs = 0`; the shipped grace is 7 days), so that it goes
/// stale while the node runs; the directory stays valid, so the CRL is the one reason.
#[test]
fn readiness_is_lost_with_its_reason_when_the_crl_goes_stale() {
    let mut fed = Fed::new(&[("hosp-a", FacilityKind::Hospital)]);
    let validity = Duration::from_secs(4);
    let published_at = Instant::now();
    fed.pki
        .publish_with(Duration::from_secs(7 * 24 * 3600), validity)
        .unwrap();
    let path = &fed.nodes["hosp-a"].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("[federation]\n"), "config template changed");
    std::fs::write(
        path,
        text.replace("[federation]\n", "[federation]\ncrl_grace_secs = 0\n"),
    )
    .unwrap();
    let node = fed.start("hosp-a");
    let ops = node.dir.ops;
    assert_eq!(
        get(ops, "/readyz"),
        (200, "ok".to_owned()),
        "{}",
        node.log_text()
    );

    let (status, body) = wait_unready(ops, published_at + validity + Duration::from_secs(1));
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["reasons"],
        serde_json::json!(["federation CRL stale (past nextUpdate plus grace)"]),
        "{v}"
    );
}

/// Sleeps until `after`, then polls `/readyz` (≤ 10 s) until it is not 200.
fn wait_unready(ops: SocketAddr, after: Instant) -> (u16, String) {
    std::thread::sleep(after.saturating_duration_since(Instant::now()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(ops, "/readyz");
        if status != 200 || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_whose_ops_address_is_taken_refuses_to_start() {
    // The harness picks free ports, and a test running beside this one can take one of the
    // node's other ports first; that start is also refused (exit 64) but names another address,
    // so it is tried again on new ports, at most three times.
    for attempt in 1..=3 {
        let fed = Fed::new(&[("hosp-a", FacilityKind::Hospital)]);
        let ops = fed.nodes["hosp-a"].ops;
        let squatter = TcpListener::bind(ops).unwrap();
        let mut node = fed.spawn("hosp-a");
        let code = node.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(64), "{}", node.log_text());
        let log = node.log_text();
        drop(squatter);
        if log.contains(&format!("bind {ops}")) {
            return;
        }
        assert!(
            attempt < 3 && log.contains("Address already in use"),
            "the refusal does not name the ops address {ops}: {log}"
        );
    }
}

#[test]
fn check_refuses_a_non_loopback_ops_address_unless_remote_is_allowed() {
    let fed = Fed::new(&[("hosp-a", FacilityKind::Hospital)]);
    let path = &fed.nodes["hosp-a"].config_path;
    let config = path.display().to_string();
    let original = std::fs::read_to_string(path).unwrap();
    let ops_line = format!("[ops]\nlisten = \"{}\"\n", fed.nodes["hosp-a"].ops);
    assert!(original.contains(&ops_line), "config template changed");

    let (code, out, _) = gateway_cli(&["check", "--config", &config]);
    assert_eq!(code, 0, "{out}");

    // Every address, not only the unspecified one: a routable address is refused as well.
    for addr in ["0.0.0.0:9464", "192.0.2.10:9464", "[::]:9464"] {
        let remote = original.replace(&ops_line, &format!("[ops]\nlisten = \"{addr}\"\n"));
        std::fs::write(path, &remote).unwrap();
        let (code, out, err) = gateway_cli(&["check", "--config", &config]);
        assert_eq!(code, 64, "{addr}: {out}{err}");
        assert!(
            err.contains("ops.listen: must be a loopback address unless ops.allow_remote = true"),
            "{addr}: {err}"
        );
        assert!(!err.contains(addr), "the value is not echoed: {err}");
    }

    let allowed = original.replace(
        &ops_line,
        "[ops]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n",
    );
    std::fs::write(path, allowed).unwrap();
    let (code, out, err) = gateway_cli(&["check", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
}
