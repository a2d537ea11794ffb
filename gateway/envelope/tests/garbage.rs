//! Random and mutated inputs never panic and are never accepted.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{Fixture, Prng};
use gateway_envelope::{EnvelopeError, EnvelopeReader, Limits, Opener, Suite, MAGIC};

/// The gateway's receive loop: push pieces, verify the header, open frames, finish.
fn stream_open(
    f: &Fixture,
    bytes: &[u8],
    prng: &mut Prng,
) -> Result<(Vec<u8>, Vec<u8>), EnvelopeError> {
    let mut reader = EnvelopeReader::new(Limits::default());
    let mut header = None;
    let mut opener: Option<Opener> = None;
    let mut metadata = Vec::new();
    let mut payload = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + 1 + prng.below(300)).min(bytes.len());
        reader.push(&bytes[at..end]);
        at = end;
        if header.is_none() {
            match reader.header()? {
                Some(h) => header = Some(h.verify(&[f.sender.verifying()])?),
                None => continue,
            }
        }
        let Some(h) = &header else { continue };
        while let Some(frame) = reader.next_frame()? {
            match &mut opener {
                None => {
                    let (o, m) = Opener::new(h, &[&f.recipient.encryption], &frame)?;
                    opener = Some(o);
                    metadata = m;
                }
                Some(o) => payload.extend_from_slice(&o.open_chunk(&frame)?),
            }
        }
    }
    if !reader.is_drained() {
        return Err(EnvelopeError::Truncated);
    }
    opener.ok_or(EnvelopeError::Truncated)?.finish()?;
    Ok((metadata, payload))
}

fn mutate(original: &[u8], prng: &mut Prng) -> Vec<u8> {
    let mut bytes = original.to_vec();
    let rounds = 1 + prng.below(3);
    for _ in 0..rounds {
        if bytes.is_empty() {
            bytes.push(prng.next_u64() as u8);
            continue;
        }
        let at = prng.below(bytes.len());
        match prng.below(6) {
            0 => bytes[at] ^= 1 << prng.below(8),
            1 => bytes[at] = prng.next_u64() as u8,
            2 => bytes.truncate(at),
            3 => bytes.insert(at, prng.next_u64() as u8),
            4 => {
                bytes.remove(at);
            }
            _ => {
                let end = (at + 1 + prng.below(64)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = prng.below(bytes.len());
                bytes.splice(to..to, copy);
            }
        }
    }
    bytes
}

#[test]
fn random_bytes_are_refused_without_panicking() {
    let f = Fixture::new(b"payload".to_vec(), Suite::Aes256Gcm, 64);
    let mut prng = Prng::new(11);
    for i in 0..3000 {
        let len = prng.below(600);
        let mut bytes = prng.bytes(len);
        // Most inputs get past the magic so the deeper parsers see them too.
        if i % 4 != 0 && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(&MAGIC);
            let header_len = prng.below(bytes.len() - 7) as u32;
            bytes[4..8].copy_from_slice(&header_len.to_be_bytes());
        }
        assert!(f.open(&bytes).is_err());
        assert!(stream_open(&f, &bytes, &mut prng).is_err());
    }
}

#[test]
fn mutated_envelopes_are_refused_without_panicking() {
    let mut prng = Prng::new(12);
    for suite in Suite::ALL {
        let f = Fixture::new(prng.bytes(300), suite, 64);
        let mut refused = 0;
        for _ in 0..2000 {
            let bytes = mutate(&f.envelope, &mut prng);
            let whole = f.open(&bytes);
            let streamed = stream_open(&f, &bytes, &mut prng);
            if bytes == f.envelope {
                assert_eq!(whole.unwrap().payload, f.payload);
                assert_eq!(streamed.unwrap().1, f.payload);
            } else {
                assert!(whole.is_err(), "mutation accepted by open_all");
                assert!(streamed.is_err(), "mutation accepted by the reader");
                refused += 1;
            }
        }
        assert!(refused > 1900, "only {refused} mutations were real changes");
        // The unmutated envelope still opens both ways.
        assert_eq!(
            stream_open(&f, &f.envelope, &mut prng).unwrap(),
            (f.metadata.clone(), f.payload.clone())
        );
    }
}

#[test]
fn errors_never_carry_input_bytes() {
    let f = Fixture::new(b"SECRET-PATIENT-DATA".to_vec(), Suite::Aes256Gcm, 8);
    let mut prng = Prng::new(13);
    for _ in 0..500 {
        let bytes = mutate(&f.envelope, &mut prng);
        if let Err(e) = f.open(&bytes) {
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains("SECRET") && !text.contains("facility-"),
                "{text}"
            );
        }
    }
}
