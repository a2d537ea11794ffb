use std::collections::BTreeSet;

use super::*;

const NOW: i64 = 1_750_000_000;

fn directive(id: &str, effect: Effect, scope: Scope) -> ConsentDirective {
    ConsentDirective {
        id: id.to_owned(),
        patient: "patient-1".to_owned(),
        effect,
        scope,
        purposes: Vec::new(),
        categories: Vec::new(),
        valid_from: None,
        valid_until: None,
        recorded_by: "officer".to_owned(),
        recorded_at: NOW - 100,
        revoked_at: None,
        source: None,
        emergency_only: false,
    }
}

fn named(ids: &[&str]) -> Scope {
    Scope::Facilities(ids.iter().map(|s| (*s).to_owned()).collect())
}

fn cats(c: &[Category]) -> BTreeSet<Category> {
    c.iter().copied().collect()
}

#[test]
fn deny_applies_only_to_covered_recipient_purpose_and_category() {
    let mut d = directive("d1", Effect::Deny, named(&["clinic-b"]));
    d.categories = vec![Category::MentalHealth];
    d.purposes = vec![Purpose::Treatment];
    let ds = [d];
    let general = cats(&[Category::General]);
    let mh = cats(&[Category::General, Category::MentalHealth]);
    assert!(evaluate(&ds, "clinic-b", Purpose::Treatment, &mh, NOW).deny_applies);
    assert!(!evaluate(&ds, "clinic-b", Purpose::Treatment, &general, NOW).deny_applies);
    assert!(!evaluate(&ds, "clinic-c", Purpose::Treatment, &mh, NOW).deny_applies);
    assert!(!evaluate(&ds, "clinic-b", Purpose::Payment, &mh, NOW).deny_applies);
    assert_eq!(
        evaluate(&ds, "clinic-b", Purpose::Treatment, &mh, NOW).directive_ids,
        vec!["d1".to_owned()]
    );
}

#[test]
fn sensitive_permits_need_the_recipient_named() {
    let all = directive("p-all", Effect::Permit, Scope::AllFederation);
    let mut named_permit = directive("p-b", Effect::Permit, named(&["clinic-b"]));
    named_permit.categories = vec![Category::SubstanceUse];
    let record = cats(&[
        Category::General,
        Category::SubstanceUse,
        Category::MentalHealth,
    ]);

    let s = evaluate(
        std::slice::from_ref(&all),
        "clinic-b",
        Purpose::Treatment,
        &record,
        NOW,
    );
    assert!(s.permitted_categories.is_empty(), "{s:?}");

    let s = evaluate(
        &[all, named_permit],
        "clinic-b",
        Purpose::Treatment,
        &record,
        NOW,
    );
    assert_eq!(s.permitted_categories, cats(&[Category::SubstanceUse]));
    assert_eq!(s.directive_ids, vec!["p-b".to_owned()]);
}

#[test]
fn research_needs_research_named_explicitly() {
    let all_purposes = directive("p1", Effect::Permit, Scope::AllFederation);
    let mut research = directive("p2", Effect::Permit, Scope::AllFederation);
    research.purposes = vec![Purpose::Research];
    let record = cats(&[Category::General]);
    assert!(
        !evaluate(
            std::slice::from_ref(&all_purposes),
            "uni",
            Purpose::Research,
            &record,
            NOW
        )
        .research_permit
    );
    assert!(
        evaluate(
            &[all_purposes, research.clone()],
            "uni",
            Purpose::Research,
            &record,
            NOW
        )
        .research_permit
    );
    // A research permit says nothing about treatment.
    assert!(!evaluate(&[research], "uni", Purpose::Treatment, &record, NOW).research_permit);
}

#[test]
fn validity_and_revocation() {
    let mut d = directive("d", Effect::Deny, Scope::AllFederation);
    d.valid_from = Some(NOW - 10);
    d.valid_until = Some(NOW + 10);
    let record = cats(&[Category::General]);
    let applies = |d: &ConsentDirective, at: i64| {
        evaluate(
            std::slice::from_ref(d),
            "x",
            Purpose::Treatment,
            &record,
            at,
        )
        .deny_applies
    };
    assert!(applies(&d, NOW));
    assert!(applies(&d, NOW - 10));
    assert!(!applies(&d, NOW + 10), "valid_until is exclusive");
    assert!(!applies(&d, NOW - 11));

    let revoked = d.revoked(NOW + 5);
    assert!(applies(&revoked, NOW));
    assert!(!applies(&revoked, NOW + 5));
    assert_eq!(revoked.revoked(NOW + 9).revoked_at, Some(NOW + 5));
    // The old version is untouched: history is the caller's list of versions.
    assert_eq!(d.revoked_at, None);
}

#[test]
fn serde_round_trip_and_debug_redacts_patient() {
    let mut d = directive("d", Effect::Deny, named(&["clinic-b"]));
    d.patient = "Eliseo-secret".to_owned();
    d.purposes = vec![Purpose::PublicHealth];
    d.categories = vec![Category::HivSti];
    let json = serde_json::to_string(&d).unwrap_or_default();
    assert!(json.contains("\"public-health\""), "{json}");
    assert!(json.contains("\"hiv-sti\""), "{json}");
    assert!(json.contains("\"facilities\""), "{json}");
    let back: Result<ConsentDirective, _> = serde_json::from_str(&json);
    assert_eq!(back.ok(), Some(d.clone()));
    let debug = format!("{d:?}");
    assert!(!debug.contains("Eliseo"), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
}
