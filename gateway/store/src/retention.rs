//! Envelope retention: which spool files are no longer needed, and removing them.
//!
//! An outbox envelope is needed until its transfer is settled (delivered, failed or
//! cancelled); an inbox envelope until the EMR acknowledges it. After that the node keeps it
//! for the configured retention and then removes it; the entry, its receipt and the audit log
//! stay. Trees:
//!
//! * `spool_retained` (`settled_ms_be || kind || id`): envelopes that may be removed once
//!   `settled_ms` is older than the retention. Written in the same transaction as the state
//!   change that settles the transfer, so no settled envelope is forgotten.
//! * `spool_removed` (`kind || id` → `removed_ms_be || signed header`): envelopes removed, so
//!   the API can say "removed by retention" instead of "missing", with the envelope's signed
//!   header (read by the caller's `header_of` before the file goes; absent in stores written
//!   before it was kept), so a transfer's disclosure evidence outlives its envelope.
//! * `spool_unlink` (`kind || id`): removals committed in sled whose file may still exist. A
//!   removal is committed first and the file unlinked after, so a crash in between leaves a
//!   leftover file (removed by the next sweep), never an entry pointing at a deleted file.
//!
//! Each removal appends an audit record (built by the caller) in the same transaction.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::error::StoreError;
use crate::protect::Keys;
use crate::types::{AuditEntry, AuditRecord, InboxEntry, OutboxEntry, SpoolKind, TransferId};
use crate::{now_ms, spool, Store};

const WHAT: &str = "retention index";

/// Key of `store_meta` set once `spool_retained` holds every settled entry (stores created
/// before retention existed are indexed once, at open).
const INDEXED_KEY: &[u8] = b"retention-indexed";

/// Keys per batch when indexing an old store (tiny in tests, so theirs cross a boundary).
const INDEX_BATCH: usize = if cfg!(test) { 3 } else { 10_000 };

/// An envelope whose retention has run out, as handed to the caller's audit record builder.
#[derive(Clone, PartialEq, Eq)]
pub struct RemovedEnvelope {
    pub kind: SpoolKind,
    pub transfer_id: TransferId,
    /// The recipient (outbox) or sender (inbox).
    pub peer: String,
    /// The patient reference of an outbox entry (an inbox entry has none: it stays inside
    /// the sealed envelope).
    pub patient_ref: Option<String>,
}

impl std::fmt::Debug for RemovedEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemovedEnvelope")
            .field("kind", &self.kind)
            .field("transfer_id", &hex::encode(self.transfer_id))
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

fn kind_byte(kind: SpoolKind) -> u8 {
    match kind {
        SpoolKind::Outbox => b'o',
        SpoolKind::Inbox => b'i',
    }
}

fn kind_of(byte: u8) -> Option<SpoolKind> {
    match byte {
        b'o' => Some(SpoolKind::Outbox),
        b'i' => Some(SpoolKind::Inbox),
        _ => None,
    }
}

/// `settled_ms_be || kind || id`.
pub(crate) fn retained_key(settled_ms: u64, kind: SpoolKind, id: &TransferId) -> [u8; 25] {
    let mut key = [0; 25];
    key[..8].copy_from_slice(&settled_ms.to_be_bytes());
    key[8] = kind_byte(kind);
    key[9..].copy_from_slice(id);
    key
}

/// `kind || id`.
pub(crate) fn envelope_key(kind: SpoolKind, id: &TransferId) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = kind_byte(kind);
    key[1..].copy_from_slice(id);
    key
}

fn corrupt(problem: &'static str) -> StoreError {
    StoreError::Corrupt {
        what: WHAT,
        problem,
    }
}

fn parse_retained(key: &[u8]) -> Result<(u64, SpoolKind, TransferId), StoreError> {
    let (time, rest) = key
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("short key"))?;
    let (kind, id) = rest.split_first().ok_or_else(|| corrupt("short key"))?;
    let kind = kind_of(*kind).ok_or_else(|| corrupt("unknown spool kind"))?;
    let id = TransferId::try_from(id).map_err(|_| corrupt("bad transfer id"))?;
    Ok((u64::from_be_bytes(*time), kind, id))
}

fn parse_envelope_key(key: &[u8]) -> Result<(SpoolKind, TransferId), StoreError> {
    let (kind, id) = key.split_first().ok_or_else(|| corrupt("short key"))?;
    let kind = kind_of(*kind).ok_or_else(|| corrupt("unknown spool kind"))?;
    let id = TransferId::try_from(id).map_err(|_| corrupt("bad transfer id"))?;
    Ok((kind, id))
}

/// What one [`Store::expire_envelopes`] call did.
#[derive(Debug)]
pub struct Expired {
    /// Index keys taken (at most the limit): fewer than the limit means none is left that was
    /// settled before the cut-off.
    pub taken: usize,
    /// The audit entries of the envelopes removed, one each.
    pub removed: Vec<AuditEntry>,
}

impl Store {
    /// Removes, in sled, up to `limit` envelopes settled at or before `cutoff_ms`, appending
    /// `audit(envelope)` for each in the same transaction. Their files are deleted by
    /// [`Store::unlink_removed_envelopes`], which the caller runs after the next
    /// [`Store::commit`]. An outbox entry that is pending again is skipped (its envelope is
    /// needed) and indexed anew when it settles. `header_of` reads the signed header from an
    /// envelope, given open (the store does not parse envelopes); it is kept with the removal.
    pub fn expire_envelopes(
        &self,
        cutoff_ms: u64,
        limit: usize,
        audit: impl Fn(&RemovedEnvelope) -> AuditRecord,
        header_of: impl Fn(crate::SpoolReader) -> Option<Vec<u8>>,
    ) -> Result<Expired, StoreError> {
        let t = self.trees();
        let mut keys = Vec::new();
        for item in t.spool_retained.iter().take(limit) {
            let (key, _) = item.map_err(StoreError::sled("scan retention index"))?;
            let (settled_ms, _, _) = parse_retained(&key)?;
            if settled_ms > cutoff_ms {
                break;
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(Expired {
                taken: 0,
                removed: Vec::new(),
            });
        }
        // Read outside the transaction (file I/O; a retried transaction reads nothing again).
        let mut values = std::collections::HashMap::with_capacity(keys.len());
        let removed_at = now_ms().to_be_bytes();
        for key in &keys {
            let (_, kind, id) = parse_retained(key)?;
            let mut value = removed_at.to_vec();
            // An envelope that cannot be read keeps no header (as one already gone).
            let envelope = self.spool_open(&id, kind).ok().flatten();
            if let Some(header) = envelope.and_then(&header_of) {
                value.extend_from_slice(&header);
            }
            values.insert(envelope_key(kind, &id), value);
        }
        let ((), removed) = self.write_audited(
            "expire envelopes",
            [
                &t.spool_retained,
                &t.spool_removed,
                &t.spool_unlink,
                &t.outbox,
                &t.inbox,
            ],
            |[retained, removed, unlink, outbox, inbox]| {
                let mut records = Vec::new();
                for key in &keys {
                    if retained.remove(key)?.is_none() {
                        continue; // removed by a concurrent sweep
                    }
                    let (_, kind, id) =
                        parse_retained(key).map_err(ConflictableTransactionError::Abort)?;
                    let Some(envelope) = describe(self.keys(), kind, id, outbox, inbox)? else {
                        continue;
                    };
                    let ek = envelope_key(kind, &id);
                    let value = values.get(&ek).map_or(&removed_at[..], Vec::as_slice);
                    removed.insert(&ek[..], value)?;
                    unlink.insert(&ek[..], &[][..])?;
                    records.push(audit(&envelope));
                }
                Ok(((), records))
            },
        )?;
        Ok(Expired {
            taken: keys.len(),
            removed,
        })
    }

    /// Deletes the files of envelopes removed by [`Store::expire_envelopes`] (and left over by
    /// a crash), makes the deletions durable, then forgets them. Returns how many files were
    /// handled. Blocking file I/O.
    pub fn unlink_removed_envelopes(&self) -> Result<usize, StoreError> {
        let t = self.trees();
        let mut done = Vec::new();
        for item in t.spool_unlink.iter() {
            let (key, _) = item.map_err(StoreError::sled("scan removed envelopes"))?;
            let (kind, id) = parse_envelope_key(&key)?;
            spool::unlink(&self.inner.spool_dir, &self.inner.spool_dirs, &id, kind)?;
            done.push(key);
        }
        if done.is_empty() {
            return Ok(0);
        }
        self.inner.spool_dirs.sync_all()?;
        let mut batch = sled::Batch::default();
        for key in &done {
            batch.remove(key);
        }
        t.spool_unlink
            .apply_batch(batch)
            .map_err(StoreError::sled("forget removed envelopes"))?;
        Ok(done.len())
    }

    /// When the envelope of `id` was removed by retention, if it was.
    pub fn envelope_removed_ms(
        &self,
        kind: SpoolKind,
        id: &TransferId,
    ) -> Result<Option<u64>, StoreError> {
        let value = self
            .trees()
            .spool_removed
            .get(envelope_key(kind, id))
            .map_err(StoreError::sled("read removed envelopes"))?;
        value
            .map(|v| {
                v.get(..8)
                    .and_then(|t| <[u8; 8]>::try_from(t).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| corrupt("bad removal time"))
            })
            .transpose()
    }

    /// The signed header kept when the envelope of `id` was removed by retention, if one was.
    pub fn removed_envelope_header(
        &self,
        kind: SpoolKind,
        id: &TransferId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .trees()
            .spool_removed
            .get(envelope_key(kind, id))
            .map_err(StoreError::sled("read removed envelopes"))?;
        Ok(value.and_then(|v| v.get(8..).filter(|h| !h.is_empty()).map(<[u8]>::to_vec)))
    }

    /// How many settled envelopes wait for their retention to run out.
    #[cfg(test)]
    pub(crate) fn retained_envelopes(&self) -> usize {
        self.trees().spool_retained.len()
    }

    /// Indexes the settled entries of a store written before retention existed, once.
    pub(crate) fn index_settled_once(&self) -> Result<(), StoreError> {
        let t = self.trees();
        let done = t
            .store_meta
            .get(INDEXED_KEY)
            .map_err(StoreError::sled("read store metadata"))?;
        if done.is_some() {
            return Ok(());
        }
        // Written in bounded batches: an old store may hold millions of settled entries.
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        let mut add = |batch: &mut sled::Batch, key: [u8; 25]| -> Result<(), StoreError> {
            batch.insert(&key[..], &[][..]);
            pending += 1;
            if pending >= INDEX_BATCH {
                t.spool_retained
                    .apply_batch(std::mem::take(batch))
                    .map_err(StoreError::sled("index settled transfers"))?;
                pending = 0;
            }
            Ok(())
        };
        for item in t.outbox.iter() {
            let (key, value) = item.map_err(StoreError::sled("index settled transfers"))?;
            let entry: OutboxEntry = crate::outbox::decode_entry(self.keys(), &key, &value)?;
            if !entry.state.is_pending() {
                let key = retained_key(entry.updated_ms, SpoolKind::Outbox, &entry.transfer_id);
                add(&mut batch, key)?;
            }
        }
        for item in t.inbox.iter() {
            let (_, value) = item.map_err(StoreError::sled("index settled transfers"))?;
            let entry: InboxEntry = crate::inbox::decode_entry(&value)?;
            if let Some(acked_ms) = entry.acked_ms {
                add(
                    &mut batch,
                    retained_key(acked_ms, SpoolKind::Inbox, &entry.transfer_id),
                )?;
            }
        }
        t.spool_retained
            .apply_batch(batch)
            .map_err(StoreError::sled("index settled transfers"))?;
        t.store_meta
            .insert(INDEXED_KEY, &[1u8][..])
            .map_err(StoreError::sled("write store metadata"))?;
        Ok(())
    }
}

/// What an expiring envelope was, from its entry; `None` if the outbox entry is pending again.
fn describe(
    keys: &Keys,
    kind: SpoolKind,
    id: TransferId,
    outbox: &TransactionalTree,
    inbox: &TransactionalTree,
) -> Result<Option<RemovedEnvelope>, ConflictableTransactionError<StoreError>> {
    let abort = ConflictableTransactionError::Abort;
    let envelope = match kind {
        SpoolKind::Outbox => {
            let Some(value) = outbox.get(id)? else {
                return Err(abort(corrupt("settled outbox entry is missing")));
            };
            let entry: OutboxEntry =
                crate::outbox::decode_entry(keys, &id, &value).map_err(abort)?;
            if entry.state.is_pending() {
                return Ok(None);
            }
            RemovedEnvelope {
                kind,
                transfer_id: id,
                peer: entry.recipient,
                patient_ref: Some(entry.summary.patient_ref),
            }
        }
        SpoolKind::Inbox => {
            let Some(value) = inbox.get(id)? else {
                return Err(abort(corrupt("acknowledged inbox entry is missing")));
            };
            let entry: InboxEntry = crate::inbox::decode_entry(&value).map_err(abort)?;
            RemovedEnvelope {
                kind,
                transfer_id: id,
                peer: entry.sender,
                patient_ref: None,
            }
        }
    };
    Ok(Some(envelope))
}

/// Adds the retention key of a settled entry inside a transaction.
pub(crate) fn index_settled(
    retained: &TransactionalTree,
    settled_ms: u64,
    kind: SpoolKind,
    id: &TransferId,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    retained.insert(&retained_key(settled_ms, kind, id)[..], &[][..])?;
    Ok(())
}
