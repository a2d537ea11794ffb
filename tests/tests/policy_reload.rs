//! Operator-supplied policy sets (`[policy] dir`): an invalid set is refused at start (exit 64,
//! the log says why) and on reload (the old set stays active, the answer says why); a policy
//! that errors at evaluation makes the decision a Deny whose audit entry carries the error.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use pki_tools::FacilityKind;

use tests::{
    assert_eventually, bundle_by_prefix, copy_policies, gateway_cli, patient_id, Fed, Node,
};

const SYNTAX_ERROR: &str =
    "\n@id(\"broken\")\npermit (principal, action, resource) when { context. };\n";
const SCHEMA_VIOLATION: &str =
    "\n@id(\"unknown-attribute\")\npermit (principal, action, resource) when { context.weather == \"sunny\" };\n";
const SUSPEND_CLINIC_B: &str = "@id(\"forbid-test-clinic-b-suspended\")\n@reason(\"clinic-b is suspended\")\nforbid (principal == Facility::\"clinic-b\", action, resource);\n";
/// `context.now` (Unix seconds, a Long) times i64::MAX overflows on every evaluation.
const OVERFLOW: &str = "@id(\"forbid-overflowing\")\n@reason(\"overflow test\")\nforbid (principal, action, resource)\nwhen { context.now * 9223372036854775807 > 0 };\n";

fn append(file: &Path, text: &str) {
    let mut s = std::fs::read_to_string(file).unwrap();
    s.push_str(text);
    std::fs::write(file, s).unwrap();
}

/// (exit code, stdout) of `gateway policy check --to clinic-b … --purpose treatment`.
fn check_clinic_b(node: &Node, categories: &[&str]) -> (i32, String) {
    let mut args = vec![
        "policy",
        "check",
        "--to",
        "clinic-b",
        "--patient",
        "pat-1",
        "--purpose",
        "treatment",
    ];
    for c in categories {
        args.extend_from_slice(&["--category", c]);
    }
    let (code, out, _) = node.cli(&args);
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_set_is_refused_at_start_with_exit_64_and_the_reason() {
    for (what, breakage, why) in [
        ("syntax error", SYNTAX_ERROR, "federation.cedar"),
        ("schema violation", SCHEMA_VIOLATION, "weather"),
    ] {
        let fed = Fed::new(&[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ]);
        let policies = copy_policies(fed.dir.path());
        append(&policies.join("federation.cedar"), breakage);
        fed.use_policy_dir("hosp-a", &policies);

        let mut node = fed.spawn("hosp-a");
        let code = node.wait_exit(Duration::from_secs(30));
        let log = node.log_text();
        assert_eq!(
            code,
            Some(64),
            "{what}: node did not refuse to start:\n{log}"
        );
        assert!(log.contains("policy"), "{what}: {log}");
        assert!(
            log.contains(why),
            "{what}: log does not say why ({why}):\n{log}"
        );
        assert!(
            std::net::TcpStream::connect(node.dir.local).is_err(),
            "{what}: local API is up"
        );

        // `gateway check` refuses the same config the same way.
        let config = fed.nodes["hosp-a"].config_path.to_str().unwrap().to_owned();
        let (code, _, err) = gateway_cli(&["check", "--config", &config]);
        assert_eq!(code, 64, "{what}: {err}");
        assert!(err.contains(why), "{what}: {err}");
    }
    // Control: the unmodified copy starts.
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let policies = copy_policies(fed.dir.path());
    fed.use_policy_dir("hosp-a", &policies);
    let a = fed.start("hosp-a");
    assert_eq!(check_clinic_b(&a, &[]).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_keeps_the_old_set_and_a_valid_one_takes_effect() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let policies = copy_policies(fed.dir.path());
    let federation = policies.join("federation.cedar");
    let original = std::fs::read_to_string(&federation).unwrap();
    fed.use_policy_dir("hosp-a", &policies);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let general = bundle_by_prefix("Clemente_Kreiger");

    let (code, before) = check_clinic_b(&a, &[]);
    assert_eq!(code, 0, "{before}");
    let (code, sensitive_before) = check_clinic_b(&a, &["mental-health"]);
    assert_eq!(code, 3, "{sensitive_before}");

    // 1. Break the file and ask for a reload: refused, with the reason; nothing changes.
    append(&federation, SYNTAX_ERROR);
    let (code, out, err) = a.cli(&["policy", "reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("previous set stays active"), "{err}");
    assert!(
        err.contains("federation.cedar"),
        "reload answer does not say why: {err}"
    );
    assert_eq!(check_clinic_b(&a, &[]), (0, before.clone()));
    assert_eq!(
        check_clinic_b(&a, &["mental-health"]),
        (3, sensitive_before.clone())
    );
    // The file-change reload also refuses it (logged), and decisions stay the same.
    assert_eventually!(
        Duration::from_secs(15),
        a.log_text().contains("policy reload refused"),
        "no refused file-change reload in the log:\n{}",
        a.log_text()
    );
    assert_eq!(check_clinic_b(&a, &[]), (0, before.clone()));
    // Real transfers are still decided by the old set.
    let sent = a.send_bundle("clinic-b", &general).await.transfer_id();
    a.wait_state(&sent, "delivered", Duration::from_secs(60))
        .await;

    // 2. A valid new set (original file restored, plus a forbid) is picked up by the
    //    file-change reload without a restart.
    std::fs::write(&federation, &original).unwrap();
    std::fs::write(policies.join("suspend.cedar"), SUSPEND_CLINIC_B).unwrap();
    let mut last: String;
    assert_eventually!(
        Duration::from_secs(15),
        {
            let (code, out) = check_clinic_b(&a, &[]);
            last = out;
            code == 3
        },
        "new policy not picked up: {last}"
    );
    assert!(last.contains("forbid-test-clinic-b-suspended"), "{last}");
    let refused = a.send_bundle("clinic-b", &general).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("clinic-b is suspended"),
        "{}",
        refused.body
    );
    // ... and by an explicit reload, which answers with success.
    std::fs::remove_file(policies.join("suspend.cedar")).unwrap();
    let (code, out, err) = a.cli(&["policy", "reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reloaded"), "{out}");
    assert_eq!(check_clinic_b(&a, &[]), (0, before));
    assert_eq!(b.inbox().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_errors_at_evaluation_denies_and_the_audit_entry_carries_the_error() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let policies = copy_policies(fed.dir.path());
    std::fs::write(policies.join("overflow.cedar"), OVERFLOW).unwrap();
    fed.use_policy_dir("hosp-a", &policies);
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");

    // Without the erroring forbid this is a permit (policy_check.rs); Cedar would skip the
    // erroring policy and allow, the gateway must deny.
    let (code, out) = check_clinic_b(&a, &[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("decision: deny"), "{out}");
    assert!(out.contains("forbid-overflowing"), "{out}");
    assert!(out.to_lowercase().contains("overflow"), "{out}");
    assert!(out.contains("evaluation errors:"), "{out}");

    let general = bundle_by_prefix("Clemente_Kreiger");
    let refused = a.send_bundle("clinic-b", &general).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused.body["policy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "forbid-overflowing"),
        "{}",
        refused.body
    );
    let decisions = a.audit_events("policy-decision").await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let d = &decisions[0];
    assert_eq!(d["outcome"], "deny");
    assert_eq!(d["patient"], patient_id(&general).unwrap().as_str());
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("evaluation errors"), "{reason}");
    assert!(reason.to_lowercase().contains("overflow"), "{reason}");
    assert!(
        d["policy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "forbid-overflowing"),
        "{d}"
    );
}
