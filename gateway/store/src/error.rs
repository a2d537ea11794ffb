//! Errors of the store. Messages name the operation and the local resource (a path, a tree, a
//! transfer id) but never patient data: a patient reference may be stored, never echoed.

use std::io;
use std::path::PathBuf;

/// Why a store operation failed. Every variant is a local-system or caller problem: the store
/// never talks to peers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A filesystem operation outside sled failed (directories, spool files, fsync).
    #[error("local system: {context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// sled reported an error (I/O, corruption, a bug it detected).
    #[error("local system: sled {context}: {source}")]
    Sled {
        context: &'static str,
        #[source]
        source: sled::Error,
    },
    /// A stored value could not be decoded.
    #[error("corrupt {what} record in store: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    /// A stored value is structurally wrong (empty, trailing bytes, bad key).
    #[error("corrupt {what} record in store: {problem}")]
    Corrupt {
        what: &'static str,
        problem: &'static str,
    },
    /// A stored value was written by a newer (or unknown) encoding version.
    #[error("unsupported {what} record version {version}")]
    UnsupportedVersion { what: &'static str, version: u8 },
    /// A value could not be encoded (should not happen for the store's own types).
    #[error("encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    /// The caller tried to insert an outbox entry whose transfer id already exists.
    #[error("outbox entry for transfer {id} already exists")]
    DuplicateTransfer { id: String },
    /// The entry to update or acknowledge does not exist.
    #[error("{what} entry for transfer {id} not found")]
    NotFound { what: &'static str, id: String },
    /// An outbox update closure changed a field that identifies the entry.
    #[error("outbox update for transfer {id} changed immutable field {field}")]
    ImmutableField { id: String, field: &'static str },
    /// A Merkle tree size or leaf past the end of the audit log.
    #[error("the audit log has {len} entries: no tree of {size} or leaf beyond it")]
    BeyondLog { size: u64, len: u64 },
    /// A key component contains a byte the key layout cannot represent.
    #[error("invalid {what}: {problem}")]
    InvalidKey {
        what: &'static str,
        problem: &'static str,
    },
    /// An earlier group commit failed. After a failed fsync the kernel may have dropped the
    /// dirty pages, so a retry could falsely report success; every later commit fails too.
    #[error("local system: durable commit failed, store needs a restart: {reason}")]
    CommitFailed { reason: String },
    /// The group-commit thread could not be started.
    #[error("local system: spawn commit thread: {source}")]
    Spawn {
        #[source]
        source: io::Error,
    },
    /// The node-local secret that protects patient identifiers cannot be used: missing for a
    /// store that needs it, readable by others, or malformed. The node refuses to start.
    #[error("local system: patient index key {}: {problem}", path.display())]
    KeyFile {
        path: PathBuf,
        problem: &'static str,
    },
    /// Sealing a value failed (the system's random generator, or an impossible size).
    #[error("local system: seal stored value: {problem}")]
    Seal { problem: &'static str },
    /// The store was written by a newer release (its format is unknown to this one).
    #[error("store format {found} is not supported by this release (it reads {supported})")]
    UnsupportedFormat { found: u32, supported: u32 },
    /// An older store could not be migrated; it is left as it was.
    #[error("store migration from format {from} refused: {reason}")]
    MigrationRefused { from: u32, reason: String },
    /// The group-commit thread is gone (the store is shutting down or the thread died).
    #[error("local system: commit thread stopped")]
    CommitterStopped,
}

impl StoreError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sled(context: &'static str) -> impl FnOnce(sled::Error) -> Self {
        move |source| StoreError::Sled { context, source }
    }
}
