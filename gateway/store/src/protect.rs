//! Patient identifiers at rest: the node-local secret and the two keys derived from it.
//!
//! A copy of the store's directory (a backup, a disk sent for repair, a stolen laptop) must not
//! reveal who the node exchanged records about. So no patient reference is written in clear:
//!
//! * where a patient is part of a key (the audit patient index, the consent index, the EMR's
//!   record tree), the key holds `HMAC-SHA256(index key, patient)` instead: 32 bytes, equal for
//!   equal patients (so lookups and prefix scans still work), meaningless without the key, and
//!   of fixed length (so no patient's prefix scan can reach another patient's keys);
//! * where a value holds a patient reference, or caller bytes that may (a consent directive, a
//!   pull request, a record bundle, an outbox entry), it is sealed with AES-256-GCM under the
//!   sealing key, with a random 96-bit nonce and, as associated data, the tree and the key it
//!   is stored under, so a sealed value moved to another key or tree no longer opens.
//!
//! Both keys come from one secret: 32 random bytes in `patient-index.key` in the store
//! directory, created with mode 0600 on first open and refused if group or others may read it
//! or if it does not hold exactly 32 bytes. HKDF-SHA256 (salt [`HKDF_SALT`]) expands it into
//! the index key (info `index`) and the sealing key (info `seal`). Losing the file makes the
//! patient-bearing parts of the store unreadable; a copy of the store without it reveals no
//! patient. The file is the store's: back it up separately from the data, or not at all.
//!
//! Random nonces bound the sealing key to about 2^32 seals (NIST SP 800-38D): some ten per
//! transfer, so hundreds of millions of transfers; the key never leaves the node.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use crate::commit::sync_dir;
use crate::error::StoreError;

/// The key file's name in the store directory.
pub(crate) const KEY_FILE: &str = "patient-index.key";

/// Length of the secret in the key file.
const SECRET_LEN: usize = 32;

/// HKDF salt: names the purpose and its version, so the same secret could never yield the
/// same keys for another use.
const HKDF_SALT: &[u8] = b"healthfed/store/patient-protection/1";

/// Prefix of every sealed value's associated data.
const AAD_DOMAIN: &[u8] = b"healthfed/store/2\0";

/// Length of a patient's keyed hash, as used in index keys.
pub(crate) const TAG_LEN: usize = 32;

/// A patient's keyed hash: `HMAC-SHA256(index key, patient reference)`.
pub(crate) type PatientTag = [u8; TAG_LEN];

/// Bytes a sealed value adds to its plaintext: the nonce before it, the GCM tag after it.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

/// The index and sealing keys of one store.
pub(crate) struct Keys {
    index: hmac::Key,
    seal: LessSafeKey,
    rng: SystemRandom,
}

/// Whether [`Keys::load`] may create the key file when it is absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IfMissing {
    /// A new store, or one written before patient protection: make a new secret.
    Create,
    /// The store holds data sealed under the file's secret: its absence is fatal.
    Refuse,
}

impl Keys {
    /// Reads (or, if allowed, creates) `dir/patient-index.key` and derives the keys.
    pub(crate) fn load(dir: &Path, if_missing: IfMissing) -> Result<Keys, StoreError> {
        let path = dir.join(KEY_FILE);
        let secret = match read_secret(&path)? {
            Some(secret) => secret,
            None if if_missing == IfMissing::Create => match create_secret(dir, &path)? {
                Some(secret) => secret,
                // Another opener created it first (sled's lock makes this all but
                // impossible): theirs is the secret.
                None => read_secret(&path)?.ok_or_else(|| key_error(&path, "vanished"))?,
            },
            None => {
                return Err(key_error(
                    &path,
                    "missing, and the store holds data sealed under it (restore the file)",
                ))
            }
        };
        Keys::derive(&secret)
    }

    fn derive(secret: &[u8; SECRET_LEN]) -> Result<Keys, StoreError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        // `expand` fails only for an output longer than 255 hash lengths; 32 bytes never is.
        let index = prk
            .expand(&[b"index"], hmac::HMAC_SHA256)
            .map(hmac::Key::from);
        let seal = prk
            .expand(&[b"seal"], &AES_256_GCM)
            .map(|okm| LessSafeKey::new(UnboundKey::from(okm)));
        match (index, seal) {
            (Ok(index), Ok(seal)) => Ok(Keys {
                index,
                seal,
                rng: SystemRandom::new(),
            }),
            _ => Err(StoreError::Seal {
                problem: "key derivation failed",
            }),
        }
    }

    /// The patient's keyed hash, used in place of the reference in index keys.
    pub(crate) fn tag(&self, patient: &str) -> PatientTag {
        let mut out = [0; TAG_LEN];
        out.copy_from_slice(hmac::sign(&self.index, patient.as_bytes()).as_ref());
        out
    }

    /// Appends `nonce || AES-256-GCM(plaintext) || tag` to `out`, bound to `aad` (see
    /// [`aad`]).
    pub(crate) fn seal_into(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| StoreError::Seal {
            problem: "the system random generator failed",
        })?;
        out.reserve(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let body = out.get_mut(start..).unwrap_or_default();
        let tag = self
            .seal
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .map_err(|_| StoreError::Seal {
                problem: "value too large to seal",
            })?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// `nonce || ciphertext || tag` sealed by [`Keys::seal_into`] with the same `aad`, opened.
    pub(crate) fn open(
        &self,
        what: &'static str,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let unsealable = StoreError::Corrupt {
            what,
            problem: "sealed value does not authenticate (altered, moved, or another key)",
        };
        let (nonce, body) = sealed
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(StoreError::Corrupt {
                what,
                problem: "sealed value too short",
            })?;
        let mut buf = body.to_vec();
        let len = self
            .seal
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| unsealable)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// The associated data of a value sealed in `tree` under `key`:
/// `"healthfed/store/2\0" || tree || 0x00 || key`. Tree names hold no NUL, so the parts
/// cannot be confused.
pub(crate) fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + tree.len() + 1 + key.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(tree.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key);
    aad
}

fn key_error(path: &Path, problem: &'static str) -> StoreError {
    StoreError::KeyFile {
        path: path.to_path_buf(),
        problem,
    }
}

/// The secret in `path`, `None` if there is no such file; refuses a file that group or others
/// may access, that is not a regular file, or whose length is not 32 bytes.
fn read_secret(path: &Path) -> Result<Option<Zeroizing<[u8; SECRET_LEN]>>, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open key file", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("stat key file", path, e))?;
    if !meta.is_file() {
        return Err(key_error(path, "not a regular file"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(key_error(
            path,
            "group or others have access (chmod 600 it, and ask who may have read it)",
        ));
    }
    if meta.len() != SECRET_LEN as u64 {
        return Err(key_error(path, "must hold exactly 32 bytes"));
    }
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    file.read_exact(secret.as_mut_slice())
        .map_err(|e| StoreError::io("read key file", path, e))?;
    // A file that grew between the stat and the read is not the file that was checked.
    let mut extra = [0u8; 1];
    match file.read(&mut extra) {
        Ok(0) => Ok(Some(secret)),
        Ok(_) => Err(key_error(path, "must hold exactly 32 bytes")),
        Err(e) => Err(StoreError::io("read key file", path, e)),
    }
}

/// Creates `path` (0600, never replacing a file) holding a new secret, durably: the file and
/// then its directory are fsynced before the secret seals anything. `None` if it appeared
/// meanwhile.
fn create_secret(
    dir: &Path,
    path: &Path,
) -> Result<Option<Zeroizing<[u8; SECRET_LEN]>>, StoreError> {
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    SystemRandom::new()
        .fill(secret.as_mut_slice())
        .map_err(|_| StoreError::Seal {
            problem: "the system random generator failed",
        })?;
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(StoreError::io("create key file", path, e)),
    };
    file.write_all(secret.as_slice())
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("write key file", path, e))?;
    sync_dir(dir)?;
    Ok(Some(secret))
}
