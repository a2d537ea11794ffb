//! The crypto floor: exactly the primitives one transfer needs, with the gateway's own choices
//! (Ed25519 via ring, SHA-256 via ring, the default `exported-aes-256-gcm` suite: an HPKE base
//! mode export-only context, DHKEM(X25519, HKDF-SHA256) with HKDF-SHA256 via the hpke crate,
//! whose exporter keys ring's AES-256-GCM; 64 KiB frames), and nothing else: no framing, no
//! I/O, no TLS, no policy, no storage.
//!
//! Per transfer: sender hashes the payload, signs the header, sets up HPKE (ephemeral X25519 +
//! key agreement + two exports) and seals every frame; receiver verifies the header signature,
//! sets up HPKE (key agreement + two exports), opens every frame, hashes the plaintext and signs
//! a receipt; the sender verifies the receipt.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use hpke::aead::{AesGcm256, ExportOnlyAead};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Kem as _, OpModeR, OpModeS};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
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
    /// For comparison only (not in the floor): AES-256-GCM seal + open of the payload with the
    /// hpke crate's own context (RustCrypto; the `hpke-aes-256-gcm` suite) instead of ring.
    pub hpke_aes_gcm_seal_open_ms: f64,
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
        let (enc, sender_cipher) = timed(&mut acc, "sender_hpke_setup", || {
            let (enc, ctx) = hpke::setup_sender::<ExportOnlyAead, HkdfSha256, X25519HkdfSha256>(
                &OpModeS::Base,
                &recipient_pk,
                info,
            )?;
            let cipher = FrameCipher::from_exporter(|c, out| ctx.export(c, out))?;
            Ok::<_, BoxError>((enc, cipher))
        })?;
        timed(&mut acc, "receiver_verify_header", || {
            sender_pub.verify(&header, sig.as_ref())
        })
        .map_err(|_| "header signature did not verify")?;
        let receiver_cipher = timed(&mut acc, "receiver_hpke_setup", || {
            let ctx = hpke::setup_receiver::<ExportOnlyAead, HkdfSha256, X25519HkdfSha256>(
                &OpModeR::Base,
                &recipient_sk,
                &enc,
                info,
            )?;
            FrameCipher::from_exporter(|c, out| ctx.export(c, out))
        })?;
        // Frame by frame through one reused buffer, as the gateway streams: seal, open, hash.
        // (Collecting every frame first would time page faults of payload-sized allocations,
        // which for the 1 GiB file are not crypto and not what the gateway does.)
        let mut frame = Vec::with_capacity(FRAME + 16);
        let mut receiver_hash = ring::digest::Context::new(&ring::digest::SHA256);
        for (i, chunk) in payload.chunks(FRAME).enumerate() {
            timed(&mut acc, "sender_seal", || {
                sender_cipher.seal_into(i, chunk, &header[..32], &mut frame)
            })
            .map_err(|_| "aes seal")?;
            let plain = timed(&mut acc, "receiver_open", || {
                receiver_cipher.open(i, &mut frame, &header[..32])
            })
            .map_err(|_| "aes open")?;
            timed(&mut acc, "receiver_sha256", || receiver_hash.update(plain));
            black_box(&frame);
        }
        let digest2 = timed(&mut acc, "receiver_sha256", || receiver_hash.finish());
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
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / iterations as f64;
    let parts_ms: BTreeMap<&'static str, f64> = acc.iter().map(|(k, v)| (*k, per(*v))).collect();
    let ms_per_transfer = parts_ms.values().sum();
    Ok(Floor {
        payload_bytes: payload.len(),
        iterations,
        ms_per_transfer,
        parts_ms,
        hpke_aes_gcm_seal_open_ms: hpke_aead(payload, min_time / 2)?,
    })
}

/// The `exported-aes-256-gcm` frame cipher: ring's AES-256-GCM under a key and base nonce
/// from the HPKE exporter, nonce `base XOR i` (the same contexts as `gateway-envelope`).
struct FrameCipher {
    key: LessSafeKey,
    base_nonce: [u8; 12],
}

impl FrameCipher {
    /// `export(context, out)` is the HPKE context's exporter.
    fn from_exporter(
        export: impl Fn(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    ) -> Result<Self, BoxError> {
        let (mut key, mut base_nonce) = ([0u8; 32], [0u8; 12]);
        export(b"healthfed/envelope/1 aes-256-gcm key", &mut key)?;
        export(
            b"healthfed/envelope/1 aes-256-gcm base nonce",
            &mut base_nonce,
        )?;
        Ok(Self::new(&key, base_nonce).map_err(|_| "aes key")?)
    }

    fn new(key: &[u8; 32], base_nonce: [u8; 12]) -> Result<Self, ring::error::Unspecified> {
        Ok(Self {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key)?),
            base_nonce,
        })
    }

    fn nonce(&self, i: usize) -> Nonce {
        let mut nonce = self.base_nonce;
        for (n, s) in nonce[4..].iter_mut().zip((i as u64).to_be_bytes()) {
            *n ^= s;
        }
        Nonce::assume_unique_for_key(nonce)
    }

    /// Replaces `out` with frame `i`: the sealed chunk and its tag.
    fn seal_into(
        &self,
        i: usize,
        chunk: &[u8],
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ring::error::Unspecified> {
        out.clear();
        out.extend_from_slice(chunk);
        self.key
            .seal_in_place_append_tag(self.nonce(i), Aad::from(aad), out)
    }

    fn open<'a>(
        &self,
        i: usize,
        frame: &'a mut [u8],
        aad: &[u8],
    ) -> Result<&'a mut [u8], ring::error::Unspecified> {
        self.key.open_in_place(self.nonce(i), Aad::from(aad), frame)
    }
}

/// Seal + open of the payload in 64 KiB frames with the hpke crate's AES-256-GCM context.
fn hpke_aead(payload: &[u8], min_time: Duration) -> Result<f64, BoxError> {
    let (sk, pk) = X25519HkdfSha256::gen_keypair();
    let info = b"healthfed bench floor comparison";
    let started = Instant::now();
    let mut iterations = 0u64;
    while iterations < 3 || started.elapsed() < min_time {
        iterations += 1;
        let (enc, mut sctx) = hpke::setup_sender::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &pk,
            info,
        )
        .map_err(|e| format!("hpke setup sender: {e}"))?;
        let mut rctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &sk,
            &enc,
            info,
        )
        .map_err(|e| format!("hpke setup receiver: {e}"))?;
        for c in payload.chunks(FRAME) {
            let sealed = sctx.seal(c, b"").map_err(|e| format!("hpke seal: {e}"))?;
            let plain = rctx
                .open(&sealed, b"")
                .map_err(|e| format!("hpke open: {e}"))?;
            black_box(plain);
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e3 / iterations as f64)
}
