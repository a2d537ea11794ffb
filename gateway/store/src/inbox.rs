//! The inbox: transfers this node received. Trees: `inbox` (id → entry) and `inbox_by_time`
//! (`received_ms_be || id`, for listing newest first). The envelope itself stays sealed in
//! the inbox spool; the gateway decrypts it when the EMR fetches it.

use sled::transaction::{abort, ConflictableTransactionError};

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::retention::index_settled;
use crate::types::{
    transfer_id_hex, AuditEntry, AuditRecord, InboxEntry, InboxEntryV1, InboxInsert, SpoolKind,
    TransferId,
};
use crate::{page_newest_first, time_key, Store};

const WHAT: &str = "inbox";

/// Reads an inbox entry in the current layout or the one before `header_check`.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<InboxEntry, StoreError> {
    decode::<InboxEntry>(WHAT, bytes).or_else(|current| {
        decode::<InboxEntryV1>(WHAT, bytes)
            .map(InboxEntry::from)
            .map_err(|_| current)
    })
}

impl Store {
    /// Idempotent: if the id is present, returns `AlreadyPresent(existing)` and writes
    /// nothing, so a sender's retry gets the original receipt back.
    pub fn inbox_insert(&self, entry: &InboxEntry) -> Result<InboxInsert, StoreError> {
        self.inbox_insert_audited(entry, Vec::new())
            .map(|(insert, _)| insert)
    }

    /// [`Store::inbox_insert`] that also appends `records` to the audit log in the same
    /// transaction, if and only if the entry is inserted.
    pub fn inbox_insert_audited(
        &self,
        entry: &InboxEntry,
        records: Vec<AuditRecord>,
    ) -> Result<(InboxInsert, Vec<AuditEntry>), StoreError> {
        let value = encode(WHAT, entry)?;
        let id = entry.transfer_id;
        let t = self.trees();
        self.write_audited(
            "insert inbox entry",
            [&t.inbox, &t.inbox_by_time],
            |[inbox, by_time]| {
                if let Some(existing) = inbox.get(id)? {
                    let existing =
                        decode_entry(&existing).map_err(ConflictableTransactionError::Abort)?;
                    return Ok((InboxInsert::AlreadyPresent(existing), Vec::new()));
                }
                inbox.insert(&id[..], value.as_slice())?;
                by_time.insert(&time_key(entry.received_ms, &id)[..], &[][..])?;
                Ok((InboxInsert::Inserted, records.clone()))
            },
        )
    }

    pub fn inbox_get(&self, id: &TransferId) -> Result<Option<InboxEntry>, StoreError> {
        self.trees()
            .inbox
            .get(id)
            .map_err(StoreError::sled("read inbox entry"))?
            .map(|v| decode_entry(&v))
            .transpose()
    }

    /// Every entry, newest (`received_ms`) first, for tests to compare pages with: the
    /// node itself only ever reads its history a page at a time ([`Store::inbox_page`]).
    #[cfg(test)]
    pub(crate) fn inbox_list(&self) -> Result<Vec<InboxEntry>, StoreError> {
        self.inbox_page(None, usize::MAX)
    }

    /// At most `limit` entries, newest (`received_ms`) first, starting after the transfer
    /// `after` (the last one of the previous page). `NotFound` if `after` is not in the inbox.
    pub fn inbox_page(
        &self,
        after: Option<&TransferId>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        let t = self.trees();
        page_newest_first(
            &t.inbox_by_time,
            &t.inbox,
            (WHAT, "list inbox"),
            (after, |e: &InboxEntry| e.received_ms),
            limit,
            |_, value| decode_entry(value),
        )
    }

    /// Records that the EMR acknowledged the transfer, and indexes its envelope for removal
    /// after the retention period. Idempotent: the first acknowledgement's time is kept.
    /// Returns the entry; `NotFound` if absent.
    pub fn inbox_ack(&self, id: &TransferId, at_ms: u64) -> Result<InboxEntry, StoreError> {
        self.inbox_ack_audited(id, at_ms, |_, _| Vec::new())
            .map(|(entry, _)| entry)
    }

    /// [`Store::inbox_ack`] that appends the audit records `audit(entry, first)` returns in the
    /// same transaction (`first`: this call acknowledged it, rather than an earlier one).
    pub fn inbox_ack_audited(
        &self,
        id: &TransferId,
        at_ms: u64,
        audit: impl Fn(&InboxEntry, bool) -> Vec<AuditRecord>,
    ) -> Result<(InboxEntry, Vec<AuditEntry>), StoreError> {
        let id = *id;
        let t = self.trees();
        self.write_audited(
            "acknowledge inbox entry",
            [&t.inbox, &t.spool_retained],
            |[inbox, retained]| {
                let Some(value) = inbox.get(id)? else {
                    return abort(StoreError::NotFound {
                        what: WHAT,
                        id: transfer_id_hex(&id),
                    });
                };
                let mut entry: InboxEntry =
                    decode_entry(&value).map_err(ConflictableTransactionError::Abort)?;
                let first = entry.acked_ms.is_none();
                if first {
                    entry.acked_ms = Some(at_ms);
                    let value =
                        encode(WHAT, &entry).map_err(ConflictableTransactionError::Abort)?;
                    inbox.insert(&id[..], value)?;
                    index_settled(retained, at_ms, SpoolKind::Inbox, &id)?;
                }
                let records = audit(&entry, first);
                Ok((entry, records))
            },
        )
    }
}
