//! Break-glass between real nodes: an emergency role may move sensitive data without consent
//! (push and pull), other roles may not, and every break-glass decision is flagged in both
//! audit logs and listed by `gateway audit list --break-glass`.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::time::Duration;

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{
    assert_eventually, bundle_by_prefix, bundle_categories, copy_policies, patient_id, Fed, Node,
};

const DELIVERY: Duration = Duration::from_secs(90);
const WHY: &str = "unconscious patient in the emergency department";

fn break_glass_list(node: &Node) -> Vec<Value> {
    let (code, out, err) = node.cli(&["audit", "list", "--break-glass", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_for_emergency_roles_only_and_is_flagged_for_review() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");

    // Eliseo Cummings: mental-health and substance-use codes, no consent on file.
    let bundle = bundle_by_prefix("Eliseo_Cummings");
    let patient = patient_id(&bundle).unwrap();
    assert!(bundle_categories(&bundle).contains(&"mental-health".to_owned()));
    let refused = a.send_bundle("clinic-b", &bundle).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);

    // An ordinary (non-break-glass) transfer of general data, which must NOT be listed later.
    let general = bundle_by_prefix("Clemente_Kreiger");
    let general_patient = patient_id(&general).unwrap();
    let plain = a.send_bundle("clinic-b", &general).await.transfer_id();

    // 1. Emergency physician breaks the glass: permitted without consent, delivered intact.
    let ok = a
        .send(
            "clinic-b",
            &patient,
            "treatment",
            "fhir",
            bundle.clone(),
            &[
                ("clinician", "dr-er"),
                ("clinician_role", "emergency-physician"),
                ("break_glass_reason", WHY),
            ],
        )
        .await;
    let bg_transfer = ok.transfer_id();
    a.wait_state(&bg_transfer, "delivered", DELIVERY).await;
    a.wait_state(&plain, "delivered", DELIVERY).await;
    assert!(b.fetch(&bg_transfer).await == bundle);
    let (_, meta) = b.get(&format!("/v1/inbox/{bg_transfer}")).await;
    assert_eq!(meta["break_glass_reason"], WHY, "{meta}");

    // 2. Other roles, or no role at all, are refused by the role forbid.
    for role in [Some("physician"), Some("billing"), Some("nurse"), None] {
        let mut extra = vec![("clinician", "dr-z"), ("break_glass_reason", WHY)];
        if let Some(role) = role {
            extra.push(("clinician_role", role));
        }
        let denied = a
            .send(
                "clinic-b",
                &patient,
                "treatment",
                "fhir",
                bundle.clone(),
                &extra,
            )
            .await;
        assert_eq!(
            denied.status,
            StatusCode::FORBIDDEN,
            "{role:?}: {}",
            denied.body
        );
        assert!(
            tests::policy_ids(&denied.body)
                .contains(&"forbid-break-glass-unauthorized-role".to_owned()),
            "{role:?}: {}",
            denied.body
        );
    }
    // Break-glass never lifts the payment forbids.
    let denied = a
        .send(
            "clinic-b",
            &general_patient,
            "payment",
            "fhir",
            general.clone(),
            &[
                ("clinician_role", "emergency-physician"),
                ("break_glass_reason", WHY),
            ],
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.body);
    assert!(
        tests::policy_ids(&denied.body).contains(&"forbid-payment-to-non-payer".to_owned()),
        "{}",
        denied.body
    );
    // An empty reason is refused outright.
    let empty = a
        .send(
            "clinic-b",
            &patient,
            "treatment",
            "fhir",
            bundle.clone(),
            &[("break_glass_reason", " ")],
        )
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{}", empty.body);

    // 3. The CLI: --break-glass needs --reason (usage error); an emergency nurse may send.
    let file = fed.dir.path().join("eliseo.json");
    std::fs::write(&file, &bundle).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = a.cli(&[
        "send",
        "--to",
        "clinic-b",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--file",
        f,
        "--break-glass",
    ]);
    assert_ne!(code, 0, "{out}{err}");
    let (code, out, err) = a.cli(&[
        "send",
        "--to",
        "clinic-b",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--file",
        f,
        "--clinician-role",
        "emergency-nurse",
        "--break-glass",
        "--reason",
        WHY,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let cli_transfer = out.trim().to_owned();
    a.wait_state(&cli_transfer, "delivered", DELIVERY).await;
    let (code, out, err) = a.cli(&[
        "send",
        "--to",
        "clinic-b",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--file",
        f,
        "--clinician-role",
        "physician",
        "--break-glass",
        "--reason",
        WHY,
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("break-glass is not allowed for this clinician role"),
        "{err}"
    );

    // 4. Sender's audit: permit decisions flagged, naming the break-glass permit and the reason.
    let (_, entries) = a.get(&format!("/v1/audit?transfer={bg_transfer}")).await;
    let decision = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "policy-decision")
        .cloned()
        .unwrap();
    assert_eq!(decision["outcome"], "permit");
    assert_eq!(decision["break_glass"], true);
    assert_eq!(decision["clinician"], "dr-er");
    assert!(
        tests::policy_ids(&decision).contains(&"permit-break-glass-emergency".to_owned()),
        "{decision}"
    );
    assert!(
        decision["reason"].as_str().unwrap().contains(WHY),
        "{decision}"
    );
    // Receiver's audit: the receive decision and the stored record are flagged too.
    let (_, entries) = b.get(&format!("/v1/audit?transfer={bg_transfer}")).await;
    let entries = entries.as_array().unwrap();
    for event in ["policy-decision", "received"] {
        let e = entries
            .iter()
            .find(|e| e["event"] == event)
            .unwrap_or_else(|| panic!("receiver has no {event}: {entries:?}"));
        assert_eq!(e["break_glass"], true, "{e}");
    }
    let receive = entries
        .iter()
        .find(|e| e["event"] == "policy-decision")
        .unwrap();
    assert_eq!(receive["outcome"], "permit");
    assert!(
        tests::policy_ids(receive).contains(&"permit-break-glass-emergency".to_owned()),
        "{receive}"
    );

    // 5. `audit list --break-glass`: only break-glass entries, including both permitted
    //    transfers and the refused attempts; the plain transfer is not there.
    let listed = break_glass_list(&a);
    assert!(
        listed.iter().all(|e| e["break_glass"] == true),
        "{listed:?}"
    );
    for t in [&bg_transfer, &cli_transfer] {
        assert!(
            listed
                .iter()
                .any(|e| e["transfer_id"] == t.as_str() && e["outcome"] == "permit"),
            "{t}"
        );
    }
    assert!(listed.iter().all(|e| e["transfer_id"] != plain.as_str()));
    let refused_listed = listed
        .iter()
        .filter(|e| e["event"] == "policy-decision" && e["outcome"] == "deny")
        .count();
    assert_eq!(
        refused_listed, 6,
        "4 roles + payment + CLI physician: {listed:?}"
    );
    let listed_b = break_glass_list(&b);
    assert!(listed_b.iter().all(|e| e["break_glass"] == true));
    for t in [&bg_transfer, &cli_transfer] {
        assert!(
            listed_b
                .iter()
                .any(|e| e["transfer_id"] == t.as_str() && e["event"] == "received"),
            "{t}"
        );
    }
    assert!(listed_b.iter().all(|e| e["transfer_id"] != plain.as_str()));
    // The human-readable listing marks them.
    let (code, out, _) = a.cli(&["audit", "list", "--break-glass"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().count() >= listed.len() && out.lines().all(|l| l.contains("BREAK-GLASS")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_pull_request_by_an_emergency_role_is_fulfilled_and_flagged() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let bundle = bundle_by_prefix("Chet_Thompson");
    let patient = patient_id(&bundle).unwrap();
    assert!(bundle_categories(&bundle).contains(&"hiv-sti".to_owned()));
    let file = fed.dir.path().join("chet.json");
    std::fs::write(&file, &bundle).unwrap();
    let (code, _, err) = a.cli(&[
        "records",
        "put",
        "--patient",
        &patient,
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");

    // A nurse who is not an emergency nurse: refused, exit 3.
    let (code, out, err) = b.cli(&[
        "request",
        "--from",
        "hosp-a",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--clinician",
        "rn-q",
        "--clinician-role",
        "nurse",
        "--break-glass",
        "--reason",
        WHY,
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("break-glass is not allowed"), "{err}");

    // The emergency physician: fulfilled without consent.
    let (code, out, err) = b.cli(&[
        "request",
        "--from",
        "hosp-a",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--clinician",
        "dr-er",
        "--clinician-role",
        "emergency-physician",
        "--break-glass",
        "--reason",
        WHY,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let mut view: Value;
    assert_eventually!(
        DELIVERY,
        {
            let (_, list) = b.get("/v1/requests").await;
            view = list
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id.as_str())
                .cloned()
                .unwrap();
            view["state"] == "fulfilled"
        },
        "break-glass request not fulfilled: {view}\n{}",
        a.log_text()
    );
    assert_eq!(view["break_glass"], true);
    let transfer = view["transfer_id"].as_str().unwrap().to_owned();
    assert!(b.fetch(&transfer).await == bundle);

    // Both logs flag it; the holder's decision names the break-glass permit.
    let holder = break_glass_list(&a);
    let decision = holder
        .iter()
        .find(|e| {
            e["event"] == "policy-decision"
                && e["outcome"] == "permit"
                && e["reason"].as_str().is_some_and(|r| r.contains(&id))
        })
        .unwrap_or_else(|| panic!("holder did not flag the request decision: {holder:?}"));
    assert!(
        tests::policy_ids(decision).contains(&"permit-break-glass-emergency".to_owned()),
        "{decision}"
    );
    let requester = break_glass_list(&b);
    assert!(
        requester.iter().any(|e| e["event"] == "request-sent"),
        "{requester:?}"
    );
    assert!(requester
        .iter()
        .any(|e| e["event"] == "received" && e["transfer_id"] == transfer.as_str()));
}

/// The receiver's own policy sees the right facilities for a break-glass push: principal =
/// itself (the recipient), resource.sender = the sending peer, exactly as for a normal push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_policy_applies_to_break_glass_pushes_with_the_sender_as_sender() {
    const REFUSE_HOSP_A: &str = "@id(\"forbid-records-from-hosp-a\")\n@reason(\"this clinic does not accept records from hosp-a\")\nforbid (principal == Facility::\"clinic-b\", action, resource)\nwhen { resource.sender == Facility::\"hosp-a\" };\n";
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let policies = copy_policies(fed.dir.path());
    std::fs::write(policies.join("local.cedar"), REFUSE_HOSP_A).unwrap();
    fed.use_policy_dir("clinic-b", &policies);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let bundle = bundle_by_prefix("Clemente_Kreiger");
    let patient = patient_id(&bundle).unwrap();

    // Control: a normal push is refused by clinic-b's policy.
    let plain = a.send_bundle("clinic-b", &bundle).await.transfer_id();
    let view = a.wait_state(&plain, "failed", DELIVERY).await;
    assert!(
        view["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("does not accept records from hosp-a"),
        "{view}"
    );
    // A break-glass push by an emergency physician: hosp-a permits it, clinic-b's policy
    // still refuses it (break-glass lifts consent forbids, not the receiver's own forbids).
    let bg = a
        .send(
            "clinic-b",
            &patient,
            "treatment",
            "fhir",
            bundle.clone(),
            &[
                ("clinician_role", "emergency-physician"),
                ("break_glass_reason", WHY),
            ],
        )
        .await
        .transfer_id();
    let view = a.wait_state(&bg, "failed", DELIVERY).await;
    assert!(
        view["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("does not accept records from hosp-a"),
        "{view}"
    );
    assert!(b.inbox().await.is_empty());
    let (_, entries) = b.get(&format!("/v1/audit?transfer={bg}")).await;
    let decision = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "policy-decision")
        .cloned()
        .unwrap_or_else(|| panic!("no receive decision: {entries}"));
    assert_eq!(decision["outcome"], "deny", "{decision}");
    assert_eq!(decision["break_glass"], true);
    assert_eq!(
        tests::policy_ids(&decision),
        vec!["forbid-records-from-hosp-a".to_owned()],
        "{decision}"
    );

    // `policy check --from hosp-a --break-glass` on clinic-b gives the same answer.
    let (code, out, _) = b.cli(&[
        "policy",
        "check",
        "--from",
        "hosp-a",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--clinician-role",
        "emergency-physician",
        "--break-glass",
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("forbid-records-from-hosp-a"), "{out}");
}
