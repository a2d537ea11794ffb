#![allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};

use super::*;

const NOW: i64 = 1_800_000_000;

struct Ca {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

fn ca() -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

fn entry(id: &str) -> FacilityEntry {
    FacilityEntry {
        id: id.parse().unwrap(),
        name: format!("Facility {id}"),
        kind: FacilityKind::Clinic,
        endpoint: format!("https://{id}.example:443"),
        status: FacilityStatus::Active,
        tls_cert_sha256: vec![[1; 32], [2; 32]],
        signing_keys: vec![[3; 32]],
        encryption_key: [4; 32],
    }
}

fn directory(version: u64) -> Directory {
    Directory {
        version,
        federation: "Test Federation".to_owned(),
        issued_at: NOW - 60,
        expires_at: NOW + 3600,
        facilities: vec![entry("hosp-a"), entry("lab-1")],
    }
}

fn signed(d: &Directory, ca: &Ca) -> Vec<u8> {
    sign_directory(d, &ca.key_der).unwrap()
}

fn outer(bytes: &[u8]) -> SignedFile {
    serde_json::from_slice(bytes).unwrap()
}

fn reassemble(file: &SignedFile) -> Vec<u8> {
    serde_json::to_vec(file).unwrap()
}

#[test]
fn valid_directory_verifies_and_round_trips() {
    let ca = ca();
    let d = directory(7);
    let bytes = signed(&d, &ca);
    let got = verify_directory(&bytes, &ca.cert_der, NOW, Some(7)).unwrap();
    assert_eq!(got, d);
    let hosp: FacilityId = "hosp-a".parse().unwrap();
    assert_eq!(got.facility(&hosp).unwrap().name, "Facility hosp-a");
    assert!(got.facility(&"nope-1".parse().unwrap()).is_none());
    // Older min_version and no min_version are fine too.
    verify_directory(&bytes, &ca.cert_der, NOW, Some(1)).unwrap();
    verify_directory(&bytes, &ca.cert_der, NOW, None).unwrap();
}

#[test]
fn keys_and_fingerprints_are_hex_in_the_payload() {
    let ca = ca();
    let bytes = signed(&directory(1), &ca);
    let payload = BASE64.decode(outer(&bytes).payload).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let first = &json["facilities"][0];
    assert_eq!(first["encryption_key"], "04".repeat(32));
    assert_eq!(first["tls_cert_sha256"][1], "02".repeat(32));
    assert_eq!(first["signing_keys"][0], "03".repeat(32));
    assert_eq!(first["kind"], "clinic");
    assert_eq!(first["status"], "active");
    assert_eq!(outer(&bytes).format, DIRECTORY_FORMAT);
}

#[test]
fn tampered_payload_is_refused() {
    let ca = ca();
    let bytes = signed(&directory(1), &ca);
    let mut file = outer(&bytes);
    let payload = String::from_utf8(BASE64.decode(&file.payload).unwrap()).unwrap();
    let forged = payload.replace("https://lab-1.example:443", "https://evil.example:443");
    assert_ne!(forged, payload);
    file.payload = BASE64.encode(forged);
    assert_eq!(
        verify_directory(&reassemble(&file), &ca.cert_der, NOW, None),
        Err(DirectoryError::BadSignature)
    );
}

#[test]
fn tampered_signature_is_refused() {
    let ca = ca();
    let bytes = signed(&directory(1), &ca);
    let mut file = outer(&bytes);
    let mut sig = BASE64.decode(&file.signature).unwrap();
    let last = sig.last_mut().unwrap();
    *last ^= 0x01;
    file.signature = BASE64.encode(&sig);
    assert_eq!(
        verify_directory(&reassemble(&file), &ca.cert_der, NOW, None),
        Err(DirectoryError::BadSignature)
    );
    file.signature = String::new();
    assert_eq!(
        verify_directory(&reassemble(&file), &ca.cert_der, NOW, None),
        Err(DirectoryError::BadSignature)
    );
}

#[test]
fn expired_directory_is_refused() {
    let ca = ca();
    let d = directory(1);
    let bytes = signed(&d, &ca);
    assert_eq!(
        verify_directory(&bytes, &ca.cert_der, d.expires_at, None),
        Err(DirectoryError::Expired {
            expires_at: d.expires_at,
            now: d.expires_at
        })
    );
    verify_directory(&bytes, &ca.cert_der, d.expires_at - 1, None).unwrap();
}

#[test]
fn directory_from_the_future_is_refused() {
    let ca = ca();
    let mut d = directory(1);
    d.issued_at = NOW + MAX_CLOCK_SKEW_SECS + 1;
    d.expires_at = NOW + 7200;
    let bytes = signed(&d, &ca);
    assert!(matches!(
        verify_directory(&bytes, &ca.cert_der, NOW, None),
        Err(DirectoryError::NotYetValid { .. })
    ));
    // Within the tolerated skew it is accepted.
    d.issued_at = NOW + MAX_CLOCK_SKEW_SECS;
    verify_directory(&signed(&d, &ca), &ca.cert_der, NOW, None).unwrap();
}

#[test]
fn directory_expiring_before_issue_is_refused() {
    let ca = ca();
    let mut d = directory(1);
    d.expires_at = d.issued_at;
    assert_eq!(
        verify_directory(&signed(&d, &ca), &ca.cert_der, d.issued_at - 10, None),
        Err(DirectoryError::BadPayload(
            "expires_at is not after issued_at".to_owned()
        ))
    );
}

#[test]
fn older_version_is_refused() {
    let ca = ca();
    let bytes = signed(&directory(4), &ca);
    assert_eq!(
        verify_directory(&bytes, &ca.cert_der, NOW, Some(5)),
        Err(DirectoryError::Rollback {
            version: 4,
            min_version: 5
        })
    );
}

#[test]
fn directory_signed_by_another_federation_is_refused() {
    let ours = ca();
    let theirs = ca();
    let bytes = signed(&directory(1), &theirs);
    assert_eq!(
        verify_directory(&bytes, &ours.cert_der, NOW, None),
        Err(DirectoryError::BadSignature)
    );
}

#[test]
fn unusable_ca_certificates_are_reported() {
    let ca = ca();
    let bytes = signed(&directory(1), &ca);
    assert!(matches!(
        verify_directory(&bytes, b"junk", NOW, None),
        Err(DirectoryError::BadCaCertificate(_))
    ));
    let ed_key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let ed_cert = CertificateParams::default().self_signed(&ed_key).unwrap();
    assert_eq!(
        verify_directory(&bytes, ed_cert.der(), NOW, None),
        Err(DirectoryError::BadCaCertificate(
            "certificate key is not an EC key"
        ))
    );
}

#[test]
fn malformed_files_are_refused() {
    let ca = ca();
    for junk in [&b""[..], b"{}", b"[1,2]", b"not json"] {
        assert!(matches!(
            verify_directory(junk, &ca.cert_der, NOW, None),
            Err(DirectoryError::Malformed(_))
        ));
    }
    let mut file = outer(&signed(&directory(1), &ca));
    file.format = "healthfed-directory/2".to_owned();
    assert_eq!(
        verify_directory(&reassemble(&file), &ca.cert_der, NOW, None),
        Err(DirectoryError::UnsupportedFormat)
    );
    file.format = DIRECTORY_FORMAT.to_owned();
    file.payload = "***".to_owned();
    assert_eq!(
        verify_directory(&reassemble(&file), &ca.cert_der, NOW, None),
        Err(DirectoryError::Malformed("payload is not base64"))
    );
}

#[test]
fn signed_but_invalid_payloads_are_refused() {
    let ca = ca();
    // Duplicate facility ids.
    let mut d = directory(1);
    d.facilities.push(entry("hosp-a"));
    assert_eq!(
        verify_directory(&signed(&d, &ca), &ca.cert_der, NOW, None),
        Err(DirectoryError::DuplicateFacility("hosp-a".parse().unwrap()))
    );
    // A correctly signed payload with an unknown field or a bad id still fails to parse.
    for payload in [
        r#"{"version":1,"federation":"f","issued_at":0,"expires_at":9999999999,"facilities":[],"extra":1}"#,
        r#"{"version":1,"federation":"f","issued_at":0,"expires_at":9999999999,"facilities":[{"id":"BAD","name":"n","kind":"lab","endpoint":"e","status":"active","tls_cert_sha256":[],"signing_keys":[],"encryption_key":"00"}]}"#,
    ] {
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &ca.key_der, &rng).unwrap();
        let sig = key.sign(&rng, payload.as_bytes()).unwrap();
        let file = SignedFile {
            format: DIRECTORY_FORMAT.to_owned(),
            payload: BASE64.encode(payload),
            signature: BASE64.encode(sig.as_ref()),
        };
        assert!(matches!(
            verify_directory(&reassemble(&file), &ca.cert_der, NOW, None),
            Err(DirectoryError::BadPayload(_))
        ));
    }
}

#[test]
fn no_single_byte_mutation_yields_a_different_directory() {
    // A cheap stand-in for fuzzing the decoder of untrusted bytes: every bit-flip of the file is
    // either refused or (if it only touched insignificant bytes) yields the original content.
    let ca = ca();
    let d = directory(1);
    let bytes = signed(&d, &ca);
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x20, 0x80] {
            let mut mutated = bytes.clone();
            if let Some(b) = mutated.get_mut(i) {
                *b ^= bit;
            }
            if let Ok(got) = verify_directory(&mutated, &ca.cert_der, NOW, None) {
                assert_eq!(
                    got, d,
                    "mutation at byte {i} produced a different directory"
                );
            }
        }
    }
    // Truncations are refused.
    for len in 0..bytes.len() - 2 {
        assert!(verify_directory(&bytes[..len], &ca.cert_der, NOW, None).is_err());
    }
}

#[test]
fn the_digest_names_the_signed_content_not_the_signature() {
    let ca = ca();
    let d = directory(7);
    let (first, second) = (signed(&d, &ca), signed(&d, &ca));
    assert_ne!(first, second, "ECDSA signatures are randomized");
    let a = verify_directory_file(&first, &ca.cert_der, NOW, None).unwrap();
    let b = verify_directory_file(&second, &ca.cert_der, NOW, None).unwrap();
    assert_eq!(a.digest, b.digest);
    let mut other = d.clone();
    other.facilities.pop();
    let c = verify_directory_file(&signed(&other, &ca), &ca.cert_der, NOW, None).unwrap();
    assert_eq!(c.directory.version, a.directory.version);
    assert_ne!(c.digest, a.digest);
}
