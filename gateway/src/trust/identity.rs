//! This node's own key material: the TLS certificate and key, the signing key and the
//! encryption key, read from the files `pki add-facility` / `pki rotate` write. Every private
//! key file must be mode 0600 (no group or other bits): a node refuses to start otherwise, and
//! refuses a reload.
//!
//! The identity is reloaded without a restart (`IdentityHandle`, swapped atomically like the
//! trust view). A new set of files is taken only whole and consistent: all files readable, keys
//! 0600, the certificate naming this facility, the TLS key matching the certificate. A set that
//! fails any check is refused with its reason and the current identity stays. The new set is
//! used for signing and TLS only once the federation directory this node has loaded lists its
//! signing key and certificate, so the node never signs with a key its peers cannot know yet
//! (`pki rotate` writes the files; `pki publish` makes the directory that lists them). Until
//! then its encryption key is already held for opening, because opening with one more key is
//! harmless.
//!
//! Older encryption keys are kept for opening: the configured `previous_encryption_key`, every
//! key this node held before a reload, and the keyring in `data_dir/keys` (0700; one 0600 file
//! per retired encryption key, and the public half of each retired signing key), so that
//! envelopes sealed to an earlier key, the records the inbox holds and the node's own stored
//! records, still open after any number of rotations and restarts. The keyring is never pruned
//! by the node: a retired key may still be needed by a record held in the inbox.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use gateway_envelope::{EncryptionPublicKey, EncryptionSecretKey, SigningKey, VerifyingKey};
use pki_tools::directory::FacilityEntry;
use pki_tools::keys::{load_ed25519_pkcs8, load_tls_key_der, load_x25519_private};

use crate::config::NodeConfig;
use crate::trust::{read_single_cert, TrustError};

/// The keyring's folder inside `data_dir`.
const KEYRING_DIR: &str = "keys";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Cert(#[from] TrustError),
    #[error("{path}: the certificate names facility {found}, but this node is {expected}")]
    WrongFacility {
        path: String,
        found: String,
        expected: String,
    },
    #[error("{key}: does not match the public key of the certificate in {cert}")]
    TlsKeyMismatch { key: String, cert: String },
    #[error("keyring {path}: {problem}")]
    Keyring { path: String, problem: String },
}

pub struct NodeIdentity {
    pub tls_cert: CertificateDer<'static>,
    tls_key: Zeroizing<Vec<u8>>,
    pub signing: Arc<SigningKey>,
    pub encryption: Arc<EncryptionSecretKey>,
    /// Keys for opening only, newest first; never the current key.
    older_encryption: Vec<Arc<EncryptionSecretKey>>,
    /// This node's earlier signing keys (public halves), for what it sealed to itself.
    older_verifying: Vec<VerifyingKey>,
    /// SHA-256 over the key files' bytes as read, to tell a changed set from the same one.
    files_digest: [u8; 32],
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityReload {
    /// The files are the ones in use.
    Unchanged,
    /// The new set is in use for signing, TLS and opening.
    Switched,
    /// The new set is valid, its encryption key is held for opening, but the directory this
    /// node has loaded does not list its signing key and certificate yet.
    WaitingForDirectory,
}

/// A set of key files read and checked, not yet in use.
struct KeySet {
    tls_cert: CertificateDer<'static>,
    tls_key: Zeroizing<Vec<u8>>,
    signing: Arc<SigningKey>,
    encryption: Arc<EncryptionSecretKey>,
    previous_encryption: Option<Arc<EncryptionSecretKey>>,
    /// The encryption key file's bytes, copied into the keyring as they are.
    encryption_file: Zeroizing<Vec<u8>>,
    files_digest: [u8; 32],
}

impl KeySet {
    fn read(config: &NodeConfig) -> Result<KeySet, IdentityError> {
        let keys = &config.keys;
        let files_digest = files_digest(config)?;
        let key_err = |e: &dyn std::fmt::Display| IdentityError::Key(e.to_string());
        let tls_key = load_tls_key_der(&keys.tls_key).map_err(|e| key_err(&e))?;
        let signing_der = load_ed25519_pkcs8(&keys.signing_key).map_err(|e| key_err(&e))?;
        let signing = SigningKey::from_pkcs8(&signing_der)
            .map_err(|e| IdentityError::Key(format!("{}: {e}", keys.signing_key.display())))?;
        let signing = Arc::new(signing);
        let encryption = Arc::new(EncryptionSecretKey::from_bytes(
            *load_x25519_private(&keys.encryption_key).map_err(|e| key_err(&e))?,
        ));
        let encryption_file = Zeroizing::new(read_file(&keys.encryption_key)?);
        let previous_encryption = match &keys.previous_encryption_key {
            Some(path) => Some(Arc::new(EncryptionSecretKey::from_bytes(
                *load_x25519_private(path).map_err(|e| key_err(&e))?,
            ))),
            None => None,
        };
        let tls_cert = read_single_cert(&keys.tls_cert)?;
        let found = pki_tools::facility_id_from_cert(&tls_cert)
            .map_err(|e| IdentityError::Key(format!("{}: {e}", keys.tls_cert.display())))?;
        if found != config.facility_id {
            return Err(IdentityError::WrongFacility {
                path: keys.tls_cert.display().to_string(),
                found: found.to_string(),
                expected: config.facility_id.to_string(),
            });
        }
        check_tls_pair(&tls_cert, &tls_key).map_err(|()| IdentityError::TlsKeyMismatch {
            key: keys.tls_key.display().to_string(),
            cert: keys.tls_cert.display().to_string(),
        })?;
        // The files were read twice (for the digest, then parsed): they must not have changed
        // in between, or the digest would name another set than the one loaded.
        if self::files_digest(config)? != files_digest {
            return Err(IdentityError::Key(
                "key files changed while they were read; the next reload reads them again"
                    .to_owned(),
            ));
        }
        Ok(KeySet {
            tls_cert,
            tls_key,
            signing,
            encryption,
            previous_encryption,
            encryption_file,
            files_digest,
        })
    }

    /// Whether the directory entry lists this set's signing key and certificate.
    fn listed_in(&self, entry: &FacilityEntry) -> bool {
        let fingerprint = pki_tools::cert_fingerprint(&self.tls_cert);
        entry.signing_keys.contains(&self.signing.verifying_key().0)
            && entry.tls_cert_sha256.contains(&fingerprint)
    }
}

impl NodeIdentity {
    /// Loads the identity at start: the key files as they are, and the keyring.
    pub fn load(config: &NodeConfig) -> Result<NodeIdentity, IdentityError> {
        let set = KeySet::read(config)?;
        let keyring = Keyring::open(&config.data_dir)?;
        let (ring_encryption, ring_verifying) = keyring.load()?;
        keyring.archive(&set)?;
        let mut identity = NodeIdentity {
            tls_cert: set.tls_cert,
            tls_key: set.tls_key,
            signing: set.signing,
            encryption: set.encryption,
            older_encryption: Vec::new(),
            older_verifying: Vec::new(),
            files_digest: set.files_digest,
        };
        identity.add_older(set.previous_encryption, Vec::new());
        identity.add_older(ring_encryption, ring_verifying);
        Ok(identity)
    }

    pub fn tls_key_der(&self) -> &[u8] {
        &self.tls_key
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// SHA-256 of the certificate this node presents.
    pub fn tls_fingerprint(&self) -> [u8; 32] {
        pki_tools::cert_fingerprint(&self.tls_cert)
    }

    /// Current key first, then the older ones (rotation overlap, earlier rotations).
    pub fn decryption_keys(&self) -> Vec<&EncryptionSecretKey> {
        let mut keys: Vec<&EncryptionSecretKey> = vec![&self.encryption];
        keys.extend(self.older_encryption.iter().map(|k| &**k));
        keys
    }

    /// Whether this node holds the secret half of `public`.
    pub fn holds_encryption_key(&self, public: &EncryptionPublicKey) -> bool {
        self.decryption_keys()
            .iter()
            .any(|k| k.public_key().0 == public.0)
    }

    /// The current verifying key, then the earlier ones: what this node signed for itself
    /// (pull-request records) verifies under one of them.
    pub fn own_verifying_keys(&self) -> Vec<VerifyingKey> {
        let mut keys = vec![self.verifying_key()];
        keys.extend(self.older_verifying.iter().copied());
        keys
    }

    /// Adds keys for opening (and verifying) behind the current ones, skipping any already held.
    fn add_older(
        &mut self,
        encryption: impl IntoIterator<Item = Arc<EncryptionSecretKey>>,
        verifying: Vec<VerifyingKey>,
    ) {
        for key in encryption {
            let public = key.public_key();
            if !self.holds_encryption_key(&public) {
                self.older_encryption.push(key);
            }
        }
        for key in verifying {
            if !self.own_verifying_keys().contains(&key) {
                self.older_verifying.push(key);
            }
        }
    }

    /// The same signing and TLS identity, with more keys for opening.
    fn with_opening_keys(&self, set: &KeySet) -> NodeIdentity {
        let mut next = self.duplicate();
        next.add_older(
            [set.encryption.clone()]
                .into_iter()
                .chain(set.previous_encryption.clone()),
            Vec::new(),
        );
        next
    }

    /// The new set in use; everything this identity held is kept for opening and verifying.
    fn succeeded_by(&self, set: KeySet) -> NodeIdentity {
        let mut next = NodeIdentity {
            tls_cert: set.tls_cert,
            tls_key: set.tls_key,
            signing: set.signing,
            encryption: set.encryption,
            older_encryption: Vec::new(),
            older_verifying: Vec::new(),
            files_digest: set.files_digest,
        };
        next.add_older(set.previous_encryption, Vec::new());
        next.add_older(
            [self.encryption.clone()]
                .into_iter()
                .chain(self.older_encryption.iter().cloned()),
            self.own_verifying_keys(),
        );
        next
    }

    fn duplicate(&self) -> NodeIdentity {
        NodeIdentity {
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            signing: self.signing.clone(),
            encryption: self.encryption.clone(),
            older_encryption: self.older_encryption.clone(),
            older_verifying: self.older_verifying.clone(),
            files_digest: self.files_digest,
        }
    }
}

/// The node's current identity, swapped atomically on reload.
pub struct IdentityHandle {
    inner: RwLock<Arc<NodeIdentity>>,
    config: Arc<NodeConfig>,
    /// Serialises reloads (interval, SIGHUP, a receive that met an unknown key) and remembers
    /// the last set refused or waiting, so each is logged once, not on every interval.
    memo: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    refused: Option<[u8; 32]>,
    waiting: Option<[u8; 32]>,
}

impl IdentityHandle {
    pub fn new(identity: NodeIdentity, config: Arc<NodeConfig>) -> IdentityHandle {
        IdentityHandle {
            inner: RwLock::new(Arc::new(identity)),
            config,
            memo: Mutex::new(Memo::default()),
        }
    }

    pub fn current(&self) -> Arc<NodeIdentity> {
        match self.inner.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the key files again if they changed. `me` is this node's entry in the directory
    /// currently loaded: the new set is used for signing and TLS only once it lists them. A
    /// refused set leaves the current identity in place; the error says why (once per set:
    /// the same refused files again are `Unchanged`).
    pub fn reload_if_changed(
        &self,
        me: Option<&FacilityEntry>,
    ) -> Result<IdentityReload, IdentityError> {
        let mut memo = match self.memo.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = self.current();
        let digest = match files_digest(&self.config) {
            Ok(d) => d,
            // Mid-rotation a file can be missing for a moment; the next reload sees the set.
            Err(e) => return self.refuse(&mut memo, None, e),
        };
        if digest == current.files_digest || memo.refused == Some(digest) {
            return Ok(IdentityReload::Unchanged);
        }
        let set = match KeySet::read(&self.config) {
            Ok(set) => set,
            Err(e) => return self.refuse(&mut memo, Some(digest), e),
        };
        memo.refused = None;
        if !me.is_some_and(|entry| set.listed_in(entry)) {
            let first = memo.waiting != Some(digest);
            memo.waiting = Some(digest);
            let next = current.with_opening_keys(&set);
            if next.older_encryption.len() != current.older_encryption.len() {
                self.install(next);
            }
            if first {
                if let Err(e) = Keyring::open(&self.config.data_dir).and_then(|k| k.archive(&set)) {
                    tracing::warn!(error = %e, "new encryption key not written to the keyring");
                }
                return Ok(IdentityReload::WaitingForDirectory);
            }
            return Ok(IdentityReload::Unchanged);
        }
        memo.waiting = None;
        // The keyring write comes first: a key that opens envelopes must survive a restart.
        Keyring::open(&self.config.data_dir).and_then(|k| k.archive(&set))?;
        self.install(current.succeeded_by(set));
        Ok(IdentityReload::Switched)
    }

    fn refuse(
        &self,
        memo: &mut Memo,
        digest: Option<[u8; 32]>,
        e: IdentityError,
    ) -> Result<IdentityReload, IdentityError> {
        // Remembered only when the files are still the ones refused (not moving under a
        // `pki rotate`), so that a set caught mid-write is read again at the next reload.
        if let Some(digest) = digest {
            if files_digest(&self.config).ok() == Some(digest) {
                memo.refused = Some(digest);
            }
        }
        Err(e)
    }

    fn install(&self, identity: NodeIdentity) {
        let identity = Arc::new(identity);
        match self.inner.write() {
            Ok(mut guard) => *guard = identity,
            Err(poisoned) => *poisoned.into_inner() = identity,
        }
    }
}

/// Retired keys in `data_dir/keys`: `encryption-<public hex>.key` (the key file as `pki` wrote
/// it, 0600) and `signing-<public hex>.pub` (the public key, hex).
struct Keyring {
    dir: PathBuf,
}

impl Keyring {
    fn open(data_dir: &Path) -> Result<Keyring, IdentityError> {
        let dir = data_dir.join(KEYRING_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| IdentityError::Keyring {
                path: dir.display().to_string(),
                problem: e.to_string(),
            })?;
        Ok(Keyring { dir })
    }

    fn problem(&self, problem: impl std::fmt::Display) -> IdentityError {
        IdentityError::Keyring {
            path: self.dir.display().to_string(),
            problem: problem.to_string(),
        }
    }

    fn load(&self) -> Result<(Vec<Arc<EncryptionSecretKey>>, Vec<VerifyingKey>), IdentityError> {
        let mut encryption = Vec::new();
        let mut verifying = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| self.problem(e))?;
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for path in names {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with("encryption-") && name.ends_with(".key") {
                let key = load_x25519_private(&path).map_err(|e| self.problem(e))?;
                encryption.push(Arc::new(EncryptionSecretKey::from_bytes(*key)));
            } else if name.starts_with("signing-") && name.ends_with(".pub") {
                let text = std::fs::read_to_string(&path).map_err(|e| self.problem(e))?;
                let mut key = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut key)
                    .map_err(|_| self.problem(format!("{name}: not a hex public key")))?;
                verifying.push(VerifyingKey(key));
            }
        }
        Ok((encryption, verifying))
    }

    /// Writes the set's encryption key and signing public key if the keyring lacks them.
    fn archive(&self, set: &KeySet) -> Result<(), IdentityError> {
        let public = set.encryption.public_key();
        let key_path = self
            .dir
            .join(format!("encryption-{}.key", hex::encode(public.0)));
        if !key_path.exists() {
            pki_tools::files::write_atomic(&key_path, &set.encryption_file, true)
                .map_err(|e| self.problem(e))?;
        }
        let verifying = set.signing.verifying_key();
        let pub_path = self
            .dir
            .join(format!("signing-{}.pub", hex::encode(verifying.0)));
        if !pub_path.exists() {
            let text = format!("{}\n", hex::encode(verifying.0));
            pki_tools::files::write_atomic(&pub_path, text.as_bytes(), false)
                .map_err(|e| self.problem(e))?;
        }
        Ok(())
    }
}

/// SHA-256 over every key file's mode and bytes (each length-prefixed), read without parsing:
/// a key file made 0600 after a refusal is a changed set.
fn files_digest(config: &NodeConfig) -> Result<[u8; 32], IdentityError> {
    let keys = &config.keys;
    let paths = [
        Some(&keys.tls_cert),
        Some(&keys.tls_key),
        Some(&keys.signing_key),
        Some(&keys.encryption_key),
        keys.previous_encryption_key.as_ref(),
    ];
    let mut all = Zeroizing::new(Vec::new());
    for path in paths.into_iter().flatten() {
        let bytes = Zeroizing::new(read_file(path)?);
        let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
        all.extend_from_slice(&mode.to_be_bytes());
        all.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        all.extend_from_slice(&bytes);
    }
    Ok(gateway_envelope::sha256(&all))
}

fn read_file(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path)
        .map_err(|e| IdentityError::Key(format!("{}: cannot read: {e}", path.display())))
}

/// Whether the TLS key is the private half of the certificate's public key (rustls compares
/// the SubjectPublicKeyInfo of both).
fn check_tls_pair(cert: &CertificateDer<'static>, key: &[u8]) -> Result<(), ()> {
    let provider = rustls::crypto::ring::default_provider();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|_| ())?;
    CertifiedKey::new(vec![cert.clone()], signer)
        .keys_match()
        .map_err(|_| ())
}

#[cfg(test)]
mod tests;
