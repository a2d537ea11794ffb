//! Builds audit records for the store's hash-chained log. Every transfer event goes through
//! here, so the fields are filled the same way everywhere.

use gateway_store::{AuditFilter, AuditRecord, Store, StoreError};

use crate::trust::now_ms;

/// Event names, as they appear in `gateway audit list`.
pub mod event {
    pub const SUBMITTED: &str = "submitted";
    pub const SENT: &str = "sent";
    pub const DELIVERED: &str = "delivered";
    pub const RECEIPT_VERIFIED: &str = "receipt-verified";
    pub const RETRY: &str = "retry-scheduled";
    pub const RECEIVED: &str = "received";
    pub const REJECTED: &str = "rejected";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
    pub const REQUEUED: &str = "requeued";
    pub const FETCHED: &str = "fetched";
    pub const METADATA_READ: &str = "metadata-read";
    pub const RECORD_STORED: &str = "record-stored";
    pub const ACKED: &str = "acknowledged";
    pub const DECISION: &str = "policy-decision";
    pub const CONSENT: &str = "consent-changed";
    pub const REQUEST_SENT: &str = "request-sent";
    pub const REQUEST_RECEIVED: &str = "request-received";
    pub const REQUEST_ANSWERED: &str = "request-answered";
    pub const ENVELOPE_REMOVED: &str = "envelope-removed";
    /// An entry whose envelope was lost in a crash before anything acknowledged it, settled
    /// by the store (inbox: removed, so the resend is stored; outbox: failed, its
    /// idempotency key forgotten). Written by `gateway-store` itself (`lost` module).
    pub const ENVELOPE_LOST: &str = gateway_store::ENVELOPE_LOST_EVENT;
    /// A backup of the store was taken (`POST /v1/backup`; with or without keys, by whom).
    pub const BACKUP_TAKEN: &str = "backup-taken";
    /// The store was restored from a backup (the first entry after the backup's size).
    pub const STORE_RESTORED: &str = "store-restored";
    /// A read of the audit log itself (a listing page or a chain verification), naming who.
    pub const AUDIT_READ: &str = "audit-read";
    /// A peer's audit checkpoint refused as witness: not an append-only extension of the one
    /// held (kept as evidence).
    pub const WITNESS_CONFLICT: &str = "witness-conflict";
    /// A local API request refused because its token lacks the route's role.
    pub const ACCESS_REFUSED: &str = "access-refused";
    /// An officer's review of a break-glass entry (the note in `reason`).
    pub const BREAK_GLASS_REVIEWED: &str = "break-glass-reviewed";
    /// A sign-in to the officers' console (outcome `ok` or `refused`) or a sign-out.
    pub const CONSOLE_SIGN_IN: &str = "console-sign-in";
    pub const CONSOLE_SIGN_OUT: &str = "console-sign-out";
}

/// The store cursor of the SIEM stream (`audit-cursor:syslog`): how far `[audit.syslog]` has
/// handed the log on. Archiving stops at it, so the stream never skips an entry.
pub const STREAM_CURSOR: &str = "syslog";

pub fn record(event: &str, outcome: &str) -> AuditRecord {
    AuditRecord {
        time_ms: now_ms(),
        event: event.to_owned(),
        transfer_id: None,
        peer: None,
        patient_ref: None,
        purpose: None,
        clinician: None,
        outcome: outcome.to_owned(),
        reason: None,
        policy_ids: Vec::new(),
        break_glass: false,
    }
}

/// Appends to the audit log. The caller commits (group commit) before acknowledging anything.
pub fn append(store: &Store, record: AuditRecord) -> Result<(), StoreError> {
    store.audit_append(record).map(|_| ())
}

/// Appends and commits: for an entry that must be durable before the caller answers (a read
/// the log cannot record is not served). Returns the entry's seq.
pub async fn append_durable(store: &Store, record: AuditRecord) -> Result<u64, StoreError> {
    let seq = store.audit_append(record)?.seq;
    store.commit().await?;
    Ok(seq)
}

/// Whether the audit log holds an entry of `event` for this transfer (used at recovery, to
/// write an entry a crash lost exactly once). When the log cannot be read, answers yes: no
/// entry is written twice on a guess.
pub fn has_event(store: &Store, transfer_id: [u8; 16], event: &str) -> bool {
    let filter = AuditFilter {
        transfer_id: Some(transfer_id),
        ..AuditFilter::default()
    };
    match store.audit_list(&filter) {
        Ok(entries) => entries.iter().any(|e| e.record.event == event),
        Err(_) => true,
    }
}
