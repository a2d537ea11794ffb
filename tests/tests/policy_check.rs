//! `gateway policy check` against a running node: prints the decision and the determining
//! policy ids, exits 0 on permit and 3 on deny, and has no side effects.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use pki_tools::FacilityKind;
use serde_json::json;

use tests::{Fed, Node};

/// Runs `gateway policy check …` and returns (exit code, decision line, policies line, stdout).
fn check(node: &Node, args: &[&str]) -> (i32, String, String, String) {
    let mut all = vec!["policy", "check"];
    all.extend_from_slice(args);
    let (code, out, err) = node.cli(&all);
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {out:?} (stderr {err:?})"))
            .trim()
            .to_owned()
    };
    (
        code,
        line("decision:"),
        line("determining policies:"),
        out.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_check_prints_decision_and_policies_and_exits_0_or_3_without_side_effects() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("payer-p", FacilityKind::Payer),
    ]);
    let a = fed.start("hosp-a");
    // A directive so that consent-dependent answers differ by patient.
    let (status, body) = a
        .post_json(
            "/v1/consents",
            json!({"patient": "pat-consented", "effect": "permit", "facilities": ["clinic-b"],
                   "purposes": ["treatment"], "categories": ["hiv-sti"], "recorded_by": "test"}),
        )
        .await;
    assert_eq!(status, http::StatusCode::CREATED, "{body}");
    let (status, body) = a
        .post_json(
            "/v1/consents",
            json!({"patient": "pat-denied", "effect": "deny", "facilities": ["all"],
                   "purposes": [], "recorded_by": "test"}),
        )
        .await;
    assert_eq!(status, http::StatusCode::CREATED, "{body}");
    let audit_before = a.audit_without_reads().await;

    // (args, expected exit code, expected decision, expected determining policies)
    let cases: Vec<(Vec<&str>, i32, &str, &str)> = vec![
        (
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-1",
                "--purpose",
                "treatment",
            ],
            0,
            "permit",
            "permit-treatment-between-members",
        ),
        (
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-1",
                "--purpose",
                "treatment",
                "--category",
                "mental-health",
            ],
            3,
            "deny",
            "forbid-sensitive-without-consent",
        ),
        (
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-consented",
                "--purpose",
                "treatment",
                "--category",
                "hiv-sti",
            ],
            0,
            "permit",
            "permit-treatment-between-members",
        ),
        (
            // The consent covers hiv-sti only, not genetic.
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-consented",
                "--purpose",
                "treatment",
                "--category",
                "hiv-sti",
                "--category",
                "genetic",
            ],
            3,
            "deny",
            "forbid-sensitive-without-consent",
        ),
        (
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-denied",
                "--purpose",
                "treatment",
            ],
            3,
            "deny",
            "forbid-patient-deny",
        ),
        (
            vec![
                "--to",
                "payer-p",
                "--patient",
                "pat-1",
                "--purpose",
                "payment",
            ],
            0,
            "permit",
            "permit-payment-to-payers",
        ),
        (
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-1",
                "--purpose",
                "payment",
            ],
            3,
            "deny",
            "forbid-payment-to-non-payer",
        ),
        (
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-1",
                "--purpose",
                "research",
            ],
            3,
            "deny",
            "forbid-research-without-consent",
        ),
        (
            // Nothing permits operations: default deny, no determining policy.
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-1",
                "--purpose",
                "operations",
            ],
            3,
            "deny",
            "(none: default deny)",
        ),
        (
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-1",
                "--purpose",
                "treatment",
                "--category",
                "hiv-sti",
                "--clinician-role",
                "emergency-physician",
                "--break-glass",
            ],
            0,
            "permit",
            "permit-break-glass-emergency",
        ),
        (
            vec![
                "--to",
                "clinic-b",
                "--patient",
                "pat-1",
                "--purpose",
                "treatment",
                "--clinician-role",
                "physician",
                "--break-glass",
            ],
            3,
            "deny",
            "forbid-break-glass-unauthorized-role",
        ),
        (
            // Receiving from clinic-b: this node is the recipient.
            vec![
                "--from",
                "clinic-b",
                "--patient",
                "pat-1",
                "--purpose",
                "treatment",
            ],
            0,
            "permit",
            "permit-treatment-between-members",
        ),
    ];
    for (args, code, decision, policies) in &cases {
        let (got_code, got_decision, got_policies, out) = check(&a, args);
        assert_eq!(got_code, *code, "{args:?}: {out}");
        assert_eq!(got_decision, *decision, "{args:?}: {out}");
        assert_eq!(got_policies, *policies, "{args:?}: {out}");
        assert!(out.contains("reason:"), "{args:?}: {out}");
    }

    // Usage errors: an unknown facility, or both --to and --from.
    let (code, _, err) = a.cli(&[
        "policy",
        "check",
        "--to",
        "nowhere",
        "--patient",
        "p",
        "--purpose",
        "treatment",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in the federation directory"), "{err}");
    let (code, _, _) = a.cli(&[
        "policy",
        "check",
        "--to",
        "clinic-b",
        "--from",
        "clinic-b",
        "--patient",
        "p",
        "--purpose",
        "treatment",
    ]);
    assert_eq!(code, 2, "clap usage error expected");

    // No side effects: the audit log is exactly as before, nothing was queued.
    let audit_after = a.audit_without_reads().await;
    assert_eq!(
        audit_after.len(),
        audit_before.len(),
        "policy check wrote to the audit log"
    );
    assert_eq!(audit_after, audit_before);
    let (_, transfers) = a.get("/v1/transfers").await;
    assert_eq!(transfers.as_array().map(Vec::len), Some(0), "{transfers}");
}
