//! `[log] format`: a node set to `json` writes one JSON object per line on stderr, every line,
//! with the event's fields and no patient data; a `text` node writing to a file (not a
//! terminal) writes no colour codes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{testdata, Fed, FAST_RETRIES};

/// The recordTarget id of the shared C-CDA document: it must not appear in any log line.
const PATIENT: &str = "444222222";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_node_logs_one_object_per_line_and_a_text_node_no_colour_codes() {
    let mut fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    // The sender logs JSON; the receiver keeps the default (text).
    fed.extra_toml = format!("{FAST_RETRIES}\n[log]\nformat = \"json\"\n");
    fed.write_config("hosp-a");
    let mut a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let document = std::fs::read(testdata("fhir/cda/CCD1_C-CDA2.1_CCD.xml")).unwrap();
    let id = a
        .send("clinic-b", PATIENT, "treatment", "ccda", document, &[])
        .await
        .transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    a.stop();
    b.stop();

    let log = a.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    let mut events = Vec::new();
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(!v[key].is_null(), "no {key}: {line}");
        }
        events.push(v);
    }
    let message = |m: &str| {
        events
            .iter()
            .find(|v| v["fields"]["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} event in {log}"))
            .clone()
    };
    assert_eq!(message("node started")["fields"]["facility"], "hosp-a");
    let queued = message("transfer queued");
    assert_eq!(queued["fields"]["transfer"], id.as_str());
    assert_eq!(queued["fields"]["peer"], "clinic-b");
    let delivered = message("delivered");
    assert_eq!(delivered["fields"]["transfer"], id.as_str());
    assert!(!log.contains(PATIENT), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a JSON log: {log}");

    let text = b.log_text();
    assert!(text.contains("node started"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text}"
    );
    assert!(!text.contains(PATIENT), "{text}");
    assert!(serde_json::from_str::<Value>(text.lines().next().unwrap()).is_err());
}
