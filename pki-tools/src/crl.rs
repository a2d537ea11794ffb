//! Verifying a published CRL before a node uses it: issued by the federation CA, signed by the
//! CA's key (ECDSA P-256 with SHA-256, checked by ring as the directory signature is), and
//! carrying the `nextUpdate` that says until when it is fresh.
//!
//! rustls/webpki check a CRL's signature only when they consult it during a handshake, so a
//! CRL with a bad signature was accepted at load and then made every handshake fail; checking
//! it here lets a node refuse it and keep the CRL it has.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use x509_parser::oid_registry::asn1_rs::oid;
use x509_parser::prelude::{CertificateRevocationList, FromDer};

use crate::cert;

/// What a verified CRL says about its own freshness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// The cRLNumber extension, when present (every CRL `pki publish` writes has one).
    pub number: Option<u64>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds: the CRL is stale from this instant on.
    pub next_update: i64,
}

/// Why a CRL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrlError {
    #[error("not a valid X.509 CRL")]
    Malformed,
    #[error("CA certificate unusable for CRL verification: {0}")]
    BadCaCertificate(&'static str),
    #[error("CRL is not issued by the federation CA")]
    WrongIssuer,
    #[error("CRL signature algorithm is not ecdsa-with-SHA256")]
    UnsupportedAlgorithm,
    #[error("CRL signature does not verify with the federation CA key")]
    BadSignature,
    #[error("CRL has no nextUpdate, so its freshness cannot be checked")]
    NoNextUpdate,
}

/// Verifies a DER CRL against the federation CA certificate (DER). Freshness is the caller's
/// decision (a node allows a grace after `next_update`); this only reports the times.
pub fn verify_crl(crl_der: &[u8], ca_cert_der: &[u8]) -> Result<VerifiedCrl, CrlError> {
    let ca = cert::parse(ca_cert_der)
        .ok_or(CrlError::BadCaCertificate("not a valid X.509 certificate"))?;
    let point = cert::p256_public_point(&ca).map_err(CrlError::BadCaCertificate)?;
    let crl = match CertificateRevocationList::from_der(crl_der) {
        Ok(([], crl)) => crl,
        _ => return Err(CrlError::Malformed),
    };
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err(CrlError::WrongIssuer);
    }
    // The outer and the signed algorithm must agree (RFC 5280 §5.1.1.2); both must be the one
    // the federation CA signs with.
    let ecdsa_sha256 = oid!(1.2.840 .10045 .4 .3 .2);
    if crl.signature_algorithm.algorithm != ecdsa_sha256
        || crl.tbs_cert_list.signature.algorithm != ecdsa_sha256
    {
        return Err(CrlError::UnsupportedAlgorithm);
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(crl.tbs_cert_list.as_ref(), &crl.signature_value.data)
        .map_err(|_| CrlError::BadSignature)?;
    let next_update = crl.next_update().ok_or(CrlError::NoNextUpdate)?.timestamp();
    Ok(VerifiedCrl {
        number: crl.crl_number().and_then(|n| u64::try_from(n).ok()),
        this_update: crl.last_update().timestamp(),
        next_update,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Federation;

    fn published() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
        let tmp = tempfile::tempdir().unwrap();
        let mut fed = Federation::init(&tmp.path().join("fed"), "Test", false).unwrap();
        let p = fed.publish(std::time::Duration::from_secs(3600)).unwrap();
        let pem = std::fs::read(&p.crl_path).unwrap();
        let crl = crate::files::pem_decode(&p.crl_path, &pem, "X509 CRL").unwrap();
        (tmp, crl, fed.ca_cert_der().to_vec())
    }

    #[test]
    fn a_published_crl_verifies_and_reports_its_times() {
        let (_tmp, crl, ca) = published();
        let v = verify_crl(&crl, &ca).unwrap();
        assert_eq!(v.number, Some(1));
        assert_eq!(v.next_update - v.this_update, 7 * 86_400);
    }

    #[test]
    fn a_flipped_signature_byte_is_refused() {
        let (_tmp, mut crl, ca) = published();
        // The signature BIT STRING ends the CRL: its last byte is the last byte of s.
        let last = crl.len() - 1;
        crl[last] ^= 0x01;
        assert_eq!(verify_crl(&crl, &ca), Err(CrlError::BadSignature));
    }

    #[test]
    fn a_crl_of_another_federation_is_refused() {
        let (_tmp, crl, _) = published();
        let (_tmp2, _, other_ca) = published();
        // Same subject DN ("Test"), other key: the signature decides.
        assert_eq!(verify_crl(&crl, &other_ca), Err(CrlError::BadSignature));
    }

    #[test]
    fn junk_is_malformed() {
        let (_tmp, crl, ca) = published();
        assert_eq!(verify_crl(b"junk", &ca), Err(CrlError::Malformed));
        let mut trailing = crl.clone();
        trailing.push(0);
        assert_eq!(verify_crl(&trailing, &ca), Err(CrlError::Malformed));
    }
}
