//! Disclosure evidence, offline: three real members exchange a record; each end exports the
//! transfer's evidence file, and `gateway evidence verify` proves it in a fresh directory that
//! holds only the federation's CA certificate (no node, no store, no config). Every section
//! changed in any byte is refused, naming the section.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use pki_tools::FacilityKind;

use gateway::evidence::bundle::EvidenceFile;
use tests::{bundle_by_prefix, patient_id, Fed};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Flips one bit of the decoded bytes of a base64 field and re-encodes it.
fn flip_b64(field: &mut String, at: usize) {
    let mut bytes = b64().decode(&*field).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    *field = b64().encode(bytes);
}

/// Each section of `file` changed in one byte (kept in canonical form, so that the change
/// reaches the check of that section), with the part the refusal must name.
fn tampered(file: &EvidenceFile) -> Vec<(String, Vec<u8>, &'static str)> {
    let mut out = Vec::new();
    let mut push = |label: &str, f: EvidenceFile, part: &'static str| {
        out.push((label.to_owned(), f.to_bytes(), part))
    };
    for i in 0..file.directories.len() {
        let mut f = file.clone();
        flip_b64(&mut f.directories[i], 60);
        let part: &'static str = if i == 0 {
            "directory #1:"
        } else {
            "directory #2:"
        };
        push(&format!("directory {i}"), f, part);
    }
    // No directory at all: nothing to check a signature against.
    let mut f = file.clone();
    f.directories.clear();
    push("directories removed", f, "directories:");
    let mut f = file.clone();
    flip_b64(&mut f.envelope_header, 40);
    push("envelope header", f, "envelope header:");
    let mut f = file.clone();
    flip_b64(&mut f.receipt, 30);
    push("receipt", f, "receipt:");
    let first_seq = file.entries[0].seq;
    let mut f = file.clone();
    flip_b64(&mut f.entries[0].body, 3);
    push("entry body", f, "audit entry #");
    let mut f = file.clone();
    if f.entries[0].proof.is_empty() {
        f.entries[0].proof.push(b64().encode([0u8; 32]));
    } else {
        flip_b64(&mut f.entries[0].proof[0], 5);
    }
    push("inclusion proof", f, "audit entry #");
    let mut f = file.clone();
    f.entries[0].seq = first_seq + 1000;
    push("entry seq", f, "audit entry #");
    if file.entries.len() > 1 {
        let mut f = file.clone();
        f.entries.reverse();
        push("entries reordered", f, "audit entry #");
    }
    let mut f = file.clone();
    f.transfer_id = format!("{}0", &f.transfer_id[..31]);
    if f.transfer_id == file.transfer_id {
        f.transfer_id = format!("{}1", &f.transfer_id[..31]);
    }
    push("transfer id", f, "transfer id:");
    let mut f = file.clone();
    f.log = if f.log == "clinic-c" {
        "hosp-a"
    } else {
        "clinic-c"
    }
    .to_owned();
    push("log", f, "log:");
    // The checkpoint: its size, its own signature, each cosignature.
    let (text, sigs) = file.checkpoint.split_once("\n\n").unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let bigger = (lines[1].parse::<u64>().unwrap() + 1).to_string();
    lines[1] = &bigger;
    let mut f = file.clone();
    f.checkpoint = format!("{}\n\n{sigs}", lines.join("\n"));
    push("checkpoint size", f, "checkpoint:");
    for (i, line) in sigs.lines().enumerate() {
        let (name, sig) = line.rsplit_once(' ').unwrap();
        let mut sig = sig.to_owned();
        flip_b64(&mut sig, 20);
        let mut all: Vec<String> = sigs.lines().map(str::to_owned).collect();
        all[i] = format!("{name} {sig}");
        let mut f = file.clone();
        f.checkpoint = format!("{text}\n\n{}\n", all.join("\n"));
        let part = if name.ends_with("/audit") {
            "checkpoint:"
        } else {
            "checkpoint cosignature by"
        };
        push(&format!("signature line {i}"), f, part);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_is_proven_offline_from_one_file_and_any_change_is_refused_by_name() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let _c = fed.start("clinic-c");
    let record = bundle_by_prefix("Chet_Thompson");
    let patient = patient_id(&record).unwrap();
    a.consent_for_treatment(&patient, "clinic-b").await;
    let id = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;

    let work = tempfile::tempdir().unwrap();
    // A fresh directory for the inspector: the CA certificate and nothing else.
    let inspector = tempfile::tempdir().unwrap();
    std::fs::write(inspector.path().join("ca.crt"), common::ca_pem(&fed)).unwrap();
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &record));

    for (node, log, witnesses) in [
        (&a, "hosp-a", ["clinic-b", "clinic-c"]),
        (&b, "clinic-b", ["clinic-c", "hosp-a"]),
    ] {
        let file = common::export_evidence(node, &id, &work.path().join(format!("{log}.json")));
        let text = String::from_utf8(file.clone()).unwrap();
        // The file reveals no patient identifier: the entries' references stay sealed.
        assert!(!text.contains(&patient), "the evidence names the patient");
        let (code, stdout, stderr) = common::verify_evidence_in(inspector.path(), &file);
        assert_eq!(code, 0, "{log}: {stdout}{stderr}");
        for expected in [
            "VERIFIED",
            &id,
            "hosp-a (",
            "to clinic-b (",
            &digest,
            "receipt version 2",
            "Purpose of use: treatment",
            "policy decision: permit",
            "consent basis evaluated: SHA-256 ",
            "patient reference sealed",
            &format!("{log}'s signed audit checkpoint"),
        ] {
            assert!(
                stdout.contains(expected),
                "{log}: no {expected:?} in\n{stdout}"
            );
        }
        for w in witnesses {
            assert!(
                stdout.contains(&format!("Witnessed by {w} (")),
                "{log}: {w} not named as witness:\n{stdout}"
            );
        }
        let events: &[&str] = if log == "hosp-a" {
            &["policy-decision", "submitted", "delivered"]
        } else {
            &["policy-decision", "received"]
        };
        for e in events {
            assert!(
                stdout.contains(&format!(" {e} ")),
                "{log}: no {e} entry:\n{stdout}"
            );
        }

        // Every section, changed: refused, and the refusal names it.
        let parsed: EvidenceFile = serde_json::from_slice(&file).unwrap();
        for (label, bad, part) in tampered(&parsed) {
            let (code, stdout, stderr) = common::verify_evidence_in(inspector.path(), &bad);
            assert_eq!(code, 1, "{log}: {label} accepted: {stdout}");
            assert!(
                stderr.contains("evidence does NOT verify: ") && stderr.contains(part),
                "{log}: {label}: refusal does not name {part:?}: {stderr}"
            );
        }
        // A byte changed outside every signed part (JSON layout) is refused too; so is any
        // raw byte flip across the file.
        let mut spaced = file.clone();
        spaced.insert(1, b' ');
        let (code, _, stderr) = common::verify_evidence_in(inspector.path(), &spaced);
        assert_eq!(code, 1);
        assert!(stderr.contains("file:"), "{stderr}");
        for at in (0..file.len()).step_by(file.len() / 97 + 1) {
            let mut bad = file.clone();
            bad[at] ^= 0x01;
            let (code, stdout, _) = common::verify_evidence_in(inspector.path(), &bad);
            assert_eq!(code, 1, "{log}: flip at byte {at} accepted: {stdout}");
        }
        // Without the federation's CA it proves nothing.
        let other_ca = tests::Fed::new(&[("hosp-x", FacilityKind::Hospital)]);
        let stranger = tempfile::tempdir().unwrap();
        std::fs::write(stranger.path().join("ca.crt"), common::ca_pem(&other_ca)).unwrap();
        let (code, _, stderr) = common::verify_evidence_in(stranger.path(), &file);
        assert_eq!(code, 1);
        assert!(stderr.contains("directory #1:"), "{stderr}");
    }
    // An unknown transfer cannot be exported.
    let (code, _, stderr) = a.cli(&[
        "evidence",
        "export",
        "--transfer",
        &"ab".repeat(16),
        "--out",
        &work.path().join("none.json").display().to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not known"), "{stderr}");
    // Exports are audited.
    assert!(a
        .audit_events("audit-read")
        .await
        .iter()
        .any(|e| e["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("evidence exported for transfer")));
}

/// Retention removes a delivered transfer's envelope (here at once: 0 h, swept every second, so
/// the test need not wait a week); its signed header is kept with the removal, so the sender's
/// evidence file is still made and still verifies with only the CA certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_outlives_the_envelope_that_retention_removed() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        "\n[retention]\nenvelope_hours = 0\nsweep_interval_secs = 1\n",
    );
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let record = bundle_by_prefix("Chet_Thompson");
    let patient = patient_id(&record).unwrap();
    a.consent_for_treatment(&patient, "clinic-b").await;
    let id = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    // Removed from the store's spool index (the bytes of a small envelope stay in their segment
    // file until the whole segment is reclaimed, and nothing reads them through the store).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !a.transfer(&id).await["envelope_removed_ms"].is_u64() {
        assert!(
            std::time::Instant::now() < deadline,
            "envelope not removed: {}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let work = tempfile::tempdir().unwrap();
    let inspector = tempfile::tempdir().unwrap();
    std::fs::write(inspector.path().join("ca.crt"), common::ca_pem(&fed)).unwrap();
    let file = common::export_evidence(&a, &id, &work.path().join("hosp-a.json"));
    let (code, stdout, stderr) = common::verify_evidence_in(inspector.path(), &file);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &record));
    for expected in ["VERIFIED", id.as_str(), "to clinic-b (", digest.as_str()] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
}
