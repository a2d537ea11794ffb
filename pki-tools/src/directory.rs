//! The signed federation directory: who is in the federation, where they are, and which keys
//! and certificates they use.
//!
//! On disk (`directory.json`):
//! `{"format":"healthfed-directory/1","payload":"<base64 JSON of Directory>","signature":"<base64
//! ECDSA P-256 SHA-256 ASN.1 DER signature over the payload bytes>"}`. The signature covers the
//! exact payload bytes, so verification never depends on JSON canonicalisation.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};
use serde::{Deserialize, Serialize};

use crate::{cert, FacilityId, FacilityKind, FacilityStatus, PkiError};

/// The `format` value of a signed directory file.
pub const DIRECTORY_FORMAT: &str = "healthfed-directory/1";

/// Clock skew tolerated for `issued_at` in the future, in seconds.
const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The verified content of a federation directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// Monotonic: every publish increments it, so nodes can refuse rollbacks.
    pub version: u64,
    /// The federation name given to `pki init`.
    pub federation: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; nodes refuse the directory from this instant on.
    pub expires_at: i64,
    pub facilities: Vec<FacilityEntry>,
}

/// One facility as published in the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilityEntry {
    pub id: FacilityId,
    pub name: String,
    pub kind: FacilityKind,
    /// `https://HOST:PORT`.
    pub endpoint: String,
    pub status: FacilityStatus,
    /// SHA-256 of every TLS certificate in service, current first (two during a rotation
    /// overlap).
    #[serde(with = "hex32_vec")]
    pub tls_cert_sha256: Vec<[u8; 32]>,
    /// Ed25519 raw public keys, current first (two during a rotation overlap).
    #[serde(with = "hex32_vec")]
    pub signing_keys: Vec<[u8; 32]>,
    /// X25519 raw public key to encrypt records to (always the current one).
    #[serde(with = "hex32")]
    pub encryption_key: [u8; 32],
}

impl Directory {
    pub fn facility(&self, id: &FacilityId) -> Option<&FacilityEntry> {
        self.facilities.iter().find(|f| &f.id == id)
    }
}

/// Why a directory was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectoryError {
    #[error("not a signed directory file: {0}")]
    Malformed(&'static str),
    #[error("unsupported directory format (expected {DIRECTORY_FORMAT})")]
    UnsupportedFormat,
    #[error("CA certificate unusable for directory verification: {0}")]
    BadCaCertificate(&'static str),
    #[error("signature does not verify with the federation CA key")]
    BadSignature,
    #[error("directory payload is not a valid directory: {0}")]
    BadPayload(String),
    #[error("directory expired at {expires_at} (now {now})")]
    Expired { expires_at: i64, now: i64 },
    #[error("directory issued in the future ({issued_at}, now {now})")]
    NotYetValid { issued_at: i64, now: i64 },
    #[error("directory version {version} is older than {min_version}")]
    Rollback { version: u64, min_version: u64 },
    #[error("facility {0} is listed twice")]
    DuplicateFacility(FacilityId),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedFile {
    format: String,
    payload: String,
    signature: String,
}

/// Verify a signed directory file against the federation CA certificate and return its content.
///
/// Refuses a file whose signature does not verify with the CA key, that has expired at
/// `now_unix`, that was issued more than five minutes in the future, or whose version is below
/// `min_version` (the highest version this node has accepted before).
pub fn verify_directory(
    file_bytes: &[u8],
    ca_cert_der: &[u8],
    now_unix: i64,
    min_version: Option<u64>,
) -> Result<Directory, DirectoryError> {
    verify_directory_file(file_bytes, ca_cert_der, now_unix, min_version).map(|v| v.directory)
}

/// A verified directory with the SHA-256 of its signed payload: two files of the same version
/// are the same directory exactly when their digests are equal (the signature itself differs
/// between two signings of the same payload, ECDSA being randomized).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDirectory {
    pub directory: Directory,
    pub digest: [u8; 32],
}

/// [`verify_directory`], also returning the digest of the signed payload.
pub fn verify_directory_file(
    file_bytes: &[u8],
    ca_cert_der: &[u8],
    now_unix: i64,
    min_version: Option<u64>,
) -> Result<VerifiedDirectory, DirectoryError> {
    let ca = cert::parse(ca_cert_der).ok_or(DirectoryError::BadCaCertificate(
        "not a valid X.509 certificate",
    ))?;
    let point = cert::p256_public_point(&ca).map_err(DirectoryError::BadCaCertificate)?;
    let (payload, signature) = decode(file_bytes)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(&payload, &signature)
        .map_err(|_| DirectoryError::BadSignature)?;
    // Only signed bytes are parsed beyond the envelope.
    let directory: Directory =
        serde_json::from_slice(&payload).map_err(|e| DirectoryError::BadPayload(e.to_string()))?;
    check(&directory, now_unix, min_version)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Ok(VerifiedDirectory {
        directory,
        digest: out,
    })
}

fn check(d: &Directory, now: i64, min_version: Option<u64>) -> Result<(), DirectoryError> {
    if now >= d.expires_at {
        return Err(DirectoryError::Expired {
            expires_at: d.expires_at,
            now,
        });
    }
    if d.expires_at <= d.issued_at {
        return Err(DirectoryError::BadPayload(
            "expires_at is not after issued_at".to_owned(),
        ));
    }
    if d.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(DirectoryError::NotYetValid {
            issued_at: d.issued_at,
            now,
        });
    }
    if let Some(min_version) = min_version {
        if d.version < min_version {
            return Err(DirectoryError::Rollback {
                version: d.version,
                min_version,
            });
        }
    }
    let mut ids: Vec<&FacilityId> = d.facilities.iter().map(|f| &f.id).collect();
    ids.sort();
    if let Some(pair) = ids.windows(2).find(|w| w.first() == w.get(1)) {
        if let Some(id) = pair.first() {
            return Err(DirectoryError::DuplicateFacility((*id).clone()));
        }
    }
    Ok(())
}

/// Split a signed file into payload and signature bytes without verifying anything.
fn decode(file_bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DirectoryError> {
    let file: SignedFile = serde_json::from_slice(file_bytes)
        .map_err(|_| DirectoryError::Malformed("expected {format, payload, signature} JSON"))?;
    if file.format != DIRECTORY_FORMAT {
        return Err(DirectoryError::UnsupportedFormat);
    }
    let payload = BASE64
        .decode(file.payload.as_bytes())
        .map_err(|_| DirectoryError::Malformed("payload is not base64"))?;
    let signature = BASE64
        .decode(file.signature.as_bytes())
        .map_err(|_| DirectoryError::Malformed("signature is not base64"))?;
    Ok((payload, signature))
}

/// Decode a directory file WITHOUT verifying its signature, for `pki inspect` only.
pub(crate) fn decode_unverified(file_bytes: &[u8]) -> Result<Directory, DirectoryError> {
    let (payload, _) = decode(file_bytes)?;
    serde_json::from_slice(&payload).map_err(|e| DirectoryError::BadPayload(e.to_string()))
}

/// Whether `bytes` look like a signed directory file (for `pki inspect`).
pub(crate) fn looks_like_directory(bytes: &[u8]) -> bool {
    serde_json::from_slice::<SignedFile>(bytes).is_ok()
}

/// Serialise and sign a directory with the CA's PKCS#8 key.
pub(crate) fn sign_directory(
    directory: &Directory,
    ca_key_pkcs8: &[u8],
) -> Result<Vec<u8>, PkiError> {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca_key_pkcs8, &rng)
        .map_err(|_| PkiError::Crypto("CA key is not an ECDSA P-256 key"))?;
    let payload =
        serde_json::to_vec(directory).map_err(|_| PkiError::Crypto("directory serialisation"))?;
    let signature = key
        .sign(&rng, &payload)
        .map_err(|_| PkiError::Crypto("directory signing"))?;
    let file = SignedFile {
        format: DIRECTORY_FORMAT.to_owned(),
        payload: BASE64.encode(&payload),
        signature: BASE64.encode(signature.as_ref()),
    };
    let mut out = serde_json::to_vec_pretty(&file)
        .map_err(|_| PkiError::Crypto("directory serialisation"))?;
    out.push(b'\n');
    Ok(out)
}

/// Serde for `[u8; 32]` as a lower-case hex string.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn parse(s: &str) -> Result<[u8; 32], &'static str> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| "expected 64 hex characters")?;
        Ok(out)
    }
}

/// Serde for `Vec<[u8; 32]>` as a list of hex strings.
pub(crate) mod hex32_vec {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for bytes in v {
            seq.serialize_element(&hex::encode(bytes))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        strings
            .iter()
            .map(|s| super::hex32::parse(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests;
