//! Node key material: generation (for the PKI tool) and loading (for the gateway).
//!
//! Ed25519 and X25519 private keys are stored as PKCS#8 v1 "PRIVATE KEY" PEM per RFC 8410, the
//! form OpenSSL reads. ring generates PKCS#8 v2 (RFC 5958, with the public key) for Ed25519,
//! which OpenSSL 3.0 refuses to load, so we re-frame ring's key as v1 when writing and back to
//! ring's v2 when loading. The framing below is fixed-length ASN.1 (the same template matching ring does), not
//! cryptography: all key generation and public-key derivation is done by ring and hpke.

use std::path::Path;

use hpke::kem::{Kem as _, X25519HkdfSha256};
use hpke::{Deserializable as _, Serializable as _};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::Zeroizing;

use crate::files;
use crate::PkiError;

/// RFC 8410 PKCS#8 v1 prefix for an Ed25519 private key; 32 seed bytes follow.
const ED25519_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// ring's PKCS#8 v2 prefix for Ed25519: seed, then [`ED25519_V2_MIDDLE`], then the public key.
const ED25519_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const ED25519_V2_MIDDLE: [u8; 3] = [0x81, 0x21, 0x00];
/// RFC 8410 PKCS#8 v1 prefix for an X25519 private key; 32 private-key bytes follow.
const X25519_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// Which kind of private key a PKCS#8 document holds (see [`classify_pkcs8`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    Ed25519,
    X25519,
    EcdsaP256,
}

/// A freshly generated Ed25519 signing key.
pub(crate) struct SigningKeyMaterial {
    /// PKCS#8 v1 DER (RFC 8410).
    pub pkcs8_v1: Zeroizing<Vec<u8>>,
    pub public: [u8; 32],
}

/// A freshly generated X25519 encryption key.
pub(crate) struct EncryptionKeyMaterial {
    /// PKCS#8 v1 DER (RFC 8410).
    pub pkcs8_v1: Zeroizing<Vec<u8>>,
    pub public: [u8; 32],
}

/// Loads an Ed25519 private key file and returns it as ring's PKCS#8 v2 DER, which
/// `ring::signature::Ed25519KeyPair::from_pkcs8` accepts. Checks file permissions first.
pub fn load_ed25519_pkcs8(path: &Path) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let der = load_private_der(path)?;
    let seed = ed25519_seed(&der).ok_or_else(|| not_a(path, "Ed25519"))?;
    let pair =
        Ed25519KeyPair::from_seed_unchecked(seed.as_ref()).map_err(|_| not_a(path, "Ed25519"))?;
    let mut public = [0u8; 32];
    public.copy_from_slice(pair.public_key().as_ref());
    // A v2 file carries its public key too; a mismatch means the file was tampered with.
    if let Some(claimed) = ed25519_v2_public(&der) {
        if claimed != public {
            return Err(PkiError::invalid(
                path,
                "Ed25519 public key does not match the private key",
            ));
        }
    }
    Ok(ed25519_v2_der(&seed, &public))
}

/// Loads an X25519 private key file (raw 32-byte private key, as used by HPKE). Checks file
/// permissions first.
pub fn load_x25519_private(path: &Path) -> Result<Zeroizing<[u8; 32]>, PkiError> {
    let der = load_private_der(path)?;
    x25519_private(&der).ok_or_else(|| not_a(path, "X25519"))
}

/// Loads a TLS private key file (ECDSA P-256 PKCS#8) and returns its PKCS#8 DER. Checks file
/// permissions first and that ring accepts the key.
pub fn load_tls_key_der(path: &Path) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let der = load_private_der(path)?;
    ecdsa_p256_public(&der).ok_or_else(|| not_a(path, "ECDSA P-256"))?;
    Ok(der)
}

fn load_private_der(path: &Path) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let bytes = files::read_private(path)?;
    files::pem_decode(path, &bytes, "PRIVATE KEY")
        .map(Zeroizing::new)
        .map_err(|_| PkiError::invalid(path, "not a PKCS#8 private key"))
}

fn not_a(path: &Path, kind: &str) -> PkiError {
    PkiError::invalid(path, format!("not a PKCS#8 {kind} private key"))
}

pub(crate) fn generate_signing_key() -> Result<SigningKeyMaterial, PkiError> {
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| PkiError::Crypto("Ed25519 key generation"))?;
    let doc = Zeroizing::new(doc.as_ref().to_vec());
    let pair =
        Ed25519KeyPair::from_pkcs8(&doc).map_err(|_| PkiError::Crypto("Ed25519 key generation"))?;
    let seed = ed25519_seed(&doc).ok_or(PkiError::Crypto("unexpected ring PKCS#8 layout"))?;
    let mut public = [0u8; 32];
    public.copy_from_slice(pair.public_key().as_ref());
    Ok(SigningKeyMaterial {
        pkcs8_v1: framed(&ED25519_V1_PREFIX, seed.as_ref()),
        public,
    })
}

pub(crate) fn generate_encryption_key() -> Result<EncryptionKeyMaterial, PkiError> {
    // DeriveKeyPair (RFC 9180 §7.1.3) from 32 bytes of system randomness, instead of
    // `gen_keypair`, which panics when the system RNG fails.
    let mut ikm = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(ikm.as_mut())
        .map_err(|_| PkiError::Crypto("no randomness available"))?;
    let (sk, pk) = X25519HkdfSha256::derive_keypair(ikm.as_ref());
    let mut sk_bytes = Zeroizing::new([0u8; 32]);
    sk.write_exact(sk_bytes.as_mut());
    let mut public = [0u8; 32];
    public.copy_from_slice(&pk.to_bytes());
    Ok(EncryptionKeyMaterial {
        pkcs8_v1: framed(&X25519_V1_PREFIX, sk_bytes.as_ref()),
        public,
    })
}

/// Identify a PKCS#8 private key and compute its public key.
pub(crate) fn classify_pkcs8(der: &[u8]) -> Option<(KeyType, Vec<u8>)> {
    if let Some(seed) = ed25519_seed(der) {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref()).ok()?;
        return Some((KeyType::Ed25519, pair.public_key().as_ref().to_vec()));
    }
    if let Some(sk) = x25519_private(der) {
        return Some((KeyType::X25519, x25519_public(&sk)?.to_vec()));
    }
    ecdsa_p256_public(der).map(|pk| (KeyType::EcdsaP256, pk))
}

/// X25519 public key for a raw private key, computed by hpke.
pub(crate) fn x25519_public(sk: &[u8; 32]) -> Option<[u8; 32]> {
    let sk = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(sk).ok()?;
    let pk = X25519HkdfSha256::sk_to_pk(&sk);
    let mut out = [0u8; 32];
    out.copy_from_slice(&pk.to_bytes());
    Some(out)
}

/// The uncompressed public point of an ECDSA P-256 PKCS#8 key, if ring accepts it.
pub(crate) fn ecdsa_p256_public(der: &[u8]) -> Option<Vec<u8>> {
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng).ok()?;
    Some(pair.public_key().as_ref().to_vec())
}

fn ed25519_seed(der: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    if let Some(rest) = der.strip_prefix(&ED25519_V1_PREFIX) {
        return take32(rest, 0);
    }
    let rest = der.strip_prefix(&ED25519_V2_PREFIX)?;
    if rest.len() != 32 + ED25519_V2_MIDDLE.len() + 32 {
        return None;
    }
    if rest.get(32..32 + ED25519_V2_MIDDLE.len())? != ED25519_V2_MIDDLE {
        return None;
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(rest.get(..32)?);
    Some(seed)
}

fn ed25519_v2_public(der: &[u8]) -> Option<[u8; 32]> {
    let rest = der.strip_prefix(&ED25519_V2_PREFIX)?;
    let mut public = [0u8; 32];
    public.copy_from_slice(rest.get(32 + ED25519_V2_MIDDLE.len()..)?.get(..32)?);
    Some(public)
}

fn x25519_private(der: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    take32(der.strip_prefix(&X25519_V1_PREFIX)?, 0)
}

/// Exactly 32 bytes after `offset`, nothing trailing.
fn take32(rest: &[u8], offset: usize) -> Option<Zeroizing<[u8; 32]>> {
    let body = rest.get(offset..)?;
    if body.len() != 32 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(body);
    Some(out)
}

fn framed(prefix: &[u8], body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(prefix.len() + body.len()));
    out.extend_from_slice(prefix);
    out.extend_from_slice(body);
    out
}

fn ed25519_v2_der(seed: &[u8; 32], public: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut out = framed(&ED25519_V2_PREFIX, seed);
    out.extend_from_slice(&ED25519_V2_MIDDLE);
    out.extend_from_slice(public);
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use ring::signature::{UnparsedPublicKey, ED25519};

    use super::*;

    fn write_key(dir: &Path, name: &str, der: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        files::write_atomic(
            &path,
            files::pem_encode("PRIVATE KEY", der).as_bytes(),
            true,
        )
        .unwrap();
        path
    }

    #[test]
    fn signing_key_round_trips_to_ring() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_signing_key().unwrap();
        assert_eq!(key.pkcs8_v1.len(), 48);
        assert!(key.pkcs8_v1.starts_with(&ED25519_V1_PREFIX));
        let path = write_key(dir.path(), "signing.key", &key.pkcs8_v1);

        let v2 = load_ed25519_pkcs8(&path).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(&v2).unwrap();
        assert_eq!(pair.public_key().as_ref(), key.public);
        let sig = pair.sign(b"record");
        UnparsedPublicKey::new(&ED25519, key.public)
            .verify(b"record", sig.as_ref())
            .unwrap();
        assert_eq!(
            classify_pkcs8(&key.pkcs8_v1),
            Some((KeyType::Ed25519, key.public.to_vec()))
        );
    }

    #[test]
    fn ed25519_v2_file_with_wrong_public_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_signing_key().unwrap();
        let seed: [u8; 32] = key.pkcs8_v1[16..].try_into().unwrap();
        let mut wrong = key.public;
        wrong[0] ^= 1;
        let path = write_key(dir.path(), "v2.key", &ed25519_v2_der(&seed, &wrong));
        let err = load_ed25519_pkcs8(&path).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let path = write_key(dir.path(), "v2ok.key", &ed25519_v2_der(&seed, &key.public));
        assert_eq!(
            Ed25519KeyPair::from_pkcs8(&load_ed25519_pkcs8(&path).unwrap())
                .unwrap()
                .public_key()
                .as_ref(),
            key.public
        );
    }

    #[test]
    fn encryption_key_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_encryption_key().unwrap();
        assert!(key.pkcs8_v1.starts_with(&X25519_V1_PREFIX));
        let path = write_key(dir.path(), "encryption.key", &key.pkcs8_v1);
        let sk = load_x25519_private(&path).unwrap();
        assert_eq!(x25519_public(&sk), Some(key.public));
        // Two generations never collide.
        assert_ne!(generate_encryption_key().unwrap().public, key.public);
    }

    #[test]
    fn x25519_public_matches_rfc7748_vector() {
        // RFC 7748 §6.1, Alice's key pair.
        let sk: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let pk = hex::decode("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
            .unwrap();
        assert_eq!(x25519_public(&sk).unwrap().to_vec(), pk);
    }

    #[test]
    fn loaders_refuse_wrong_type_corrupt_and_insecure_files() {
        let dir = tempfile::tempdir().unwrap();
        let enc = generate_encryption_key().unwrap();
        let path = write_key(dir.path(), "encryption.key", &enc.pkcs8_v1);
        let err = load_ed25519_pkcs8(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: not a PKCS#8 Ed25519 private key", path.display())
        );
        let err = load_tls_key_der(&path).unwrap_err();
        assert!(err.to_string().contains("ECDSA P-256"), "{err}");

        let garbage = dir.path().join("garbage.key");
        files::write_atomic(&garbage, b"not pem at all", true).unwrap();
        let err = load_x25519_private(&garbage).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: not a PKCS#8 private key", garbage.display())
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_x25519_private(&path),
            Err(PkiError::InsecurePermissions { mode: 0o644, .. })
        ));

        let missing = dir.path().join("missing.key");
        let err = load_tls_key_der(&missing).unwrap_err();
        assert!(err.to_string().starts_with(&missing.display().to_string()));
    }

    #[test]
    fn tls_key_loads() {
        let dir = tempfile::tempdir().unwrap();
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let path = write_key(dir.path(), "tls.key", doc.as_ref());
        assert_eq!(load_tls_key_der(&path).unwrap().as_slice(), doc.as_ref());
        assert_eq!(classify_pkcs8(doc.as_ref()).unwrap().0, KeyType::EcdsaP256);
    }
}
