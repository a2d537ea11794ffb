//! Purpose of use against real nodes: payment only to payers and never for sensitive data,
//! research only with the patient's explicit research consent.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::time::Duration;

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::json;

use tests::{bundle_by_prefix, bundle_categories, patient_id, Fed, Node, Submitted};

const DELIVERY: Duration = Duration::from_secs(90);

async fn send_for(
    a: &Node,
    to: &str,
    bundle: &[u8],
    purpose: &str,
    extra: &[(&str, &str)],
) -> Submitted {
    let patient = patient_id(bundle).unwrap();
    a.send(to, &patient, purpose, "fhir", bundle.to_vec(), extra)
        .await
}

fn assert_denied_by(s: &Submitted, policy: &str) {
    assert_eq!(
        s.status,
        StatusCode::FORBIDDEN,
        "expected {policy}: {}",
        s.body
    );
    assert!(
        tests::policy_ids(&s.body).contains(&policy.to_owned()),
        "expected {policy}: {}",
        s.body
    );
}

async fn consent(a: &Node, patient: &str, facilities: &[&str], purposes: &[&str]) {
    let (status, body) = a
        .post_json(
            "/v1/consents",
            json!({"patient": patient, "effect": "permit", "facilities": facilities,
                   "purposes": purposes, "recorded_by": "test"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_goes_only_to_payers_and_never_carries_sensitive_data() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("payer-p", FacilityKind::Payer),
    ]);
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let p = fed.start("payer-p");
    let general = bundle_by_prefix("Clemente_Kreiger");
    assert_eq!(bundle_categories(&general), vec!["general".to_owned()]);

    // Payment to a clinic: refused.
    assert_denied_by(
        &send_for(&a, "clinic-b", &general, "payment", &[]).await,
        "forbid-payment-to-non-payer",
    );
    // Payment of general data to a payer: permitted and delivered, and the payer's own policy
    // check on receipt agrees.
    let ok = send_for(&a, "payer-p", &general, "payment", &[])
        .await
        .transfer_id();
    a.wait_state(&ok, "delivered", DELIVERY).await;
    assert!(p.fetch(&ok).await == general);
    let (_, audit) = p.get(&format!("/v1/audit?transfer={ok}")).await;
    let receive = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "policy-decision")
        .cloned()
        .unwrap();
    assert_eq!(receive["outcome"], "permit");
    assert_eq!(
        tests::policy_ids(&receive),
        vec!["permit-payment-to-payers".to_owned()]
    );

    // Sensitive data for payment: refused even to a payer, even with the patient's consent
    // naming the payer for payment; also when the sensitivity is only declared by the sender.
    let eliseo = bundle_by_prefix("Eliseo_Cummings");
    consent(
        &a,
        &patient_id(&eliseo).unwrap(),
        &["payer-p"],
        &["payment"],
    )
    .await;
    assert_denied_by(
        &send_for(&a, "payer-p", &eliseo, "payment", &[]).await,
        "forbid-payment-sensitive",
    );
    assert_denied_by(
        &send_for(
            &a,
            "payer-p",
            &general,
            "payment",
            &[("categories", "genetic")],
        )
        .await,
        "forbid-payment-sensitive",
    );
    // Treatment to a payer is not a payment: the treatment permit covers members, so general
    // data for treatment goes through.
    let t = send_for(&a, "payer-p", &general, "treatment", &[])
        .await
        .transfer_id();
    a.wait_state(&t, "delivered", DELIVERY).await;
    assert_eq!(p.inbox().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_needs_an_explicit_research_consent() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("lab-r", FacilityKind::Lab),
    ]);
    let a = fed.start("hosp-a");
    let r = fed.start("lab-r");
    let general = bundle_by_prefix("Clemente_Kreiger");
    let patient = patient_id(&general).unwrap();

    // No consent: refused.
    assert_denied_by(
        &send_for(&a, "lab-r", &general, "research", &[]).await,
        "forbid-research-without-consent",
    );
    // A treatment consent naming lab-r is not a research consent.
    consent(&a, &patient, &["lab-r"], &["treatment"]).await;
    assert_denied_by(
        &send_for(&a, "lab-r", &general, "research", &[]).await,
        "forbid-research-without-consent",
    );
    // A research consent for another facility does not cover lab-r.
    consent(&a, &patient, &["hosp-a"], &["research"]).await;
    assert_denied_by(
        &send_for(&a, "lab-r", &general, "research", &[]).await,
        "forbid-research-without-consent",
    );
    // The patient's research consent covering lab-r: permitted, delivered, and the receiver
    // (which holds no directive itself) accepts it on the consent basis in the envelope.
    consent(&a, &patient, &["lab-r"], &["research"]).await;
    let ok = send_for(&a, "lab-r", &general, "research", &[])
        .await
        .transfer_id();
    a.wait_state(&ok, "delivered", DELIVERY).await;
    assert!(r.fetch(&ok).await == general);
    let (_, audit) = a.get(&format!("/v1/audit?transfer={ok}")).await;
    let decision = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "policy-decision")
        .cloned()
        .unwrap();
    assert_eq!(
        tests::policy_ids(&decision),
        vec!["permit-research-with-consent".to_owned()],
        "{decision}"
    );

    // Research consent does not extend to sensitive data the patient did not name for lab-r:
    // a mental-health record needs a consent naming lab-r for those categories, and this
    // patient's research consent does (no category restriction), so check another patient.
    let eliseo = bundle_by_prefix("Eliseo_Cummings");
    let eliseo_patient = patient_id(&eliseo).unwrap();
    let (status, body) = a
        .post_json(
            "/v1/consents",
            json!({"patient": eliseo_patient, "effect": "permit", "facilities": ["lab-r"],
                   "purposes": ["research"], "categories": ["general"], "recorded_by": "test"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_denied_by(
        &send_for(&a, "lab-r", &eliseo, "research", &[]).await,
        "forbid-sensitive-without-consent",
    );
    assert_eq!(r.inbox().await.len(), 1);
}
