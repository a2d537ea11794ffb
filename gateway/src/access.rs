//! Everything the gateway asks the policy engine: it gathers the facts (directory, consent
//! directives in the store), asks `policies`, and hands back the decision for the audit log.
//! The policy set it asks is `state::policy::PolicyHandle`.

use std::collections::BTreeSet;

use policies::consent::{evaluate, ConsentDirective, ConsentState};
use policies::{AccessRequest, Action, Category, Decision, FacilityInfo, Purpose};

use crate::record::ConsentBasis;
use crate::state::NodeState;
use crate::trust::{now_unix, Peer};

/// One authorization question, as the transfer paths see it.
pub struct Question<'a> {
    pub action: Action,
    pub counterparty: &'a Peer,
    pub patient: &'a str,
    pub categories: &'a BTreeSet<Category>,
    pub content_type: &'a str,
    pub purpose: Purpose,
    pub clinician_role: Option<&'a str>,
    pub break_glass: bool,
    /// For receive: the consent the sender relied on, carried in the envelope.
    pub asserted: Option<&'a ConsentBasis>,
}

/// Asks the policy engine, with the patient's consent directives as context, and returns the
/// consent state it used (a sender passes it on in the envelope). A store failure is a Deny
/// (fail closed).
pub fn decide(state: &NodeState, q: &Question<'_>) -> (Decision, ConsentState) {
    let answer = decide_uncounted(state, q);
    state.metrics.decision(q.action, &answer.0);
    answer
}

fn decide_uncounted(state: &NodeState, q: &Question<'_>) -> (Decision, ConsentState) {
    let directives = match consent_directives(state, q.patient) {
        Ok(d) => d,
        Err(e) => {
            let decision = Decision {
                allowed: false,
                policy_ids: Vec::new(),
                errors: vec![e.clone()],
                reason: "consent directives could not be read (denied)".to_owned(),
            };
            return (decision, ConsentState::default());
        }
    };
    let now = now_unix();
    // Consent is about who ends up holding the data: the peer when we send or answer a
    // request, this node when we receive.
    let recipient = match q.action {
        Action::Receive => state.me().as_str(),
        _ => q.counterparty.id.as_str(),
    };
    let mut consent = evaluate(&directives, recipient, q.purpose, q.categories, now);
    if let Some(basis) = q.asserted {
        merge_asserted(&mut consent, basis, q.categories);
    }
    let trust = state.trust();
    let local = trust.peer(state.me());
    let request = AccessRequest {
        action: q.action,
        counterparty: facility_info(q.counterparty),
        local: local
            .as_ref()
            .map(facility_info)
            .unwrap_or_else(|| FacilityInfo {
                id: state.me().to_string(),
                kind: "hospital".to_owned(),
                active: false,
            }),
        clinician_role: q.clinician_role.map(str::to_owned),
        patient: q.patient.to_owned(),
        categories: q.categories.clone(),
        content_type: q.content_type.to_owned(),
        purpose: q.purpose,
        break_glass: q.break_glass,
        consent: consent.clone(),
        now_unix: now,
    };
    (state.policy.engine().authorize(&request), consent)
}

/// The sender's consent counts for the categories this record actually has; a local deny
/// stays in force.
fn merge_asserted(
    consent: &mut ConsentState,
    basis: &ConsentBasis,
    categories: &BTreeSet<Category>,
) {
    for c in &basis.permitted_categories {
        if let Ok(c) = c.parse::<Category>() {
            if categories.contains(&c) {
                consent.permitted_categories.insert(c);
            }
        }
    }
    consent.research_permit |= basis.research_permit;
    consent
        .directive_ids
        .extend(basis.directive_ids.iter().map(|id| format!("sender:{id}")));
}

pub fn basis_of(consent: &ConsentState) -> ConsentBasis {
    ConsentBasis {
        permitted_categories: consent
            .permitted_categories
            .iter()
            .map(ToString::to_string)
            .collect(),
        research_permit: consent.research_permit,
        directive_ids: consent.directive_ids.clone(),
    }
}

fn facility_info(peer: &Peer) -> FacilityInfo {
    FacilityInfo {
        id: peer.id.to_string(),
        kind: peer.kind_name(),
        active: peer.active,
    }
}

pub fn consent_directives(
    state: &NodeState,
    patient: &str,
) -> Result<Vec<ConsentDirective>, String> {
    let raw = state
        .store
        .consent_list(patient)
        .map_err(|e| format!("consent store: {e}"))?;
    raw.iter()
        .map(|(id, bytes)| {
            serde_json::from_slice::<ConsentDirective>(bytes)
                .map_err(|_| format!("consent directive {id} is not readable"))
        })
        .collect()
}
