//! The node's durable state: outbox, inbox, envelope spool, hash-chained audit log, consent
//! directives, pull requests and the EMR's record source tree. This is the only crate that
//! opens sled (0.34.7), so the engine can be swapped without touching the gateway.
//!
//! # Layout
//! `Store::open(dir)` uses `dir/sled` (one sled database, one tree per collection and index),
//! `dir/spool/{outbox,inbox}/<transfer id hex>` (envelope bytes over 256 KiB, written through
//! [`SpoolWriter`]), `dir/spool/{outbox,inbox}-segments/<n>` (smaller envelopes, appended as
//! checksummed records; see the `segment` module) and `dir/patient-index.key` (the node-local
//! secret, 0600). Every sled value is postcard behind a one-byte encoding version (see the
//! `codec` module). Envelopes of
//! settled transfers are indexed for removal after the node's retention period (see the
//! `retention` module: [`Store::expire_envelopes`]).
//!
//! | tree | key | value |
//! |---|---|---|
//! | `outbox` | transfer id | sealed [`OutboxEntry`] |
//! | `outbox_by_time`, `outbox_due` | `ms_be \|\| transfer id` | empty |
//! | `inbox` | transfer id | [`InboxEntry`] (no patient reference) |
//! | `inbox_by_time` | `received_ms_be \|\| transfer id` | empty |
//! | `audit` | `seq_be` | entry, patient reference sealed inside (see below) |
//! | `audit_by_patient` | `tag(patient) \|\| seq_be` | empty |
//! | `audit_by_transfer` | `transfer id \|\| seq_be` | empty |
//! | `audit_break_glass` | `seq_be` | empty |
//! | `audit_head` | `head` | `(last seq, hash)` |
//! | `audit_tree` | `level \|\| index_be` | the RFC 9162 hash of a complete subtree of the audit log (see `merkle`) |
//! | `audit_checkpoints` | `size_be` | a signed checkpoint of the tree (C2SP tlog-checkpoint note) |
//! | `audit_cosignatures`, `witness_cosigned` | `size_be \|\| witness`, witness id | cosignatures of our checkpoints, each witness's progress (see `witness`) |
//! | `witness_logs`, `witness_conflicts` | origin, `time_ms_be \|\| origin` | other logs' latest checkpoints witnessed, and those refused (evidence) |
//! | `consents` | directive id | sealed `(patient, directive bytes)` |
//! | `consents_by_patient` | `tag(patient) \|\| directive id` | empty |
//! | `requests` | request id | sealed request bytes |
//! | `records` | `tag(patient)` | sealed record bundle |
//! | `spool_retained`, `spool_removed`, `spool_unlink` | times, spool kind, transfer id | empty or a time |
//! | `spool_segments` | spool kind \|\| transfer id | `segment_be \|\| offset_be \|\| len_be` of its record (see `segment`) |
//! | `store_meta` | `format`, one-time job markers, the highest directory seen (`trust_seen`), every directory accepted (`directories`), audit consumers' cursors (`audit-cursor:<name>`) | small values |
//! | `idempotency` | `tag(API token name, key)` | sealed key record: request digest, transfer id, time |
//! | `idempotency_by_time` | `created_ms_be \|\| tag` | empty |
//!
//! # Patient identifiers at rest
//! No patient reference is stored in clear (see the `protect` module): `tag(patient)` is
//! HMAC-SHA256 under a key derived from `patient-index.key`, a fixed 32 bytes; "sealed" is
//! AES-256-GCM under a second derived key, with a random nonce and the tree and key as
//! associated data. The public API is unchanged: callers pass and get patient references in
//! clear, the store hashes, seals and opens them. Caller bytes that may name a patient
//! (directives, requests, records) are sealed whole. Spool files are stored as given: the
//! gateway writes HPKE-sealed envelopes there, whose clear header holds only ids, times and
//! sizes. The store's format (2) is recorded in `store_meta`; a store of format 1 (patient
//! references in clear) is migrated once, at open, by copying it into a new database (see the
//! `migrate` module), so that no clear copy survives in sled's log.
//!
//! # Durability
//! The gateway acknowledges (a local 202, a receipt to a peer) only after what it acknowledges
//! (the outbox or inbox entry and its audit entry) is on disk: it writes, then awaits
//! [`Store::commit`], then answers. Writes themselves only reach sled's memory.
//!
//! sled 0.34's `flush()` is not a power-loss-durable commit on its own: it writes its log with
//! `sync_file_range`, which neither flushes the device's volatile write cache nor the file's
//! metadata (sled issue #1452), and it never fsyncs blob files or the directory after creating
//! or renaming files. So a commit is: `Db::flush()`, then `fdatasync` of sled's log file `db`,
//! of every blob file (`blobs/<lsn>`, one per oversized page) sled closed since the last
//! commit, and an fsync of `blobs/` and of sled's directory when their entries changed (new
//! blobs, a snapshot `snap.<lsn>` renamed into place). An inotify watch (`dir_watch`) tells
//! which; after an event-queue overflow, and at open, everything is synced. `conf` is written once at creation and synced
//! at open. Spool files are fsynced and renamed into place by [`SpoolWriter::finish`]; each
//! commit first `fdatasync`s every spool segment appended to since the last one (small
//! envelopes) and fsyncs the spool directories if a file was renamed into them.
//!
//! sled also writes back on its own between commits, so a crash can leave an entry durable
//! whose envelope is not (a segment record past the torn tail, a rename not yet synced). Such
//! an entry was never acknowledged; `Store::open` settles it before anything is served (an
//! inbox entry removed so the sender's resend is stored, an outbox transfer failed and its
//! idempotency key forgotten, each with an [`ENVELOPE_LOST_EVENT`] audit entry), and the
//! receive path asks [`Store::inbox_drop_if_envelope_lost`] before it answers a resend as a
//! duplicate. See the `lost` module.
//!
//! fsync is expensive (milliseconds on real disks), so commits are grouped: a dedicated thread
//! performs the flush+fdatasync, and each `commit()` takes a ticket from a generation counter
//! and waits until a flush that started after the ticket was taken has finished. Every caller
//! whose writes precede the start of a flush is released by that flush, so N concurrent
//! transfers cost about one fsync, not N. [`Store::commit_stats`] exposes the counters.
//!
//! A failed flush or fsync is sticky: after a failed fsync Linux may have dropped the dirty
//! pages and cleared the error, so a retry could report success for data that is gone. Every
//! later `commit()` fails with [`StoreError::CommitFailed`] until the process restarts and
//! sled recovers from what is really on disk.
//!
//! Multi-tree updates (an entry and its indexes) are sled transactions, which sled recovers
//! atomically, so an index never durably disagrees with its entries.
//!
//! # Audit log
//! Append-only: there is no delete path. Entry `seq` (from 1) stores
//! `hash = SHA-256("healthfed/audit/2" || prev_hash || body)`, with an all-zero `prev_hash`
//! for the first entry, and `body` itself: `postcard((seq, stored record))`, the record with
//! its patient reference replaced by `(tag(patient), sealed patient)`. The hash covers the
//! stored bytes, sealed reference included, so verification needs no key and never depends
//! on re-encoding. A head record (last seq and hash), updated in the same transaction as each
//! append, makes truncation of the tail detectable. Indexes by patient
//! (`tag(patient) || seq_be`), by transfer (`transfer_id || seq_be`) and of break-glass
//! entries (`seq_be`) serve [`Store::audit_list`] by prefix scan. The migration from format 1
//! recomputes the chain and says so in a `store-migrated` entry ([`STORE_MIGRATED_EVENT`]).

mod archive;
mod audit;
mod audited;
mod checkpoints;
mod codec;
mod collections;
mod commit;
mod dir_watch;
pub mod directories;
mod error;
mod idempotency;
mod inbox;
mod index_keys;
mod lost;
pub mod merkle;
mod migrate;
mod outbox;
mod protect;
mod retention;
mod segment;
pub mod snapshot;
mod spool;
mod trust_seen;
mod types;
mod witness;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::commit::{sync_dir, Committer, SledFiles};

pub use crate::archive::{
    check_stored_entry, entry_leaf_hash, entry_view, EntryProblem, EntryView,
};
pub use crate::audit::{AuditChainError, AuditTreeCheck, AuditVerifyError, ChainProblem};
pub use crate::error::StoreError;
pub use crate::idempotency::{KeyClaim, KeyLookup, KeyRecord, KeyReservation};
pub use crate::lost::ENVELOPE_LOST_EVENT;
pub use crate::migrate::STORE_MIGRATED_EVENT;
pub use crate::outbox::RequeueRefusal;
pub use crate::retention::{Expired, RemovedEnvelope};
pub use crate::snapshot::{Snapshot, SnapshotError};
pub use crate::spool::{SpoolReader, SpoolWriter};
pub use crate::trust_seen::DirectorySeen;
pub use crate::types::{
    transfer_id_hex, AuditEntry, AuditFilter, AuditRecord, CommitStats, HeaderCheck, InboxEntry,
    InboxInsert, OutboxEntry, SpoolKind, TransferId, TransferState, TransferSummary,
};
pub use crate::witness::{Conflict, Witnessed};

/// sled's page cache when none is configured (sled's own default).
pub const DEFAULT_CACHE_BYTES: u64 = 1024 * 1024 * 1024;

/// Envelopes up to this size go to spool segments by default; also the most a store takes.
pub const DEFAULT_SEGMENT_ENVELOPE_BYTES: usize = segment::ENVELOPE_MAX;

/// The node's durable state. Cheap to clone: clones share one sled database and one
/// group-commit thread, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    spool_dir: PathBuf,
    spool_dirs: Arc<spool::SpoolDirs>,
    trees: Trees,
    keys: protect::Keys,
    audit_tail: Mutex<audit::Tail>,
    /// Idempotency keys being processed now (see the `idempotency` module).
    idempotency_held: idempotency::HeldKeys,
    // Joins its thread (which holds its own sled handle) on drop, so that once the last
    // clone is gone the directory can be reopened.
    committer: Committer,
    /// Held shared by every store operation, exclusively by a snapshot (see `snapshot`).
    gate: parking_lot::RwLock<()>,
    /// For the snapshot's list of trees.
    db: sled::Db,
}

/// The trees, borrowed for one store operation, with the snapshot gate held.
pub(crate) struct TreesRef<'a> {
    trees: &'a Trees,
    _gate: parking_lot::RwLockReadGuard<'a, ()>,
}

impl std::ops::Deref for TreesRef<'_> {
    type Target = Trees;
    fn deref(&self) -> &Trees {
        self.trees
    }
}

/// One sled tree per collection and per index.
struct Trees {
    outbox: sled::Tree,
    outbox_by_time: sled::Tree,
    outbox_due: sled::Tree,
    inbox: sled::Tree,
    inbox_by_time: sled::Tree,
    audit: sled::Tree,
    audit_by_patient: sled::Tree,
    audit_by_transfer: sled::Tree,
    audit_break_glass: sled::Tree,
    audit_head: sled::Tree,
    audit_tree: sled::Tree,
    audit_checkpoints: sled::Tree,
    audit_cosignatures: sled::Tree,
    witness_cosigned: sled::Tree,
    witness_logs: sled::Tree,
    witness_conflicts: sled::Tree,
    consents: sled::Tree,
    consents_by_patient: sled::Tree,
    requests: sled::Tree,
    records: sled::Tree,
    spool_retained: sled::Tree,
    spool_removed: sled::Tree,
    spool_unlink: sled::Tree,
    /// The segment index, for the transactions that settle an envelope lost in a crash.
    spool_segments: sled::Tree,
    store_meta: sled::Tree,
    idempotency: sled::Tree,
    idempotency_by_time: sled::Tree,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`: `dir/sled`, `dir/spool` and the key
    /// file `dir/patient-index.key`. Finishes an interrupted migration, migrates a store of an
    /// older format (once), removes spool files left unfinished by a crash and makes the
    /// directory structure durable. Refuses a key file that others may read or that is
    /// missing for a store that needs it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with sled's page cache set to `cache_bytes`. Audit verification and
    /// unbounded patient queries on a large log are bound by rebuilding pages that do not fit
    /// in it: on a 10 M-entry log, 1 GiB gives ~250 k entries/s verified, a cache that holds
    /// the audit tree (~6 GB) about four times that. The process uses ~1.4x the cache size.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Store::open_with(dir, cache_bytes, DEFAULT_SEGMENT_ENVELOPE_BYTES)
    }

    /// [`Store::open_with_cache`], with envelopes of at most `segment_envelope_bytes` (capped
    /// at [`DEFAULT_SEGMENT_ENVELOPE_BYTES`]; 0 for none) appended to spool segments instead of
    /// a file each (see the `segment` module). Envelopes already in segments are read either way.
    pub fn open_with(
        dir: &Path,
        cache_bytes: u64,
        segment_envelope_bytes: usize,
    ) -> Result<Store, StoreError> {
        let sled_dir = dir.join(migrate::LIVE);
        let spool_dir = dir.join("spool");
        for d in [dir, &spool_dir] {
            std::fs::create_dir_all(d).map_err(|e| StoreError::io("create directory", d, e))?;
        }
        // Before sled opens its directory: an interrupted migration may be about to replace it.
        migrate::recover(dir)?;
        std::fs::create_dir_all(&sled_dir)
            .map_err(|e| StoreError::io("create directory", &sled_dir, e))?;
        spool::prepare(&spool_dir)?;
        let spool_dirs = spool::SpoolDirs::new(&spool_dir);
        let open_db = |path: &Path| {
            sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .open()
                .map_err(StoreError::sled("open database"))
        };
        let (db, keys) = migrate::up_to_date(dir, open_db(&sled_dir)?, open_db, &spool_dirs)?;
        // Stale index entries (records lost with a torn tail) stay in the index until
        // `settle_lost_envelopes` below removes each with its entry's settling.
        let (segments, stale) = segment::open_logged(&db, &spool_dir)?;
        spool_dirs.attach(segments, segment_envelope_bytes);
        let tree = |name: &'static str| db.open_tree(name).map_err(StoreError::sled("open tree"));
        let trees = Trees {
            outbox: tree("outbox")?,
            outbox_by_time: tree("outbox_by_time")?,
            outbox_due: tree("outbox_due")?,
            inbox: tree("inbox")?,
            inbox_by_time: tree("inbox_by_time")?,
            audit: tree("audit")?,
            audit_by_patient: tree("audit_by_patient")?,
            audit_by_transfer: tree("audit_by_transfer")?,
            audit_break_glass: tree("audit_break_glass")?,
            audit_head: tree("audit_head")?,
            audit_tree: tree("audit_tree")?,
            audit_checkpoints: tree("audit_checkpoints")?,
            audit_cosignatures: tree("audit_cosignatures")?,
            witness_cosigned: tree("witness_cosigned")?,
            witness_logs: tree("witness_logs")?,
            witness_conflicts: tree("witness_conflicts")?,
            consents: tree("consents")?,
            consents_by_patient: tree("consents_by_patient")?,
            requests: tree("requests")?,
            records: tree("records")?,
            spool_retained: tree("spool_retained")?,
            spool_removed: tree("spool_removed")?,
            spool_unlink: tree("spool_unlink")?,
            spool_segments: tree(segment::INDEX_TREE)?,
            store_meta: tree("store_meta")?,
            idempotency: tree("idempotency")?,
            idempotency_by_time: tree("idempotency_by_time")?,
        };
        let tail = audit::Tail::load(&trees)?;
        // Makes the trees' creation durable before anything is acknowledged.
        let files = SledFiles::open(db.clone(), &sled_dir, Arc::clone(&spool_dirs))?;
        sync_dir(dir)?;
        let committer = Committer::start(files)?;
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                spool_dir,
                spool_dirs,
                trees,
                keys,
                audit_tail: Mutex::new(tail),
                idempotency_held: idempotency::HeldKeys::default(),
                committer,
                gate: parking_lot::RwLock::new(()),
                db,
            }),
        };
        // Before anything reads the spool or answers from the outbox or inbox: an entry whose
        // envelope was lost in a crash must not be served or answered as held (see `lost`).
        store.settle_lost_envelopes(stale)?;
        store.index_settled_once()?;
        Ok(store)
    }

    /// Whether the one-time job `name` of the node (e.g. a backfill for stores written by an
    /// older version) has recorded that it is done.
    pub fn job_done(&self, name: &str) -> Result<bool, StoreError> {
        let t = self.trees();
        t.store_meta
            .contains_key(job_key(name))
            .map_err(StoreError::sled("read store metadata"))
    }

    /// Records that the one-time job `name` is done (durable at the next commit; a job whose
    /// record is lost in a crash runs again, so jobs must be idempotent).
    pub fn set_job_done(&self, name: &str) -> Result<(), StoreError> {
        let t = self.trees();
        t.store_meta
            .insert(job_key(name), &[1u8][..])
            .map(|_| ())
            .map_err(StoreError::sled("write store metadata"))
    }

    /// The position of the consumer `name` of the audit log (e.g. the syslog stream): the last
    /// seq it has handed on, 0 when it has none yet.
    pub fn audit_cursor(&self, name: &str) -> Result<u64, StoreError> {
        let t = self.trees();
        match t
            .store_meta
            .get(cursor_key(name))
            .map_err(StoreError::sled("read store metadata"))?
        {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    what: "store metadata",
                    problem: "an audit cursor is not 8 bytes",
                }),
            None => Ok(0),
        }
    }

    /// Moves the consumer `name` to `seq` (durable at the next commit; a cursor lost in a crash
    /// only makes the consumer hand on some entries again).
    pub fn set_audit_cursor(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        let t = self.trees();
        t.store_meta
            .insert(cursor_key(name), &seq.to_be_bytes()[..])
            .map(|_| ())
            .map_err(StoreError::sled("write store metadata"))
    }

    /// A stable pseudonym of a patient reference for this store: the keyed hash its patient
    /// index uses, in hex. It names the same patient the same way in every entry without
    /// revealing the reference (for consumers outside the node, e.g. a SIEM).
    pub fn patient_pseudonym(&self, patient_ref: &str) -> String {
        hex::encode(self.keys().tag(patient_ref))
    }

    /// Makes every write that completed before this call durable (see the crate docs).
    /// Concurrent callers share one flush.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.inner.committer.commit().await
    }

    /// How many commits were requested and how many flushes served them.
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.committer.stats()
    }

    #[cfg(test)]
    pub(crate) fn spool_dirs_dirty(&self, kind: SpoolKind) -> bool {
        self.inner.spool_dirs.is_dirty(kind)
    }

    /// A writer for the spool file of `id`; see [`SpoolWriter`].
    pub fn spool_writer(
        &self,
        id: &TransferId,
        kind: SpoolKind,
    ) -> Result<SpoolWriter, StoreError> {
        SpoolWriter::create(
            &self.inner.spool_dir.join(kind.dir_name()),
            id,
            kind,
            Arc::clone(&self.inner.spool_dirs),
        )
    }

    /// Where the finished spool file of `id` is (whether or not it exists).
    pub fn spool_path(&self, id: &TransferId, kind: SpoolKind) -> PathBuf {
        spool::path(&self.inner.spool_dir, id, kind)
    }

    /// Durably removes the spool file of `id` (a rejected incoming envelope); absent is fine.
    pub fn spool_remove(&self, id: &TransferId, kind: SpoolKind) -> Result<(), StoreError> {
        spool::remove(&self.inner.spool_dir, &self.inner.spool_dirs, id, kind)
    }

    /// Re-entrant (`read_recursive`): a nested call, or one made while another store lock is
    /// held, never waits behind a snapshot that is itself waiting for the gate.
    fn trees(&self) -> TreesRef<'_> {
        TreesRef {
            trees: &self.inner.trees,
            _gate: self.inner.gate.read_recursive(),
        }
    }

    fn keys(&self) -> &protect::Keys {
        &self.inner.keys
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("commit_stats", &self.commit_stats())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Maps a transaction's outcome to the store's error, naming the operation.
pub(crate) fn tx_err(
    context: &'static str,
) -> impl FnOnce(sled::transaction::TransactionError<StoreError>) -> StoreError {
    move |e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(source) => {
            StoreError::Sled { context, source }
        }
    }
}

/// `store_meta` key of an audit consumer's cursor.
fn cursor_key(name: &str) -> Vec<u8> {
    [b"audit-cursor:".as_slice(), name.as_bytes()].concat()
}

/// `store_meta` key of a node job, apart from the store's own keys.
fn job_key(name: &str) -> Vec<u8> {
    [b"job-done:".as_slice(), name.as_bytes()].concat()
}

/// `a_be || id`: index keys ordered by a timestamp, unique by transfer id.
pub(crate) fn time_key(ms: u64, id: &TransferId) -> [u8; 24] {
    let mut key = [0; 24];
    let (time, rest) = key.split_at_mut(8);
    time.copy_from_slice(&ms.to_be_bytes());
    rest.copy_from_slice(id);
    key
}

/// The transfer id at the end of a [`time_key`].
pub(crate) fn id_of_time_key(what: &'static str, key: &[u8]) -> Result<TransferId, StoreError> {
    key.get(8..)
        .and_then(|id| TransferId::try_from(id).ok())
        .ok_or(StoreError::Corrupt {
            what,
            problem: "malformed index key",
        })
}

/// Entries of `main` (id → entry), newest first, in the order of its time index (`time_key`
/// keys, the time being `time_of` the entry): at most `limit`, starting after the entry `after`
/// (`NotFound` if it is not in `main`), so that a listing of any length can be read a page at
/// a time.
pub(crate) fn page_newest_first<T>(
    index: &sled::Tree,
    main: &sled::Tree,
    (what, context): (&'static str, &'static str),
    (after, time_of): (Option<&TransferId>, fn(&T) -> u64),
    limit: usize,
    decode: impl Fn(&TransferId, &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let items = match after {
        Some(id) => {
            let value = main
                .get(id)
                .map_err(StoreError::sled(context))?
                .ok_or_else(|| StoreError::NotFound {
                    what,
                    id: types::transfer_id_hex(id),
                })?;
            let entry: T = decode(id, &value)?;
            index.range(..time_key(time_of(&entry), id))
        }
        None => index.iter(),
    };
    let mut out = Vec::new();
    for item in items.rev().take(limit) {
        let (key, _) = item.map_err(StoreError::sled(context))?;
        let id = id_of_time_key(what, &key)?;
        let value =
            main.get(id)
                .map_err(StoreError::sled(context))?
                .ok_or(StoreError::Corrupt {
                    what,
                    problem: "index refers to a missing entry",
                })?;
        out.push(decode(&id, &value)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
