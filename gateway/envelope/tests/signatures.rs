//! Ed25519 against RFC 8032, signed receipts and generic signed messages.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::Node;
use gateway_envelope::{
    sign_message, verify_message, EnvelopeError, Receipt, ReceiverDecision, SignedReceipt,
    SigningKey, TransferId, VerifyingKey,
};

/// PKCS#8 v1 prefix for an Ed25519 seed (RFC 8410): SEQUENCE { version 0, AlgorithmIdentifier
/// { id-Ed25519 }, OCTET STRING { OCTET STRING seed } }.
const PKCS8_V1_PREFIX: &str = "302e020100300506032b657004220420";

/// RFC 8032 section 7.1, TEST 1 (empty message) and TEST 2 (one byte).
const RFC8032: [(&str, &str, &str, &str); 2] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
];

#[test]
fn ed25519_rfc8032_vectors() {
    for (seed, public, message, signature) in RFC8032 {
        let pkcs8 = hex::decode(format!("{PKCS8_V1_PREFIX}{seed}")).unwrap();
        let key = SigningKey::from_pkcs8(&pkcs8).unwrap();
        let public: [u8; 32] = hex::decode(public).unwrap().try_into().unwrap();
        assert_eq!(key.verifying_key(), VerifyingKey(public));
        let message = hex::decode(message).unwrap();
        let signature: [u8; 64] = hex::decode(signature).unwrap().try_into().unwrap();
        // An empty domain makes this plain Ed25519.
        assert_eq!(key.sign(b"", &message), signature);
        VerifyingKey(public)
            .verify(b"", &message, &signature)
            .unwrap();
        let mut bad = signature;
        bad[63] ^= 0x40;
        assert_eq!(
            VerifyingKey(public).verify(b"", &message, &bad),
            Err(EnvelopeError::BadSignature)
        );
        // The domain is part of what is signed.
        assert_eq!(
            VerifyingKey(public).verify(b"x\0", &message, &signature),
            Err(EnvelopeError::BadSignature)
        );
    }
}

#[test]
fn pkcs8_parsing() {
    let v2 = SigningKey::generate_pkcs8().unwrap();
    let key = SigningKey::from_pkcs8(&v2).unwrap();
    let sig = key.sign(b"d\0", b"m");
    key.verifying_key().verify(b"d\0", b"m", &sig).unwrap();
    assert!(matches!(
        SigningKey::from_pkcs8(b"not a key"),
        Err(EnvelopeError::InvalidKey(_))
    ));
    assert!(matches!(
        SigningKey::from_pkcs8(&v2[..v2.len() - 1]),
        Err(EnvelopeError::InvalidKey(_))
    ));
    // Debug shows the public key only.
    let debug = format!("{key:?}");
    assert!(debug.contains(&hex::encode(key.verifying_key().0)));
    let secret = gateway_envelope::EncryptionSecretKey::from_bytes([3u8; 32]);
    let debug = format!("{secret:?}");
    assert!(
        !debug.contains("0303") && !debug.contains("3, 3"),
        "{debug}"
    );
}

fn receipt() -> Receipt {
    Receipt {
        transfer_id: TransferId([7; 16]),
        sender: "facility-a.example".into(),
        receiver: "facility-b.example".into(),
        payload_digest: [1; 32],
        header_digest: [2; 32],
        received_at_ms: 1_764_000_000_123,
        decision: None,
    }
}

fn receipt_v2() -> Receipt {
    Receipt {
        decision: Some(ReceiverDecision {
            outcome: "permit".into(),
            policy_ids: vec!["treatment-permit".into(), "consent-permit".into()],
            purpose: "treatment".into(),
            consent_basis_digest: [3; 32],
        }),
        ..receipt()
    }
}

/// A version 1 receipt as the gateway signed it before receipts carried the decision: the
/// bytes the code of that time produced for `receipt()` with the RFC 8032 TEST 1 key
/// (Ed25519 is deterministic).
const RECEIPT_V1: &str = "7d010707070707070707070707070707070712666163696c6974792d612e6578616d706c6512666163696c6974792d622e6578616d706c6501010101010101010101010101010101010101010101010101010101010101010202020202020202020202020202020202020202020202020202020202020202fbd0dfb4ab33eef0ee7d2a7a552832b3fa0119aa5d9158973f6c79df62d7b288c00983eb92bfe886be4732b5d96ae944736c93f3503d1504461835224bd43cb442a33c801a09";

fn rfc8032_test1_key() -> SigningKey {
    let (seed, ..) = RFC8032[0];
    SigningKey::from_pkcs8(&hex::decode(format!("{PKCS8_V1_PREFIX}{seed}")).unwrap()).unwrap()
}

#[test]
fn a_version_1_receipt_still_verifies_and_is_still_written_without_a_decision() {
    let key = rfc8032_test1_key();
    let old = SignedReceipt::from_bytes(&hex::decode(RECEIPT_V1).unwrap()).unwrap();
    assert_eq!(old.version().unwrap(), 1);
    assert_eq!(old.verify(&[key.verifying_key()]).unwrap(), receipt());
    // A receipt without a decision is still written in version 1, byte for byte.
    assert_eq!(
        hex::encode(SignedReceipt::sign(&receipt(), &key).to_bytes()),
        RECEIPT_V1
    );
}

#[test]
fn a_version_2_receipt_binds_the_decision_and_each_field_is_signed() {
    let receiver = Node::new();
    let signed = SignedReceipt::sign(&receipt_v2(), &receiver.signing);
    assert_eq!(signed.version().unwrap(), 2);
    let bytes = signed.to_bytes();
    let parsed = SignedReceipt::from_bytes(&bytes).unwrap();
    assert_eq!(
        parsed.verify(&[receiver.verifying()]).unwrap(),
        receipt_v2()
    );
    for index in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[index] ^= 0x01;
        let result =
            SignedReceipt::from_bytes(&bad).and_then(|r| r.verify(&[receiver.verifying()]));
        assert!(result.is_err(), "flip at {index} accepted");
    }
    // The version 1 form of the same receipt is another signed text: a decision cannot be
    // stripped from a version 2 receipt without the receiver's key.
    assert_ne!(
        SignedReceipt::sign(&receipt(), &receiver.signing).to_bytes(),
        bytes
    );
}

#[test]
fn receipt_round_trip() {
    let receiver = Node::new();
    let signed = SignedReceipt::sign(&receipt(), &receiver.signing);
    let bytes = signed.to_bytes();
    let parsed = SignedReceipt::from_bytes(&bytes).unwrap();
    assert_eq!(parsed, signed);
    let other = Node::new();
    assert_eq!(
        parsed
            .verify(&[other.verifying(), receiver.verifying()])
            .unwrap(),
        receipt()
    );
}

#[test]
fn tampered_or_wrongly_keyed_receipts_are_refused() {
    let receiver = Node::new();
    let bytes = SignedReceipt::sign(&receipt(), &receiver.signing).to_bytes();
    for index in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[index] ^= 0x04;
        let result =
            SignedReceipt::from_bytes(&bad).and_then(|r| r.verify(&[receiver.verifying()]));
        assert!(result.is_err(), "flip at {index} accepted");
    }
    let signed = SignedReceipt::from_bytes(&bytes).unwrap();
    assert_eq!(
        signed.verify(&[Node::new().verifying()]).unwrap_err(),
        EnvelopeError::BadSignature
    );
    assert_eq!(
        signed.verify(&[]).unwrap_err(),
        EnvelopeError::UnknownSender
    );
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        SignedReceipt::from_bytes(&trailing),
        Err(EnvelopeError::Malformed(_))
    ));
}

#[test]
fn message_round_trip_and_refusals() {
    let node = Node::new();
    let bytes = sign_message(&node.signing, "healthfed/pull-request/1", b"{\"since\":0}");
    assert_eq!(
        verify_message(&bytes, "healthfed/pull-request/1", &[node.verifying()]).unwrap(),
        b"{\"since\":0}"
    );
    assert_eq!(
        verify_message(&bytes, "healthfed/other/1", &[node.verifying()]).unwrap_err(),
        EnvelopeError::UnexpectedDomain
    );
    assert_eq!(
        verify_message(
            &bytes,
            "healthfed/pull-request/1",
            &[Node::new().verifying()]
        )
        .unwrap_err(),
        EnvelopeError::BadSignature
    );
    for index in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[index] ^= 0x10;
        assert!(
            verify_message(&bad, "healthfed/pull-request/1", &[node.verifying()]).is_err(),
            "flip at {index}"
        );
    }
}

/// A receipt and a message have the same outer shape (signed bytes + 64-byte signature), so
/// each decodes as the other: only the signature domains keep them apart.
#[test]
fn signature_domains_separate_receipts_and_messages() {
    let node = Node::new();
    let receipt_bytes = SignedReceipt::sign(&receipt(), &node.signing).to_bytes();
    assert_eq!(
        verify_message(&receipt_bytes, "healthfed/receipt/1", &[node.verifying()]).unwrap_err(),
        EnvelopeError::BadSignature
    );
    let message = sign_message(&node.signing, "healthfed/receipt/1", b"x");
    let as_receipt = SignedReceipt::from_bytes(&message).unwrap();
    assert_eq!(
        as_receipt.verify(&[node.verifying()]).unwrap_err(),
        EnvelopeError::BadSignature
    );
}
