//! Keys, transfer ids and hashing: thin, typed wrappers over ring and hpke.
//!
//! Ed25519 (signing) is done by ring. X25519 (HPKE) secrets live in hpke's key type because ring
//! cannot hold a static X25519 private key.

use std::fmt;
use std::str::FromStr;

use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, Serializable};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::error::EnvelopeError;

/// The HPKE private key type of DHKEM(X25519, HKDF-SHA256).
pub(crate) type HpkeSecret = <X25519HkdfSha256 as hpke::Kem>::PrivateKey;
/// The HPKE public key type of DHKEM(X25519, HKDF-SHA256).
pub(crate) type HpkePublic = <X25519HkdfSha256 as hpke::Kem>::PublicKey;

/// Identifies one transfer end to end (envelope, receipt, audit records). Random, not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub [u8; 16]);

/// An Ed25519 signing key (a facility's node key).
///
/// ring keeps the key material inside `Ed25519KeyPair`; `Debug` shows only the public half.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey(pub [u8; 32]);

/// An X25519 HPKE private key; zeroized on drop (hpke's key wraps a zeroize-on-drop
/// `StaticSecret`), `Debug` redacted.
pub struct EncryptionSecretKey {
    secret: HpkeSecret,
}

/// An X25519 HPKE public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncryptionPublicKey(pub [u8; 32]);

/// Streaming SHA-256 (ring), for payloads too large to hold in memory.
#[derive(Clone)]
pub struct Sha256 {
    context: ring::digest::Context,
}

impl TransferId {
    /// A fresh random id from the system random number generator.
    pub fn new_random() -> Result<Self, EnvelopeError> {
        let mut bytes = [0u8; 16];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| EnvelopeError::Rng)?;
        Ok(Self(bytes))
    }

    /// Lowercase hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransferId({})", self.to_hex())
    }
}

impl FromStr for TransferId {
    type Err = EnvelopeError;

    /// Parses exactly 32 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|_| EnvelopeError::Malformed("transfer id is not 32 hex digits"))?;
        Ok(Self(bytes))
    }
}

impl SigningKey {
    /// Parses a PKCS#8 (v1 or v2) Ed25519 private key, as written by rcgen, ring or openssl.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, EnvelopeError> {
        // `maybe_unchecked` accepts v1 documents (no embedded public key) too; when the public
        // key is present ring still checks that it matches the private key.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| EnvelopeError::InvalidKey("not a pkcs#8 ed25519 private key"))?;
        Ok(Self { pair })
    }

    /// Generates a new key and returns its PKCS#8 v2 encoding, for tools and tests. The caller
    /// stores the document; it is zeroized when dropped.
    pub fn generate_pkcs8() -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| EnvelopeError::Rng)?;
        Ok(Zeroizing::new(document.as_ref().to_vec()))
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey(bytes)
    }

    /// Signs `domain || msg`. `domain` must be a fixed, NUL-terminated label so that signatures
    /// made for one purpose never verify for another.
    pub fn sign(&self, domain: &[u8], msg: &[u8]) -> [u8; 64] {
        let mut input = Vec::with_capacity(domain.len() + msg.len());
        input.extend_from_slice(domain);
        input.extend_from_slice(msg);
        let sig = self.pair.sign(&input);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.verifying_key())
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Verifies a signature made by [`SigningKey::sign`] with the same `domain`.
    pub fn verify(
        &self,
        domain: &[u8],
        msg: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), EnvelopeError> {
        let mut input = Vec::with_capacity(domain.len() + msg.len());
        input.extend_from_slice(domain);
        input.extend_from_slice(msg);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&input, signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// Verifies against each key in turn (several during a key rotation overlap).
    pub(crate) fn verify_any(
        keys: &[VerifyingKey],
        domain: &[u8],
        msg: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), EnvelopeError> {
        if keys.is_empty() {
            return Err(EnvelopeError::UnknownSender);
        }
        if keys
            .iter()
            .any(|key| key.verify(domain, msg, signature).is_ok())
        {
            Ok(())
        } else {
            Err(EnvelopeError::BadSignature)
        }
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", hex::encode(self.0))
    }
}

impl EncryptionSecretKey {
    /// Wraps a raw X25519 private key (any 32 bytes are valid; they are clamped per RFC 7748).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        // Keep our copy in a zeroizing box; the by-value argument itself is the caller's.
        let bytes = Zeroizing::new(bytes);
        Self {
            secret: hpke_secret(&bytes),
        }
    }

    /// A fresh random key from the system random number generator.
    pub fn generate() -> Result<Self, EnvelopeError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| EnvelopeError::Rng)?;
        Ok(Self {
            secret: hpke_secret(&bytes),
        })
    }

    /// The raw (clamped) private key, for writing a key file. Callers must not log it.
    pub fn reveal_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&self.secret.to_bytes());
        out
    }

    /// The public half.
    pub fn public_key(&self) -> EncryptionPublicKey {
        let public = X25519HkdfSha256::sk_to_pk(&self.secret);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&public.to_bytes());
        EncryptionPublicKey(bytes)
    }

    pub(crate) fn hpke(&self) -> &HpkeSecret {
        &self.secret
    }
}

/// Converts 32 bytes into hpke's X25519 secret.
fn hpke_secret(bytes: &[u8; 32]) -> HpkeSecret {
    match HpkeSecret::from_bytes(bytes) {
        Ok(secret) => secret,
        // hpke only rejects a wrong length, and the array is exactly 32 bytes long.
        Err(_) => unreachable!("x25519 secrets of 32 bytes are always accepted"),
    }
}

impl fmt::Debug for EncryptionSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionSecretKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl EncryptionPublicKey {
    pub(crate) fn hpke(&self) -> Result<HpkePublic, EnvelopeError> {
        HpkePublic::from_bytes(&self.0).map_err(|_| EnvelopeError::InvalidKey("x25519 public key"))
    }
}

impl fmt::Debug for EncryptionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionPublicKey({})", hex::encode(self.0))
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Self {
            context: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.context.update(bytes);
    }

    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.context.finish().as_ref());
        out
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256")
    }
}

/// SHA-256 of `bytes` (ring).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}
