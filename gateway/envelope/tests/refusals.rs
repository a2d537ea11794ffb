//! Everything a hostile or broken peer (or a careless local caller) can do wrong is refused
//! with a reason the audit log can tell apart.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{params, Fixture, Node, Parts, SENDER};
use gateway_envelope::{
    open_all, sha256, EnvelopeError, EnvelopeReader, Limits, Opener, Sealer, Suite,
};

fn fixture() -> Fixture {
    // Three payload frames: two full chunks and a short last one.
    Fixture::new((0..250u8).collect(), Suite::Aes256Gcm, 100)
}

fn flip(bytes: &mut [u8], index: usize) {
    bytes[index] ^= 0x01;
}

#[test]
fn every_flipped_bit_in_the_signed_header_is_refused() {
    let f = fixture();
    let header_end = Parts::split(&f.envelope).prefix.len();
    // The last 64 bytes of the signed header are the signature.
    let signature_start = header_end - 64;
    for index in 8..header_end {
        for bit in [0x01u8, 0x80] {
            let mut bad = f.envelope.clone();
            bad[index] ^= bit;
            let err = f.open(&bad).unwrap_err();
            if index >= signature_start {
                assert_eq!(err, EnvelopeError::BadSignature, "signature byte {index}");
            } else {
                assert_ne!(
                    err,
                    EnvelopeError::Decrypt,
                    "header byte {index} must fail before decryption"
                );
            }
        }
    }
}

#[test]
fn unsupported_version_is_reported_as_such() {
    let f = fixture();
    let mut bad = f.envelope.clone();
    // Offset 8 starts the varint length of header_bytes; the version varint follows it.
    let mut at = 8;
    while bad[at] & 0x80 != 0 {
        at += 1;
    }
    let version_at = at + 1;
    assert_eq!(bad[version_at], 1);
    bad[version_at] = 2;
    assert_eq!(
        f.open(&bad).unwrap_err(),
        EnvelopeError::UnsupportedVersion(2)
    );
}

#[test]
fn flipped_bits_in_each_frame_kind_fail_to_decrypt() {
    let f = fixture();
    let parts = Parts::split(&f.envelope);
    assert_eq!(parts.frames.len(), 4, "metadata + 3 payload frames");
    for (frame, name) in [(0, "metadata"), (1, "first"), (2, "middle"), (3, "last")] {
        for offset in [4, parts.frames[frame].len() - 1] {
            let mut p = Parts::split(&f.envelope);
            flip(&mut p.frames[frame], offset);
            assert_eq!(
                f.open(&p.join()).unwrap_err(),
                EnvelopeError::Decrypt,
                "{name} frame, offset {offset}"
            );
        }
    }
}

#[test]
fn truncation_is_detected() {
    let f = fixture();
    let parts = Parts::split(&f.envelope);
    // Drop the last frame: a clean cut at a frame boundary.
    let mut dropped = Parts::split(&f.envelope);
    dropped.frames.pop();
    assert_eq!(
        f.open(&dropped.join()).unwrap_err(),
        EnvelopeError::MissingLastFrame
    );
    // Drop all payload frames.
    dropped.frames.truncate(1);
    assert_eq!(
        f.open(&dropped.join()).unwrap_err(),
        EnvelopeError::MissingLastFrame
    );
    // Cut mid-frame, mid-length, mid-header, mid-magic.
    let last_start = f.envelope.len() - parts.frames[3].len();
    for cut in [
        f.envelope.len() - 1,
        last_start + 2,
        last_start + 5,
        20,
        6,
        2,
        0,
    ] {
        assert_eq!(
            f.open(&f.envelope[..cut]).unwrap_err(),
            EnvelopeError::Truncated,
            "cut at {cut}"
        );
    }
}

#[test]
fn reordered_and_duplicated_frames_are_refused() {
    let f = fixture();
    let mut swapped = Parts::split(&f.envelope);
    swapped.frames.swap(1, 2);
    assert_eq!(f.open(&swapped.join()).unwrap_err(), EnvelopeError::Decrypt);

    let mut duplicated = Parts::split(&f.envelope);
    let first = duplicated.frames[1].clone();
    duplicated.frames.insert(2, first);
    assert_eq!(
        f.open(&duplicated.join()).unwrap_err(),
        EnvelopeError::Decrypt
    );

    // A frame from another envelope between the same parties, at the same position.
    let other = Fixture::new((0..250u8).rev().collect(), Suite::Aes256Gcm, 100);
    let mut spliced = Parts::split(&f.envelope);
    spliced.frames[2] = Parts::split(&other.envelope).frames[2].clone();
    assert_eq!(f.open(&spliced.join()).unwrap_err(), EnvelopeError::Decrypt);
}

#[test]
fn frames_after_the_last_are_refused() {
    let f = fixture();
    // After a short last frame the reader already knows nothing may follow.
    let mut extra = Parts::split(&f.envelope);
    let last = extra.frames[3].clone();
    extra.frames.push(last);
    assert_eq!(
        f.open(&extra.join()).unwrap_err(),
        EnvelopeError::FrameAfterLast
    );

    // After a full last frame an empty frame is structurally possible; the opener refuses it.
    let full = Fixture::new(vec![7u8; 200], Suite::ChaCha20Poly1305, 100);
    let mut extra = Parts::split(&full.envelope);
    let mut empty = 16u32.to_be_bytes().to_vec();
    empty.extend_from_slice(&[0u8; 16]);
    extra.frames.push(empty);
    assert_eq!(
        full.open(&extra.join()).unwrap_err(),
        EnvelopeError::FrameAfterLast
    );

    // The opener refuses it directly as well, and stays refused.
    let mut reader = EnvelopeReader::new(Limits::default());
    reader.push(&f.envelope);
    let h = reader
        .header()
        .unwrap()
        .unwrap()
        .verify(&[f.sender.verifying()])
        .unwrap();
    let (mut opener, _) = Opener::new(
        &h,
        &[&f.recipient.encryption],
        &reader.next_frame().unwrap().unwrap(),
    )
    .unwrap();
    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| reader.next_frame().unwrap()).collect();
    for frame in &frames {
        opener.open_chunk(frame).unwrap();
    }
    assert_eq!(
        opener.open_chunk(&frames[2]).unwrap_err(),
        EnvelopeError::FrameAfterLast
    );
    assert_eq!(
        opener.open_chunk(&frames[2]).unwrap_err(),
        EnvelopeError::Aborted
    );
    assert_eq!(opener.finish().unwrap_err(), EnvelopeError::Aborted);
}

#[test]
fn wrong_keys_are_refused() {
    let f = fixture();
    let stranger = Node::new();
    let sender_key = f.sender.verifying();
    let wrong_recipient = open_all(
        &f.envelope,
        |_| vec![sender_key],
        &[&stranger.encryption],
        Limits::default(),
    );
    assert_eq!(wrong_recipient.unwrap_err(), EnvelopeError::Decrypt);
    let no_keys = open_all(&f.envelope, |_| vec![sender_key], &[], Limits::default());
    assert_eq!(no_keys.unwrap_err(), EnvelopeError::Decrypt);
    let wrong_sender = open_all(
        &f.envelope,
        |_| vec![stranger.verifying()],
        &[&f.recipient.encryption],
        Limits::default(),
    );
    assert_eq!(wrong_sender.unwrap_err(), EnvelopeError::BadSignature);
    let unknown = open_all(
        &f.envelope,
        |_| Vec::new(),
        &[&f.recipient.encryption],
        Limits::default(),
    );
    assert_eq!(unknown.unwrap_err(), EnvelopeError::UnknownSender);
    // The lookup sees the claimed sender name.
    let looked_up = std::cell::RefCell::new(String::new());
    let _ = open_all(
        &f.envelope,
        |name| {
            looked_up.replace(name.to_owned());
            Vec::new()
        },
        &[],
        Limits::default(),
    );
    assert_eq!(looked_up.into_inner(), SENDER);
}

#[test]
fn oversized_lengths_are_refused_before_the_bytes_arrive() {
    // Header length beyond the hard cap: refused from the first 8 bytes.
    let mut reader = EnvelopeReader::new(Limits::default());
    reader.push(b"HFE1\xff\xff\xff\xff");
    assert_eq!(
        reader.header().unwrap_err(),
        EnvelopeError::TooLarge("header")
    );
    // Sticky: later calls return the same error.
    reader.push(&[0u8; 100]);
    assert_eq!(
        reader.next_frame().unwrap_err(),
        EnvelopeError::TooLarge("header")
    );

    // Beyond the configured limit.
    let f = fixture();
    let header_len = Parts::split(&f.envelope).prefix.len() as u32 - 8;
    let tight = Limits {
        max_header: header_len - 1,
        ..Limits::default()
    };
    let mut reader = EnvelopeReader::new(tight);
    reader.push(&f.envelope[..8]);
    assert_eq!(
        reader.header().unwrap_err(),
        EnvelopeError::TooLarge("header")
    );

    // A payload frame length beyond chunk_size + 16: refused from its 4 length bytes.
    let parts = Parts::split(&f.envelope);
    let mut reader = EnvelopeReader::new(Limits::default());
    reader.push(&parts.prefix);
    reader.push(&parts.frames[0]);
    assert!(reader.header().unwrap().is_some());
    assert!(reader.next_frame().unwrap().is_some());
    reader.push(&117u32.to_be_bytes());
    assert_eq!(
        reader.next_frame().unwrap_err(),
        EnvelopeError::TooLarge("frame")
    );

    // A metadata frame whose length disagrees with the header.
    let mut reader = EnvelopeReader::new(Limits::default());
    reader.push(&parts.prefix);
    reader.push(&u32::MAX.to_be_bytes());
    assert_eq!(
        reader.next_frame().unwrap_err(),
        EnvelopeError::LengthMismatch
    );

    // A frame too short to hold a tag.
    let mut reader = EnvelopeReader::new(Limits::default());
    reader.push(&parts.prefix);
    reader.push(&parts.frames[0]);
    reader.push(&15u32.to_be_bytes());
    reader.next_frame().unwrap();
    assert!(matches!(
        reader.next_frame().unwrap_err(),
        EnvelopeError::Malformed(_)
    ));
}

#[test]
fn declared_sizes_beyond_local_limits_are_refused() {
    let f = fixture();
    let small_payload = Limits {
        max_payload: 249,
        ..Limits::default()
    };
    let err = open_all(
        &f.envelope,
        |_| vec![f.sender.verifying()],
        &[&f.recipient.encryption],
        small_payload,
    );
    assert_eq!(err.unwrap_err(), EnvelopeError::TooLarge("payload"));
    let small_metadata = Limits {
        max_metadata: f.metadata.len() as u32 - 1,
        ..Limits::default()
    };
    let err = open_all(
        &f.envelope,
        |_| vec![f.sender.verifying()],
        &[&f.recipient.encryption],
        small_metadata,
    );
    assert_eq!(err.unwrap_err(), EnvelopeError::TooLarge("metadata"));
    // Exactly at the limits is fine.
    let exact = Limits {
        max_payload: 250,
        max_metadata: f.metadata.len() as u32,
        ..Limits::default()
    };
    let opened = open_all(
        &f.envelope,
        |_| vec![f.sender.verifying()],
        &[&f.recipient.encryption],
        exact,
    );
    assert_eq!(opened.unwrap().payload.len(), 250);
}

#[test]
fn a_signed_header_that_lies_about_the_payload_digest_is_refused_by_the_recipient() {
    // An honest key signing a header whose digest does not match the payload that follows
    // (a sender bug, or its payload file changed between hashing and sealing). The sealer
    // takes the caller's digest as given; the recipient recomputes it and refuses.
    let sender = Node::new();
    let recipient = Node::new();
    let payload = vec![1u8; 150];
    let seal_and_open = |digest: [u8; 32]| {
        let mut p = params(&payload, Suite::Aes256Gcm, 100);
        p.payload_digest = digest;
        let (mut sealer, mut envelope) = Sealer::start(
            &p,
            b"m",
            &recipient.encryption.public_key(),
            &sender.signing,
        )
        .unwrap();
        envelope.extend_from_slice(&sealer.seal_chunk(&payload[..100], false).unwrap());
        envelope.extend_from_slice(&sealer.seal_chunk(&payload[100..], true).unwrap());
        assert!(sealer.is_finished());
        open_all(
            &envelope,
            |_| vec![sender.verifying()],
            &[&recipient.encryption],
            Limits::default(),
        )
    };
    assert_eq!(
        seal_and_open(sha256(b"something else")).unwrap_err(),
        EnvelopeError::DigestMismatch
    );
    // The same envelope with the true digest opens: the refusal is the digest's doing.
    assert_eq!(seal_and_open(sha256(&payload)).unwrap().payload, payload);
}

#[test]
fn sealer_refuses_misuse() {
    let sender = Node::new();
    let recipient = Node::new();
    let payload = vec![9u8; 250];
    let p = params(&payload, Suite::ChaCha20Poly1305, 100);
    let pk = recipient.encryption.public_key();
    let (mut sealer, _) = Sealer::start(&p, b"", &pk, &sender.signing).unwrap();
    assert!(matches!(
        sealer.seal_chunk(&payload[..50], false),
        Err(EnvelopeError::InvalidInput(_))
    ));
    assert_eq!(
        sealer.seal_chunk(&payload[..101], false).unwrap_err(),
        EnvelopeError::TooLarge("chunk")
    );
    assert_eq!(
        sealer.seal_chunk(&payload[..100], true).unwrap_err(),
        EnvelopeError::LengthMismatch
    );
    sealer.seal_chunk(&payload[..100], false).unwrap();
    sealer.seal_chunk(&payload[100..200], false).unwrap();
    assert_eq!(
        sealer.seal_chunk(&payload[..100], false).unwrap_err(),
        EnvelopeError::LengthMismatch
    );
    sealer.seal_chunk(&payload[200..], true).unwrap();
    assert_eq!(
        sealer.seal_chunk(&[], true).unwrap_err(),
        EnvelopeError::FrameAfterLast
    );

    let mut bad = params(&payload, Suite::Aes256Gcm, 100);
    bad.sender = "has\0nul";
    assert!(matches!(
        Sealer::start(&bad, b"", &pk, &sender.signing),
        Err(EnvelopeError::InvalidInput(_))
    ));
    bad.sender = "";
    assert!(matches!(
        Sealer::start(&bad, b"", &pk, &sender.signing),
        Err(EnvelopeError::InvalidInput(_))
    ));
    let long = "x".repeat(256);
    bad.sender = &long;
    assert!(matches!(
        Sealer::start(&bad, b"", &pk, &sender.signing),
        Err(EnvelopeError::InvalidInput(_))
    ));
    let mut bad = params(&payload, Suite::Aes256Gcm, 0);
    assert!(matches!(
        Sealer::start(&bad, b"", &pk, &sender.signing),
        Err(EnvelopeError::InvalidInput(_))
    ));
    bad.chunk_size = gateway_envelope::MAX_CHUNK_SIZE + 1;
    assert!(matches!(
        Sealer::start(&bad, b"", &pk, &sender.signing),
        Err(EnvelopeError::InvalidInput(_))
    ));
    // seal_to_vec checks the payload against the parameters.
    let p = params(&payload, Suite::Aes256Gcm, 100);
    let err =
        gateway_envelope::seal_to_vec(&p, b"", &payload[1..], &pk, &sender.signing).unwrap_err();
    assert_eq!(err, EnvelopeError::LengthMismatch);
}

#[test]
fn errors_have_stable_reasons_and_no_data() {
    let f = fixture();
    let mut bad = Parts::split(&f.envelope);
    flip(&mut bad.frames[1], 10);
    let err = f.open(&bad.join()).unwrap_err();
    assert_eq!(err.reason(), "decrypt");
    assert_eq!(err.to_string(), "frame failed to decrypt");
    assert_eq!(EnvelopeError::BadSignature.reason(), "bad-signature");
    assert_eq!(
        EnvelopeError::MissingLastFrame.reason(),
        "missing-last-frame"
    );
}

#[test]
fn a_huge_declared_payload_with_few_frames_allocates_nothing_big() {
    // A validly signed header may claim up to `max_payload`; the receiver must not trust it
    // for allocation. 3 GiB declared, one 100-byte chunk sent, then the stream ends.
    let sender = Node::new();
    let recipient = Node::new();
    let mut p = params(&[], Suite::Aes256Gcm, 100);
    p.payload_len = 3 * 1024 * 1024 * 1024;
    let (mut sealer, mut envelope) = Sealer::start(
        &p,
        b"m",
        &recipient.encryption.public_key(),
        &sender.signing,
    )
    .unwrap();
    envelope.extend_from_slice(&sealer.seal_chunk(&[5u8; 100], false).unwrap());
    let err = open_all(
        &envelope,
        |_| vec![sender.verifying()],
        &[&recipient.encryption],
        Limits::default(),
    );
    assert_eq!(err.unwrap_err(), EnvelopeError::MissingLastFrame);
    // A short chunk claiming to be last is a length mismatch, not a success.
    let mut p = params(&[], Suite::Aes256Gcm, 100);
    p.payload_len = 150;
    let (mut sealer, _) = Sealer::start(
        &p,
        b"m",
        &recipient.encryption.public_key(),
        &sender.signing,
    )
    .unwrap();
    assert_eq!(
        sealer.seal_chunk(&[5u8; 50], true).unwrap_err(),
        EnvelopeError::LengthMismatch
    );
}

#[test]
fn frames_with_the_wrong_size_are_refused_before_decryption() {
    let f = fixture();
    // Frame 1 cut to 50 plaintext bytes, its length prefix fixed up: a short frame that cannot
    // be the last one because 250 bytes are still due.
    let mut parts = Parts::split(&f.envelope);
    let mut short = (66u32).to_be_bytes().to_vec();
    short.extend_from_slice(&parts.frames[1][4..70]);
    parts.frames[1] = short;
    assert_eq!(
        f.open(&parts.join()).unwrap_err(),
        EnvelopeError::LengthMismatch
    );
    // More plaintext than the header declares: the reader counts before anything decrypts.
    let parts = Parts::split(&f.envelope);
    let mut reader = EnvelopeReader::new(Limits::default());
    reader.push(&parts.prefix);
    for frame in [
        &parts.frames[0],
        &parts.frames[1],
        &parts.frames[1],
        &parts.frames[1],
    ] {
        reader.push(frame);
    }
    reader.header().unwrap().unwrap();
    for _ in 0..3 {
        reader.next_frame().unwrap().unwrap();
    }
    assert_eq!(
        reader.next_frame().unwrap_err(),
        EnvelopeError::LengthMismatch
    );
}
