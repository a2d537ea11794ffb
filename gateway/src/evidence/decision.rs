//! What a receiver signs about its decision in a version 2 receipt: the outcome, the policies
//! that decided, the purpose, and the digest of the consent basis it evaluated.
//!
//! The consent basis digest is `SHA-256("healthfed/consent-basis/1\0" || postcard(basis))`
//! over the basis the receiver's policy saw (its own directives merged with the sender's
//! asserted basis): categories in their sorted order, the research permit, the directive ids
//! (the sender's prefixed `sender:`). It holds no patient identifier.

use serde::Serialize;

use gateway_envelope::ReceiverDecision;
use policies::Decision;

use crate::record::ConsentBasis;

const CONSENT_BASIS_DOMAIN: &[u8] = b"healthfed/consent-basis/1\0";

/// The encoding the digest covers (field order is the format).
#[derive(Serialize)]
struct BasisWire<'a> {
    permitted_categories: &'a [String],
    research_permit: bool,
    directive_ids: &'a [String],
}

/// The digest of a consent basis, as a version 2 receipt carries it.
pub fn consent_basis_digest(basis: &ConsentBasis) -> [u8; 32] {
    let wire = BasisWire {
        permitted_categories: &basis.permitted_categories,
        research_permit: basis.research_permit,
        directive_ids: &basis.directive_ids,
    };
    // postcard cannot fail on a struct of slices and a bool.
    let body = postcard::to_allocvec(&wire).unwrap_or_default();
    gateway_envelope::sha256(&[CONSENT_BASIS_DOMAIN, &body].concat())
}

/// The receiver's decision as its receipt binds it.
pub fn receiver_decision(
    decision: &Decision,
    purpose: &str,
    basis: &ConsentBasis,
) -> ReceiverDecision {
    ReceiverDecision {
        outcome: if decision.allowed { "permit" } else { "deny" }.to_owned(),
        policy_ids: decision.policy_ids.clone(),
        purpose: purpose.to_owned(),
        consent_basis_digest: consent_basis_digest(basis),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_every_field_of_the_basis() {
        let basis = ConsentBasis {
            permitted_categories: vec!["general".into(), "mental-health".into()],
            research_permit: false,
            directive_ids: vec!["sender:c-1".into()],
        };
        let digest = consent_basis_digest(&basis);
        assert_eq!(digest, consent_basis_digest(&basis.clone()));
        let mut other = basis.clone();
        other.research_permit = true;
        assert_ne!(consent_basis_digest(&other), digest);
        let mut other = basis.clone();
        other.permitted_categories.pop();
        assert_ne!(consent_basis_digest(&other), digest);
        let mut other = basis;
        other.directive_ids.clear();
        assert_ne!(consent_basis_digest(&other), digest);
    }
}
