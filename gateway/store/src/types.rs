//! The storage types. They derive serde because they are what the store writes to disk
//! (postcard behind a version byte); nothing else in the product should serialize them.
//! `Debug` is written by hand wherever a type carries a patient reference, so that a
//! `{:?}` in a log line cannot leak it. On disk, patient references are sealed (see the
//! `protect` module): these types hold them in clear only in memory.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A transfer's identifier: 16 random bytes chosen by the sender.
pub type TransferId = [u8; 16];

/// Lowercase hex of a transfer id, for error messages and logs.
pub fn transfer_id_hex(id: &TransferId) -> String {
    hex::encode(id)
}

/// Where a transfer is in its life on the sending node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// Waiting for its next delivery attempt.
    Queued,
    /// A delivery attempt is in progress (a lease until `next_attempt_ms`).
    Delivering,
    /// The recipient returned a receipt.
    Delivered,
    /// Delivery gave up.
    Failed,
    /// Cancelled by the operator or the submitter.
    Cancelled,
}

impl TransferState {
    /// The lowercase name, as in the API and in serde.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Queued => "queued",
            TransferState::Delivering => "delivering",
            TransferState::Delivered => "delivered",
            TransferState::Failed => "failed",
            TransferState::Cancelled => "cancelled",
        }
    }

    /// Whether the dispatcher may still pick the entry up (it sits in the due index).
    pub fn is_pending(self) -> bool {
        matches!(self, TransferState::Queued | TransferState::Delivering)
    }
}

impl fmt::Display for TransferState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a transfer is about, kept with the outbox entry for listing and auditing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSummary {
    pub patient_ref: String,
    pub purpose: String,
    pub clinician: Option<String>,
    pub content_type: String,
    pub categories: Vec<String>,
    pub break_glass: bool,
}

impl fmt::Debug for TransferSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The patient reference and the clinician identify people: never printed.
        f.debug_struct("TransferSummary")
            .field("patient_ref", &Redacted)
            .field("purpose", &self.purpose)
            .field("clinician", &self.clinician.as_ref().map(|_| Redacted))
            .field("content_type", &self.content_type)
            .field("categories", &self.categories)
            .field("break_glass", &self.break_glass)
            .finish()
    }
}

/// A transfer this node sends.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub transfer_id: TransferId,
    pub recipient: String,
    pub state: TransferState,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub envelope_len: u64,
    pub payload_len: u64,
    pub payload_digest: [u8; 32],
    pub receipt: Option<Vec<u8>>,
    pub summary: TransferSummary,
    pub request_id: Option<String>,
}

impl fmt::Debug for OutboxEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxEntry")
            .field("transfer_id", &Hex(&self.transfer_id))
            .field("recipient", &self.recipient)
            .field("state", &self.state)
            .field("created_ms", &self.created_ms)
            .field("updated_ms", &self.updated_ms)
            .field("attempts", &self.attempts)
            .field("next_attempt_ms", &self.next_attempt_ms)
            .field("last_error", &self.last_error)
            .field("envelope_len", &self.envelope_len)
            .field("payload_len", &self.payload_len)
            .field("payload_digest", &Hex(&self.payload_digest))
            .field("receipt_len", &self.receipt.as_ref().map(Vec::len))
            .field("summary", &self.summary)
            .field("request_id", &self.request_id)
            .finish()
    }
}

/// A transfer this node received; the sealed envelope stays in the inbox spool.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    pub transfer_id: TransferId,
    pub sender: String,
    pub received_ms: u64,
    pub envelope_len: u64,
    pub payload_len: u64,
    pub payload_digest: [u8; 32],
    pub header_digest: [u8; 32],
    /// The signed receipt returned to the sender, re-sent when the sender retries.
    pub receipt: Vec<u8>,
    pub acked_ms: Option<u64>,
    /// What verified the header at receipt; `None` in entries written before it was kept.
    pub header_check: Option<HeaderCheck>,
}

/// The check a received header passed: the sender's signing key it verified under, and when.
/// A fetch verifies the stored header under this key, so a record stays readable after the
/// sender rotates its keys out of the directory.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderCheck {
    /// The sender's Ed25519 public key.
    pub signing_key: [u8; 32],
    pub verified_ms: u64,
}

impl fmt::Debug for HeaderCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderCheck")
            .field("signing_key", &Hex(&self.signing_key))
            .field("verified_ms", &self.verified_ms)
            .finish()
    }
}

/// The layout of [`InboxEntry`] before `header_check` was added. postcard has no optional
/// trailing fields, so an entry is read as the current layout first and then as this one;
/// neither parses as the other (a trailing-bytes or end-of-input error).
#[derive(Deserialize)]
pub(crate) struct InboxEntryV1 {
    transfer_id: TransferId,
    sender: String,
    received_ms: u64,
    envelope_len: u64,
    payload_len: u64,
    payload_digest: [u8; 32],
    header_digest: [u8; 32],
    receipt: Vec<u8>,
    acked_ms: Option<u64>,
}

impl From<InboxEntryV1> for InboxEntry {
    fn from(old: InboxEntryV1) -> InboxEntry {
        InboxEntry {
            transfer_id: old.transfer_id,
            sender: old.sender,
            received_ms: old.received_ms,
            envelope_len: old.envelope_len,
            payload_len: old.payload_len,
            payload_digest: old.payload_digest,
            header_digest: old.header_digest,
            receipt: old.receipt,
            acked_ms: old.acked_ms,
            header_check: None,
        }
    }
}

impl fmt::Debug for InboxEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxEntry")
            .field("transfer_id", &Hex(&self.transfer_id))
            .field("sender", &self.sender)
            .field("received_ms", &self.received_ms)
            .field("envelope_len", &self.envelope_len)
            .field("payload_len", &self.payload_len)
            .field("payload_digest", &Hex(&self.payload_digest))
            .field("header_digest", &Hex(&self.header_digest))
            .field("receipt_len", &self.receipt.len())
            .field("acked_ms", &self.acked_ms)
            .field("header_check", &self.header_check)
            .finish()
    }
}

/// The outcome of [`crate::Store::inbox_insert`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per insert call, returned and dropped at once"
)]
pub enum InboxInsert {
    /// The entry was new and is now stored (durable after the next commit).
    Inserted,
    /// An entry with this transfer id already existed; nothing was written. Carries the
    /// existing entry so its receipt can be re-sent.
    AlreadyPresent(InboxEntry),
}

/// One audited event, as the gateway describes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch; 0 means "stamp it when appending".
    pub time_ms: u64,
    /// submitted, sent, delivered, receipt-verified, received, rejected, failed, cancelled,
    /// fetched, acked, policy-decision, consent-changed, ...
    pub event: String,
    pub transfer_id: Option<TransferId>,
    pub peer: Option<String>,
    pub patient_ref: Option<String>,
    pub purpose: Option<String>,
    pub clinician: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub policy_ids: Vec<String>,
    pub break_glass: bool,
}

impl fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditRecord")
            .field("time_ms", &self.time_ms)
            .field("event", &self.event)
            .field(
                "transfer_id",
                &self.transfer_id.as_ref().map(|id| Hex(id.as_slice())),
            )
            .field("peer", &self.peer)
            .field("patient_ref", &self.patient_ref.as_ref().map(|_| Redacted))
            .field("purpose", &self.purpose)
            .field("clinician", &self.clinician.as_ref().map(|_| Redacted))
            .field("outcome", &self.outcome)
            .field("reason", &self.reason)
            .field("policy_ids", &self.policy_ids)
            .field("break_glass", &self.break_glass)
            .finish()
    }
}

/// An audit record as stored: its place in the chain and the hashes linking it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log; the first entry is 1.
    pub seq: u64,
    pub record: AuditRecord,
    pub prev_hash: [u8; 32],
    /// SHA-256("healthfed/audit/2" || prev_hash || body), where `body` is the stored
    /// encoding of `(seq, record)` with the patient reference sealed (see the crate docs).
    pub hash: [u8; 32],
}

impl fmt::Debug for AuditEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEntry")
            .field("seq", &self.seq)
            .field("record", &self.record)
            .field("prev_hash", &Hex(&self.prev_hash))
            .field("hash", &Hex(&self.hash))
            .finish()
    }
}

/// Which audit entries [`crate::Store::audit_list`] returns. All set conditions must hold.
/// Results are in ascending `seq` order, so `since_seq` works as a paging cursor.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries about this patient (served from the patient index).
    pub patient: Option<String>,
    /// Only entries about this transfer (served from the transfer index).
    pub transfer_id: Option<TransferId>,
    /// Only break-glass entries (served from the break-glass index).
    pub break_glass_only: bool,
    /// Only entries with `seq > since_seq` (exclusive: pass the last seq already seen).
    pub since_seq: Option<u64>,
    /// At most this many entries (the first ones after `since_seq`).
    pub limit: Option<usize>,
}

impl fmt::Debug for AuditFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditFilter")
            .field("patient", &self.patient.as_ref().map(|_| Redacted))
            .field(
                "transfer_id",
                &self.transfer_id.as_ref().map(|id| Hex(id.as_slice())),
            )
            .field("break_glass_only", &self.break_glass_only)
            .field("since_seq", &self.since_seq)
            .field("limit", &self.limit)
            .finish()
    }
}

/// Which spool directory an envelope file lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpoolKind {
    /// Envelopes this node sends.
    Outbox,
    /// Envelopes this node received (kept sealed).
    Inbox,
}

impl SpoolKind {
    pub(crate) fn dir_name(self) -> &'static str {
        match self {
            SpoolKind::Outbox => "outbox",
            SpoolKind::Inbox => "inbox",
        }
    }
}

/// Counters of the group commit, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Calls to [`crate::Store::commit`].
    pub commits: u64,
    /// sled flushes plus fdatasyncs actually performed.
    pub flushes: u64,
}

/// Prints `<redacted>` in place of a value that identifies a person.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Prints bytes (ids, digests) as lowercase hex.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
