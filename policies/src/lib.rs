//! Consent and access policy engine for the healthfed gateway.
//!
//! Pure library: it knows nothing of HTTP, TLS, storage or async. The gateway
//! asks [`PolicyEngine::authorize`] about every outbound send, inbound envelope
//! and incoming pull request, and writes the returned [`Decision`] to its audit
//! log.
//!
//! - [`engine`]: Cedar policies + schema, strict validation, fail-closed
//!   authorization.
//! - [`consent`]: patient consent directives, their evaluation, import from
//!   FHIR R4 Consent.
//! - [`classify`]: data-category classification of FHIR bundles from the codes
//!   they contain (table in `data/category-codes.tsv`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod classify;
pub mod consent;
pub mod engine;

pub use consent::ConsentState;
pub use engine::{AccessRequest, Decision, FacilityInfo, PolicyEngine, PolicyError};

/// A data category of a record. Every category except [`Category::General`] is
/// sensitive: it needs explicit patient consent naming the recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    HivSti,
    MentalHealth,
    SubstanceUse,
    ReproductiveHealth,
    Genetic,
    /// Sexual assault, abuse or domestic violence (HL7 v3 ActCode `SDV`).
    AbuseViolence,
    /// The gateway could not classify the content (a PDF, an image, a DICOM
    /// object, free text, or a record its source labels restricted without
    /// saying why). Treated like sensitive data: it may hold anything.
    Unclassified,
    General,
}

impl Category {
    /// Every category, in a stable order.
    pub const ALL: [Category; 8] = [
        Category::HivSti,
        Category::MentalHealth,
        Category::SubstanceUse,
        Category::ReproductiveHealth,
        Category::Genetic,
        Category::AbuseViolence,
        Category::Unclassified,
        Category::General,
    ];

    /// The name used in policies, directives and the code table.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::HivSti => "hiv-sti",
            Category::MentalHealth => "mental-health",
            Category::SubstanceUse => "substance-use",
            Category::ReproductiveHealth => "reproductive-health",
            Category::Genetic => "genetic",
            Category::AbuseViolence => "abuse-violence",
            Category::Unclassified => "unclassified",
            Category::General => "general",
        }
    }

    /// Sensitive categories need explicit consent naming the recipient.
    pub fn is_sensitive(self) -> bool {
        self != Category::General
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the known categories, purposes or actions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    kind: &'static str,
    name: String,
}

impl UnknownName {
    fn new(kind: &'static str, name: &str) -> Self {
        // Names are short vocabulary words; cap the echo so a hostile input
        // cannot blow up an error message.
        let name: String = name.chars().take(40).collect();
        UnknownName { kind, name }
    }
}

impl FromStr for Category {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownName::new("category", s))
    }
}

/// Purpose of use of a disclosure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    Treatment,
    Payment,
    Operations,
    Research,
    PublicHealth,
}

impl Purpose {
    /// Every purpose, in a stable order.
    pub const ALL: [Purpose; 5] = [
        Purpose::Treatment,
        Purpose::Payment,
        Purpose::Operations,
        Purpose::Research,
        Purpose::PublicHealth,
    ];

    /// The name used in policies and directives.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Treatment => "treatment",
            Purpose::Payment => "payment",
            Purpose::Operations => "operations",
            Purpose::Research => "research",
            Purpose::PublicHealth => "public-health",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Purpose {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Purpose::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownName::new("purpose", s))
    }
}

/// What the gateway is about to do with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Push a record to a peer.
    Send,
    /// Accept a record pushed by a peer.
    Receive,
    /// Answer a peer's pull request.
    Request,
    /// Answer a peer's emergency (break-glass) pull request.
    BreakGlass,
}

impl Action {
    /// The Cedar action id (`Action::"<id>"`).
    pub fn cedar_id(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Receive => "receive",
            Action::Request => "request",
            Action::BreakGlass => "breakGlass",
        }
    }

    /// The name used in audit records and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Receive => "receive",
            Action::Request => "request",
            Action::BreakGlass => "break-glass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Action::Send,
            Action::Receive,
            Action::Request,
            Action::BreakGlass,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| UnknownName::new("action", s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Category::ALL {
            assert_eq!(c.to_string().parse::<Category>(), Ok(c));
            assert_eq!(
                serde_json::to_string(&c).ok(),
                Some(format!("\"{}\"", c.as_str()))
            );
        }
        for p in Purpose::ALL {
            assert_eq!(p.to_string().parse::<Purpose>(), Ok(p));
            assert_eq!(
                serde_json::to_string(&p).ok(),
                Some(format!("\"{}\"", p.as_str()))
            );
        }
        assert_eq!("break-glass".parse::<Action>(), Ok(Action::BreakGlass));
        assert!("hiv".parse::<Category>().is_err());
        assert!("marketing".parse::<Purpose>().is_err());
    }

    #[test]
    fn only_general_is_not_sensitive() {
        let sensitive: Vec<_> = Category::ALL.iter().filter(|c| c.is_sensitive()).collect();
        assert_eq!(sensitive.len(), 7);
        assert!(!Category::General.is_sensitive());
        assert_eq!(Purpose::PublicHealth.to_string(), "public-health");
    }
}
