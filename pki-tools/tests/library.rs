//! The library API the gateway uses: Federation, key loaders, certificate helpers, directory.

#![allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::Scratch;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS};
use pki_tools::directory::{verify_directory, DirectoryError};
use pki_tools::{
    cert_fingerprint, facility_id_from_cert, keys, Endpoint, FacilityFile, FacilityId,
    FacilityKind, Federation, PkiError,
};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use time::OffsetDateTime;

fn id(s: &str) -> FacilityId {
    s.parse().unwrap()
}

fn endpoint(s: &str) -> Endpoint {
    s.parse().unwrap()
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn cert_der(s: &Scratch, rel: &str) -> Vec<u8> {
    pem::parse(s.read(rel)).unwrap().into_contents()
}

/// A federation with one hospital, built through the library.
fn setup() -> (Scratch, Federation) {
    let s = Scratch::new();
    let mut fed = Federation::init(&s.path("fed"), "Library Federation", false).unwrap();
    fed.add_facility(
        &id("hosp-a"),
        "Hospital A",
        &endpoint("https://hosp-a.example.org:8443"),
        FacilityKind::Hospital,
        &s.path("node-a"),
    )
    .unwrap();
    (s, fed)
}

#[test]
fn node_keys_load_for_the_gateway() {
    let (s, _fed) = setup();
    let facility = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();

    // Signing key: ring's strict loader accepts what load_ed25519_pkcs8 returns.
    let pkcs8 = keys::load_ed25519_pkcs8(&s.path("node-a/signing.key")).unwrap();
    let signer = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
    assert_eq!(signer.public_key().as_ref(), facility.signing_public_key);

    // TLS key: ring accepts it and it belongs to tls.crt.
    let tls = keys::load_tls_key_der(&s.path("node-a/tls.key")).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &tls, &rng).unwrap();
    let cert = cert_der(&s, "node-a/tls.crt");
    let point = pair.public_key().as_ref();
    assert!(
        cert.windows(point.len()).any(|w| w == point),
        "key is not the cert's key"
    );

    // Encryption key: an HPKE message to the published key opens with the loaded private key.
    let sk_bytes = keys::load_x25519_private(&s.path("node-a/encryption.key")).unwrap();
    let sk = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(sk_bytes.as_ref()).unwrap();
    let pk =
        <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&facility.encryption_public_key)
            .unwrap();
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        b"healthfed test",
        b"synthetic record",
        b"aad",
    )
    .unwrap();
    let pt = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        b"healthfed test",
        &ct,
        b"aad",
    )
    .unwrap();
    assert_eq!(pt, b"synthetic record");

    // Every loader refuses a key readable by others, naming the file and mode.
    for key in ["signing.key", "encryption.key", "tls.key"] {
        let path = s.path(&format!("node-a/{key}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = match key {
            "signing.key" => keys::load_ed25519_pkcs8(&path).map(|_| ()),
            "encryption.key" => keys::load_x25519_private(&path).map(|_| ()),
            _ => keys::load_tls_key_der(&path).map(|_| ()),
        }
        .unwrap_err();
        assert!(
            matches!(err, PkiError::InsecurePermissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn certificate_helpers() {
    let (s, _fed) = setup();
    let cert = cert_der(&s, "node-a/tls.crt");
    assert_eq!(facility_id_from_cert(&cert).unwrap(), id("hosp-a"));
    let facility = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    assert_eq!(cert_fingerprint(&cert), facility.tls_cert_sha256);
    assert_eq!(
        pki_tools::files::read_cert_der(&s.path("node-a/tls.crt")).unwrap(),
        cert
    );
    let err = pki_tools::files::read_cert_der(&s.path("node-a/tls.key")).unwrap_err();
    assert!(
        err.to_string()
            .contains("node-a/tls.key: expected a PEM CERTIFICATE block"),
        "{err}"
    );
    // The CA certificate names no facility.
    assert!(facility_id_from_cert(&cert_der(&s, "fed/ca.crt")).is_err());
}

#[test]
fn reopened_federation_publishes_what_was_added() {
    let (s, fed) = setup();
    assert!(
        !format!("{fed:?}").contains("PRIVATE"),
        "Debug must not show the key"
    );
    drop(fed);
    let mut fed = Federation::open(&s.path("fed")).unwrap();
    assert_eq!(fed.name(), "Library Federation");
    assert_eq!(fed.facility_ids(), vec![id("hosp-a")]);
    let published = fed.publish(Duration::from_secs(3600)).unwrap();
    assert_eq!(published.version, 1);
    assert_eq!(published.directory_path, s.path("fed/directory.json"));
    assert_eq!(published.crl_path, s.path("fed/crl.pem"));
    let bytes = fs::read(&published.directory_path).unwrap();
    let d = verify_directory(&bytes, fed.ca_cert_der(), now(), None).unwrap();
    assert!((d.expires_at - d.issued_at - 3600).abs() <= 1);
    // One hour and a bit later the same file is refused as expired.
    assert!(matches!(
        verify_directory(&bytes, fed.ca_cert_der(), now() + 3700, None),
        Err(DirectoryError::Expired { .. })
    ));
    assert!(matches!(
        fed.publish(Duration::ZERO),
        Err(PkiError::InvalidValidity(_))
    ));
    // Versions keep increasing across reopen.
    drop(fed);
    let mut fed = Federation::open(&s.path("fed")).unwrap();
    assert_eq!(fed.publish(Duration::from_secs(60)).unwrap().version, 2);
}

#[test]
fn rotation_through_the_library_lists_both_generations() {
    let (s, mut fed) = setup();
    let before = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    fed.rotate(&id("hosp-a"), &s.path("node-a")).unwrap();
    let after = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    // Old keys are still loadable from their -previous names.
    let old = keys::load_ed25519_pkcs8(&s.path("node-a/signing-previous.key")).unwrap();
    assert_eq!(
        Ed25519KeyPair::from_pkcs8(&old)
            .unwrap()
            .public_key()
            .as_ref(),
        before.signing_public_key
    );
    keys::load_x25519_private(&s.path("node-a/encryption-previous.key")).unwrap();
    keys::load_tls_key_der(&s.path("node-a/tls-previous.key")).unwrap();
    assert_eq!(
        cert_fingerprint(&cert_der(&s, "node-a/tls-previous.crt")),
        before.tls_cert_sha256
    );

    fed.publish(Duration::from_secs(600)).unwrap();
    let d = verify_directory(
        &fs::read(s.path("fed/directory.json")).unwrap(),
        fed.ca_cert_der(),
        now(),
        None,
    )
    .unwrap();
    let entry = d.facility(&id("hosp-a")).unwrap();
    assert_eq!(
        entry.tls_cert_sha256,
        [after.tls_cert_sha256, before.tls_cert_sha256]
    );
    assert_eq!(
        entry.signing_keys,
        [after.signing_public_key, before.signing_public_key]
    );
    assert_eq!(entry.encryption_key, after.encryption_public_key);
    assert_eq!(
        fed.current_tls_cert_sha256(&id("hosp-a")),
        Some(after.tls_cert_sha256)
    );
}

#[test]
fn expired_and_not_yet_valid_certificates_for_tests() {
    let (s, mut fed) = setup();
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let ep = endpoint("https://hosp-a.example.org:8443");

    fed.issue_tls_cert_with_validity(
        &id("hosp-a"),
        &ep,
        now - 10 * day,
        now - day,
        &s.path("expired"),
    )
    .unwrap();
    let out = s.openssl(&["verify", "-CAfile", "fed/ca.crt", "expired/tls.crt"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stdout.contains("certificate has expired")
            || out.stderr.contains("certificate has expired")
    );
    assert_eq!(s.mode("expired/tls.key"), 0o600);
    assert_eq!(
        facility_id_from_cert(&cert_der(&s, "expired/tls.crt")).unwrap(),
        id("hosp-a")
    );

    fed.issue_tls_cert_with_validity(
        &id("hosp-a"),
        &ep,
        now + day,
        now + 10 * day,
        &s.path("future"),
    )
    .unwrap();
    let out = s.openssl(&["verify", "-CAfile", "fed/ca.crt", "future/tls.crt"]);
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains("not yet valid") || out.stderr.contains("not yet valid"));

    // Same SANs as add-facility.
    let text = s
        .openssl(&[
            "x509",
            "-in",
            "future/tls.crt",
            "-noout",
            "-ext",
            "subjectAltName",
        ])
        .ok();
    assert!(
        text.stdout.contains("URI:urn:healthfed:facility:hosp-a"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("DNS:hosp-a.example.org"),
        "{}",
        text.stdout
    );

    // Registered facility: its extra certificates are listed (so expiry, not an unknown
    // fingerprint, is what a peer refuses), and they are revoked with the facility.
    fed.publish(Duration::from_secs(600)).unwrap();
    let d = verify_directory(
        &fs::read(s.path("fed/directory.json")).unwrap(),
        fed.ca_cert_der(),
        now.unix_timestamp(),
        None,
    )
    .unwrap();
    let entry = d.facility(&id("hosp-a")).unwrap();
    assert_eq!(entry.tls_cert_sha256.len(), 3);
    assert!(entry
        .tls_cert_sha256
        .contains(&cert_fingerprint(&cert_der(&s, "expired/tls.crt"))));

    // Unregistered ids work too (not listed in the directory).
    fed.issue_tls_cert_with_validity(
        &id("stranger"),
        &endpoint("https://10.0.0.9:443"),
        now - day,
        now + day,
        &s.path("stranger"),
    )
    .unwrap();
    s.openssl(&["verify", "-CAfile", "fed/ca.crt", "stranger/tls.crt"])
        .ok();

    assert!(matches!(
        fed.issue_tls_cert_with_validity(&id("hosp-a"), &ep, now, now, &s.path("empty")),
        Err(PkiError::InvalidValidity(_))
    ));

    fed.revoke(&id("hosp-a"), Some("superseded")).unwrap();
    fed.publish(Duration::from_secs(600)).unwrap();
    let crl = s
        .openssl(&["crl", "-in", "fed/crl.pem", "-noout", "-text"])
        .ok()
        .stdout;
    for cert in ["node-a/tls.crt", "expired/tls.crt", "future/tls.crt"] {
        assert!(crl.contains(&s.serial(cert)), "{cert} not revoked:\n{crl}");
    }
    assert!(!crl.contains(&s.serial("stranger/tls.crt")));
}

#[test]
fn init_over_existing_federation_requires_force() {
    let (s, _fed) = setup();
    let err = Federation::init(&s.path("fed"), "Again", false).unwrap_err();
    assert!(matches!(err, PkiError::FederationExists { .. }));
    let fed = Federation::init(&s.path("fed"), "Again", true).unwrap();
    assert!(fed.facility_ids().is_empty());
    assert_eq!(Federation::open(&s.path("fed")).unwrap().name(), "Again");
}
