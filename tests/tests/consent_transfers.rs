//! Consent against real nodes: Synthea bundles with sensitive codes need the patient's consent
//! naming the recipient (recorded with the `gateway consent` CLI against the running node),
//! revocation takes effect on the next transfer, and a patient's deny directive blocks even
//! general data for treatment.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::time::Duration;

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{bundle_by_prefix, bundle_categories, patient_id, Fed, Node};

const DELIVERY: Duration = Duration::from_secs(90);

/// The four Synthea patients with sensitive codes, and the category each must be found to have.
const SENSITIVE: [(&str, &str); 4] = [
    ("Eliseo_Cummings", "mental-health"),
    ("Chet_Thompson", "hiv-sti"),
    ("Fletcher_Hyatt", "substance-use"),
    ("Gilberto_Orosco", "substance-use"),
];

async fn send_treatment(a: &Node, to: &str, bundle: &[u8]) -> tests::Submitted {
    a.send_bundle(to, bundle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_bundles_need_consent_naming_the_recipient_and_revocation_applies_next_time() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");

    for (prefix, category) in SENSITIVE {
        let bundle = bundle_by_prefix(prefix);
        let patient = patient_id(&bundle).unwrap();
        let categories = bundle_categories(&bundle);
        assert!(
            categories.iter().any(|c| c == category),
            "{prefix}: classifier found {categories:?}, expected {category}"
        );

        // 1. No consent on file: refused before anything is queued, with the forbid's id.
        let refused = send_treatment(&a, "clinic-b", &bundle).await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{prefix}: {}",
            refused.body
        );
        assert!(
            tests::policy_ids(&refused.body)
                .contains(&"forbid-sensitive-without-consent".to_owned()),
            "{prefix}: {}",
            refused.body
        );
        assert!(
            refused.body["error"]
                .as_str()
                .unwrap_or("")
                .contains("no consent on file"),
            "{prefix}: {}",
            refused.body
        );

        // 2. A consent naming another facility does not help.
        let (code, out, err) = a.cli(&[
            "consent",
            "grant",
            "--patient",
            &patient,
            "--facility",
            "clinic-c",
            "--purpose",
            "treatment",
        ]);
        assert_eq!(code, 0, "{prefix}: grant to clinic-c: {out}{err}");
        let still = send_treatment(&a, "clinic-b", &bundle).await;
        assert_eq!(
            still.status,
            StatusCode::FORBIDDEN,
            "{prefix}: consent for clinic-c let clinic-b in"
        );

        // 3. The patient's consent naming clinic-b, recorded with the CLI: permitted, delivered,
        //    byte-identical at the recipient.
        let (code, out, err) = a.cli(&[
            "consent",
            "grant",
            "--patient",
            &patient,
            "--facility",
            "clinic-b",
            "--purpose",
            "treatment",
            "--recorded-by",
            "dr-consent",
        ]);
        assert_eq!(code, 0, "{prefix}: grant: {out}{err}");
        let directive = out.trim().to_owned();
        assert!(
            directive.starts_with("cd-"),
            "{prefix}: grant printed {out:?}"
        );
        let sent = send_treatment(&a, "clinic-b", &bundle).await;
        let id = sent.transfer_id();
        a.wait_state(&id, "delivered", DELIVERY).await;
        assert!(
            b.fetch(&id).await == bundle,
            "{prefix}: payload differs at the recipient"
        );

        // 4. Revoked with the CLI: the very next transfer is refused again.
        let (code, out, err) = a.cli(&["consent", "revoke", "--id", &directive]);
        assert_eq!(code, 0, "{prefix}: revoke: {out}{err}");
        let after = send_treatment(&a, "clinic-b", &bundle).await;
        assert_eq!(
            after.status,
            StatusCode::FORBIDDEN,
            "{prefix}: revoked consent still honoured: {}",
            after.body
        );
        assert!(
            tests::policy_ids(&after.body).contains(&"forbid-sensitive-without-consent".to_owned())
        );

        // `consent show` lists both directives; the revoked one is marked.
        let (code, out, err) = a.cli(&["consent", "show", "--patient", &patient, "--json"]);
        assert_eq!(code, 0, "{err}");
        let shown: Value = serde_json::from_str(&out).unwrap();
        let ours = shown
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == directive.as_str())
            .unwrap_or_else(|| panic!("{prefix}: directive {directive} not shown: {out}"));
        assert!(ours["revoked_at"].is_i64(), "{prefix}: {ours}");
        // A second revocation is refused.
        let (code, _, _) = a.cli(&["consent", "revoke", "--id", &directive]);
        assert_ne!(code, 0, "{prefix}: revoking twice succeeded");
    }

    // Exactly one transfer per patient was delivered; every refused attempt is audited as a
    // deny with the forbid's id, and every permit names the treatment permit.
    assert_eq!(b.inbox().await.len(), SENSITIVE.len());
    let decisions = a.audit_events("policy-decision").await;
    let denies: Vec<&Value> = decisions
        .iter()
        .filter(|d| d["outcome"] == "deny")
        .collect();
    let permits: Vec<&Value> = decisions
        .iter()
        .filter(|d| d["outcome"] == "permit")
        .collect();
    assert_eq!(denies.len(), 3 * SENSITIVE.len(), "{decisions:?}");
    assert_eq!(permits.len(), SENSITIVE.len(), "{decisions:?}");
    for d in denies {
        assert!(
            tests::policy_ids(d).contains(&"forbid-sensitive-without-consent".to_owned()),
            "{d}"
        );
        assert_eq!(d["peer"], "clinic-b");
    }
    for p in &permits {
        assert_eq!(
            tests::policy_ids(p),
            vec!["permit-treatment-between-members".to_owned()],
            "{p}"
        );
    }
    // The recipient decided too, on the consent basis the sender carried in the envelope.
    let received: Vec<Value> = b
        .audit_events("policy-decision")
        .await
        .into_iter()
        .filter(|d| d["outcome"] == "permit")
        .collect();
    assert_eq!(received.len(), SENSITIVE.len(), "{received:?}");
    assert!(a.audit_verifies().await && b.audit_verifies().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_directive_covering_the_recipient_blocks_even_general_data() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let c = fed.start("clinic-c");

    let bundle = bundle_by_prefix("Clemente_Kreiger");
    let patient = patient_id(&bundle).unwrap();
    assert_eq!(bundle_categories(&bundle), vec!["general".to_owned()]);

    // General data for treatment needs no explicit consent.
    let first = a.send_bundle("clinic-b", &bundle).await.transfer_id();
    a.wait_state(&first, "delivered", DELIVERY).await;

    // The patient withholds consent from clinic-b (CLI): refused by the patient-deny forbid.
    let (code, out, err) = a.cli(&[
        "consent",
        "deny",
        "--patient",
        &patient,
        "--facility",
        "clinic-b",
        "--purpose",
        "treatment",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let directive = out.trim().to_owned();
    let refused = a.send_bundle("clinic-b", &bundle).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(
        tests::policy_ids(&refused.body),
        vec!["forbid-patient-deny".to_owned()],
        "{}",
        refused.body
    );
    // A permit recorded later does not cancel the deny (deny wins).
    a.consent_for_treatment(&patient, "clinic-b").await;
    assert_eq!(
        a.send_bundle("clinic-b", &bundle).await.status,
        StatusCode::FORBIDDEN
    );

    // The deny names clinic-b only: clinic-c still gets the record.
    let to_c = a.send_bundle("clinic-c", &bundle).await.transfer_id();
    a.wait_state(&to_c, "delivered", DELIVERY).await;
    assert!(c.fetch(&to_c).await == bundle);

    // The CLI's exit code for a refused send is 3, with the reason on stderr.
    let file = fed.dir.path().join("clemente.json");
    std::fs::write(&file, &bundle).unwrap();
    let (code, out, err) = a.cli(&[
        "send",
        "--to",
        "clinic-b",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("no consent on file for this purpose"), "{err}");

    // Revoking the deny restores the default (the later permit is still there).
    let (code, _, err) = a.cli(&["consent", "revoke", "--id", &directive]);
    assert_eq!(code, 0, "{err}");
    let again = a.send_bundle("clinic-b", &bundle).await.transfer_id();
    a.wait_state(&again, "delivered", DELIVERY).await;
    assert_eq!(b.inbox().await.len(), 2);

    // A consent's end date counts: one that ended in 2020 grants nothing, one running to 2099
    // does (CLI --until, inclusive day).
    let eliseo = bundle_by_prefix("Eliseo_Cummings");
    let eliseo_patient = patient_id(&eliseo).unwrap();
    let grant_until = |day: &str| {
        a.cli(&[
            "consent",
            "grant",
            "--patient",
            &eliseo_patient,
            "--facility",
            "clinic-b",
            "--purpose",
            "treatment",
            "--until",
            day,
        ])
    };
    let (code, out, err) = grant_until("2020-01-31");
    assert_eq!(code, 0, "{out}{err}");
    let expired = a.send_bundle("clinic-b", &eliseo).await;
    assert_eq!(
        expired.status,
        StatusCode::FORBIDDEN,
        "expired consent honoured: {}",
        expired.body
    );
    let (code, _, _) = grant_until("31/01/2099");
    assert_eq!(code, 64, "a malformed --until is a usage error");
    let (code, out, err) = grant_until("2099-01-31");
    assert_eq!(code, 0, "{out}{err}");
    let ok = a.send_bundle("clinic-b", &eliseo).await.transfer_id();
    a.wait_state(&ok, "delivered", DELIVERY).await;
}
