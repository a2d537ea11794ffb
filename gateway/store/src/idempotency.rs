//! Idempotency keys of submissions: a caller's key, the digest of the request it came with and
//! the transfer it created, written in the same sled transaction as that transfer's outbox
//! entry, so that a key is durable exactly when its transfer is (a crash after the commit and
//! before the answer leaves a key that the caller's retry finds).
//!
//! Trees: `idempotency` (`tag` → sealed [`KeyRecord`]) and `idempotency_by_time`
//! (`created_ms_be || tag` → empty, for the sweep). `tag` is the store's keyed hash (HMAC-SHA256
//! under the index key, see the `protect` module) of the caller's scope (its API token name)
//! and the key, so the key itself is never stored, two callers' equal keys are different
//! records, and a caller cannot probe another's keys. Values are sealed (the request digest
//! covers the patient reference) with the tree and tag as associated data.
//!
//! A key is live for the window the caller gives (the node's config) from the time its record
//! was written; an expired record is treated as absent and is overwritten by the next
//! submission with that key, and [`Store::idempotency_sweep`] removes expired records.
//!
//! While a submission with a key is being processed (inspected, authorized, sealed, committed)
//! its tag is held in memory by a [`KeyReservation`]: a second request with the same key meets
//! [`KeyLookup::InProgress`] instead of creating a second transfer. The reservation is released
//! when dropped, which the gateway does only after the commit, so a replay never answers with a
//! transfer that is not yet durable. A crash drops every reservation with the process; whatever
//! was not committed was never acknowledged, and the retry is processed afresh. sled may have
//! written such a key back on its own, with its outbox entry, while the transfer's envelope
//! never reached the disk: the next open fails that transfer and forgets its key (see the
//! `lost` module), so the retry is not answered with a transfer that cannot be sent.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use crate::audited::TxResult;
use crate::codec::{decode_sealed, encode_sealed};
use crate::error::StoreError;
use crate::outbox::{encode_entry, insert_in};
use crate::protect::{Keys, TAG_LEN};
use crate::types::{AuditEntry, AuditRecord, OutboxEntry, TransferId};
use crate::{Store, Trees};

pub(crate) const WHAT: &str = "idempotency";

/// The keyed hash naming one caller's key in the trees.
type KeyTag = [u8; TAG_LEN];

/// What the store keeps of a key: the request it came with and the transfer it created.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The caller's digest of the request (body and the metadata that defines the transfer).
    pub request_digest: [u8; 32],
    pub transfer_id: TransferId,
    /// When the transfer was queued (and the key recorded).
    pub created_ms: u64,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("transfer_id", &crate::transfer_id_hex(&self.transfer_id))
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// What [`Store::idempotency_begin`] found for a key.
#[derive(Debug)]
pub enum KeyLookup {
    /// No live record and nobody processing it: the caller now holds the key until the
    /// reservation is dropped, and records it with [`Store::outbox_insert_keyed`].
    New(KeyReservation),
    /// A live record for the same request: its transfer is the answer.
    Replay(KeyRecord),
    /// A live record for another request.
    Mismatch(KeyRecord),
    /// Another request with this key is being processed now.
    InProgress,
}

/// A key held by the submission processing it (see the module docs). Released when dropped.
pub struct KeyReservation {
    store: Store,
    claim: KeyClaim,
}

impl KeyReservation {
    /// What the outbox insert needs to record the key (`Copy`, for a blocking task).
    pub fn claim(&self) -> KeyClaim {
        self.claim
    }
}

impl fmt::Debug for KeyReservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyReservation").finish_non_exhaustive()
    }
}

impl Drop for KeyReservation {
    fn drop(&mut self) {
        // A poisoned lock means a thread panicked while holding it; the set itself is still
        // consistent (insert and remove are single operations), so the mark is still removed.
        let mut held = match self.store.inner.idempotency_held.lock() {
            Ok(held) => held,
            Err(poisoned) => poisoned.into_inner(),
        };
        held.remove(&self.claim.tag);
    }
}

/// A reserved key and the request digest it is recorded with.
#[derive(Clone, Copy)]
pub struct KeyClaim {
    tag: KeyTag,
    request_digest: [u8; 32],
}

impl fmt::Debug for KeyClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyClaim").finish_non_exhaustive()
    }
}

/// The tags of keys being processed now (in memory only).
pub(crate) type HeldKeys = std::sync::Mutex<HashSet<KeyTag>>;

/// `tag(scope, key)`: the scope is length-prefixed, so no (scope, key) pair reads as another,
/// and the leading NUL and label keep these apart from patient tags (patient references hold
/// no NUL).
fn key_tag(keys: &Keys, scope: &str, key: &str) -> KeyTag {
    keys.tag(&format!("\0idempotency-key\0{}\0{scope}{key}", scope.len()))
}

fn by_time_key(created_ms: u64, tag: &KeyTag) -> [u8; 8 + TAG_LEN] {
    let mut out = [0; 8 + TAG_LEN];
    let (time, rest) = out.split_at_mut(8);
    time.copy_from_slice(&created_ms.to_be_bytes());
    rest.copy_from_slice(tag);
    out
}

fn decode_record(keys: &Keys, tag: &[u8], value: &[u8]) -> Result<KeyRecord, StoreError> {
    decode_sealed(keys, (WHAT, tag), value)
}

/// Whether a record written at `created_ms` is still live at `now_ms` with `window_ms`.
fn live(record: &KeyRecord, now_ms: u64, window_ms: u64) -> bool {
    record.created_ms.saturating_add(window_ms) > now_ms
}

impl Store {
    /// Looks up `key` of the caller `scope` for a request with `request_digest`, and reserves
    /// it if there is nothing to answer from (see [`KeyLookup`]). A record older than
    /// `window_ms` at `now_ms` counts as absent.
    pub fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        request_digest: [u8; 32],
        now_ms: u64,
        window_ms: u64,
    ) -> Result<KeyLookup, StoreError> {
        let tag = key_tag(self.keys(), scope, key);
        // Held while the record is read, so that two requests cannot both find it absent.
        let mut held = self
            .inner
            .idempotency_held
            .lock()
            .map_err(|_| StoreError::Corrupt {
                what: WHAT,
                problem: "key reservations poisoned by a panic",
            })?;
        if held.contains(&tag) {
            return Ok(KeyLookup::InProgress);
        }
        let found = self
            .trees()
            .idempotency
            .get(tag)
            .map_err(StoreError::sled("read idempotency key"))?
            .map(|v| decode_record(self.keys(), &tag, &v))
            .transpose()?
            .filter(|r| live(r, now_ms, window_ms));
        match found {
            Some(record) if record.request_digest == request_digest => {
                Ok(KeyLookup::Replay(record))
            }
            Some(record) => Ok(KeyLookup::Mismatch(record)),
            None => {
                held.insert(tag);
                Ok(KeyLookup::New(KeyReservation {
                    store: self.clone(),
                    claim: KeyClaim {
                        tag,
                        request_digest,
                    },
                }))
            }
        }
    }

    /// [`Store::outbox_insert_audited`] that also records the reserved key `claim` for the
    /// new transfer, in the same transaction (replacing an expired record of that key).
    pub fn outbox_insert_keyed(
        &self,
        entry: &OutboxEntry,
        records: Vec<AuditRecord>,
        claim: &KeyClaim,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let value = encode_entry(self.keys(), entry)?;
        let record = KeyRecord {
            request_digest: claim.request_digest,
            transfer_id: entry.transfer_id,
            created_ms: entry.created_ms,
        };
        let tag = claim.tag;
        let sealed = encode_sealed(self.keys(), (WHAT, &tag), &record)?;
        let t = self.trees();
        let ((), entries) = self.write_audited(
            "insert outbox entry with its idempotency key",
            [
                &t.outbox,
                &t.outbox_by_time,
                &t.outbox_due,
                &t.spool_retained,
                &t.idempotency,
                &t.idempotency_by_time,
            ],
            |[outbox, by_time, due, retained, keys, keys_by_time]| {
                insert_in([outbox, by_time, due, retained], entry, &value)?;
                write_key(self.keys(), [keys, keys_by_time], &tag, &record, &sealed)?;
                Ok(((), records.clone()))
            },
        )?;
        Ok(entries)
    }

    /// Removes up to `limit` key records written at or before `cutoff_ms` (expired: the
    /// caller's window before now), oldest first, in one transaction. Returns how many were
    /// removed; fewer than `limit` means none is left. Durable at the next commit; a removal
    /// lost in a crash is redone by the next sweep, and an expired record is never answered
    /// from meanwhile.
    pub fn idempotency_sweep(&self, cutoff_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let t = self.trees();
        let mut due = Vec::new();
        for item in t
            .idempotency_by_time
            .range(..by_time_key(cutoff_ms.saturating_add(1), &[0; TAG_LEN]))
        {
            if due.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(StoreError::sled("scan idempotency keys"))?;
            let tag = tag_of_time_key(&key)?;
            due.push((key, tag));
        }
        if due.is_empty() {
            return Ok(0);
        }
        let removed = (&t.idempotency, &t.idempotency_by_time)
            .transaction(|(keys, keys_by_time)| {
                let mut removed = 0;
                for (index_key, tag) in &due {
                    keys_by_time.remove(index_key)?;
                    // The record is removed only if this index key is its own: a record
                    // rewritten after expiry has a newer index key (the old one goes with the
                    // rewrite, so this is only a guard).
                    let Some(value) = keys.get(tag)? else {
                        continue;
                    };
                    let record = decode_record(self.keys(), tag, &value)
                        .map_err(ConflictableTransactionError::Abort)?;
                    if by_time_key(record.created_ms, tag)[..] == index_key[..] {
                        keys.remove(&tag[..])?;
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .map_err(crate::tx_err("sweep idempotency keys"))?;
        Ok(removed)
    }

    /// How many key records the store holds (expired or not), for tests and diagnostics.
    pub fn idempotency_len(&self) -> usize {
        self.trees().idempotency.len()
    }
}

/// The tags of the key records written at `created_ms` (a keyed submission's record carries
/// its outbox entry's creation time), read from the time index.
pub(crate) fn tags_written_at(t: &Trees, created_ms: u64) -> Result<Vec<KeyTag>, StoreError> {
    let mut tags = Vec::new();
    for item in t.idempotency_by_time.scan_prefix(created_ms.to_be_bytes()) {
        let (key, _) = item.map_err(StoreError::sled("scan idempotency keys"))?;
        tags.push(tag_of_time_key(&key)?);
    }
    Ok(tags)
}

/// The key tag of a time index key (`created_ms_be || tag`).
fn tag_of_time_key(key: &[u8]) -> Result<KeyTag, StoreError> {
    key.get(8..)
        .and_then(|t| KeyTag::try_from(t).ok())
        .ok_or(StoreError::Corrupt {
            what: WHAT,
            problem: "malformed time index key",
        })
}

/// Removes, inside a transaction, the record among `tags` that names `transfer_id` (and its
/// time index key): a key whose transfer was never acknowledged (see the `lost` module), so
/// the caller's retry makes a new transfer. Returns whether there was one.
pub(crate) fn forget_in(
    keys: &Keys,
    [records, by_time]: [&TransactionalTree; 2],
    tags: &[KeyTag],
    transfer_id: &TransferId,
) -> TxResult<bool> {
    let mut forgot = false;
    for tag in tags {
        let Some(value) = records.get(tag)? else {
            continue;
        };
        let record =
            decode_record(keys, tag, &value).map_err(ConflictableTransactionError::Abort)?;
        if record.transfer_id == *transfer_id {
            records.remove(&tag[..])?;
            by_time.remove(&by_time_key(record.created_ms, tag)[..])?;
            forgot = true;
        }
    }
    Ok(forgot)
}

/// Writes `record` under `tag`, replacing (and un-indexing) an earlier record of the key. The
/// caller holds the key's reservation, and a reservation is given only when no live record
/// exists, so an earlier record here is an expired one.
fn write_key(
    keys: &Keys,
    [records, by_time]: [&TransactionalTree; 2],
    tag: &KeyTag,
    record: &KeyRecord,
    sealed: &[u8],
) -> TxResult<()> {
    if let Some(old) = records.get(tag)? {
        let old = decode_record(keys, tag, &old).map_err(ConflictableTransactionError::Abort)?;
        by_time.remove(&by_time_key(old.created_ms, tag)[..])?;
    }
    records.insert(&tag[..], sealed)?;
    by_time.insert(&by_time_key(record.created_ms, tag)[..], &[][..])?;
    Ok(())
}
