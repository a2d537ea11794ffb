//! RFC 9180 Appendix A test vectors for DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256, base mode.
//!
//! Source: tests/testdata/vectors/rfc9180-x25519.json (cfrg/draft-irtf-cfrg-hpke
//! test-vectors.json, see the README next to it).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use hpke::aead::{Aead, AesGcm128, AesGcm256, ChaCha20Poly1305, ExportOnlyAead};
use hpke::kem::X25519HkdfSha256;
use hpke::{Kem as _, Serializable};
use serde_json::Value;
use zeroize::Zeroizing;

use super::*;
use crate::keys::{EncryptionPublicKey, EncryptionSecretKey};

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/testdata/vectors/rfc9180-x25519.json"
));

fn unhex(v: &Value, field: &str) -> Vec<u8> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("field {field} missing"));
    hex::decode(s).unwrap()
}

fn array32(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().unwrap()
}

fn clamp(mut sk: [u8; 32]) -> [u8; 32] {
    sk[0] &= 248;
    sk[31] &= 127;
    sk[31] |= 64;
    sk
}

fn base_mode_vectors() -> Vec<Value> {
    let all: Vec<Value> = serde_json::from_str(VECTORS).unwrap();
    assert_eq!(all.len(), 16, "the vector file holds 16 entries");
    all.into_iter()
        .filter(|v| v["mode"] == 0 && v["kem_id"] == 32 && v["kdf_id"] == 1)
        .collect()
}

/// Key derivation, receiver, exporter and sender (with the vector's ikmE) through the generic
/// functions used in production. Returns the number of encryptions checked.
fn check_vector<A: Aead>(v: &Value) -> usize {
    let info = unhex(v, "info");

    // DeriveKeyPair(ikmR) gives the published keys; hpke serializes secrets clamped.
    let (sk, pk) = X25519HkdfSha256::derive_keypair(&unhex(v, "ikmR"));
    let sk_rm = array32(&unhex(v, "skRm"));
    assert_eq!(pk.to_bytes().as_slice(), unhex(v, "pkRm").as_slice());
    assert_eq!(sk.to_bytes().as_slice(), clamp(sk_rm).as_slice());
    let our_sk = EncryptionSecretKey::from_bytes(sk_rm);
    assert_eq!(
        our_sk.public_key().0.as_slice(),
        unhex(v, "pkRm").as_slice()
    );

    let enc = array32(&unhex(v, "enc"));
    let mut receiver = setup_receiver_generic::<A>(our_sk.hpke(), &enc, &info).unwrap();
    let encryptions = v["encryptions"].as_array().cloned().unwrap_or_default();
    for e in &encryptions {
        let opened = receiver.open(&unhex(e, "ct"), &unhex(e, "aad")).unwrap();
        assert_eq!(opened, unhex(e, "pt"));
    }

    let ikm_e = Zeroizing::new(array32(&unhex(v, "ikmE")));
    let our_pk = EncryptionPublicKey(array32(&unhex(v, "pkRm")));
    let (sent_enc, mut sender) =
        setup_sender_generic::<A>(&our_pk.hpke().unwrap(), &info, &ikm_e).unwrap();
    assert_eq!(sent_enc, enc, "enc reproduced from ikmE");
    for e in &encryptions {
        let sealed = sender.seal(&unhex(e, "pt"), &unhex(e, "aad")).unwrap();
        assert_eq!(sealed, unhex(e, "ct"));
    }

    let exports = v["exports"].as_array().cloned().unwrap_or_default();
    assert_eq!(exports.len(), 3);
    for x in &exports {
        let len = usize::try_from(x["L"].as_u64().unwrap()).unwrap();
        let mut from_receiver = vec![0u8; len];
        let mut from_sender = vec![0u8; len];
        receiver
            .export(&unhex(x, "exporter_context"), &mut from_receiver)
            .unwrap();
        sender
            .export(&unhex(x, "exporter_context"), &mut from_sender)
            .unwrap();
        assert_eq!(from_receiver, unhex(x, "exported_value"));
        assert_eq!(from_sender, unhex(x, "exported_value"));
    }
    encryptions.len()
}

/// The run-time suite dispatch used by the envelope, for the two suites it offers.
fn check_vector_dispatch(suite: Suite, v: &Value) {
    let info = unhex(v, "info");
    let sk = EncryptionSecretKey::from_bytes(array32(&unhex(v, "skRm")));
    let enc = array32(&unhex(v, "enc"));
    let ikm_e = Zeroizing::new(array32(&unhex(v, "ikmE")));
    let pk = EncryptionPublicKey(array32(&unhex(v, "pkRm")));
    let (sent_enc, mut sender) = setup_sender(suite, &pk.hpke().unwrap(), &info, &ikm_e).unwrap();
    assert_eq!(sent_enc, enc);
    // A second, identical context for the in-place path the payload frames use.
    let (_, mut sender_into) = setup_sender(suite, &pk.hpke().unwrap(), &info, &ikm_e).unwrap();
    let mut receiver = setup_receiver(suite, sk.hpke(), &enc, &info).unwrap();
    let mut receiver_into = setup_receiver(suite, sk.hpke(), &enc, &info).unwrap();
    let mut opened = b"stale".to_vec();
    for e in v["encryptions"].as_array().unwrap() {
        let (pt, aad, ct) = (unhex(e, "pt"), unhex(e, "aad"), unhex(e, "ct"));
        assert_eq!(sender.seal(&pt, &aad).unwrap(), ct);
        let mut framed = b"len:".to_vec();
        sender_into.seal_into(&pt, &aad, &mut framed).unwrap();
        assert_eq!(
            &framed[..4],
            b"len:",
            "seal_into appends after what is there"
        );
        assert_eq!(&framed[4..], &ct[..]);
        // A wrong AAD must fail and must not advance the sequence number.
        let mut wrong_aad = aad.clone();
        wrong_aad.push(0);
        assert_eq!(receiver.open(&ct, &wrong_aad), Err(EnvelopeError::Decrypt));
        assert_eq!(receiver.open(&ct, &aad).unwrap(), pt);
        // The buffer-reusing path: same refusals, same plaintext, contents replaced.
        assert_eq!(
            receiver_into.open_into(&ct, &wrong_aad, &mut opened),
            Err(EnvelopeError::Decrypt)
        );
        assert!(opened.is_empty(), "a failed open leaves no plaintext");
        receiver_into.open_into(&ct, &aad, &mut opened).unwrap();
        assert_eq!(opened, pt);
    }
}

#[test]
fn rfc9180_base_mode_vectors() {
    let vectors = base_mode_vectors();
    let mut seen = Vec::new();
    for v in &vectors {
        let aead_id = v["aead_id"].as_u64().unwrap();
        let checked = match aead_id {
            1 => check_vector::<AesGcm128>(v),
            2 => check_vector::<AesGcm256>(v),
            3 => check_vector::<ChaCha20Poly1305>(v),
            65535 => check_vector::<ExportOnlyAead>(v),
            other => panic!("unexpected aead_id {other}"),
        };
        let expected = if aead_id == 65535 { 0 } else { 257 };
        assert_eq!(checked, expected, "aead {aead_id}");
        seen.push(aead_id);
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3, 65535]);
}

#[test]
fn rfc9180_vectors_through_suite_dispatch() {
    let vectors = base_mode_vectors();
    for (suite, aead_id) in [(Suite::Aes256Gcm, 2), (Suite::ChaCha20Poly1305, 3)] {
        assert_eq!(suite.aead_id(), aead_id);
        let v = vectors.iter().find(|v| v["aead_id"] == aead_id).unwrap();
        check_vector_dispatch(suite, v);
    }
}

#[test]
fn tampered_vector_ciphertext_is_refused() {
    let vectors = base_mode_vectors();
    let v = vectors.iter().find(|v| v["aead_id"] == 2).unwrap();
    let sk = EncryptionSecretKey::from_bytes(array32(&unhex(v, "skRm")));
    let mut receiver = setup_receiver(
        Suite::Aes256Gcm,
        sk.hpke(),
        &array32(&unhex(v, "enc")),
        &unhex(v, "info"),
    )
    .unwrap();
    let e = &v["encryptions"][0];
    let mut ct = unhex(e, "ct");
    ct[0] ^= 1;
    assert_eq!(
        receiver.open(&ct, &unhex(e, "aad")),
        Err(EnvelopeError::Decrypt)
    );
    // The wrong suite for the same key schedule fails too.
    let mut chacha = setup_receiver(
        Suite::ChaCha20Poly1305,
        sk.hpke(),
        &array32(&unhex(v, "enc")),
        &unhex(v, "info"),
    )
    .unwrap();
    assert_eq!(
        chacha.open(&unhex(e, "ct"), &unhex(e, "aad")),
        Err(EnvelopeError::Decrypt)
    );
}

#[test]
fn ikm_rng_reports_overdraw() {
    let ikm = Zeroizing::new([7u8; 32]);
    let mut rng = IkmRng::new(&ikm);
    let mut first = [0u8; 20];
    rng.try_fill_bytes(&mut first).unwrap();
    assert!(!rng.fully_consumed());
    let mut second = [1u8; 20];
    rng.try_fill_bytes(&mut second).unwrap();
    assert_eq!(&second[..12], &[7u8; 12]);
    assert_eq!(&second[12..], &[0u8; 8]);
    assert!(
        !rng.fully_consumed(),
        "over-drawn generator must not count as consumed"
    );

    let mut exact = IkmRng::new(&ikm);
    let mut all = [0u8; 32];
    exact.try_fill_bytes(&mut all).unwrap();
    assert!(exact.fully_consumed());
}

#[test]
fn unsupported_aead_ids_are_refused() {
    for id in [0u16, 1, 4, 65535] {
        assert_eq!(
            Suite::from_aead_id(id),
            Err(EnvelopeError::UnsupportedSuite)
        );
    }
    assert_eq!(Suite::from_aead_id(2), Ok(Suite::Aes256Gcm));
    assert_eq!(Suite::from_aead_id(3), Ok(Suite::ChaCha20Poly1305));
}
