//! A scanner hammering the peer port with certificates from a foreign CA cannot flood the audit
//! log: refused connections are audited one by one only up to a per-minute cap.

use std::time::Duration;

use pki_tools::{FacilityKind, Federation};

use tests::{raw_peer_post, Fed, RawIdentity};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_audited_up_to_a_cap() {
    let fed = Fed::new(&[("clinic-b", FacilityKind::Clinic)]);
    let b = fed.start("clinic-b");
    let ca = std::fs::read(fed.federation_dir().join("ca.crt")).unwrap();

    let foreign_dir = tempfile::tempdir().unwrap();
    let mut foreign = Federation::init(&foreign_dir.path().join("fed"), "Foreign", false).unwrap();
    foreign
        .add_facility(
            &"scanner".parse().unwrap(),
            "Scanner",
            &"https://127.0.0.1:9".parse().unwrap(),
            FacilityKind::Clinic,
            &foreign_dir.path().join("node"),
        )
        .unwrap();
    let impostor = RawIdentity::from_node_dir(&foreign_dir.path().join("node"));

    // The cap is per clock minute; the run may straddle one boundary, so at most two windows' worth.
    let attempts = 300;
    for _ in 0..attempts {
        let result = raw_peer_post(b.dir.peer, &ca, &impostor, "/v1/envelopes", Vec::new()).await;
        assert!(
            result.is_err(),
            "a foreign certificate got an answer: {result:?}"
        );
    }
    // The refusals were audited (the first ones individually), but not all of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = b
        .audit()
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "connection-refused")
        .count();
    assert!(refused >= 100, "only {refused} refusals audited");
    assert!(
        refused <= 2 * 120 + 1,
        "{refused} of {attempts} refusals audited one by one: the cap did not hold"
    );
    assert!(b.audit_verifies().await);
}
