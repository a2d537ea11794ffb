//! Authorization scenarios against the shipped federation policies, using the
//! shared Synthea bundles (tests/testdata/fhir/bundles, see MANIFEST.md).

use std::collections::BTreeSet;
use std::path::Path;

use policies::classify::classify_fhir_bundle;
use policies::consent::{self, ConsentDirective, Effect, Scope};
use policies::{AccessRequest, Action, Category, Decision, FacilityInfo, PolicyEngine, Purpose};

const NOW: i64 = 1_764_000_000;
const BUNDLES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/testdata/fhir/bundles/"
);

fn engine() -> PolicyEngine {
    match PolicyEngine::embedded_defaults() {
        Ok(engine) => engine,
        Err(e) => panic!("embedded defaults must load: {e}"),
    }
}

fn facility(id: &str, kind: &str) -> FacilityInfo {
    FacilityInfo {
        id: id.to_owned(),
        kind: kind.to_owned(),
        active: true,
    }
}

fn bundle_categories(file: &str) -> BTreeSet<Category> {
    let bytes =
        std::fs::read(format!("{BUNDLES}{file}")).unwrap_or_else(|e| panic!("read {file}: {e}"));
    match classify_fhir_bundle(&bytes) {
        Ok(facts) => facts.categories,
        Err(e) => panic!("classify {file}: {e}"),
    }
}

/// A treatment send from hospital-a to clinic-b, consent evaluated from `directives`.
fn send(
    categories: BTreeSet<Category>,
    purpose: Purpose,
    to: FacilityInfo,
    directives: &[ConsentDirective],
) -> AccessRequest {
    let consent = consent::evaluate(directives, &to.id, purpose, &categories, NOW);
    AccessRequest {
        action: Action::Send,
        counterparty: to,
        local: facility("hospital-a", "hospital"),
        clinician_role: Some("physician".to_owned()),
        patient: "patient-secret-42".to_owned(),
        categories,
        content_type: "application/fhir+json".to_owned(),
        purpose,
        break_glass: false,
        consent,
        now_unix: NOW,
    }
}

fn permit_naming(facility: &str) -> ConsentDirective {
    ConsentDirective {
        id: format!("permit-{facility}"),
        patient: "patient-secret-42".to_owned(),
        effect: Effect::Permit,
        scope: Scope::Facilities(vec![facility.to_owned()]),
        purposes: vec![Purpose::Treatment],
        categories: Vec::new(),
        valid_from: None,
        valid_until: None,
        recorded_by: "registrar".to_owned(),
        recorded_at: NOW - 3600,
        revoked_at: None,
        source: None,
        emergency_only: false,
    }
}

fn deny_all() -> ConsentDirective {
    ConsentDirective {
        id: "deny-all".to_owned(),
        effect: Effect::Deny,
        scope: Scope::AllFederation,
        purposes: Vec::new(),
        ..permit_naming("x")
    }
}

fn assert_denied_by(decision: &Decision, policy: &str) {
    assert!(!decision.allowed, "{decision:?}");
    assert!(
        decision.policy_ids.iter().any(|id| id == policy),
        "expected {policy} in {decision:?}"
    );
    assert!(decision.errors.is_empty(), "{decision:?}");
    assert!(!decision.reason.contains("secret"), "{decision:?}");
}

fn assert_allowed_by(decision: &Decision, policy: &str) {
    assert!(decision.allowed, "{decision:?}");
    assert_eq!(decision.policy_ids, vec![policy.to_owned()], "{decision:?}");
}

#[test]
fn shipped_policies_load_and_are_named() {
    let ids = engine().policy_ids();
    assert_eq!(
        ids,
        [
            "permit-treatment-between-members",
            "permit-payment-to-payers",
            "permit-research-with-consent",
            "permit-break-glass-emergency",
            "forbid-inactive-facility",
            "forbid-payment-to-non-payer",
            "forbid-payment-sensitive",
            "forbid-sensitive-without-consent",
            "forbid-patient-deny",
            "forbid-research-without-consent",
            "forbid-break-glass-unauthorized-role",
        ]
    );
    // The files on disk are the embedded ones.
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/cedar"));
    let loaded = PolicyEngine::load_dir(dir).map(|e| e.policy_ids());
    assert_eq!(loaded.ok(), Some(ids));
}

#[test]
fn sensitive_bundles_need_consent_naming_the_recipient() {
    let cases = [
        (
            "Eliseo_Cummings_55c373ad-af55-46ed-8f69-9c7a40a89d46.json",
            &[Category::MentalHealth, Category::SubstanceUse][..],
        ),
        (
            "Gilberto_Orosco_6ece62f3-283c-4387-aa9b-affba8ebf4c3.json",
            &[Category::MentalHealth, Category::SubstanceUse][..],
        ),
        (
            "Fletcher_Hyatt_fe0562b5-f517-4951-8366-32fdab088930.json",
            &[Category::SubstanceUse][..],
        ),
        (
            "Chet_Thompson_eda17701-070d-4fae-9f7d-c8cd6263b63a.json",
            &[
                Category::HivSti,
                Category::ReproductiveHealth,
                Category::AbuseViolence,
            ][..],
        ),
        (
            "Laurie_McCullough_8a417ce8-b525-42ab-a2be-651291f73c8c.json",
            &[Category::ReproductiveHealth, Category::MentalHealth][..],
        ),
    ];
    let engine = engine();
    let clinic = facility("clinic-b", "clinic");
    for (file, expected) in cases {
        let categories = bundle_categories(file);
        let mut want: BTreeSet<Category> = expected.iter().copied().collect();
        want.insert(Category::General);
        assert_eq!(categories, want, "{file}");

        let no_consent = engine.authorize(&send(
            categories.clone(),
            Purpose::Treatment,
            clinic.clone(),
            &[],
        ));
        assert_denied_by(&no_consent, "forbid-sensitive-without-consent");
        assert_eq!(
            no_consent.reason,
            "no consent on file naming the recipient for these data categories"
        );

        let other = [permit_naming("clinic-c")];
        let wrong_facility = engine.authorize(&send(
            categories.clone(),
            Purpose::Treatment,
            clinic.clone(),
            &other,
        ));
        assert_denied_by(&wrong_facility, "forbid-sensitive-without-consent");

        let named = [permit_naming("clinic-b")];
        let with_consent = engine.authorize(&send(
            categories,
            Purpose::Treatment,
            clinic.clone(),
            &named,
        ));
        assert_allowed_by(&with_consent, "permit-treatment-between-members");
    }
}

#[test]
fn consent_must_cover_every_sensitive_category() {
    let engine = engine();
    let categories = bundle_categories("Eliseo_Cummings_55c373ad-af55-46ed-8f69-9c7a40a89d46.json");
    let mut only_mh = permit_naming("clinic-b");
    only_mh.categories = vec![Category::MentalHealth];
    let d = engine.authorize(&send(
        categories,
        Purpose::Treatment,
        facility("clinic-b", "clinic"),
        &[only_mh],
    ));
    assert_denied_by(&d, "forbid-sensitive-without-consent");
}

#[test]
fn general_treatment_between_members_is_implied_consent() {
    let engine = engine();
    let categories =
        bundle_categories("Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json");
    assert_eq!(categories, BTreeSet::from([Category::General]));
    let d = engine.authorize(&send(
        categories.clone(),
        Purpose::Treatment,
        facility("clinic-b", "clinic"),
        &[],
    ));
    assert_allowed_by(&d, "permit-treatment-between-members");

    // ... unless the patient denied it.
    let d = engine.authorize(&send(
        categories.clone(),
        Purpose::Treatment,
        facility("clinic-b", "clinic"),
        &[deny_all()],
    ));
    assert_denied_by(&d, "forbid-patient-deny");
    assert_eq!(d.reason, "no consent on file for this purpose");

    // A patient's deny wins over the patient's own permit too.
    let d = engine.authorize(&send(
        categories.clone(),
        Purpose::Treatment,
        facility("clinic-b", "clinic"),
        &[deny_all(), permit_naming("clinic-b")],
    ));
    assert_denied_by(&d, "forbid-patient-deny");

    // ... and to inactive members nothing goes.
    let mut inactive = facility("clinic-b", "clinic");
    inactive.active = false;
    let d = engine.authorize(&send(categories, Purpose::Treatment, inactive, &[]));
    assert_denied_by(&d, "forbid-inactive-facility");
}

#[test]
fn payment_only_to_payers_and_never_sensitive() {
    let engine = engine();
    let general = BTreeSet::from([Category::General]);
    let d = engine.authorize(&send(
        general.clone(),
        Purpose::Payment,
        facility("clinic-b", "clinic"),
        &[],
    ));
    assert_denied_by(&d, "forbid-payment-to-non-payer");
    assert_eq!(
        d.reason,
        "purpose payment is only allowed to payer facilities"
    );

    let d = engine.authorize(&send(
        general,
        Purpose::Payment,
        facility("insurer-x", "payer"),
        &[],
    ));
    assert_allowed_by(&d, "permit-payment-to-payers");

    // Even with consent naming the payer, sensitive data is never sent for payment.
    let sensitive = bundle_categories("Fletcher_Hyatt_fe0562b5-f517-4951-8366-32fdab088930.json");
    let mut consent = permit_naming("insurer-x");
    consent.purposes = vec![Purpose::Payment];
    let d = engine.authorize(&send(
        sensitive,
        Purpose::Payment,
        facility("insurer-x", "payer"),
        &[consent],
    ));
    assert_denied_by(&d, "forbid-payment-sensitive");
}

#[test]
fn research_needs_explicit_research_consent() {
    let engine = engine();
    let general = BTreeSet::from([Category::General]);
    let uni = facility("university-lab", "lab");
    let d = engine.authorize(&send(general.clone(), Purpose::Research, uni.clone(), &[]));
    assert_denied_by(&d, "forbid-research-without-consent");
    assert_eq!(d.reason, "no consent on file for this purpose");

    // An all-purposes permit is not research consent.
    let mut all_purposes = permit_naming("university-lab");
    all_purposes.purposes = Vec::new();
    let d = engine.authorize(&send(
        general.clone(),
        Purpose::Research,
        uni.clone(),
        &[all_purposes],
    ));
    assert_denied_by(&d, "forbid-research-without-consent");

    let mut research = permit_naming("university-lab");
    research.scope = Scope::AllFederation;
    research.purposes = vec![Purpose::Research];
    let d = engine.authorize(&send(general, Purpose::Research, uni, &[research]));
    assert_allowed_by(&d, "permit-research-with-consent");
}

#[test]
fn purposes_without_a_permit_are_default_denied() {
    let engine = engine();
    let d = engine.authorize(&send(
        BTreeSet::from([Category::General]),
        Purpose::Operations,
        facility("clinic-b", "clinic"),
        &[],
    ));
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty(), "{d:?}");
    assert_eq!(
        d.reason,
        "no policy permits purpose operations for this request"
    );
}

fn break_glass(role: Option<&str>, directives: &[ConsentDirective]) -> AccessRequest {
    let categories = bundle_categories("Chet_Thompson_eda17701-070d-4fae-9f7d-c8cd6263b63a.json");
    let mut req = send(
        categories,
        Purpose::Treatment,
        facility("er-hospital", "hospital"),
        directives,
    );
    req.action = Action::BreakGlass;
    req.break_glass = true;
    req.clinician_role = role.map(str::to_owned);
    req
}

#[test]
fn break_glass_for_emergency_roles_only() {
    let engine = engine();
    // Sensitive data, no consent, and a patient deny: break-glass still wins.
    let d = engine.authorize(&break_glass(Some("emergency-physician"), &[deny_all()]));
    assert_allowed_by(&d, "permit-break-glass-emergency");
    let d = engine.authorize(&break_glass(Some("emergency-nurse"), &[]));
    assert_allowed_by(&d, "permit-break-glass-emergency");

    for role in [Some("nurse"), Some("physician"), Some("billing"), None] {
        let d = engine.authorize(&break_glass(role, &[]));
        assert_denied_by(&d, "forbid-break-glass-unauthorized-role");
        assert_eq!(
            d.reason,
            "break-glass is not allowed for this clinician role"
        );
    }

    // The flag on an ordinary request is held to the same rule.
    let mut flagged = break_glass(Some("nurse"), &[]);
    flagged.action = Action::Request;
    assert_denied_by(
        &engine.authorize(&flagged),
        "forbid-break-glass-unauthorized-role",
    );

    // Break-glass does not reach inactive facilities or non-treatment purposes.
    let mut inactive = break_glass(Some("emergency-physician"), &[]);
    inactive.counterparty.active = false;
    assert_denied_by(&engine.authorize(&inactive), "forbid-inactive-facility");
    let mut payment = break_glass(Some("emergency-physician"), &[]);
    payment.purpose = Purpose::Payment;
    assert_denied_by(&engine.authorize(&payment), "forbid-payment-to-non-payer");
}

#[test]
fn receiver_applies_the_same_rules_from_its_side() {
    let engine = engine();
    let local = facility("clinic-b", "clinic");
    let sender = facility("hospital-a", "hospital");
    let receive = |categories: BTreeSet<Category>,
                   purpose: Purpose,
                   from: FacilityInfo,
                   directives: &[ConsentDirective]| {
        // On receive, consent is evaluated for the receiver: this node.
        let consent = consent::evaluate(directives, &local.id, purpose, &categories, NOW);
        AccessRequest {
            action: Action::Receive,
            counterparty: from,
            local: local.clone(),
            clinician_role: None,
            patient: "patient-secret-42".to_owned(),
            categories,
            content_type: "application/fhir+json".to_owned(),
            purpose,
            break_glass: false,
            consent,
            now_unix: NOW,
        }
    };
    let general = BTreeSet::from([Category::General]);
    assert_allowed_by(
        &engine.authorize(&receive(
            general.clone(),
            Purpose::Treatment,
            sender.clone(),
            &[],
        )),
        "permit-treatment-between-members",
    );
    let mut gone = sender.clone();
    gone.active = false;
    assert_denied_by(
        &engine.authorize(&receive(general.clone(), Purpose::Treatment, gone, &[])),
        "forbid-inactive-facility",
    );
    let sensitive = bundle_categories("Gilberto_Orosco_6ece62f3-283c-4387-aa9b-affba8ebf4c3.json");
    assert_denied_by(
        &engine.authorize(&receive(
            sensitive.clone(),
            Purpose::Treatment,
            sender.clone(),
            &[],
        )),
        "forbid-sensitive-without-consent",
    );
    assert_allowed_by(
        &engine.authorize(&receive(
            sensitive,
            Purpose::Treatment,
            sender.clone(),
            &[permit_naming("clinic-b")],
        )),
        "permit-treatment-between-members",
    );
    // This node is a clinic, not a payer: it refuses records sent for payment.
    assert_denied_by(
        &engine.authorize(&receive(general, Purpose::Payment, sender, &[])),
        "forbid-payment-to-non-payer",
    );
}

#[test]
fn malformed_requests_are_denied_with_an_error() {
    let engine = engine();
    let d = engine.authorize(&send(
        BTreeSet::new(),
        Purpose::Treatment,
        facility("clinic-b", "clinic"),
        &[],
    ));
    assert!(!d.allowed);
    assert_eq!(d.reason, "policy evaluation error (denied)");
    assert!(!d.errors.is_empty());

    // Peer claims this node's id with different attributes.
    let d = engine.authorize(&send(
        BTreeSet::from([Category::General]),
        Purpose::Treatment,
        facility("hospital-a", "payer"),
        &[],
    ));
    assert!(!d.allowed);
    assert!(!d.errors.is_empty(), "{d:?}");
}

fn write_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    for (name, text) in files {
        if let Err(e) = std::fs::write(dir.path().join(name), text) {
            panic!("write {name}: {e}");
        }
    }
    dir
}

fn load_error(files: &[(&str, &str)]) -> String {
    let dir = write_dir(files);
    match PolicyEngine::load_dir(dir.path()) {
        Ok(_) => panic!("policy set {files:?} must be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_policy_files_are_refused_naming_file_and_problem() {
    let schema = policies::engine::DEFAULT_SCHEMA;
    // Typo in an attribute: only strict validation against the schema catches it.
    let err = load_error(&[
        ("schema.cedarschema", schema),
        ("federation.cedar", policies::engine::DEFAULT_POLICIES),
        (
            "local.cedar",
            "@id(\"typo\")\nforbid (principal, action, resource) when { principal.actve == false };",
        ),
    ]);
    assert!(err.contains("local.cedar"), "{err}");
    assert!(err.contains("typo"), "{err}");
    assert!(err.contains("actve"), "{err}");

    // Type error (string compared with a number) also fails strict validation.
    let err = load_error(&[
        ("schema.cedarschema", schema),
        ("x.cedar", "@id(\"bad-type\")\npermit (principal, action, resource) when { context.purpose == 3 };"),
    ]);
    assert!(err.contains("x.cedar") && err.contains("bad-type"), "{err}");

    let err = load_error(&[
        ("schema.cedarschema", schema),
        ("broken.cedar", "permit (principal, action"),
    ]);
    assert!(err.contains("broken.cedar"), "{err}");

    let err = load_error(&[("federation.cedar", policies::engine::DEFAULT_POLICIES)]);
    assert!(err.contains("schema.cedarschema"), "{err}");

    let err = load_error(&[
        ("schema.cedarschema", "entity Facility = {"),
        ("a.cedar", ""),
    ]);
    assert!(
        err.contains("schema file") && err.contains("schema.cedarschema"),
        "{err}"
    );

    let dup = "@id(\"permit-treatment-between-members\")\nforbid (principal, action, resource);";
    let err = load_error(&[
        ("schema.cedarschema", schema),
        ("a.cedar", policies::engine::DEFAULT_POLICIES),
        ("b.cedar", dup),
    ]);
    assert!(err.contains("b.cedar") && err.contains("a.cedar"), "{err}");
}

#[test]
fn a_forbid_that_errors_at_evaluation_makes_the_decision_deny() {
    // Passes strict validation, but overflows at run time: Cedar would skip
    // this forbid and allow; the engine must deny and say why.
    let overflow = "// Always errors: integer overflow.\n@id(\"forbid-overflowing\")\n@reason(\"never shown\")\nforbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };";
    let dir = write_dir(&[
        ("schema.cedarschema", policies::engine::DEFAULT_SCHEMA),
        ("federation.cedar", policies::engine::DEFAULT_POLICIES),
        ("zz-erroring.cedar", overflow),
    ]);
    let engine = match PolicyEngine::load_dir(dir.path()) {
        Ok(engine) => engine,
        Err(e) => panic!("overflowing policy must pass validation: {e}"),
    };
    let req = send(
        BTreeSet::from([Category::General]),
        Purpose::Treatment,
        facility("clinic-b", "clinic"),
        &[],
    );
    // Control: the shipped policies alone allow this request.
    assert!(self::engine().authorize(&req).allowed);

    let d = engine.authorize(&req);
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, vec!["forbid-overflowing".to_owned()]);
    assert_eq!(d.reason, "policy evaluation error (denied)");
    assert_eq!(d.errors.len(), 1, "{d:?}");
    assert!(
        d.errors
            .iter()
            .all(|e| e.contains("forbid-overflowing") && e.contains("overflow")),
        "{d:?}"
    );
    assert!(d.errors.iter().all(|e| !e.contains("secret")), "{d:?}");
}

#[test]
fn engine_is_cheap_to_share_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<PolicyEngine>();
    let engine = engine();
    let copy = engine.clone();
    assert_eq!(engine.policy_ids(), copy.policy_ids());
}

#[test]
fn request_debug_redacts_the_patient() {
    let req = send(
        BTreeSet::from([Category::General]),
        Purpose::Treatment,
        facility("clinic-b", "clinic"),
        &[],
    );
    let text = format!("{req:?}");
    assert!(!text.contains("patient-secret-42"), "{text}");
}

/// The two categories added for issue 13 behave like every other sensitive one: never for
/// payment, only with consent naming the recipient for that category, or break-glass.
#[test]
fn abuse_violence_and_unclassified_need_consent_naming_the_recipient() {
    let engine = engine();
    for category in [Category::AbuseViolence, Category::Unclassified] {
        assert!(category.is_sensitive());
        let categories = BTreeSet::from([Category::General, category]);
        let to = || facility("clinic-b", "clinic");

        let d = engine.authorize(&send(categories.clone(), Purpose::Treatment, to(), &[]));
        assert_denied_by(&d, "forbid-sensitive-without-consent");

        // An all-federation permit does not name the recipient.
        let mut everyone = permit_naming("clinic-b");
        everyone.scope = Scope::AllFederation;
        let d = engine.authorize(&send(
            categories.clone(),
            Purpose::Treatment,
            to(),
            &[everyone],
        ));
        assert_denied_by(&d, "forbid-sensitive-without-consent");

        // Consent naming the recipient for another sensitive category is not enough.
        let mut other = permit_naming("clinic-b");
        other.categories = vec![Category::MentalHealth];
        let d = engine.authorize(&send(
            categories.clone(),
            Purpose::Treatment,
            to(),
            &[other],
        ));
        assert_denied_by(&d, "forbid-sensitive-without-consent");

        let mut named = permit_naming("clinic-b");
        named.categories = vec![category];
        let d = engine.authorize(&send(
            categories.clone(),
            Purpose::Treatment,
            to(),
            &[named],
        ));
        assert_allowed_by(&d, "permit-treatment-between-members");

        // Never for payment, not even with the payer named for this purpose and category.
        let mut payer_consent = permit_naming("insurer-x");
        payer_consent.purposes = vec![Purpose::Payment];
        payer_consent.categories = vec![category];
        let d = engine.authorize(&send(
            categories.clone(),
            Purpose::Payment,
            facility("insurer-x", "payer"),
            &[payer_consent],
        ));
        assert_denied_by(&d, "forbid-payment-sensitive");

        // Break-glass by an emergency role lifts the consent requirement.
        let mut emergency = send(categories, Purpose::Treatment, to(), &[]);
        emergency.break_glass = true;
        emergency.clinician_role = Some("emergency-physician".to_owned());
        let d = engine.authorize(&emergency);
        assert!(d.allowed, "{category}: {d:?}");
    }
}
