//! The outbox: transfers this node sends. Trees: `outbox` (id → entry), `outbox_by_time`
//! (`created_ms_be || id`, for listing newest first) and `outbox_due` (`next_attempt_ms_be ||
//! id` for entries still Queued or Delivering, so the dispatcher's poll reads only what may be
//! due, oldest first). Each update rewrites the entry and its index keys in one transaction;
//! the update that settles an entry also indexes its envelope for retention.

use std::cell::RefCell;

use sled::transaction::{abort, ConflictableTransactionError};

use crate::codec::{decode_sealed, encode_sealed};
use crate::error::StoreError;
use crate::protect::Keys;
use crate::retention::{envelope_key, index_settled};
use crate::types::{
    transfer_id_hex, AuditEntry, AuditRecord, OutboxEntry, SpoolKind, TransferId, TransferState,
};
use crate::{id_of_time_key, now_ms, page_newest_first, time_key, Store};

pub(crate) const WHAT: &str = "outbox";

/// Why [`Store::outbox_requeue_audited`] left a transfer as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequeueRefusal {
    /// Only a failed transfer is requeued (a queued one is already, a delivered or cancelled
    /// one is settled for good).
    NotFailed(TransferState),
    /// Retention removed the sealed envelope (at `removed_ms`): there is nothing left to send.
    EnvelopeRemoved { removed_ms: u64 },
}

/// An entry as stored: sealed (it names the patient and the clinician), bound to its id.
pub(crate) fn encode_entry(keys: &Keys, entry: &OutboxEntry) -> Result<Vec<u8>, StoreError> {
    encode_sealed(keys, (WHAT, &entry.transfer_id), entry)
}

/// The entry stored under `id`, opened.
pub(crate) fn decode_entry(
    keys: &Keys,
    id: &[u8],
    value: &[u8],
) -> Result<OutboxEntry, StoreError> {
    decode_sealed(keys, (WHAT, id), value)
}

/// The entry under `id` inside a transaction, opened; a missing one aborts it as not found.
fn entry_in(
    outbox: &sled::transaction::TransactionalTree,
    keys: &Keys,
    id: &[u8; 16],
) -> Result<OutboxEntry, ConflictableTransactionError<StoreError>> {
    let Some(old) = outbox.get(id)? else {
        return Err(ConflictableTransactionError::Abort(StoreError::NotFound {
            what: WHAT,
            id: transfer_id_hex(id),
        }));
    };
    decode_entry(keys, id, &old).map_err(ConflictableTransactionError::Abort)
}

/// Writes a new entry (`value`: its encoding) and its index keys into the transactional
/// `outbox`, `outbox_by_time`, `outbox_due` and `spool_retained`; aborts on an id that already
/// exists. Shared by the plain insert and the one that also records an idempotency key.
pub(crate) fn insert_in(
    [outbox, by_time, due, retained]: [&sled::transaction::TransactionalTree; 4],
    entry: &OutboxEntry,
    value: &[u8],
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let id = entry.transfer_id;
    if outbox.get(id)?.is_some() {
        return abort(StoreError::DuplicateTransfer {
            id: transfer_id_hex(&id),
        });
    }
    outbox.insert(&id[..], value)?;
    by_time.insert(&time_key(entry.created_ms, &id)[..], &[][..])?;
    if entry.state.is_pending() {
        due.insert(&time_key(entry.next_attempt_ms, &id)[..], &[][..])?;
    } else {
        index_settled(retained, entry.updated_ms, SpoolKind::Outbox, &id)?;
    }
    Ok(())
}

impl Store {
    /// Inserts a new entry; refuses an id that already exists.
    pub fn outbox_insert(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.outbox_insert_audited(entry, Vec::new()).map(|_| ())
    }

    /// Inserts a new entry and appends `records` to the audit log, in one transaction;
    /// refuses an id that already exists (and then appends nothing).
    pub fn outbox_insert_audited(
        &self,
        entry: &OutboxEntry,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let value = encode_entry(self.keys(), entry)?;
        let t = self.trees();
        let ((), entries) = self.write_audited(
            "insert outbox entry",
            [
                &t.outbox,
                &t.outbox_by_time,
                &t.outbox_due,
                &t.spool_retained,
            ],
            |[outbox, by_time, due, retained]| {
                insert_in([outbox, by_time, due, retained], entry, &value)?;
                Ok(((), records.clone()))
            },
        )?;
        Ok(entries)
    }

    pub fn outbox_get(&self, id: &TransferId) -> Result<Option<OutboxEntry>, StoreError> {
        self.trees()
            .outbox
            .get(id)
            .map_err(StoreError::sled("read outbox entry"))?
            .map(|v| decode_entry(self.keys(), id, &v))
            .transpose()
    }

    /// Every entry, newest (`created_ms`) first, for tests to compare pages with: the
    /// node itself only ever reads its history a page at a time ([`Store::outbox_page`]).
    #[cfg(test)]
    pub(crate) fn outbox_list(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.outbox_page(None, usize::MAX)
    }

    /// Every entry, in no particular order, read one at a time: for passes over the whole
    /// outbox (start-up recovery) that must not hold it in memory.
    pub fn outbox_iter(&self) -> impl Iterator<Item = Result<OutboxEntry, StoreError>> {
        let store = self.clone();
        self.trees().outbox.iter().map(move |item| {
            let (key, value) = item.map_err(StoreError::sled("read outbox"))?;
            decode_entry(store.keys(), &key, &value)
        })
    }

    /// The entries still Queued or Delivering, read one at a time through the `outbox_due`
    /// index: what start-up recovery looks at, however long the settled history is.
    pub fn outbox_pending_iter(
        &self,
    ) -> impl Iterator<Item = Result<OutboxEntry, StoreError>> + '_ {
        self.trees().outbox_due.iter().filter_map(|item| {
            let entry = item
                .map_err(StoreError::sled("scan due outbox entries"))
                .and_then(|(key, _)| id_of_time_key(WHAT, &key))
                .and_then(|id| self.outbox_get(&id));
            match entry {
                Ok(Some(e)) if e.state.is_pending() => Some(Ok(e)),
                // Settled or gone between the index read and the entry read.
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// At most `limit` entries, newest (`created_ms`) first, starting after the transfer
    /// `after` (the last one of the previous page). `NotFound` if `after` is not in the
    /// outbox.
    pub fn outbox_page(
        &self,
        after: Option<&TransferId>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let t = self.trees();
        page_newest_first(
            &t.outbox_by_time,
            &t.outbox,
            (WHAT, "list outbox"),
            (after, |e: &OutboxEntry| e.created_ms),
            limit,
            |id, value| decode_entry(self.keys(), id, value),
        )
    }

    /// Atomic read-modify-write: applies `f` to the current entry and stores the result
    /// (`f` may run more than once if a concurrent update conflicts). Returns the new entry;
    /// `NotFound` if absent. `f` must not change `transfer_id` or `created_ms`.
    pub fn outbox_update(
        &self,
        id: &TransferId,
        mut f: impl FnMut(&mut OutboxEntry),
    ) -> Result<OutboxEntry, StoreError> {
        self.outbox_update_audited(id, |e| {
            f(e);
            Vec::new()
        })
        .map(|(entry, _)| entry)
    }

    /// [`Store::outbox_update`] where `f` also returns the audit records of the change, which
    /// are appended in the same transaction (those of the run that committed, if sled ran
    /// `f` more than once). Returns the new entry and the appended audit entries.
    pub fn outbox_update_audited(
        &self,
        id: &TransferId,
        f: impl FnMut(&mut OutboxEntry) -> Vec<AuditRecord>,
    ) -> Result<(OutboxEntry, Vec<AuditEntry>), StoreError> {
        // sled retries the closure on conflict and wants `Fn`; the closure is never
        // re-entered, so the RefCell is never borrowed twice.
        let f = RefCell::new(f);
        let id = *id;
        let t = self.trees();
        self.write_audited(
            "update outbox entry",
            [&t.outbox, &t.outbox_due, &t.spool_retained],
            |[outbox, due, retained]| {
                let old = entry_in(outbox, self.keys(), &id)?;
                let mut new = old.clone();
                let records = match f.try_borrow_mut() {
                    Ok(mut f) => (*f)(&mut new),
                    Err(_) => {
                        return abort(StoreError::Corrupt {
                            what: WHAT,
                            problem: "update closure re-entered",
                        })
                    }
                };
                for (field, changed) in [
                    ("transfer_id", new.transfer_id != old.transfer_id),
                    ("created_ms", new.created_ms != old.created_ms),
                ] {
                    if changed {
                        return abort(StoreError::ImmutableField {
                            id: transfer_id_hex(&id),
                            field,
                        });
                    }
                }
                let value =
                    encode_entry(self.keys(), &new).map_err(ConflictableTransactionError::Abort)?;
                outbox.insert(&id[..], value)?;
                if old.state.is_pending() {
                    due.remove(&time_key(old.next_attempt_ms, &id)[..])?;
                }
                if new.state.is_pending() {
                    due.insert(&time_key(new.next_attempt_ms, &id)[..], &[][..])?;
                } else if old.state.is_pending() {
                    // Settled: its envelope is kept for the retention period from now.
                    index_settled(retained, now_ms(), SpoolKind::Outbox, &id)?;
                }
                Ok((new, records))
            },
        )
    }

    /// Puts a failed transfer back in the queue, due at `now_ms`, with its attempt count
    /// restarted and `records(new entry)` appended, in one transaction. Refused (and nothing
    /// written) unless the entry is failed and its envelope is still in the spool: the check
    /// of the retention's removal record is in the same transaction, so a sweep cannot remove
    /// the envelope of a transfer that is queued again (the sweep skips pending entries).
    /// `NotFound` if absent.
    pub fn outbox_requeue_audited(
        &self,
        id: &TransferId,
        now_ms: u64,
        records: impl Fn(&OutboxEntry) -> Vec<AuditRecord>,
    ) -> Result<Result<(OutboxEntry, Vec<AuditEntry>), RequeueRefusal>, StoreError> {
        let id = *id;
        let t = self.trees();
        let (outcome, entries) = self.write_audited(
            "requeue outbox entry",
            [&t.outbox, &t.outbox_due, &t.spool_removed],
            |[outbox, due, removed]| {
                let old = entry_in(outbox, self.keys(), &id)?;
                if old.state != TransferState::Failed {
                    return Ok((Err(RequeueRefusal::NotFailed(old.state)), Vec::new()));
                }
                if let Some(at) = removed.get(envelope_key(SpoolKind::Outbox, &id))? {
                    let removed_ms = <[u8; 8]>::try_from(at.as_ref())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    return Ok((
                        Err(RequeueRefusal::EnvelopeRemoved { removed_ms }),
                        Vec::new(),
                    ));
                }
                let mut new = old;
                new.state = TransferState::Queued;
                new.attempts = 0;
                new.next_attempt_ms = now_ms;
                new.updated_ms = now_ms;
                new.last_error = None;
                let value =
                    encode_entry(self.keys(), &new).map_err(ConflictableTransactionError::Abort)?;
                outbox.insert(&id[..], value)?;
                due.insert(&time_key(new.next_attempt_ms, &id)[..], &[][..])?;
                let records = records(&new);
                Ok((Ok(new), records))
            },
        )?;
        Ok(outcome.map(|entry| (entry, entries)))
    }

    /// Entries in Queued or Delivering whose `next_attempt_ms <= now_ms`, most overdue first,
    /// at most `limit`. Delivering is a lease: the dispatcher that marks an entry Delivering
    /// sets `next_attempt_ms` to the lease's end, so an attempt abandoned by a crash (or a
    /// hung attempt) is offered again once the lease expires, and a live attempt is not.
    pub fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let t = self.trees();
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in t.outbox_due.iter() {
            let (key, _) = item.map_err(StoreError::sled("scan due outbox entries"))?;
            let due_ms = key
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or(StoreError::Corrupt {
                    what: WHAT,
                    problem: "malformed due index key",
                })?;
            if due_ms > now_ms {
                break;
            }
            let id = id_of_time_key(WHAT, &key)?;
            // The entry is re-checked rather than trusted from the index: an update may
            // commit between the index scan and this read.
            if let Some(entry) = self.outbox_get(&id)? {
                if entry.state.is_pending() && entry.next_attempt_ms <= now_ms {
                    out.push(entry);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}
