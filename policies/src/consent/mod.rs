//! Patient consent directives: the domain type, their evaluation for one
//! disclosure, and import from FHIR R4 Consent resources.
//!
//! The gateway stores directives as opaque JSON (serde) and keeps every
//! version: revoking a directive produces a new version with `revoked_at` set,
//! it never deletes the old one.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Category, Purpose};

mod fhir;

pub use fhir::{import_fhir_consent, ImportRefusal};

/// Whether a directive allows or withholds disclosure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    Permit,
    Deny,
}

/// Which recipients a directive is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every federation member.
    AllFederation,
    /// Only the named facilities (federation facility ids).
    Facilities(Vec<String>),
}

impl Scope {
    /// Does this scope cover `facility`?
    pub fn covers(&self, facility: &str) -> bool {
        match self {
            Scope::AllFederation => true,
            Scope::Facilities(ids) => ids.iter().any(|id| id == facility),
        }
    }

    /// Does this scope name `facility` explicitly?
    pub fn names(&self, facility: &str) -> bool {
        match self {
            Scope::AllFederation => false,
            Scope::Facilities(ids) => ids.iter().any(|id| id == facility),
        }
    }
}

/// One patient consent directive.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentDirective {
    pub id: String,
    /// Patient identifier (never logged; `Debug` redacts it).
    pub patient: String,
    pub effect: Effect,
    pub scope: Scope,
    /// Purposes covered; empty means every purpose.
    pub purposes: Vec<Purpose>,
    /// Categories covered; empty means every category.
    pub categories: Vec<Category>,
    /// Unix seconds, inclusive.
    pub valid_from: Option<i64>,
    /// Unix seconds, exclusive.
    pub valid_until: Option<i64>,
    pub recorded_by: String,
    pub recorded_at: i64,
    /// Set when the patient revoked the directive (effective from that time).
    pub revoked_at: Option<i64>,
    /// Where it came from, e.g. "fhir:Consent/consent-example-notOrg".
    pub source: Option<String>,
    /// The patient's deny is "everything except emergency treatment". Recorded
    /// for the audit trail and for the security officer: break-glass (the only
    /// emergency path) lifts every patient deny under the default policy.
    pub emergency_only: bool,
}

impl fmt::Debug for ConsentDirective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsentDirective")
            .field("id", &self.id)
            .field("patient", &"<redacted>")
            .field("effect", &self.effect)
            .field("scope", &self.scope)
            .field("purposes", &self.purposes)
            .field("categories", &self.categories)
            .field("valid_from", &self.valid_from)
            .field("valid_until", &self.valid_until)
            .field("recorded_by", &self.recorded_by)
            .field("recorded_at", &self.recorded_at)
            .field("revoked_at", &self.revoked_at)
            .field("source", &self.source)
            .field("emergency_only", &self.emergency_only)
            .finish()
    }
}

impl ConsentDirective {
    /// In force at `now`: inside its validity period and not revoked.
    pub fn is_active(&self, now_unix: i64) -> bool {
        self.valid_from.is_none_or(|from| from <= now_unix)
            && self.valid_until.is_none_or(|until| now_unix < until)
            && self.revoked_at.is_none_or(|revoked| now_unix < revoked)
    }

    /// The revoked version of this directive; the caller stores it next to the
    /// old version (history is kept, nothing is deleted). Revoking twice keeps
    /// the first revocation time.
    pub fn revoked(&self, at_unix: i64) -> ConsentDirective {
        ConsentDirective {
            revoked_at: Some(self.revoked_at.unwrap_or(at_unix)),
            ..self.clone()
        }
    }

    fn covers_purpose(&self, purpose: Purpose) -> bool {
        self.purposes.is_empty() || self.purposes.contains(&purpose)
    }

    fn covers_category(&self, category: Category) -> bool {
        self.categories.is_empty() || self.categories.contains(&category)
    }
}

/// What the patient's directives say about one disclosure: the consent part
/// of the Cedar context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentState {
    /// An active deny covers the recipient, the purpose and at least one of the
    /// record's categories.
    pub deny_applies: bool,
    /// Categories of the record that an active permit naming the recipient
    /// explicitly (not an all-federation permit) allows for this purpose.
    pub permitted_categories: BTreeSet<Category>,
    /// An active permit covering the recipient lists the purpose research
    /// explicitly.
    pub research_permit: bool,
    /// Ids of the directives behind this state, for the audit record.
    pub directive_ids: Vec<String>,
}

/// Evaluates `directives` (all of one patient's directive versions) for a
/// disclosure to `counterparty` — the facility that would receive the data:
/// the peer for send/request, this node's own id for receive.
///
/// Deny beats permit: a permit never cancels an applicable deny; the policy
/// decides whether break-glass may override a deny.
pub fn evaluate(
    directives: &[ConsentDirective],
    counterparty: &str,
    purpose: Purpose,
    categories: &BTreeSet<Category>,
    now_unix: i64,
) -> ConsentState {
    let mut state = ConsentState::default();
    let mut ids = BTreeSet::new();
    for d in directives.iter().filter(|d| d.is_active(now_unix)) {
        if !d.scope.covers(counterparty) {
            continue;
        }
        match d.effect {
            Effect::Deny => {
                let hits =
                    d.covers_purpose(purpose) && categories.iter().any(|c| d.covers_category(*c));
                if hits {
                    state.deny_applies = true;
                    ids.insert(d.id.clone());
                }
            }
            Effect::Permit => {
                let mut used = false;
                // Research needs the purpose named explicitly: an "all
                // purposes" permit is not research consent.
                if purpose == Purpose::Research && d.purposes.contains(&Purpose::Research) {
                    state.research_permit = true;
                    used = true;
                }
                // Sensitive data needs the recipient named explicitly.
                if d.scope.names(counterparty) && d.covers_purpose(purpose) {
                    for c in categories.iter().filter(|c| d.covers_category(**c)) {
                        state.permitted_categories.insert(*c);
                        used = true;
                    }
                }
                if used {
                    ids.insert(d.id.clone());
                }
            }
        }
    }
    state.directive_ids = ids.into_iter().collect();
    state
}

#[cfg(test)]
mod tests;
