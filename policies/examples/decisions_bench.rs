//! Authorization throughput with the shipped federation policies.
//!
//! `cargo run --release -p policies --example decisions_bench [-- <seconds>]`
//! prints one JSON object on stdout, e.g.
//! `{"bench":"policies.decisions","policies":11,"decisions":123456,"seconds":2.0,
//!   "decisions_per_sec":61728.0,"allowed":...,"denied":...,"errors":0}`.
//! Each decision includes consent evaluation and building the Cedar request,
//! as the gateway does per transfer.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use policies::consent::{self, ConsentDirective, Effect, Scope};
use policies::{AccessRequest, Action, Category, FacilityInfo, PolicyEngine, Purpose};

const NOW: i64 = 1_764_000_000;

fn facility(id: &str, kind: &str) -> FacilityInfo {
    FacilityInfo {
        id: id.to_owned(),
        kind: kind.to_owned(),
        active: true,
    }
}

/// A mix of allowed and denied requests over every action and policy.
/// (action, purpose, record categories, peer, clinician role)
type Scenario = (
    Action,
    Purpose,
    BTreeSet<Category>,
    FacilityInfo,
    Option<&'static str>,
);

fn scenarios() -> Vec<Scenario> {
    let general = BTreeSet::from([Category::General]);
    let sensitive = BTreeSet::from([
        Category::General,
        Category::MentalHealth,
        Category::SubstanceUse,
    ]);
    vec![
        (
            Action::Send,
            Purpose::Treatment,
            general.clone(),
            facility("clinic-b", "clinic"),
            Some("physician"),
        ),
        (
            Action::Send,
            Purpose::Treatment,
            sensitive.clone(),
            facility("clinic-b", "clinic"),
            Some("physician"),
        ),
        (
            Action::Send,
            Purpose::Treatment,
            sensitive.clone(),
            facility("clinic-c", "clinic"),
            Some("physician"),
        ),
        (
            Action::Request,
            Purpose::Payment,
            general.clone(),
            facility("insurer-x", "payer"),
            Some("billing"),
        ),
        (
            Action::Request,
            Purpose::Payment,
            general.clone(),
            facility("clinic-b", "clinic"),
            Some("billing"),
        ),
        (
            Action::Receive,
            Purpose::Treatment,
            sensitive.clone(),
            facility("hospital-c", "hospital"),
            None,
        ),
        (
            Action::Send,
            Purpose::Research,
            general,
            facility("university-lab", "lab"),
            None,
        ),
        (
            Action::BreakGlass,
            Purpose::Treatment,
            sensitive.clone(),
            facility("er-1", "hospital"),
            Some("emergency-physician"),
        ),
        (
            Action::BreakGlass,
            Purpose::Treatment,
            sensitive,
            facility("er-1", "hospital"),
            Some("nurse"),
        ),
    ]
}

fn main() -> ExitCode {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let engine = match PolicyEngine::embedded_defaults() {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("decisions_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let directives = vec![ConsentDirective {
        id: "permit-clinic-b".to_owned(),
        patient: "bench-patient".to_owned(),
        effect: Effect::Permit,
        scope: Scope::Facilities(vec!["clinic-b".to_owned()]),
        purposes: vec![Purpose::Treatment],
        categories: Vec::new(),
        valid_from: None,
        valid_until: None,
        recorded_by: "bench".to_owned(),
        recorded_at: NOW - 10,
        revoked_at: None,
        source: None,
        emergency_only: false,
    }];
    let local = facility("hospital-a", "hospital");
    let scenarios = scenarios();

    let (mut decisions, mut allowed, mut errors) = (0u64, 0u64, 0u64);
    let budget = Duration::from_secs_f64(seconds.max(0.1));
    let start = Instant::now();
    while start.elapsed() < budget {
        for (action, purpose, categories, peer, role) in &scenarios {
            let recipient = if *action == Action::Receive {
                &local.id
            } else {
                &peer.id
            };
            let consent = consent::evaluate(&directives, recipient, *purpose, categories, NOW);
            let req = AccessRequest {
                action: *action,
                counterparty: peer.clone(),
                local: local.clone(),
                clinician_role: role.map(str::to_owned),
                patient: "bench-patient".to_owned(),
                categories: categories.clone(),
                content_type: "application/fhir+json".to_owned(),
                purpose: *purpose,
                break_glass: *action == Action::BreakGlass,
                consent,
                now_unix: NOW,
            };
            let d = engine.authorize(&req);
            decisions += 1;
            allowed += u64::from(d.allowed);
            errors += u64::from(!d.errors.is_empty());
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "bench": "policies.decisions",
        "policies": engine.policy_ids().len(),
        "scenarios": scenarios.len(),
        "decisions": decisions,
        "seconds": elapsed,
        "decisions_per_sec": decisions as f64 / elapsed,
        "allowed": allowed,
        "denied": decisions - allowed,
        "errors": errors,
    });
    println!("{out}");
    if errors > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
