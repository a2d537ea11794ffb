//! Shared builders for the envelope integration tests.

#![allow(dead_code)]

use gateway_envelope::{
    open_all, seal_to_vec, sha256, EncryptionSecretKey, EnvelopeError, Limits, Opened, SealParams,
    SigningKey, Suite, TransferId, VerifyingKey,
};

pub const SENDER: &str = "facility-a.example";
pub const RECIPIENT: &str = "facility-b.example";
pub const CREATED_AT_MS: u64 = 1_764_000_000_000;

/// One node's keys.
pub struct Node {
    pub signing: SigningKey,
    pub encryption: EncryptionSecretKey,
}

impl Node {
    pub fn new() -> Self {
        let pkcs8 = SigningKey::generate_pkcs8().unwrap();
        Self {
            signing: SigningKey::from_pkcs8(&pkcs8).unwrap(),
            encryption: EncryptionSecretKey::generate().unwrap(),
        }
    }

    pub fn verifying(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }
}

/// Deterministic test data (splitmix64), so failures reproduce.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

pub fn params(payload: &[u8], suite: Suite, chunk_size: u32) -> SealParams<'static> {
    SealParams {
        transfer_id: TransferId([0x42; 16]),
        sender: SENDER,
        recipient: RECIPIENT,
        created_at_ms: CREATED_AT_MS,
        payload_len: payload.len() as u64,
        payload_digest: sha256(payload),
        suite,
        chunk_size,
    }
}

/// A sender, a recipient and one sealed envelope between them.
pub struct Fixture {
    pub sender: Node,
    pub recipient: Node,
    pub metadata: Vec<u8>,
    pub payload: Vec<u8>,
    pub envelope: Vec<u8>,
}

impl Fixture {
    pub fn new(payload: Vec<u8>, suite: Suite, chunk_size: u32) -> Self {
        let sender = Node::new();
        let recipient = Node::new();
        let metadata = br#"{"resourceType":"Bundle","type":"transaction"}"#.to_vec();
        let envelope = seal_to_vec(
            &params(&payload, suite, chunk_size),
            &metadata,
            &payload,
            &recipient.encryption.public_key(),
            &sender.signing,
        )
        .unwrap();
        Self {
            sender,
            recipient,
            metadata,
            payload,
            envelope,
        }
    }

    /// Opens `bytes` as the recipient, trusting the sender's key.
    pub fn open(&self, bytes: &[u8]) -> Result<Opened, EnvelopeError> {
        let sender_key = self.sender.verifying();
        open_all(
            bytes,
            |name| {
                if name == SENDER {
                    vec![sender_key]
                } else {
                    Vec::new()
                }
            },
            &[&self.recipient.encryption],
            Limits::default(),
        )
    }
}

/// The envelope split at its boundaries: `8 + header_len` prefix bytes, then each frame with
/// its 4-byte length.
pub struct Parts {
    pub prefix: Vec<u8>,
    pub frames: Vec<Vec<u8>>,
}

impl Parts {
    pub fn split(envelope: &[u8]) -> Self {
        let header_len = u32::from_be_bytes(envelope[4..8].try_into().unwrap()) as usize;
        let prefix = envelope[..8 + header_len].to_vec();
        let mut frames = Vec::new();
        let mut at = 8 + header_len;
        while at < envelope.len() {
            let len = u32::from_be_bytes(envelope[at..at + 4].try_into().unwrap()) as usize;
            frames.push(envelope[at..at + 4 + len].to_vec());
            at += 4 + len;
        }
        assert_eq!(at, envelope.len());
        Self { prefix, frames }
    }

    pub fn join(&self) -> Vec<u8> {
        let mut out = self.prefix.clone();
        for frame in &self.frames {
            out.extend_from_slice(frame);
        }
        out
    }
}
