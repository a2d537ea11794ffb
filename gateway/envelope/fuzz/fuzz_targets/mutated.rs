//! A valid envelope with input-chosen byte changes, opened whole. Reaches the frame and
//! decryption paths that random bytes cannot get past the signature to. Must never panic, and
//! must only succeed when nothing changed.

#![no_main]

use std::sync::OnceLock;

use gateway_envelope::{
    open_all, seal_to_vec, sha256, EncryptionSecretKey, Limits, SealParams, SigningKey, Suite,
    TransferId, VerifyingKey,
};
use libfuzzer_sys::fuzz_target;

/// PKCS#8 v1 of the RFC 8032 test 1 seed.
const PKCS8: &str = "302e020100300506032b6570042204209d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

struct Fixture {
    envelope: Vec<u8>,
    verifying: VerifyingKey,
    secret: EncryptionSecretKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pkcs8: Vec<u8> = (0..PKCS8.len() / 2)
            .map(|i| u8::from_str_radix(&PKCS8[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let signer = SigningKey::from_pkcs8(&pkcs8).unwrap();
        let secret = EncryptionSecretKey::from_bytes([7; 32]);
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let params = SealParams {
            transfer_id: TransferId([1; 16]),
            sender: "a",
            recipient: "b",
            created_at_ms: 0,
            payload_len: payload.len() as u64,
            payload_digest: sha256(&payload),
            suite: Suite::ChaCha20Poly1305,
            chunk_size: 64,
        };
        let envelope =
            seal_to_vec(&params, b"meta", &payload, &secret.public_key(), &signer).unwrap();
        Fixture {
            envelope,
            verifying: signer.verifying_key(),
            secret,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut bytes = f.envelope.clone();
    // Input = (u16-be position, xor mask) triples, then an optional truncation.
    for change in data.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([change[0], change[1]])) % bytes.len();
        bytes[at] ^= change[2];
    }
    if data.len() % 3 == 1 {
        bytes.truncate(usize::from(data[data.len() - 1]) * bytes.len() / 256);
    }
    let result = open_all(&bytes, |_| vec![f.verifying], &[&f.secret], Limits::default());
    if bytes != f.envelope {
        assert!(result.is_err());
    } else {
        assert!(result.is_ok());
    }
});
