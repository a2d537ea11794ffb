//! Envelope suites across real nodes: a node sends with the suite its config names, and every
//! node opens every suite, so a federation in the middle of a rolling upgrade (some nodes on
//! HPKE's own AES-256-GCM, some on the exported suite) still exchanges records both ways.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fail the test loudly on any unexpected error"
)]

use std::time::Duration;

use gateway_envelope::{EnvelopeReader, Limits, Suite};
use pki_tools::FacilityKind;

use tests::{bundles, patient_id, Fed};

mod common;

/// The suite named in a spooled envelope's header, as it travelled.
fn suite_on_disk(bytes: Option<Vec<u8>>) -> Suite {
    let bytes = bytes.expect("the envelope is on disk");
    let mut reader = EnvelopeReader::new(Limits::default());
    reader.push(&bytes);
    reader.header().unwrap().expect("a whole header").suite()
}

/// Sets `delivery.envelope_suite` in one node's config.
fn set_suite(fed: &Fed, id: &str, name: &str) {
    common::add_config_line(fed, id, "delivery", &format!("envelope_suite = \"{name}\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_different_suites_exchange_records_both_ways() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    // hosp-a keeps the default; clinic-b is configured like a node not yet switched over;
    // clinic-c uses ChaCha20-Poly1305.
    set_suite(&fed, "clinic-b", Suite::Aes256Gcm.name());
    set_suite(&fed, "clinic-c", Suite::ChaCha20Poly1305.name());
    for (id, name) in [
        ("hosp-a", "exported-aes-256-gcm"),
        ("clinic-b", "hpke-aes-256-gcm"),
        ("clinic-c", "hpke-chacha20-poly1305"),
    ] {
        let config = fed.nodes[id].config_path.display().to_string();
        let (code, out, err) = tests::gateway_cli(&["check", "--config", &config]);
        assert_eq!(code, 0, "{id}: {err}");
        assert!(out.contains(&format!("; sends {name}")), "{id}: {out}");
    }
    let nodes = [
        (fed.start("hosp-a"), Suite::ExportedAes256Gcm),
        (fed.start("clinic-b"), Suite::Aes256Gcm),
        (fed.start("clinic-c"), Suite::ChaCha20Poly1305),
    ];

    let bundles: Vec<(String, Vec<u8>, String)> = bundles()
        .into_iter()
        .filter_map(|(name, bytes)| patient_id(&bytes).map(|patient| (name, bytes, patient)))
        .collect();
    assert!(bundles.len() >= 3, "the shared bundles name their patients");
    let mut next_bundle = bundles.iter().cycle();
    for (sender, suite) in &nodes {
        for (receiver, _) in nodes.iter().filter(|(n, _)| n.dir.id != sender.dir.id) {
            let (name, bytes, patient) = next_bundle.next().unwrap();
            let to = receiver.dir.id.as_str();
            sender.consent_for_treatment(patient, to).await;
            let id = sender.send_bundle(to, bytes).await.transfer_id();
            let view = sender
                .wait_state(&id, "delivered", Duration::from_secs(30))
                .await;
            assert_eq!(view["receipt_held"], true, "{view}");
            assert_eq!(
                receiver.fetch(&id).await,
                *bytes,
                "{name}: {} -> {to}",
                sender.dir.id
            );
            // The sender's copy and the receiver's copy carry the sender's suite.
            assert_eq!(
                suite_on_disk(sender.envelope_on_disk("outbox", &id)),
                *suite
            );
            assert_eq!(
                suite_on_disk(receiver.envelope_on_disk("inbox", &id)),
                *suite
            );
        }
    }
}

#[test]
fn an_unknown_suite_is_refused_at_start_naming_the_choices() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    set_suite(&fed, "hosp-a", "aes-128-gcm");
    let config = fed.nodes["hosp-a"].config_path.display().to_string();
    let (code, _, err) = tests::gateway_cli(&["check", "--config", &config]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("delivery.envelope_suite: must be one of hpke-aes-256-gcm, hpke-chacha20-poly1305, exported-aes-256-gcm"),
        "{err}"
    );
    // `gateway run` refuses it too, before opening anything.
    let mut child = std::process::Command::new(tests::gateway_bin())
        .args(["run", "--config", &config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = tests::wait_child_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status, Some(64), "{stderr}");
    assert!(stderr.contains("delivery.envelope_suite"), "{stderr}");
}
