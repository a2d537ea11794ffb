//! The crypto floor: exactly the primitives one transfer needs, with the gateway's own choices
//! (Ed25519 via ring, SHA-256 via ring, HPKE base mode DHKEM(X25519, HKDF-SHA256) with
//! HKDF-SHA256 and AES-256-GCM via the hpke crate, 64 KiB frames), and nothing else: no
//! framing, no I/O, no TLS, no policy, no storage.
//!
//! Per transfer: sender hashes the payload, signs the header, sets up HPKE (ephemeral X25519 +
//! key agreement) and seals every frame; receiver verifies the header signature, sets up HPKE
//! (key agreement), opens every frame, hashes the plaintext and signs a receipt; the sender
//! verifies the receipt.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Kem as _, OpModeR, OpModeS};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::Serialize;

use crate::BoxError;

const FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub payload_bytes: usize,
    pub iterations: u64,
    /// Sum of all parts, per transfer (both sides).
    pub ms_per_transfer: f64,
    /// Milliseconds per transfer, per primitive.
    pub parts_ms: BTreeMap<&'static str, f64>,
    /// For comparison only (not in the floor): AES-256-GCM seal + open of the payload with
    /// ring instead of the hpke crate's RustCrypto AEAD.
    pub ring_aes_gcm_seal_open_ms: f64,
}

fn timed<T>(
    acc: &mut BTreeMap<&'static str, Duration>,
    name: &'static str,
    f: impl FnOnce() -> T,
) -> T {
    let t = Instant::now();
    let out = f();
    *acc.entry(name).or_default() += t.elapsed();
    out
}

/// Measures for at least `min_time` (and at least 3 transfers).
pub fn measure(payload: &[u8], min_time: Duration) -> Result<Floor, BoxError> {
    let rng = ring::rand::SystemRandom::new();
    let sender_key = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "ed25519 keygen")?
            .as_ref(),
    )
    .map_err(|_| "ed25519 key")?;
    let receiver_key = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "ed25519 keygen")?
            .as_ref(),
    )
    .map_err(|_| "ed25519 key")?;
    let sender_pub = UnparsedPublicKey::new(&ED25519, sender_key.public_key().as_ref().to_vec());
    let receiver_pub =
        UnparsedPublicKey::new(&ED25519, receiver_key.public_key().as_ref().to_vec());
    let (recipient_sk, recipient_pk) = X25519HkdfSha256::gen_keypair();
    let info = b"healthfed bench floor transfer-id sender recipient";
    // A header and a receipt of realistic size (the gateway's are a few hundred bytes).
    let mut header = vec![0x5au8; 256];
    let mut receipt = vec![0xa5u8; 160];

    let mut acc: BTreeMap<&'static str, Duration> = BTreeMap::new();
    let started = Instant::now();
    let mut iterations = 0u64;
    while iterations < 3 || started.elapsed() < min_time {
        iterations += 1;
        let digest = timed(&mut acc, "sender_sha256", || {
            ring::digest::digest(&ring::digest::SHA256, payload)
        });
        header[..32].copy_from_slice(digest.as_ref());
        let sig = timed(&mut acc, "sender_sign_header", || sender_key.sign(&header));
        let (enc, mut sctx) = timed(&mut acc, "sender_hpke_setup", || {
            hpke::setup_sender::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
                &OpModeS::Base,
                &recipient_pk,
                info,
            )
        })
        .map_err(|e| format!("hpke setup sender: {e}"))?;
        let frames = timed(&mut acc, "sender_seal", || {
            payload
                .chunks(FRAME)
                .map(|c| sctx.seal(c, &header[..32]))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| format!("hpke seal: {e}"))?;

        timed(&mut acc, "receiver_verify_header", || {
            sender_pub.verify(&header, sig.as_ref())
        })
        .map_err(|_| "header signature did not verify")?;
        let mut rctx = timed(&mut acc, "receiver_hpke_setup", || {
            hpke::setup_receiver::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
                &OpModeR::Base,
                &recipient_sk,
                &enc,
                info,
            )
        })
        .map_err(|e| format!("hpke setup receiver: {e}"))?;
        let plain = timed(&mut acc, "receiver_open", || {
            let mut out = Vec::with_capacity(payload.len());
            for f in &frames {
                out.extend_from_slice(&rctx.open(f, &header[..32])?);
            }
            Ok::<_, hpke::HpkeError>(out)
        })
        .map_err(|e| format!("hpke open: {e}"))?;
        let digest2 = timed(&mut acc, "receiver_sha256", || {
            ring::digest::digest(&ring::digest::SHA256, &plain)
        });
        if digest2.as_ref() != digest.as_ref() {
            return Err("floor round trip changed the payload".into());
        }
        receipt[..32].copy_from_slice(digest2.as_ref());
        let rsig = timed(&mut acc, "receiver_sign_receipt", || {
            receiver_key.sign(&receipt)
        });
        timed(&mut acc, "sender_verify_receipt", || {
            receiver_pub.verify(&receipt, rsig.as_ref())
        })
        .map_err(|_| "receipt signature did not verify")?;
        black_box(&plain);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / iterations as f64;
    let parts_ms: BTreeMap<&'static str, f64> = acc.iter().map(|(k, v)| (*k, per(*v))).collect();
    let ms_per_transfer = parts_ms.values().sum();
    Ok(Floor {
        payload_bytes: payload.len(),
        iterations,
        ms_per_transfer,
        parts_ms,
        ring_aes_gcm_seal_open_ms: ring_aead(payload, min_time / 2)?,
    })
}

fn ring_aead(payload: &[u8], min_time: Duration) -> Result<f64, BoxError> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).map_err(|_| "aes key")?);
    let started = Instant::now();
    let mut iterations = 0u64;
    let mut buf = Vec::with_capacity(FRAME + 16);
    while iterations < 3 || started.elapsed() < min_time {
        iterations += 1;
        for (i, c) in payload.chunks(FRAME).enumerate() {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
            buf.clear();
            buf.extend_from_slice(c);
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut buf,
            )
            .map_err(|_| "aes seal")?;
            let plain = key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
                .map_err(|_| "aes open")?;
            black_box(plain);
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e3 / iterations as f64)
}
