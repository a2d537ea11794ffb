//! Entries whose envelope was lost in a crash before anything acknowledged them.
//!
//! An envelope's bytes (a segment record, or the rename of a spool file) become durable with
//! the group commit that precedes every acknowledgement. But sled also writes its pages back on
//! its own (about every 500 ms), so a power cut between such a write-back and the next commit
//! can leave an outbox or inbox entry (and the index entry of its segment record) on disk while
//! the record itself is not: [`crate::segment::Segments::open`] finds the record past the
//! valid end of its tail segment, cuts the tail and reports the index entry as stale. Such an
//! entry was never acknowledged: no commit finished after its envelope was written, and every
//! 202, receipt and delivery attempt waits for one. Left as it is, the record would be lost
//! although nothing was ever accepted without it:
//!
//! - inbox: the sender never got its receipt, so it resends; the receiver would find the entry
//!   and answer "duplicate" with the receipt the entry holds, the sender would mark the
//!   transfer delivered, and the record would be gone;
//! - outbox: the submission never got its 202, but a retry with the same `Idempotency-Key`
//!   would be answered with the transfer id the key's record names, a transfer the node can
//!   never send.
//!
//! So, failing closed, at open (and nothing is served before it is done):
//!
//! - inbox: the entry is removed (with its time index and retention keys) and an
//!   [`ENVELOPE_LOST_EVENT`] audit entry says why; the sender's resend is then stored as new,
//!   with its own `policy-decision` and `received` entries after that one. The entry's receipt
//!   was never sent, so nothing anyone holds refers to it;
//! - outbox: a pending transfer without its envelope is failed (it was never sent: no byte
//!   leaves before a commit) with an [`ENVELOPE_LOST_EVENT`] audit entry, outcome `failed`,
//!   and its idempotency key is forgotten, so the client's retry, which never had an answer,
//!   makes a new transfer. Every pending entry is checked, not only those of stale segment
//!   records: a spool file whose rename did not reach the disk leaves the same state. A
//!   pending entry's envelope is never removed otherwise (retention takes settled ones only).
//!
//! Each of these is one sled transaction with the removal of the stale index entry, so a crash
//! in between leaves the stale entry for the next open to find again. An inbox entry whose
//! envelope was a file of its own (not renamed durably) is not known at open (finding it would
//! read every unacknowledged entry); the receive path asks
//! [`Store::inbox_drop_if_envelope_lost`] before it answers a resend as a duplicate.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::error::StoreError;
use crate::idempotency;
use crate::inbox::decode_entry as decode_inbox;
use crate::outbox::{decode_entry as decode_outbox, encode_entry as encode_outbox};
use crate::retention::{envelope_key, retained_key};
use crate::segment::{Segments, Stale};
use crate::types::{AuditRecord, InboxEntry, OutboxEntry, SpoolKind, TransferId, TransferState};
use crate::{id_of_time_key, now_ms, spool, time_key, Store};

/// The audit event of an entry settled because its envelope was lost before it was
/// acknowledged (outcome `removed` for an inbox entry, `failed` for an outbox transfer).
pub const ENVELOPE_LOST_EVENT: &str = "envelope-lost";

const INBOX_AT_OPEN: &str = "the envelope was not on disk at start-up (written after the last \
     durable commit and lost in a crash, so its receipt was never sent): inbox entry removed, \
     the sender's resend is stored as new";
const INBOX_ON_RESEND: &str = "the envelope was not in the spool when the sender resent it \
     (lost in a crash before its receipt was sent): inbox entry removed, the resend is stored \
     as new";
const OUTBOX_AT_OPEN: &str = "the sealed envelope was not on disk at start-up (lost in a crash \
     before the submission was committed, so it was never acknowledged or sent): failed, and \
     its idempotency key forgotten, so a retry of the submission makes a new transfer";

/// What [`Store::settle_lost_envelopes`] did, for the open's log (counts only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) stale_index_entries: usize,
    pub(crate) inbox_removed: usize,
    pub(crate) outbox_failed: usize,
}

impl Store {
    /// At open: removes the stale segment index entries `stale` (see the module docs) with
    /// the settling of their entries, then fails every other pending outbox transfer whose
    /// envelope is missing. Durable with the next commit, which precedes any acknowledgement.
    pub(crate) fn settle_lost_envelopes(&self, stale: Vec<Stale>) -> Result<Settled, StoreError> {
        let mut settled = Settled::default();
        for (kind, id) in stale {
            settled.stale_index_entries += 1;
            match kind {
                SpoolKind::Inbox => {
                    if self.drop_lost_inbox(&id, None, true, INBOX_AT_OPEN)? {
                        settled.inbox_removed += 1;
                    }
                }
                SpoolKind::Outbox => {
                    if self.fail_lost_outbox(&id, true)? {
                        settled.outbox_failed += 1;
                    }
                }
            }
        }
        let mut missing = Vec::new();
        for item in self.trees().outbox_due.iter() {
            let (key, _) = item.map_err(StoreError::sled("scan due outbox entries"))?;
            let id = id_of_time_key(crate::outbox::WHAT, &key)?;
            if !self.spool_exists(&id, SpoolKind::Outbox)? {
                missing.push(id);
            }
        }
        for id in missing {
            if self.fail_lost_outbox(&id, false)? {
                settled.outbox_failed += 1;
            }
        }
        if settled != Settled::default() {
            tracing::warn!(
                stale_index_entries = settled.stale_index_entries,
                inbox_entries_removed = settled.inbox_removed,
                outbox_transfers_failed = settled.outbox_failed,
                "envelopes lost in a crash before they were acknowledged: their entries were \
                 settled (audit event envelope-lost)"
            );
        }
        Ok(settled)
    }

    /// Removes the inbox entry `seen` (as the caller read it), with an
    /// [`ENVELOPE_LOST_EVENT`] audit entry in the same transaction, if its envelope is in
    /// neither a segment nor a file of its own and retention did not remove it: it was lost in
    /// a crash before its receipt was sent (an unacknowledged envelope is never removed
    /// otherwise; see the module docs). The receive path asks this before it answers a resend
    /// as a duplicate; when it returns true, the resend is stored as a new transfer. Nothing is
    /// removed if the entry changed since `seen` was read. Blocking file I/O (one `stat`).
    pub fn inbox_drop_if_envelope_lost(&self, seen: &InboxEntry) -> Result<bool, StoreError> {
        self.drop_lost_inbox(&seen.transfer_id, Some(seen), false, INBOX_ON_RESEND)
    }

    /// The inbox side: `stale` when `id`'s segment index entry is a stale one to remove (at
    /// open); otherwise an index entry means the envelope is there.
    fn drop_lost_inbox(
        &self,
        id: &TransferId,
        seen: Option<&InboxEntry>,
        stale: bool,
        reason: &'static str,
    ) -> Result<bool, StoreError> {
        let id = *id;
        let has_file = spool::path(&self.inner.spool_dir, &id, SpoolKind::Inbox).exists();
        let index_key = Segments::stale_key(SpoolKind::Inbox, &id);
        let t = self.trees();
        let (removed, _) = self.write_audited(
            "settle an inbox entry whose envelope was lost",
            [
                &t.spool_segments,
                &t.inbox,
                &t.inbox_by_time,
                &t.spool_retained,
                &t.spool_removed,
            ],
            |[index, inbox, by_time, retained, removed]| {
                if envelope_indexed(index, &index_key, stale)? {
                    return Ok((false, Vec::new()));
                }
                let Some(value) = inbox.get(id)? else {
                    return Ok((false, Vec::new()));
                };
                let entry = decode_inbox(&value).map_err(ConflictableTransactionError::Abort)?;
                let lost = !has_file
                    && seen.is_none_or(|seen| *seen == entry)
                    && removed.get(envelope_key(SpoolKind::Inbox, &id))?.is_none();
                if !lost {
                    return Ok((false, Vec::new()));
                }
                inbox.remove(&id[..])?;
                by_time.remove(&time_key(entry.received_ms, &id)[..])?;
                if let Some(acked_ms) = entry.acked_ms {
                    retained.remove(&retained_key(acked_ms, SpoolKind::Inbox, &id)[..])?;
                }
                Ok((true, vec![inbox_record(&entry, reason)]))
            },
        )?;
        Ok(removed)
    }

    /// The outbox side: fails `id` if it is pending and its envelope is missing (`stale`: its
    /// segment index entry is a stale one, removed in the same transaction whatever the
    /// entry's state). Forgets the idempotency key that names it.
    fn fail_lost_outbox(&self, id: &TransferId, stale: bool) -> Result<bool, StoreError> {
        let id = *id;
        let has_file = spool::path(&self.inner.spool_dir, &id, SpoolKind::Outbox).exists();
        let index_key = Segments::stale_key(SpoolKind::Outbox, &id);
        // The key record of a keyed submission was written with the entry's creation time:
        // those of that millisecond are the candidates (a transaction cannot scan).
        let candidates = match self.outbox_get(&id)? {
            Some(entry) => idempotency::tags_written_at(&self.trees(), entry.created_ms)?,
            None => Vec::new(),
        };
        let t = self.trees();
        let (failed, _) = self.write_audited(
            "fail an outbox transfer whose envelope was lost",
            [
                &t.spool_segments,
                &t.outbox,
                &t.outbox_due,
                &t.idempotency,
                &t.idempotency_by_time,
            ],
            |[index, outbox, due, keys, keys_by_time]| {
                if envelope_indexed(index, &index_key, stale)? {
                    return Ok((false, Vec::new()));
                }
                let Some(value) = outbox.get(id)? else {
                    return Ok((false, Vec::new()));
                };
                let old = decode_outbox(self.keys(), &id, &value)
                    .map_err(ConflictableTransactionError::Abort)?;
                if has_file || !old.state.is_pending() {
                    return Ok((false, Vec::new()));
                }
                let now = now_ms();
                let mut new = old.clone();
                new.state = TransferState::Failed;
                new.last_error = Some(OUTBOX_AT_OPEN.to_owned());
                new.updated_ms = now;
                let value = encode_outbox(self.keys(), &new)
                    .map_err(ConflictableTransactionError::Abort)?;
                outbox.insert(&id[..], value)?;
                due.remove(&time_key(old.next_attempt_ms, &id)[..])?;
                // Not indexed for retention, unlike other settled transfers: there is no
                // envelope to remove, and a requeue then says "missing", not "removed".
                idempotency::forget_in(self.keys(), [keys, keys_by_time], &candidates, &id)?;
                Ok((true, vec![outbox_record(&new, OUTBOX_AT_OPEN)]))
            },
        )?;
        Ok(failed)
    }
}

/// Whether the segment index still locates the envelope: a `stale` index entry (one
/// [`Segments::open`] found pointing past the tail) is removed instead, in the caller's
/// transaction, and does not count.
fn envelope_indexed(
    index: &TransactionalTree,
    index_key: &[u8],
    stale: bool,
) -> Result<bool, ConflictableTransactionError<StoreError>> {
    if stale {
        index.remove(index_key)?;
        return Ok(false);
    }
    Ok(index.get(index_key)?.is_some())
}

fn inbox_record(entry: &InboxEntry, reason: &str) -> AuditRecord {
    AuditRecord {
        time_ms: 0,
        event: ENVELOPE_LOST_EVENT.to_owned(),
        transfer_id: Some(entry.transfer_id),
        peer: Some(entry.sender.clone()),
        // An inbox entry names no patient: that stays inside the sealed envelope.
        patient_ref: None,
        purpose: None,
        clinician: None,
        outcome: "removed".to_owned(),
        reason: Some(reason.to_owned()),
        policy_ids: Vec::new(),
        break_glass: false,
    }
}

/// Named as the gateway names a transfer's other entries (recipient, patient, purpose), so the
/// transfer's and the patient's audit listings show it.
fn outbox_record(entry: &OutboxEntry, reason: &str) -> AuditRecord {
    AuditRecord {
        time_ms: 0,
        event: ENVELOPE_LOST_EVENT.to_owned(),
        transfer_id: Some(entry.transfer_id),
        peer: Some(entry.recipient.clone()),
        patient_ref: Some(entry.summary.patient_ref.clone()),
        purpose: Some(entry.summary.purpose.clone()),
        clinician: entry.summary.clinician.clone(),
        outcome: "failed".to_owned(),
        reason: Some(reason.to_owned()),
        policy_ids: Vec::new(),
        break_glass: entry.summary.break_glass,
    }
}
