//! Node key material: generation (for the PKI tool) and loading (for the gateway).
//!
//! Ed25519 and X25519 private keys are stored as PKCS#8 v1 "PRIVATE KEY" PEM per RFC 8410, the
//! form OpenSSL reads. ring generates PKCS#8 v2 (RFC 5958, with the public key) for Ed25519,
//! which OpenSSL 3.0 refuses to load, so we re-frame ring's key as v1 when writing and back to
//! ring's v2 when loading. The PKCS#8 framing is read and written by the `pkcs8`/`der` crates;
//! all key generation and public-key derivation is done by ring and hpke.

use std::path::Path;

use hpke::kem::{Kem as _, X25519HkdfSha256};
use hpke::{Deserializable as _, Serializable as _};
use pkcs8::der::asn1::{BitStringRef, OctetStringRef};
use pkcs8::der::{Decode as _, Encode as _};
use pkcs8::{AlgorithmIdentifierRef, ObjectIdentifier, PrivateKeyInfoRef};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::Zeroizing;

use crate::files;
use crate::PkiError;

/// RFC 8410 algorithm identifiers (no parameters).
const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const X25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");

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
    rfc8410_der(ED25519_OID, &seed, Some(&public)).ok_or(PkiError::Crypto("PKCS#8 encoding"))
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
        pkcs8_v1: rfc8410_der(ED25519_OID, &seed, None)
            .ok_or(PkiError::Crypto("PKCS#8 encoding"))?,
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
        pkcs8_v1: rfc8410_der(X25519_OID, &sk_bytes, None)
            .ok_or(PkiError::Crypto("PKCS#8 encoding"))?,
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

/// A 32-byte private key, and the public key a PKCS#8 v2 document carries with it.
type Rfc8410Key = (Zeroizing<[u8; 32]>, Option<[u8; 32]>);

/// The 32-byte private key of an RFC 8410 PKCS#8 document (v1, or v2 with the public key)
/// for the algorithm `oid`, and the public key a v2 document carries.
fn rfc8410_key(der: &[u8], oid: ObjectIdentifier) -> Option<Rfc8410Key> {
    let info = PrivateKeyInfoRef::from_der(der).ok()?;
    if info.algorithm.oid != oid || info.algorithm.parameters.is_some() {
        return None;
    }
    // CurvePrivateKey ::= OCTET STRING, inside PrivateKeyInfo's privateKey OCTET STRING.
    let inner = <&OctetStringRef>::from_der(info.private_key.as_bytes()).ok()?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(
        inner
            .as_bytes()
            .get(..32)
            .filter(|_| inner.as_bytes().len() == 32)?,
    );
    let public = match info.public_key {
        Some(bits) => Some(<[u8; 32]>::try_from(bits.as_bytes()?).ok()?),
        None => None,
    };
    Some((key, public))
}

/// An RFC 8410 PKCS#8 document: v1 without `public`, v2 (RFC 5958, as ring writes) with it.
fn rfc8410_der(
    oid: ObjectIdentifier,
    private: &[u8; 32],
    public: Option<&[u8; 32]>,
) -> Option<Zeroizing<Vec<u8>>> {
    let inner = Zeroizing::new(OctetStringRef::new(private).ok()?.to_der().ok()?);
    let algorithm = AlgorithmIdentifierRef {
        oid,
        parameters: None,
    };
    let mut info = PrivateKeyInfoRef::new(algorithm, OctetStringRef::new(&inner).ok()?);
    info.public_key = match public {
        Some(p) => Some(BitStringRef::from_bytes(p).ok()?),
        None => None,
    };
    info.to_der().ok().map(Zeroizing::new)
}

fn ed25519_seed(der: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    rfc8410_key(der, ED25519_OID).map(|(seed, _)| seed)
}

fn ed25519_v2_public(der: &[u8]) -> Option<[u8; 32]> {
    rfc8410_key(der, ED25519_OID).and_then(|(_, public)| public)
}

fn x25519_private(der: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    match rfc8410_key(der, X25519_OID)? {
        (key, None) => Some(key),
        // hpke derives the public key itself; a v2 document's copy is not checked, so refused.
        (_, Some(_)) => None,
    }
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

    /// RFC 8410 §7 PKCS#8 v1 prefixes (the 32 key bytes follow), as OpenSSL writes them.
    const ED25519_V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const X25519_V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04,
        0x20,
    ];

    fn ed25519_v2_der(seed: &[u8; 32], public: &[u8; 32]) -> Zeroizing<Vec<u8>> {
        rfc8410_der(ED25519_OID, seed, Some(public)).unwrap()
    }

    #[test]
    fn rfc8410_example_private_key_decodes_and_reencodes_byte_for_byte() {
        // RFC 8410 §10.3, the example Ed25519 private key.
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let der = pem::parse(pem).unwrap().into_contents();
        let seed = ed25519_seed(&der).unwrap();
        assert_eq!(
            hex::encode(seed.as_ref()),
            "d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842"
        );
        assert_eq!(
            rfc8410_der(ED25519_OID, &seed, None).unwrap().as_slice(),
            der.as_slice()
        );
        // Not an X25519 key, whatever its length.
        assert!(x25519_private(&der).is_none());
    }

    #[test]
    fn ring_generated_v2_documents_are_read_and_rewritten_as_ring_wrote_them() {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let seed = ed25519_seed(doc.as_ref()).unwrap();
        let public = ed25519_v2_public(doc.as_ref()).unwrap();
        assert_eq!(public, pair.public_key().as_ref());
        assert_eq!(ed25519_v2_der(&seed, &public).as_slice(), doc.as_ref());
        // Trailing bytes or a truncated document are refused.
        let mut longer = doc.as_ref().to_vec();
        longer.push(0);
        assert!(ed25519_seed(&longer).is_none());
        assert!(ed25519_seed(&doc.as_ref()[..doc.as_ref().len() - 1]).is_none());
    }

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
