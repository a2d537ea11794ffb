//! A submission taken straight to a free delivery worker (claimed in the write that queues
//! it), and one that finds every worker busy and waits for the scheduler, both end delivered
//! exactly once with the same audit trail.

use std::time::Duration;

use pki_tools::FacilityKind;

use tests::{testdata, Fed};

/// One worker: of a concurrent burst, at most one submission finds it free at a time.
const ONE_WORKER: &str = "\n[delivery]\nworkers = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_queued_submissions_are_each_delivered_once() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        ONE_WORKER,
    );
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    // The C-CDA document of the shared test data, for its own patient (the recordTarget id; a
    // different id is refused as a mismatch), with no sensitive category
    // declared: the default policies permit it for treatment without a consent directive.
    let bytes = std::fs::read(testdata("fhir/cda/CCD1_C-CDA2.1_CCD.xml")).unwrap();

    let submissions = (0..16).map(|_| {
        let (a, bytes) = (&a, bytes.clone());
        async move {
            a.send("clinic-b", "444222222", "treatment", "ccda", bytes, &[])
                .await
        }
    });
    let submitted = futures_util::future::join_all(submissions).await;
    let mut states = Vec::new();
    let mut ids = Vec::new();
    for s in &submitted {
        ids.push(s.transfer_id());
        states.push(s.body["state"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        states.iter().all(|s| s == "queued" || s == "delivering"),
        "{states:?}"
    );
    assert!(
        states.iter().any(|s| s == "delivering"),
        "no submission was taken by the free worker: {states:?}"
    );
    assert!(
        states.iter().any(|s| s == "queued"),
        "with one worker, a burst of 16 must queue some: {states:?}"
    );

    for id in &ids {
        a.wait_state(id, "delivered", Duration::from_secs(60)).await;
        assert_eq!(b.fetch(id).await, bytes);
        let events: Vec<String> = a
            .get(&format!("/v1/audit?transfer={id}"))
            .await
            .1
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            events,
            [
                "policy-decision",
                "submitted",
                "sent",
                "receipt-verified",
                "delivered"
            ],
            "{id}"
        );
    }
    assert_eq!(b.inbox().await.len(), ids.len());
    assert_eq!(b.audit_events("received").await.len(), ids.len());
    assert!(a.audit_verifies().await);
}
