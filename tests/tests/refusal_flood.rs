//! A scanner hammering the peer port with certificates from a foreign CA cannot flood the audit
//! log: refused connections are audited one by one only within a rate (bursts of 60, refilled
//! one a second: at most 120 in any minute), the rest summarised.

use std::time::{Duration, Instant};

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

    // How many handshakes fit in a second depends on the machine: send in rounds until some
    // refusals are visibly not audited one by one, then check every minute-long window
    // against the cap.
    const BURST: usize = 60;
    const CAP: usize = 120;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut attempts = 0usize;
    let individual = loop {
        for _ in 0..50 {
            let result =
                raw_peer_post(b.dir.peer, &ca, &impostor, "/v1/envelopes", Vec::new()).await;
            assert!(
                result.is_err(),
                "a foreign certificate got an answer: {result:?}"
            );
            attempts += 1;
        }
        // Refusals are audited by the node's connection task, just after the handshake.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let individual: Vec<u64> = b
            .audit()
            .await
            .into_iter()
            .filter(|e| {
                e["outcome"] == "connection-refused"
                    && !e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("not audited one by one"))
            })
            .map(|e| e["time_ms"].as_u64().unwrap())
            .collect();
        if individual.len() + 20 <= attempts {
            break individual;
        }
        assert!(
            Instant::now() < deadline && attempts < 2000,
            "the cap never engaged: {} of {attempts} refusals audited one by one",
            individual.len()
        );
    };
    assert!(
        individual.len() >= BURST,
        "only {} refusals audited",
        individual.len()
    );
    let mut times = individual.clone();
    times.sort_unstable();
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| **t < start + 60_000)
            .count();
        assert!(
            in_window <= CAP,
            "{in_window} refusals audited one by one within a minute of {start}: the cap did not hold"
        );
    }
    assert!(b.audit_verifies().await);
}
