//! Signed checkpoints of the audit log: C2SP tlog-checkpoint (origin, tree size, root hash)
//! inside a C2SP signed note, Ed25519-signed with the node's signing key. The formats are the
//! `tlog_tiles` and `signed_note` crates'; the signature is ring's, through the node's key.
//!
//! The note text is signed as it is, without the domain prefix the node's other signatures
//! carry (the formats say so, and witnesses verify that); a checkpoint text starts with the
//! origin and never holds a NUL, so it cannot be mistaken for a prefixed message.

use gateway_envelope::{SigningKey, VerifyingKey};
use gateway_store::Store;
use signed_note::{Note, Signer, StandardVerifier, Verifier, VerifierList};
use tlog_tiles::Checkpoint;

/// The Ed25519 algorithm byte of a signed-note key.
const ALG_ED25519: u8 = 0x01;

/// The origin (and signing key name) of a facility's audit log.
pub fn origin(facility: &str) -> String {
    format!("healthfed/{facility}/audit")
}

/// The signed-note key id of `public` under `name`: the first four bytes of
/// `SHA-256(name || 0x0A || 0x01 || public)`.
pub fn key_id(name: &str, public: &VerifyingKey) -> u32 {
    signed_note::key_id(name, &encoded(public))
}

fn encoded(public: &VerifyingKey) -> Vec<u8> {
    [&[ALG_ED25519][..], &public.0[..]].concat()
}

/// The C2SP verifier key of a log: `<origin>+<key id hex>+<base64(0x01 || public key)>`,
/// what a witness or an inspector configures to check the log's checkpoints.
pub fn verifier_key(origin: &str, public: &VerifyingKey) -> String {
    use base64::Engine as _;
    format!(
        "{origin}+{:08x}+{}",
        key_id(origin, public),
        base64::engine::general_purpose::STANDARD.encode(encoded(public))
    )
}

/// The node's signing key as a signed-note signer.
struct NodeSigner<'a> {
    name: &'a str,
    id: u32,
    key: &'a SigningKey,
}

impl Signer for NodeSigner<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.key.sign(b"", msg).to_vec())
    }
}

/// Why a checkpoint could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("audit log: {0}")]
    Store(#[from] gateway_store::StoreError),
    #[error("checkpoint format: {0}")]
    Format(String),
    #[error("checkpoint signature: {0}")]
    Signature(String),
    #[error("checkpoint is for log {found}, not {expected}")]
    WrongOrigin { found: String, expected: String },
}

/// Signs the tree head of the whole log now and keeps it. Returns `(size, note)`.
pub fn make(
    store: &Store,
    origin: &str,
    key: &SigningKey,
) -> Result<(u64, Vec<u8>), CheckpointError> {
    let (size, root) = store.audit_tree_head()?;
    let note = sign(origin, size, root, key)?;
    store.checkpoint_put(size, &note)?;
    Ok((size, note))
}

/// The signed note of the checkpoint `(origin, size, root)`.
pub fn sign(
    origin: &str,
    size: u64,
    root: [u8; 32],
    key: &SigningKey,
) -> Result<Vec<u8>, CheckpointError> {
    let format = |e: &dyn std::fmt::Display| CheckpointError::Format(e.to_string());
    let checkpoint =
        Checkpoint::new(origin, size, tlog_tiles::Hash(root), "").map_err(|e| format(&e))?;
    let mut note = Note::new(&checkpoint.to_bytes(), &[]).map_err(|e| format(&e))?;
    let signer = NodeSigner {
        name: origin,
        id: key_id(origin, &key.verifying_key()),
        key,
    };
    note.add_sigs(&[&signer])
        .map_err(|e| CheckpointError::Signature(e.to_string()))?;
    Ok(note.to_bytes())
}

/// Opens a signed checkpoint of log `origin`: a signature by one of `keys` (the facility's
/// signing keys in the directory) must verify. Returns `(size, root)`.
pub fn open(
    note: &[u8],
    origin: &str,
    keys: &[VerifyingKey],
) -> Result<(u64, [u8; 32]), CheckpointError> {
    let format = |e: &dyn std::fmt::Display| CheckpointError::Format(e.to_string());
    let parsed = Note::from_bytes(note).map_err(|e| format(&e))?;
    let mut verifiers: Vec<Box<dyn Verifier>> = Vec::new();
    for public in keys {
        let verifier = StandardVerifier::new(&verifier_key(origin, public))
            .map_err(|e| CheckpointError::Signature(e.to_string()))?;
        verifiers.push(Box::new(verifier));
    }
    parsed
        .verify(&VerifierList::new(verifiers))
        .map_err(|e| CheckpointError::Signature(e.to_string()))?;
    let checkpoint = Checkpoint::from_bytes(parsed.text()).map_err(|e| format(&e))?;
    if checkpoint.origin() != origin {
        return Err(CheckpointError::WrongOrigin {
            found: checkpoint.origin().to_owned(),
            expected: origin.to_owned(),
        });
    }
    Ok((checkpoint.size(), checkpoint.hash().0))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use super::*;

    /// The signed-note example of golang.org/x/mod/sumdb/note (BSD-3-Clause): its private key
    /// (the seed in `PRIVATE+KEY+PeterNeumann+c74f20a3+AYEK…`), verifier key and signed note.
    /// Ed25519 is deterministic, so signing the text must give the published note exactly.
    const PETER_SKEY_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                              then you don't know what your problem is.\n";
    const PETER_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
         then you don't know what your problem is.\n\
         \n\
         — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    /// An Ed25519 key from its 32-byte seed, framed as PKCS#8 v1 (RFC 8410).
    fn key_from_seed(seed: &[u8]) -> SigningKey {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(seed);
        SigningKey::from_pkcs8(&der).unwrap()
    }

    fn peter() -> SigningKey {
        use base64::Engine as _;
        let skey = base64::engine::general_purpose::STANDARD
            .decode(PETER_SKEY_B64)
            .unwrap();
        assert_eq!(skey[0], ALG_ED25519);
        key_from_seed(&skey[1..])
    }

    #[test]
    fn the_node_signer_reproduces_the_published_signed_note() {
        let key = peter();
        assert_eq!(
            verifier_key("PeterNeumann", &key.verifying_key()),
            PETER_VKEY
        );
        let mut note = Note::new(PETER_TEXT.as_bytes(), &[]).unwrap();
        let signer = NodeSigner {
            name: "PeterNeumann",
            id: key_id("PeterNeumann", &key.verifying_key()),
            key: &key,
        };
        note.add_sigs(&[&signer]).unwrap();
        assert_eq!(String::from_utf8(note.to_bytes()).unwrap(), PETER_NOTE);
    }

    #[test]
    fn a_checkpoint_opens_with_its_key_and_nothing_else() {
        let key = peter();
        let other = key_from_seed(&[7; 32]);
        let origin = origin("hosp-a");
        let note = sign(&origin, 42, [5; 32], &key).unwrap();
        let text = String::from_utf8(note.clone()).unwrap();
        assert!(
            text.starts_with("healthfed/hosp-a/audit\n42\nBQUF"),
            "{text}"
        );
        assert_eq!(
            open(
                &note,
                &origin,
                &[other.verifying_key(), key.verifying_key()]
            )
            .unwrap(),
            (42, [5; 32])
        );
        assert!(open(&note, &origin, &[other.verifying_key()]).is_err());
        assert!(open(&note, "healthfed/clinic-b/audit", &[key.verifying_key()]).is_err());
        let forged = text.replacen("\n42\n", "\n43\n", 1);
        assert!(open(forged.as_bytes(), &origin, &[key.verifying_key()]).is_err());
    }
}
