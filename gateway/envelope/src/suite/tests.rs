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

/// The base-mode vector for one aead_id.
fn vector(aead_id: u64) -> Value {
    base_mode_vectors()
        .into_iter()
        .find(|v| v["aead_id"] == aead_id)
        .unwrap()
}

/// A frame cipher keyed with the AES-256-GCM vector's key-schedule key and base nonce.
fn cipher_from_aes_vector(v: &Value) -> FrameCipher {
    let base_nonce: [u8; 12] = unhex(v, "base_nonce").try_into().unwrap();
    FrameCipher::new(&array32(&unhex(v, "key")), base_nonce).unwrap()
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

/// `framed` is the `b"len:"` it started with, then exactly `ct`: `seal_into` appends.
fn assert_appended(framed: &[u8], ct: &[u8]) {
    assert_eq!(
        &framed[..4],
        b"len:",
        "seal_into appends after what is there"
    );
    assert_eq!(&framed[4..], ct);
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
        assert_appended(&framed, &ct);
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
    for (suite, aead_id) in [(Suite::Aes256Gcm, 2), (Suite::ChaCha20Poly1305, 3)] {
        assert_eq!(suite.wire_id(), aead_id);
        check_vector_dispatch(suite, &vector(u64::from(aead_id)));
    }
}

#[test]
fn tampered_vector_ciphertext_is_refused() {
    let v = &vector(2);
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
fn unknown_wire_ids_are_refused() {
    // 1 (AES-128-GCM) and 0xFFFF (export-only) are valid RFC 9180 aead_ids, but not suites.
    for id in [0u16, 1, 4, 0xFF01, 0xFF03, 0xFFFF] {
        assert_eq!(
            Suite::from_wire_id(id),
            Err(EnvelopeError::UnsupportedSuite)
        );
    }
    for (suite, id, name) in [
        (Suite::Aes256Gcm, 2, "hpke-aes-256-gcm"),
        (Suite::ChaCha20Poly1305, 3, "hpke-chacha20-poly1305"),
        (Suite::ExportedAes256Gcm, 0xFF02, "exported-aes-256-gcm"),
    ] {
        assert_eq!(suite.wire_id(), id);
        assert_eq!(Suite::from_wire_id(id), Ok(suite));
        assert_eq!(suite.name(), name);
        assert_eq!(Suite::from_name(name), Some(suite));
    }
    assert_eq!(Suite::from_name("aes"), None);
    assert_eq!(Suite::default(), Suite::ExportedAes256Gcm);
}

/// The frame cipher given the key schedule's key and base nonce from the RFC 9180 AES-256-GCM
/// vector is HPKE's AES-256-GCM context: it reproduces all 257 published ciphertexts in
/// sequence, and opens them. This checks ring's AES-256-GCM and our ComputeNonce.
#[test]
fn frame_cipher_reproduces_the_rfc9180_aes_256_gcm_vector() {
    let v = &vector(2);
    let mut sealer = cipher_from_aes_vector(v);
    let mut opener = cipher_from_aes_vector(v);
    let encryptions = v["encryptions"].as_array().unwrap();
    assert_eq!(
        encryptions.len(),
        257,
        "sequence numbers 0..=256 cross a byte"
    );
    let mut opened = b"stale".to_vec();
    for e in encryptions {
        let (pt, aad, ct) = (unhex(e, "pt"), unhex(e, "aad"), unhex(e, "ct"));
        let mut framed = b"len:".to_vec();
        sealer.seal_into(&pt, &aad, &mut framed).unwrap();
        assert_appended(&framed, &ct);
        // A wrong AAD or a flipped bit fails and does not advance the sequence number.
        let mut wrong_aad = aad.clone();
        wrong_aad.push(0);
        assert_eq!(
            opener.open_into(&ct, &wrong_aad, &mut opened),
            Err(EnvelopeError::Decrypt)
        );
        assert!(opened.is_empty(), "a failed open leaves no plaintext");
        let mut flipped = ct.clone();
        flipped[0] ^= 1;
        assert_eq!(
            opener.open_into(&flipped, &aad, &mut opened),
            Err(EnvelopeError::Decrypt)
        );
        opener.open_into(&ct, &aad, &mut opened).unwrap();
        assert_eq!(opened, pt);
    }
    let mut short = Vec::new();
    assert_eq!(
        opener.open_into(&[0u8; 15], b"", &mut short),
        Err(EnvelopeError::Decrypt),
        "shorter than a tag"
    );
}

/// The exported suite through the production dispatch, from the RFC 9180 export-only vector:
/// the sender reproduces `enc` from `ikmE`, both sides key the same cipher, and that cipher is
/// the one built from hpke's exporter outputs for our two contexts (whose exporter the base
/// mode test checks against the published exported values).
#[test]
fn exported_suite_keys_from_the_rfc9180_export_only_context() {
    let v = &vector(65535);
    let info = unhex(v, "info");
    let sk = EncryptionSecretKey::from_bytes(array32(&unhex(v, "skRm")));
    let pk = EncryptionPublicKey(array32(&unhex(v, "pkRm")));
    let enc = array32(&unhex(v, "enc"));
    let ikm_e = Zeroizing::new(array32(&unhex(v, "ikmE")));

    let (sent_enc, mut sender) =
        setup_sender(Suite::ExportedAes256Gcm, &pk.hpke().unwrap(), &info, &ikm_e).unwrap();
    assert_eq!(sent_enc, enc, "enc reproduced from ikmE");
    let mut receiver = setup_receiver(Suite::ExportedAes256Gcm, sk.hpke(), &enc, &info).unwrap();

    let exporter = setup_receiver_generic::<ExportOnlyAead>(sk.hpke(), &enc, &info).unwrap();
    let mut key = [0u8; 32];
    exporter.export(exported::KEY_CONTEXT, &mut key).unwrap();
    let mut base_nonce = [0u8; 12];
    exporter
        .export(exported::NONCE_CONTEXT, &mut base_nonce)
        .unwrap();
    assert_ne!(
        key[..12],
        base_nonce[..],
        "distinct contexts give distinct outputs"
    );
    let mut reference = FrameCipher::new(&key, base_nonce).unwrap();

    for seq in 0..300u32 {
        let pt = seq.to_be_bytes().repeat(usize::try_from(seq % 7).unwrap());
        let aad = seq.to_le_bytes();
        let ct = sender.seal(&pt, &aad).unwrap();
        let mut expected = Vec::new();
        reference.seal_into(&pt, &aad, &mut expected).unwrap();
        assert_eq!(ct, expected, "message {seq}");
        assert_eq!(receiver.open(&ct, &aad).unwrap(), pt);
    }

    // The same `enc` under HPKE's own AES-256-GCM is a different key: nothing opens across.
    let mut hpke_aes = setup_receiver(Suite::Aes256Gcm, sk.hpke(), &enc, &info).unwrap();
    let (_, mut fresh) =
        setup_sender(Suite::ExportedAes256Gcm, &pk.hpke().unwrap(), &info, &ikm_e).unwrap();
    let ct = fresh.seal(b"frame", b"aad").unwrap();
    assert_eq!(hpke_aes.open(&ct, b"aad"), Err(EnvelopeError::Decrypt));
}

#[test]
fn frame_cipher_refuses_a_frame_out_of_order() {
    let v = &vector(2);
    let mut opener = cipher_from_aes_vector(v);
    let second = &v["encryptions"][1];
    // Message 1 cannot be opened as message 0: the nonce is bound to the position.
    assert_eq!(
        opener.open_into(&unhex(second, "ct"), &unhex(second, "aad"), &mut Vec::new()),
        Err(EnvelopeError::Decrypt)
    );
}
