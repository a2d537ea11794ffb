//! Doctor-initiated pull requests between real nodes (`gateway request` / `gateway requests`):
//! fulfilled with the patient's consent (byte-identical record in the requester's inbox),
//! denied without it (reason visible to the requester, exit code 3), and both nodes audit the
//! decision with its policy ids.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::time::Duration;

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::Value;

mod common;

use tests::{
    assert_eventually, bundle_by_prefix, bundle_categories, patient_id, raw_peer_post, Fed, Node,
    RawIdentity,
};

fn requests_json(node: &Node) -> Vec<Value> {
    let (code, out, err) = node.cli(&["requests", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

fn request_by_id(node: &Node, id: &str) -> Value {
    requests_json(node)
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("request {id} not listed"))
}

/// `request <id> <state>…` → id.
fn printed_request_id(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no request id in {out:?}"))
        .to_owned()
}

/// Audit entries (of any event) whose reason mentions `needle`.
async fn audit_mentioning(node: &Node, needle: &str) -> Vec<Value> {
    node.audit()
        .await
        .into_iter()
        .filter(|e| e["reason"].as_str().is_some_and(|r| r.contains(needle)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_is_denied_without_consent_and_fulfilled_with_it() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");

    // hosp-a holds Eliseo Cummings' record (mental-health and substance-use codes), put there
    // with the CLI the way an EMR integration would.
    let bundle = bundle_by_prefix("Eliseo_Cummings");
    let patient = patient_id(&bundle).unwrap();
    assert!(bundle_categories(&bundle).contains(&"mental-health".to_owned()));
    let file = fed.dir.path().join("eliseo.json");
    std::fs::write(&file, &bundle).unwrap();
    let (code, out, err) = a.cli(&[
        "records",
        "put",
        "--patient",
        &patient,
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    let ask = |who: &str| {
        b.cli(&[
            "request",
            "--from",
            "hosp-a",
            "--patient",
            &patient,
            "--purpose",
            "treatment",
            "--clinician",
            who,
        ])
    };

    // 1. No consent naming clinic-b: denied, exit 3, reason shown to the requesting doctor.
    let (code, out, err) = ask("dr-x");
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("denied"), "{out}");
    assert!(
        err.contains("no consent on file naming the recipient"),
        "{err}"
    );
    let denied_id = printed_request_id(&out);
    let denied = request_by_id(&b, &denied_id);
    assert_eq!(denied["state"], "denied", "{denied}");
    assert!(denied["transfer_id"].is_null(), "{denied}");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no consent on file naming the recipient"),
        "{denied}"
    );
    // Nothing was sent.
    assert!(b.inbox().await.is_empty());
    let (_, transfers) = a.get("/v1/transfers").await;
    assert_eq!(transfers.as_array().map(Vec::len), Some(0), "{transfers}");

    // 2. The patient consents to clinic-b: the request is fulfilled with a transfer id and the
    //    record arrives byte-identical.
    let (code, out, err) = a.cli(&[
        "consent",
        "grant",
        "--patient",
        &patient,
        "--facility",
        "clinic-b",
        "--purpose",
        "treatment",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ask("dr-x");
    assert_eq!(code, 0, "{out}{err}");
    let ok_id = printed_request_id(&out);
    let mut view: Value;
    assert_eventually!(
        Duration::from_secs(90),
        {
            view = request_by_id(&b, &ok_id);
            view["state"] == "fulfilled"
        },
        "request {ok_id} not fulfilled: {view}\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    let transfer = view["transfer_id"].as_str().unwrap().to_owned();
    let inbox = b.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["transfer_id"], transfer.as_str());
    assert_eq!(inbox[0]["from"], "hosp-a");
    assert!(
        b.fetch(&transfer).await == bundle,
        "pulled record differs from the one held"
    );
    let (status, meta) = b.get(&format!("/v1/inbox/{transfer}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["request_id"], ok_id.as_str(), "{meta}");
    assert_eq!(meta["clinician"], "dr-x");
    // The holder's transfer is delivered with a verified receipt.
    let held = a
        .wait_state(&transfer, "delivered", Duration::from_secs(60))
        .await;
    assert_eq!(held["receipt_held"], true);

    // 3. Audit on the holder: a deny and a permit decision, each naming its request and
    //    policies.
    let denied_audit = audit_mentioning(&a, &denied_id).await;
    let decision = denied_audit
        .iter()
        .find(|e| e["event"] == "policy-decision")
        .unwrap_or_else(|| panic!("no decision for {denied_id}: {denied_audit:?}"));
    assert_eq!(decision["outcome"], "deny");
    assert_eq!(decision["peer"], "clinic-b");
    assert!(
        tests::policy_ids(decision).contains(&"forbid-sensitive-without-consent".to_owned()),
        "{decision}"
    );
    let ok_audit = audit_mentioning(&a, &ok_id).await;
    let decision = ok_audit
        .iter()
        .find(|e| e["event"] == "policy-decision")
        .unwrap_or_else(|| panic!("no decision for {ok_id}: {ok_audit:?}"));
    assert_eq!(decision["outcome"], "permit");
    assert_eq!(
        tests::policy_ids(decision),
        vec!["permit-treatment-between-members".to_owned()],
        "{decision}"
    );

    // Audit on the requester: the denial with the holder's policy ids, and the receive decision
    // for the fulfilled request's transfer.
    let answered = audit_mentioning(&b, &denied_id).await;
    let answer = answered
        .iter()
        .find(|e| e["event"] == "request-answered")
        .unwrap_or_else(|| panic!("requester did not audit the answer: {answered:?}"));
    assert_eq!(answer["outcome"], "denied", "{answer}");
    assert!(
        tests::policy_ids(answer).contains(&"forbid-sensitive-without-consent".to_owned()),
        "{answer}"
    );
    let (_, received) = b.get(&format!("/v1/audit?transfer={transfer}")).await;
    let receive_decision = received
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "policy-decision")
        .cloned()
        .unwrap_or_else(|| panic!("no receive decision: {received}"));
    assert_eq!(receive_decision["outcome"], "permit");
    assert!(
        !tests::policy_ids(&receive_decision).is_empty(),
        "{receive_decision}"
    );
    assert!(a.audit_verifies().await && b.audit_verifies().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_for_a_record_not_held_or_an_unknown_holder_is_refused() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");

    // The API route the CLI uses: PUT a record for one patient, ask for another.
    let bundle = bundle_by_prefix("Clemente_Kreiger");
    let patient = patient_id(&bundle).unwrap();
    assert_eq!(a.put_record(&patient, &bundle).await, StatusCode::CREATED);
    // A record whose bundle is about somebody else is refused at PUT.
    assert_eq!(
        a.put_record("someone-else", &bundle).await,
        StatusCode::BAD_REQUEST
    );

    let (code, out, err) = b.cli(&[
        "request",
        "--from",
        "hosp-a",
        "--patient",
        "someone-else",
        "--purpose",
        "treatment",
        "--clinician",
        "dr-y",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("no record for this patient"), "{err}");

    let (code, out, err) = b.cli(&[
        "request",
        "--from",
        "no-such-facility",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--clinician",
        "dr-y",
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("not active in the federation directory"),
        "{err}"
    );

    // General data for treatment needs no explicit consent: the pull succeeds.
    let (code, out, err) = b.cli(&[
        "request",
        "--from",
        "hosp-a",
        "--patient",
        &patient,
        "--purpose",
        "treatment",
        "--clinician",
        "dr-y",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let id = printed_request_id(&out);
    let mut view: Value;
    assert_eventually!(
        Duration::from_secs(90),
        {
            view = request_by_id(&b, &id);
            view["state"] == "fulfilled"
        },
        "request {id} not fulfilled: {view}"
    );
    assert!(b.fetch(view["transfer_id"].as_str().unwrap()).await == bundle);
}

/// The holder authorizes a request before it looks the patient up: a requester the policy
/// refuses (here: research without the patient's research consent) gets the same answer for a
/// patient whose record is held and for one that is not, so a refusal tells nothing about
/// which patients the facility has records of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_does_not_say_whether_a_record_is_held() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let bundle = bundle_by_prefix("Clemente_Kreiger");
    let held = patient_id(&bundle).unwrap();
    assert_eq!(a.put_record(&held, &bundle).await, StatusCode::CREATED);

    let ask = |patient: &str, purpose: &str| {
        b.cli(&[
            "request",
            "--from",
            "hosp-a",
            "--patient",
            patient,
            "--purpose",
            purpose,
            "--clinician",
            "dr-y",
        ])
    };
    let (code_held, _, err_held) = ask(&held, "research");
    let (code_absent, _, err_absent) = ask("never-seen-here", "research");
    assert_eq!(code_held, 3, "{err_held}");
    assert_eq!(code_absent, 3, "{err_absent}");
    let reason = |err: &str| {
        err.lines()
            .find(|l| l.contains("denied"))
            .unwrap_or_default()
            .split_once("denied")
            .map(|(_, r)| r.to_owned())
            .unwrap_or_default()
    };
    assert!(!reason(&err_held).is_empty(), "{err_held}");
    assert_eq!(reason(&err_held), reason(&err_absent));
    assert!(!err_absent.contains("no record"), "{err_absent}");
    // For a purpose the requester may use, the holder then says plainly that it has nothing.
    let (code, _, err) = ask("never-seen-here", "treatment");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no record for this patient"), "{err}");
}

/// A request as `gateway request` signs it (the gateway's private wire struct, field for field:
/// postcard encodes fields in order, without names).
#[derive(serde::Serialize)]
struct WireRequest<'a> {
    request_id: &'a str,
    requester: &'a str,
    holder: &'a str,
    patient: &'a str,
    purpose: &'a str,
    categories: Vec<String>,
    clinician: &'a str,
    clinician_role: Option<String>,
    break_glass_reason: Option<String>,
    break_glass_until_ms: Option<u64>,
    created_at_ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_or_stale_request_is_refused_and_audited() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let _a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let bundle = bundle_by_prefix("Chet_Thompson");
    let patient = patient_id(&bundle).unwrap();
    assert_eq!(b.put_record(&patient, &bundle).await, StatusCode::CREATED);
    b.consent_for_treatment(&patient, "hosp-a").await;

    // hosp-a's own keys and TLS identity: exactly what its node would send.
    let a_dir = &fed.nodes["hosp-a"].dir;
    let signer = common::signing_key(a_dir);
    let ident = RawIdentity::from_node_dir(a_dir);
    let ca = common::ca_pem(&fed);
    let signed = |id: &str, created_at_ms: u64| {
        let body = postcard::to_allocvec(&WireRequest {
            request_id: id,
            requester: "hosp-a",
            holder: "clinic-b",
            patient: &patient,
            purpose: "treatment",
            categories: Vec::new(),
            clinician: "dr-x",
            clinician_role: None,
            break_glass_reason: None,
            break_glass_until_ms: None,
            created_at_ms,
        })
        .unwrap();
        gateway_envelope::sign_message(&signer, "healthfed/record-request/1", &body)
    };
    let post = |body: Vec<u8>| raw_peer_post(b.dir.peer, &ca, &ident, "/v1/requests", body);

    let fresh = signed("0123456789abcdef0123456789abcdef", common::now_ms());
    let (status, text) = post(fresh.clone()).await.unwrap();
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&text));

    // The same signed bytes again: a captured request replayed by anyone on the path or by
    // the requester itself. Refused, and no second record is sent.
    let (status, text) = post(fresh).await.unwrap();
    let text = String::from_utf8_lossy(&text).into_owned();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("already received"), "{text}");

    // A request made an hour ago, never seen before: outside the window.
    let hour_ago = common::now_ms() - 3600 * 1000;
    let (status, text) = post(signed("fedcba9876543210fedcba9876543210", hour_ago))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text).into_owned();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("stale request"), "{text}");

    let refused = audit_mentioning(&b, "request refused").await;
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(refused.iter().all(|e| e["peer"] == "hosp-a"));
    let (_, sent) = b.get("/v1/transfers").await;
    assert_eq!(sent.as_array().unwrap().len(), 1, "one answer only: {sent}");
}
