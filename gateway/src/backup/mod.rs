//! Backups of a node's data directory and restoring them (`gateway backup`, `gateway restore`,
//! `POST /v1/backup`). Owns the backup file's format; the consistent copy itself is the
//! store's (`Store::snapshot`), this module packs it.
//!
//! A backup is a tar (POSIX ustar, the `tar` crate) with the data directory's layout:
//!
//! | entry | what |
//! |---|---|
//! | `store.kv` | every sled tree, copied between two store operations (see `gateway_store::snapshot`) |
//! | `spool/outbox/<id>`, `spool/inbox/<id>` | the sealed envelopes the copy refers to (those the node keeps in spool segments are copied out into files of their own) |
//! | `audit-archives/…` | the signed archives of audit entries moved out of the store (`audit.keep_days`) |
//! | `patient-index.key`, `keys/…` | only with `--include-keys`: the store's patient-protection secret and the keyring of the node's encryption keys |
//! | `manifest.json` | last: format, facility, time, the copy's counts and each entry's size and SHA-256 |
//!
//! The tar is always encrypted to the operator's passphrase with age (C2SP age v1, scrypt
//! recipient), by the CLI: the passphrase never reaches the node. Even without keys the store
//! holds, in clear, who exchanged with whom and when, clinician ids and break-glass reasons
//! (patient references and record contents are sealed), so no backup is written in clear.
//! `age -d backup.age | tar t` reads one without the gateway.
//!
//! Invariant: a restore writes only into an empty (or absent) data directory, and only after
//! every entry matched the manifest; anything missing, extra, altered or out of order is
//! refused, naming the entry.

pub mod create;
pub mod crypt;
pub mod restore;

use serde::{Deserialize, Serialize};

/// The manifest's `format`: the version of this layout.
pub const FORMAT: &str = "healthfed-backup/1";

/// The manifest's name in the tar (its last entry).
pub const MANIFEST: &str = "manifest.json";

/// The keyring's folder in the data directory (see `trust::identity`).
pub const KEYRING_DIR: &str = "keys";

/// The audit archives' folder in the data directory (`evidence::archive::archive_dir`).
pub const ARCHIVE_DIR: &str = "audit-archives";

/// The store's patient-protection secret in the data directory.
pub const PATIENT_KEY_FILE: &str = "patient-index.key";

/// What a backup holds; its last tar entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub facility: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub gateway_version: String,
    pub store: StoreCounts,
    pub keys_included: bool,
    pub files: Vec<FileEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreCounts {
    pub trees: u64,
    pub entries: u64,
    /// The audit log's size (last seq) in the copy.
    pub audit_size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Why a backup or restore failed. Messages name entries and paths, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Snapshot(#[from] gateway_store::SnapshotError),
    #[error("local system: {context} {path}: {source}")]
    Io {
        context: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The backup file is damaged, altered or not a backup of this format.
    #[error("backup refused: {0}")]
    Damaged(String),
    /// The backup cannot be opened with what the operator gave.
    #[error("backup refused: {0}")]
    Decrypt(String),
    /// A restore that does not fit the node it is restored for.
    #[error("restore refused: {0}")]
    Refused(String),
}

impl BackupError {
    pub(crate) fn io(
        context: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.display().to_string();
        move |source| BackupError::Io {
            context,
            path,
            source,
        }
    }
}
