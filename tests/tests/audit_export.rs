//! `gateway audit export` on the logs of a real run (two nodes, a delivered transfer, a
//! refusal, a break-glass transfer, a read of the inbox): the FHIR R4 AuditEvent export, as
//! NDJSON and as a Bundle, is validated by an external FHIR R4 model (`fhir.resources` 6.1.0,
//! the release built on FHIR 4.0.1, in a venv under target/); JSON lines and CSV read back
//! equal to the API's listing; the filters keep what they say; the file is 0600.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{bundle_by_prefix, patient_id, Fed, Node};

const DELIVERY: Duration = Duration::from_secs(90);

fn target_dir() -> PathBuf {
    // target/<profile>/deps/audit_export-xxxx → target/
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// A venv under target/ with `fhir.resources` 6.1.0, whose models are FHIR R4 (4.0.1), on
/// pydantic 1 (its validators); made once and reused.
fn fhir_venv() -> PathBuf {
    let venv = target_dir().join("fhir-r4-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".fhir-resources-6.1.0");
    if !ready.exists() {
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .unwrap();
        assert!(out.status.success(), "python3 -m venv: {out:?}");
        let out = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "fhir.resources==6.1.0",
                "pydantic>=1.10,<2",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip install fhir.resources: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&ready, b"").unwrap();
    }
    python
}

/// Validates every resource of an NDJSON file (`ndjson`) or a Bundle (`bundle`) with the
/// FHIR R4 models; prints the number of AuditEvents that passed and the FHIR version.
const VALIDATE: &str = r#"
import json, sys
import fhir.resources
from fhir.resources.auditevent import AuditEvent
from fhir.resources.bundle import Bundle
assert fhir.resources.__fhir_version__ == "4.0.1", fhir.resources.__fhir_version__
kind, path = sys.argv[1], sys.argv[2]
n = 0
if kind == "ndjson":
    for i, line in enumerate(open(path)):
        AuditEvent.parse_obj(json.loads(line))
        n += 1
else:
    b = Bundle.parse_obj(json.load(open(path)))
    assert b.type == "collection", b.type
    for e in b.entry or []:
        assert e.resource.resource_type == "AuditEvent", e.resource.resource_type
        AuditEvent.parse_obj(e.resource.dict())
        n += 1
print(n, fhir.resources.__fhir_version__)
"#;

fn validate(python: &Path, kind: &str, file: &Path) -> usize {
    let out = Command::new(python)
        .args(["-c", VALIDATE, kind])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fhir.resources refused the export {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (n, version) = stdout.trim().split_once(' ').unwrap();
    assert_eq!(version, "4.0.1");
    n.parse().unwrap()
}

fn export(node: &Node, args: &[&str], out: &Path) -> String {
    let out_s = out.display().to_string();
    let mut all = vec!["audit", "export"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", &out_s]);
    let (code, stdout, stderr) = node.cli(&all);
    assert_eq!(code, 0, "export {args:?}: {stderr}");
    let mode = std::fs::metadata(out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", out.display());
    stdout
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A real run: a delivered transfer, a refused one, a break-glass one, the receiver reads.
async fn run_transfers(a: &Node, b: &Node) -> (String, String) {
    let general = bundle_by_prefix("Clemente_Kreiger");
    let sensitive = bundle_by_prefix("Eliseo_Cummings");
    let patient = patient_id(&sensitive).unwrap();
    let plain = a.send_bundle("clinic-b", &general).await.transfer_id();
    let refused = a.send_bundle("clinic-b", &sensitive).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let bg = a
        .send(
            "clinic-b",
            &patient,
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
    a.wait_state(&plain, "delivered", DELIVERY).await;
    a.wait_state(&bg, "delivered", DELIVERY).await;
    assert_eq!(b.fetch(&plain).await, general);
    (plain, bg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_export_of_a_real_log_validates_and_maps_as_balp_says() {
    let python = fhir_venv();
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let (plain, bg) = run_transfers(&a, &b).await;
    let dir = tempfile::tempdir().unwrap();

    for (node, name) in [(&a, "hosp-a"), (&b, "clinic-b")] {
        let ndjson = dir.path().join(format!("{name}.ndjson"));
        let said = export(node, &["--format", "fhir"], &ndjson);
        let events = lines(&ndjson);
        assert!(
            said.starts_with(&format!("{} audit entries", events.len())),
            "{said}"
        );
        assert_eq!(validate(&python, "ndjson", &ndjson), events.len());
        let bundle = dir.path().join(format!("{name}.bundle.json"));
        export(node, &["--format", "fhir", "--bundle"], &bundle);
        // The Bundle was exported after the NDJSON: one more audit-read entry.
        assert_eq!(validate(&python, "bundle", &bundle), events.len() + 1);

        // Each export is itself in the log, named as an export (not as a listing).
        let listing = node.audit().await;
        let exports = listing
            .iter()
            .filter_map(|e| e["reason"].as_str())
            .filter(|r| r.starts_with("audit log exported (FHIR AuditEvent) by "))
            .filter(|r| !r.contains(", after #"))
            .count();
        assert_eq!(exports, 2, "{listing:?}");
        // Every resource is observed by this facility and carries its seq and chain hash.
        for (ev, entry) in events.iter().zip(&listing) {
            assert_eq!(ev["source"]["observer"]["identifier"]["value"], name);
            assert_eq!(ev["id"], entry["hash"]);
            let audit_entity = ev["entity"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["role"]["code"] == "13")
                .unwrap();
            assert_eq!(
                audit_entity["what"]["identifier"]["value"],
                entry["seq"].as_u64().unwrap().to_string()
            );
        }
    }

    let a_events = lines(&dir.path().join("hosp-a.ndjson"));
    let b_events = lines(&dir.path().join("clinic-b.ndjson"));
    let of = |events: &[Value], event: &str, transfer: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| {
                e["subtype"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["system"] == "urn:healthfed:audit-event" && s["code"] == event)
                    && e["entity"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["what"]["identifier"]["value"] == transfer)
            })
            .cloned()
            .collect()
    };
    // The sender's delivery: a disclosure at the source, hosp-a the source, clinic-b the
    // destination, the patient an entity.
    let delivered = of(&a_events, "delivered", &plain);
    assert_eq!(delivered.len(), 1);
    let d = &delivered[0];
    assert_eq!(
        d["type"]["system"],
        "http://dicom.nema.org/resources/ontology/DCM"
    );
    assert_eq!(d["type"]["code"], "110106");
    assert_eq!(d["outcome"], "0");
    assert_eq!(d["agent"][0]["type"]["coding"][0]["code"], "110153");
    assert_eq!(d["agent"][0]["who"], d["source"]["observer"]);
    assert_eq!(d["agent"][1]["type"]["coding"][0]["code"], "110152");
    assert_eq!(d["agent"][1]["who"]["identifier"]["value"], "clinic-b");
    assert!(d["entity"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["role"]["code"] == "1"));
    assert_eq!(
        d["purposeOfEvent"][0]["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    );
    assert_eq!(d["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    // The receiver's import: clinic-b the destination and observer.
    let received = of(&b_events, "received", &plain);
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r["type"]["code"], "110107");
    assert_eq!(r["agent"][0]["who"]["identifier"]["value"], "hosp-a");
    assert_eq!(r["agent"][1]["who"], r["source"]["observer"]);
    // The read of the inbox: a RESTful read on clinic-b.
    let fetched = of(&b_events, "fetched", &plain);
    assert_eq!(fetched.len(), 1, "{b_events:?}");
    assert_eq!(fetched[0]["type"]["code"], "rest");
    assert_eq!(fetched[0]["subtype"][0]["code"], "read");
    // Break-glass: Emergency Override Started and purpose BTG, on both sides.
    for events in [&a_events, &b_events] {
        let decision = of(events, "policy-decision", &bg);
        assert!(!decision.is_empty());
        for e in decision {
            assert!(e["subtype"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["code"] == "110127"));
            assert!(e["purposeOfEvent"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["coding"][0]["code"] == "BTG"));
        }
    }
    // The refusal: an authorization decision with outcome 4 (minor failure).
    let denies: Vec<&Value> = a_events
        .iter()
        .filter(|e| {
            e["subtype"][0]["code"] == "AuthZ-Consent"
                && e["outcome"] == "4"
                && e["type"]["code"] == "110113"
        })
        .collect();
    assert_eq!(denies.len(), 1, "{a_events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_and_csv_read_back_equal_to_the_listing_and_filters_keep_what_they_say() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let (plain, _) = run_transfers(&a, &b).await;
    // More than one page of the listing (1000 entries): every read of the log is an entry.
    for _ in 0..1100 {
        let (status, _) = a.get("/v1/audit?limit=1").await;
        assert_eq!(status, StatusCode::OK);
    }
    let dir = tempfile::tempdir().unwrap();

    // JSON lines: exactly the listing, up to the export's own read of the log.
    let jsonl = dir.path().join("a.jsonl");
    export(&a, &["--format", "jsonl"], &jsonl);
    let exported = lines(&jsonl);
    let listing = a.audit().await;
    assert!(exported.len() > 1100, "{}", exported.len());
    assert_eq!(exported[..], listing[..exported.len()]);
    let last = exported.last().unwrap();
    assert_eq!(last["event"], "audit-read");
    assert_eq!(last["seq"].as_u64().unwrap(), exported.len() as u64);

    // CSV (RFC 4180): every field of every entry reads back.
    let csv_path = dir.path().join("a.csv");
    export(&a, &["--format", "csv"], &csv_path);
    let listing = a.audit().await;
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    // The export ends at its own first read of the log; the listing read after it holds more
    // (each page read is an entry).
    assert!(rows.len() > exported.len() && rows.len() < listing.len());
    assert_eq!(&rows[rows.len() - 1][0], rows.len().to_string());
    assert_eq!(&rows[rows.len() - 1][3], "audit-read");
    for (row, entry) in rows.iter().zip(&listing) {
        let field = |name: &str| &row[header.iter().position(|h| h == name).unwrap()];
        for name in [
            "event",
            "transfer_id",
            "peer",
            "patient",
            "purpose",
            "clinician",
            "outcome",
            "reason",
            "hash",
        ] {
            assert_eq!(
                field(name),
                entry[name].as_str().unwrap_or(""),
                "{name}: {entry}"
            );
        }
        assert_eq!(field("seq"), entry["seq"].to_string());
        assert_eq!(field("time_ms"), entry["time_ms"].to_string());
        assert_eq!(field("break_glass"), entry["break_glass"].to_string());
        let policies: Vec<&str> = entry["policy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(field("policy_ids"), policies.join(" "));
    }

    // Filters: asked of the node (patient, transfer, break-glass) and kept per entry (peer,
    // event, outcome, time).
    let only = dir.path().join("only.jsonl");
    export(
        &b,
        &[
            "--format", "jsonl", "--event", "received", "--peer", "hosp-a",
        ],
        &only,
    );
    let kept = lines(&only);
    let b_listing = b.audit().await;
    let expected: Vec<&Value> = b_listing
        .iter()
        .filter(|e| e["event"] == "received" && e["peer"] == "hosp-a")
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept.iter().collect::<Vec<_>>(), expected);
    export(
        &a,
        &[
            "--format",
            "jsonl",
            "--transfer",
            &plain,
            "--outcome",
            "delivered",
        ],
        &only,
    );
    let kept = lines(&only);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["event"], "delivered");
    export(&a, &["--format", "jsonl", "--break-glass"], &only);
    let kept = lines(&only);
    assert!(
        !kept.is_empty() && kept.iter().all(|e| e["break_glass"] == true),
        "{kept:?}"
    );
    let future = "2999-01-01T00:00:00Z";
    export(&a, &["--format", "jsonl", "--from", future], &only);
    assert!(lines(&only).is_empty());
    export(
        &a,
        &["--format", "jsonl", "--to", future, "--event", "submitted"],
        &only,
    );
    assert_eq!(lines(&only).len(), 2);

    // Bad usage is refused before anything is written.
    let (code, _, err) = a.cli(&[
        "audit",
        "export",
        "--format",
        "csv",
        "--bundle",
        "--out",
        "/nonexistent/x",
    ]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = a.cli(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "--from",
        "yesterday",
        "--out",
        "/nonexistent/x",
    ]);
    assert_eq!(code, 64, "{err}");
}
