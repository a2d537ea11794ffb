//! Sealing and opening whole and streamed envelopes, every suite, edge sizes.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{params, Fixture, Node, Parts, Prng, CREATED_AT_MS, RECIPIENT, SENDER};
use gateway_envelope::{
    open_all, sha256, EnvelopeError, EnvelopeReader, Limits, Opener, Sealer, Suite, TransferId,
    DEFAULT_CHUNK_SIZE, MAGIC, TAG_LEN,
};

const SUITES: [Suite; 3] = Suite::ALL;

#[test]
fn edge_sizes_round_trip_in_every_suite() {
    let chunk = 1000u32;
    let mut prng = Prng::new(1);
    for suite in SUITES {
        for len in [0usize, 1, 999, 1000, 1001, 2000, 3500] {
            let fixture = Fixture::new(prng.bytes(len), suite, chunk);
            let opened = fixture.open(&fixture.envelope).unwrap();
            assert_eq!(opened.payload, fixture.payload, "suite {suite:?} len {len}");
            assert_eq!(opened.metadata, fixture.metadata);
            assert_eq!(opened.header.suite(), suite);
            // One frame per started chunk, at least one: the envelope has no slack frames.
            let expected_frames = 1 + len.div_ceil(chunk as usize).max(1);
            assert_eq!(
                Parts::split(&fixture.envelope).frames.len(),
                expected_frames
            );
        }
    }
}

#[test]
fn multi_megabyte_payload_with_default_chunks() {
    let payload = Prng::new(2).bytes(3 * 1024 * 1024 + 17);
    for suite in SUITES {
        let fixture = Fixture::new(payload.clone(), suite, DEFAULT_CHUNK_SIZE);
        let opened = fixture.open(&fixture.envelope).unwrap();
        assert_eq!(opened.payload.len(), payload.len());
        assert!(opened.payload == payload);
        // Ciphertext overhead: 16 bytes of tag and 4 of length per frame, plus the header.
        let frames = 1 + payload.len().div_ceil(DEFAULT_CHUNK_SIZE as usize);
        let overhead = fixture.envelope.len() - payload.len() - fixture.metadata.len();
        assert!(overhead > frames * (TAG_LEN + 4));
        assert!(overhead < frames * (TAG_LEN + 4) + 400);
    }
}

#[test]
fn header_fields_are_visible_and_digest_names_the_signed_header() {
    let fixture = Fixture::new(b"hello".to_vec(), Suite::ChaCha20Poly1305, 4);
    let opened = fixture.open(&fixture.envelope).unwrap();
    let h = &opened.header;
    assert_eq!(h.transfer_id(), TransferId([0x42; 16]));
    assert_eq!(h.sender(), SENDER);
    assert_eq!(h.recipient(), RECIPIENT);
    assert_eq!(h.created_at_ms(), CREATED_AT_MS);
    assert_eq!(h.payload_len(), 5);
    assert_eq!(h.metadata_len() as usize, fixture.metadata.len());
    assert_eq!(h.payload_digest(), sha256(b"hello"));
    assert_eq!(h.chunk_size(), 4);
    assert_eq!(h.version(), 1);
    assert_eq!(&fixture.envelope[..4], &MAGIC);
    let parts = Parts::split(&fixture.envelope);
    assert_eq!(h.header_digest(), sha256(&parts.prefix[8..]));
    // Payload and metadata are not visible in the clear.
    let needle = b"resourceType";
    assert!(!fixture.envelope.windows(needle.len()).any(|w| w == needle));
    let debug = format!("{opened:?}");
    assert!(
        !debug.contains("resourceType") && !debug.contains("104, 101"),
        "{debug}"
    );
}

/// Streams through Sealer and EnvelopeReader fed in random small pieces; with a payload that is
/// an exact multiple of the chunk size sealed with an explicit empty last frame.
#[test]
fn streaming_in_random_pieces() {
    let mut prng = Prng::new(3);
    for suite in SUITES {
        for (len, chunk, empty_last) in [
            (0usize, 64u32, false),
            (640, 64, true),
            (640, 64, false),
            (1000, 64, false),
        ] {
            let sender = Node::new();
            let recipient = Node::new();
            let payload = prng.bytes(len);
            let metadata = prng.bytes(33);
            let p = params(&payload, suite, chunk);
            let (mut sealer, mut wire) = Sealer::start(
                &p,
                &metadata,
                &recipient.encryption.public_key(),
                &sender.signing,
            )
            .unwrap();
            let mut chunks: Vec<&[u8]> = payload.chunks(chunk as usize).collect();
            if chunks.is_empty() || empty_last {
                chunks.push(&[]);
            }
            let n = chunks.len();
            for (i, c) in chunks.into_iter().enumerate() {
                wire.extend_from_slice(&sealer.seal_chunk(c, i + 1 == n).unwrap());
            }
            assert!(sealer.is_finished());

            let mut reader = EnvelopeReader::new(Limits::default());
            let mut header = None;
            let mut opener = None;
            let mut got_metadata = Vec::new();
            let mut got = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let step = 1 + prng.below(97);
                let end = (at + step).min(wire.len());
                reader.push(&wire[at..end]);
                at = end;
                if header.is_none() {
                    if let Some(unverified) = reader.header().unwrap() {
                        assert_eq!(unverified.sender(), SENDER);
                        header = Some(unverified.verify(&[sender.verifying()]).unwrap());
                    }
                }
                let Some(h) = &header else { continue };
                while let Some(frame) = reader.next_frame().unwrap() {
                    match &mut opener {
                        None => {
                            let (o, m) = Opener::new(h, &[&recipient.encryption], &frame).unwrap();
                            opener = Some(o);
                            got_metadata = m;
                        }
                        Some(o) => got.extend_from_slice(&o.open_chunk(&frame).unwrap()),
                    }
                }
            }
            assert!(reader.is_drained());
            opener.unwrap().finish().unwrap();
            assert_eq!(
                got, payload,
                "suite {suite:?} len {len} empty_last {empty_last}"
            );
            assert_eq!(got_metadata, metadata);
        }
    }
}

#[test]
fn key_rotation_on_both_sides() {
    let sender_old = Node::new();
    let sender_new = Node::new();
    let recipient_old = Node::new();
    let recipient_new = Node::new();
    let payload = b"rotated".to_vec();
    let envelope = gateway_envelope::seal_to_vec(
        &params(&payload, Suite::Aes256Gcm, 1024),
        b"m",
        &payload,
        &recipient_old.encryption.public_key(),
        &sender_new.signing,
    )
    .unwrap();
    let opened = open_all(
        &envelope,
        |_| vec![sender_old.verifying(), sender_new.verifying()],
        &[&recipient_new.encryption, &recipient_old.encryption],
        Limits::default(),
    )
    .unwrap();
    assert_eq!(opened.payload, payload);
    // With only the retired keys it fails.
    let err = open_all(
        &envelope,
        |_| vec![sender_old.verifying()],
        &[&recipient_old.encryption],
        Limits::default(),
    );
    assert_eq!(err.unwrap_err(), EnvelopeError::BadSignature);
    let err = open_all(
        &envelope,
        |_| vec![sender_new.verifying()],
        &[&recipient_new.encryption],
        Limits::default(),
    );
    assert_eq!(err.unwrap_err(), EnvelopeError::Decrypt);
}

#[test]
fn sealing_twice_gives_different_ciphertexts() {
    let fixture = Fixture::new(b"same".to_vec(), Suite::Aes256Gcm, 64);
    let again = gateway_envelope::seal_to_vec(
        &params(&fixture.payload, Suite::Aes256Gcm, 64),
        &fixture.metadata,
        &fixture.payload,
        &fixture.recipient.encryption.public_key(),
        &fixture.sender.signing,
    )
    .unwrap();
    assert_ne!(
        again, fixture.envelope,
        "fresh HPKE ephemeral key per envelope"
    );
    assert_eq!(fixture.open(&again).unwrap().payload, b"same");
}

#[test]
fn transfer_id_hex_round_trip() {
    let id = TransferId::new_random().unwrap();
    let hex = id.to_hex();
    assert_eq!(hex.len(), 32);
    assert_eq!(hex.parse::<TransferId>().unwrap(), id);
    assert_eq!(id.to_string(), hex);
    assert_eq!(hex.to_uppercase().parse::<TransferId>().unwrap(), id);
    assert_ne!(TransferId::new_random().unwrap(), id);
    for bad in ["", "00", &"0".repeat(31), &"0".repeat(33), &"g".repeat(32)] {
        assert!(
            matches!(bad.parse::<TransferId>(), Err(EnvelopeError::Malformed(_))),
            "{bad}"
        );
    }
}
