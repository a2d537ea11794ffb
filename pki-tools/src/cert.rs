//! Reading certificates: fingerprints, facility ids, CA public keys.

use x509_parser::der_parser::oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{FacilityId, PkiError, FACILITY_URI_PREFIX};

/// SHA-256 of the certificate DER.
pub fn cert_fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Extract the facility id from a certificate's URI SAN (exactly one urn:healthfed:facility: URI
/// required).
pub fn facility_id_from_cert(cert_der: &[u8]) -> Result<FacilityId, PkiError> {
    let cert = parse(cert_der).ok_or(PkiError::Certificate("not a valid X.509 certificate"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| PkiError::Certificate("malformed or duplicated subjectAltName"))?
        .ok_or(PkiError::Certificate("no subjectAltName"))?;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(FACILITY_URI_PREFIX),
            _ => None,
        });
    let id = ids.next().ok_or(PkiError::Certificate(
        "no urn:healthfed:facility: URI in subjectAltName",
    ))?;
    if ids.next().is_some() {
        return Err(PkiError::Certificate(
            "more than one urn:healthfed:facility: URI in subjectAltName",
        ));
    }
    id.parse()
        .map_err(|_| PkiError::Certificate("facility URI does not hold a valid facility id"))
}

/// Parse a DER certificate, rejecting trailing bytes.
pub(crate) fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
}

/// The uncompressed EC point of a P-256 certificate key, for ring's `UnparsedPublicKey`.
pub(crate) fn p256_public_point(cert: &X509Certificate<'_>) -> Result<Vec<u8>, &'static str> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm != oid!(1.2.840 .10045 .2 .1) {
        return Err("certificate key is not an EC key");
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve != Some(oid!(1.2.840 .10045 .3 .1 .7)) {
        return Err("certificate key is not on curve P-256");
    }
    Ok(spki.subject_public_key.data.to_vec())
}

/// The subjectKeyIdentifier, used as the authorityKeyIdentifier of everything the CA signs.
pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

/// Upper-case hex without separators, as `openssl x509 -serial` and `openssl crl -text` show it.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    // Drop the DER sign byte so the string matches OpenSSL's.
    let trimmed = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => raw,
    };
    hex::encode_upper(trimmed)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};

    use super::*;

    fn cert_with_sans(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn facility_id_from_cert_requires_exactly_one_facility_uri() {
        let der = cert_with_sans(vec![
            SanType::DnsName("a.example".try_into().unwrap()),
            uri("urn:healthfed:facility:hosp-a"),
            uri("https://other.example/"),
        ]);
        assert_eq!(facility_id_from_cert(&der).unwrap().as_str(), "hosp-a");

        let none = cert_with_sans(vec![uri("https://a.example/")]);
        assert!(facility_id_from_cert(&none)
            .unwrap_err()
            .to_string()
            .contains("no urn:healthfed:facility:"));
        let two = cert_with_sans(vec![
            uri("urn:healthfed:facility:hosp-a"),
            uri("urn:healthfed:facility:hosp-b"),
        ]);
        assert!(facility_id_from_cert(&two)
            .unwrap_err()
            .to_string()
            .contains("more than one"));
        let bad = cert_with_sans(vec![uri("urn:healthfed:facility:BAD_ID")]);
        assert!(facility_id_from_cert(&bad).is_err());
        let no_san = cert_with_sans(vec![]);
        assert!(facility_id_from_cert(&no_san).is_err());
        assert!(facility_id_from_cert(b"not a cert").is_err());
    }

    #[test]
    fn mutated_or_truncated_certificates_are_handled() {
        let der = cert_with_sans(vec![uri("urn:healthfed:facility:hosp-a")]);
        for i in 0..der.len() {
            let mut mutated = der.clone();
            if let Some(b) = mutated.get_mut(i) {
                *b ^= 0x01;
            }
            // A flip inside the URI can only give an invalid id or a different, still-valid
            // one; either way parsing must not panic.
            let _ = facility_id_from_cert(&mutated);
            assert!(
                facility_id_from_cert(&der[..i]).is_err(),
                "truncated at {i}"
            );
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        // FIPS 180-2 test vector: SHA-256("abc").
        assert_eq!(
            hex::encode(cert_fingerprint(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn serial_hex_matches_openssl_style() {
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x7f, 0x0a]), "7F0A");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
