//! Submitting a record: check it, authorize it, seal it to the recipient, queue it durably.
//! The local API answers 202 only after the sealed envelope, the outbox entry and the audit
//! entries are committed to disk.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use gateway_envelope::TransferId;
use gateway_store::{KeyClaim, KeyReservation, OutboxEntry, TransferState, TransferSummary};
use policies::{Action, Category, Purpose};

use crate::access::{basis_of, decide, Question};
use crate::audit::{self, event};
use crate::record::{
    inspect, Content, ContentType, DeclarationWire, Inspected, PatientRef, RecordError,
    RecordMetadata, BREAK_GLASS_WINDOW_MS, INSPECT_PREFIX_BYTES, MAX_PARSED_BYTES,
    METADATA_VERSION,
};
use crate::state::metrics::Direction;
use crate::state::NodeState;
use crate::trust::now_ms;
use crate::trust::Peer;

use super::seal::seal_to_spool;

/// A record as the local system submits it.
pub struct SubmitRequest {
    pub to: String,
    pub patient: PatientRef,
    pub purpose: Purpose,
    pub content_type: ContentType,
    pub categories: BTreeSet<Category>,
    pub clinician: Option<String>,
    pub clinician_role: Option<String>,
    pub break_glass_reason: Option<String>,
    /// For an answer to a break-glass pull request: the requester's window.
    pub break_glass_until_ms: Option<u64>,
    pub request_id: Option<String>,
}

/// The payload: small ones in memory, large ones spilled to a private temp file by the API
/// (deleted once sealed).
pub enum Payload {
    /// The bytes and their SHA-256 (computed while they were read, so it is not done twice).
    Memory { bytes: Bytes, digest: [u8; 32] },
    File {
        path: PathBuf,
        len: u64,
        digest: [u8; 32],
    },
    /// Sealed while it is still being uploaded: the client declared the length and SHA-256
    /// (`Content-Length`, `Content-Digest`) up front, so the envelope header can be signed
    /// before the bytes arrive, and the upload is neither held in memory nor spooled twice.
    /// The bytes are hashed as they come and a mismatch refuses the submission. Only for
    /// content the gateway does not parse whole (FHIR and CDA are classified before sealing);
    /// its first bytes are still read, before the header is signed, to check its format.
    Stream {
        chunks: mpsc::Receiver<Result<Bytes, String>>,
        /// What was read ahead to inspect the upload's first bytes; sealed first.
        peeked: Vec<Bytes>,
        len: u64,
        digest: [u8; 32],
    },
}

impl Payload {
    pub fn in_memory(bytes: Bytes) -> Payload {
        let digest = gateway_envelope::sha256(&bytes);
        Payload::Memory { bytes, digest }
    }

    pub(super) fn len(&self) -> u64 {
        match self {
            Payload::Memory { bytes, .. } => bytes.len() as u64,
            Payload::File { len, .. } | Payload::Stream { len, .. } => *len,
        }
    }

    /// The payload's SHA-256: computed while it was read, or as declared for a stream (and
    /// checked against the bytes while they are sealed).
    pub fn digest(&self) -> [u8; 32] {
        match self {
            Payload::Memory { digest, .. }
            | Payload::File { digest, .. }
            | Payload::Stream { digest, .. } => *digest,
        }
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if let Payload::File { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("recipient {0} is not in the federation directory")]
    UnknownRecipient(String),
    #[error("recipient {0} is not active in the federation directory")]
    InactiveRecipient(String),
    #[error("a node cannot send to its own facility")]
    SelfAddressed,
    #[error("{0}")]
    Record(#[from] RecordError),
    /// The upload did not match what its headers declared (length or Content-Digest), or was
    /// cut off; nothing was queued.
    #[error("upload refused: {0}")]
    Upload(String),
    #[error("denied by policy: {reason}")]
    Denied {
        reason: String,
        policy_ids: Vec<String>,
    },
    #[error("local system: {0}")]
    Local(String),
}

impl SubmitError {
    pub(super) fn local(e: impl std::fmt::Display) -> SubmitError {
        SubmitError::Local(e.to_string())
    }

    /// The `reason` label of `healthfed_refusals_total`.
    pub fn class(&self) -> &'static str {
        match self {
            SubmitError::UnknownRecipient(_)
            | SubmitError::InactiveRecipient(_)
            | SubmitError::SelfAddressed => "recipient",
            SubmitError::Record(_) => "content",
            SubmitError::Upload(_) => "upload",
            SubmitError::Denied { .. } => "policy",
            SubmitError::Local(_) => "local_error",
        }
    }
}

/// A submission the node accepted: durably queued, or already claimed by a delivery worker.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub id: TransferId,
    pub state: TransferState,
}

pub async fn submit(
    state: &Arc<NodeState>,
    req: SubmitRequest,
    payload: Payload,
) -> Result<Accepted, SubmitError> {
    submit_keyed(state, req, payload, None).await
}

/// [`submit`] that records the caller's idempotency key (reserved by the API) with the
/// transfer, in the transaction that queues it. The caller keeps the reservation until this
/// returns, i.e. until the transfer and its key are committed.
pub async fn submit_keyed(
    state: &Arc<NodeState>,
    req: SubmitRequest,
    payload: Payload,
    key: Option<&KeyReservation>,
) -> Result<Accepted, SubmitError> {
    let result = submit_inner(state, req, payload, key).await;
    match &result {
        Ok(_) => state.metrics.transfer(Direction::Outbound, "submitted"),
        Err(e) => state.metrics.refusal(Direction::Outbound, e.class()),
    }
    result
}

async fn submit_inner(
    state: &Arc<NodeState>,
    req: SubmitRequest,
    payload: Payload,
    key: Option<&KeyReservation>,
) -> Result<Accepted, SubmitError> {
    let key = key.map(KeyReservation::claim);
    let trust = state.trust();
    let peer = trust
        .peer_by_str(&req.to)
        .ok_or_else(|| SubmitError::UnknownRecipient(req.to.clone()))?;
    if !peer.active {
        return Err(SubmitError::InactiveRecipient(req.to.clone()));
    }
    if &peer.id == state.me() {
        return Err(SubmitError::SelfAddressed);
    }
    let transfer_id = TransferId::new_random().map_err(SubmitError::local)?;
    // With a delivery worker free, the transfer is claimed (attempt 1 and its `sent` entry) in
    // the same write that queues it and sent from memory: one sled transaction, one commit and
    // one envelope read fewer than queueing it for the scheduler. The in-flight mark keeps the
    // scheduler off it. Not while the peer is unreachable: its circuit lets one probe go at a
    // time, and the scheduler releases the rest when the peer answers.
    let direct = if state.circuits.is_open(peer.id.as_str()) {
        None
    } else {
        state.delivery_permits.clone().try_acquire_owned().ok()
    };
    if direct.is_some() {
        state.mark_inflight(&transfer_id);
    }

    // Classifying a FHIR bundle takes milliseconds per megabyte and sealing is CPU and file
    // I/O: the whole submission runs as one blocking task, off the async workers (one large
    // bundle must not stall every other request) and with one thread hand-off, not three.
    let (wrote, outcome) = {
        let state = state.clone();
        let claim = direct.is_some();
        tokio::task::spawn_blocking(move || {
            let mut wrote = false;
            let outcome = submit_blocking(
                &state,
                req,
                &peer,
                payload,
                transfer_id,
                (claim, key),
                &mut wrote,
            );
            (wrote, outcome)
        })
        .await
        .map_err(SubmitError::local)
    }?;
    // Whatever was written (a queued transfer, or a refusal's audit entry) is durable before
    // the caller hears of it.
    let committed = if wrote {
        state.store.commit().await.map_err(SubmitError::local)
    } else {
        Ok(())
    };
    let queued = match committed.and(outcome) {
        Ok(queued) => queued,
        Err(e) => {
            state.clear_inflight(&transfer_id);
            return Err(e);
        }
    };
    let entry_state = queued.entry.state;
    tracing::info!(
        transfer = %transfer_id,
        peer = %queued.entry.recipient,
        bytes = queued.entry.payload_len,
        "transfer queued"
    );
    // A permit means the entry was written claimed (`delivering`) and marked in flight.
    match direct {
        Some(permit) => {
            crate::send::delivery::spawn_claimed(state, queued.entry, queued.envelope, permit);
        }
        None => state.wake.notify_one(),
    }
    Ok(Accepted {
        id: transfer_id,
        state: entry_state,
    })
}

/// What a submission stored: its outbox entry and, when it is small, the sealed envelope.
struct Queued {
    entry: OutboxEntry,
    envelope: Option<Bytes>,
}

/// Check, authorize, seal and queue (`claim`: as attempt 1 of a delivery starting now; `key`:
/// with the caller's idempotency key, in the same transaction); sets `wrote` once anything
/// reached the store.
fn submit_blocking(
    state: &NodeState,
    req: SubmitRequest,
    peer: &Peer,
    payload: Payload,
    transfer_id: TransferId,
    (claim, key): (bool, Option<KeyClaim>),
    wrote: &mut bool,
) -> Result<Queued, SubmitError> {
    let mut payload = payload;
    let inspected = match check_payload(&req, &mut payload) {
        Ok(inspected) => inspected,
        Err(refusal) => {
            // Refused before anything was queued; the log keeps why (never record content).
            let mut rec = audit::record(event::REJECTED, "refused");
            rec.transfer_id = Some(transfer_id.0);
            rec.peer = Some(peer.id.to_string());
            rec.patient_ref = Some(req.patient.reveal().to_owned());
            rec.purpose = Some(req.purpose.to_string());
            rec.clinician = req.clinician.clone();
            rec.reason = Some(format!("submission refused: {refusal}"));
            audit::append(&state.store, rec).map_err(SubmitError::local)?;
            *wrote = true;
            return Err(refusal);
        }
    };
    let categories = inspected.categories.clone();
    let break_glass = req.break_glass_reason.is_some();

    let (decision, consent) = decide(
        state,
        &Question {
            action: if break_glass {
                Action::BreakGlass
            } else {
                Action::Send
            },
            counterparty: peer,
            patient: req.patient.reveal(),
            categories: &categories,
            content_type: req.content_type.mime(),
            purpose: req.purpose,
            clinician_role: req.clinician_role.as_deref(),
            break_glass,
            asserted: None,
        },
    );
    let summary = TransferSummary {
        patient_ref: req.patient.reveal().to_owned(),
        purpose: req.purpose.to_string(),
        clinician: req.clinician.clone(),
        content_type: req.content_type.mime().to_owned(),
        categories: categories.iter().map(ToString::to_string).collect(),
        break_glass,
    };
    // Written with the outbox entry below (or alone, if nothing is queued).
    let mut rec = audit::record(
        event::DECISION,
        if decision.allowed { "permit" } else { "deny" },
    );
    rec.transfer_id = Some(transfer_id.0);
    rec.peer = Some(peer.id.to_string());
    rec.patient_ref = Some(summary.patient_ref.clone());
    rec.purpose = Some(summary.purpose.clone());
    rec.clinician = summary.clinician.clone();
    rec.policy_ids = decision.policy_ids.clone();
    rec.break_glass = break_glass;
    let denial =
        (!decision.allowed).then(|| explain_denial(&decision, &categories, &consent, peer));
    let mut reason = decision_reason(&decision, "send", req.break_glass_reason.as_deref());
    if let Some(explained) = &denial {
        // The audit entry says what the caller is told.
        reason = reason.replacen(&decision.reason, explained, 1);
    }
    if let Some(declaration) = &inspected.declaration {
        reason.push_str(&format!("; {}", declaration.audit_text()));
    }
    rec.reason = Some(reason);
    if let Some(explained) = denial {
        audit::append(&state.store, rec).map_err(SubmitError::local)?;
        *wrote = true;
        return Err(SubmitError::Denied {
            reason: explained,
            policy_ids: decision.policy_ids,
        });
    }

    let metadata = RecordMetadata {
        version: METADATA_VERSION,
        content_type: req.content_type.mime().to_owned(),
        patient: req.patient.reveal().to_owned(),
        purpose: req.purpose.to_string(),
        categories: summary.categories.clone(),
        clinician: req.clinician.clone(),
        clinician_role: req.clinician_role.clone(),
        break_glass_reason: req.break_glass_reason.clone(),
        break_glass_until_ms: req
            .break_glass_until_ms
            .or_else(|| break_glass.then(|| now_ms() + BREAK_GLASS_WINDOW_MS)),
        request_id: req.request_id.clone(),
        consent_basis: Some(basis_of(&consent)),
        derived_categories: inspected.derived.iter().map(ToString::to_string).collect(),
        declaration: inspected.declaration.as_ref().map(|d| DeclarationWire {
            clinician: d.clinician.clone(),
            clinician_role: d.clinician_role.clone(),
            categories: d.categories.iter().map(ToString::to_string).collect(),
        }),
    };
    let payload_len = payload.len();
    let recipient = peer.id.to_string();
    let sealed = match seal_to_spool(
        state,
        transfer_id,
        &recipient,
        peer.encryption_key,
        &metadata.encode(),
        payload,
    ) {
        Ok(sealed) => sealed,
        Err(e) => {
            // Not queued, but the permit was given: the log keeps it.
            audit::append(&state.store, rec).map_err(SubmitError::local)?;
            *wrote = true;
            return Err(e);
        }
    };

    let now = now_ms();
    let entry = OutboxEntry {
        transfer_id: transfer_id.0,
        recipient: recipient.clone(),
        state: if claim {
            TransferState::Delivering
        } else {
            TransferState::Queued
        },
        created_ms: now,
        updated_ms: now,
        attempts: u32::from(claim),
        next_attempt_ms: now,
        last_error: None,
        envelope_len: sealed.envelope_len,
        payload_len,
        payload_digest: sealed.payload_digest,
        receipt: None,
        summary,
        request_id: req.request_id,
    };
    // The decision and the submission are recorded with the outbox entry, in one write.
    let mut submitted = rec.clone();
    submitted.event = event::SUBMITTED.to_owned();
    submitted.outcome = "queued".to_owned();
    submitted.reason = None;
    submitted.time_ms = now_ms();
    let mut records = vec![rec, submitted];
    if claim {
        let mut sent = crate::send::delivery::base_record(&entry, event::SENT, "attempt");
        sent.reason = Some("attempt 1".to_owned());
        records.push(sent);
    }
    match &key {
        Some(key) => state.store.outbox_insert_keyed(&entry, records, key),
        None => state.store.outbox_insert_audited(&entry, records),
    }
    .map_err(SubmitError::local)?;
    *wrote = true;
    Ok(Queued {
        entry,
        envelope: sealed.envelope,
    })
}

/// Reads the record's bytes (or, for an upload sealed as it arrives, its first bytes) and
/// checks them against what the submission says (`record::inspect`). A spilled record the
/// gateway parses is read back whole; one too large for that is refused.
fn check_payload(req: &SubmitRequest, payload: &mut Payload) -> Result<Inspected, SubmitError> {
    let read_back;
    let content = match payload {
        Payload::Memory { bytes, .. } => Content::Whole(bytes),
        Payload::File { len, .. }
            if req.content_type.parsed_whole() && *len > MAX_PARSED_BYTES as u64 =>
        {
            // The one limit on parsed records, refused as `inspect` would.
            return Err(RecordError::TooLargeToClassify(MAX_PARSED_BYTES).into());
        }
        Payload::File { path, len, .. } => {
            let whole = req.content_type.parsed_whole() || *len <= MAX_PARSED_BYTES as u64;
            read_back = read_file(
                path,
                if whole {
                    *len
                } else {
                    INSPECT_PREFIX_BYTES as u64
                },
            )?;
            if whole {
                Content::Whole(&read_back)
            } else {
                Content::Prefix(&read_back)
            }
        }
        Payload::Stream {
            chunks,
            peeked,
            len,
            ..
        } => {
            // Read ahead, before anything is signed, as much as the format check needs; the
            // pieces are sealed first when sealing starts.
            let mut have = 0usize;
            while have < INSPECT_PREFIX_BYTES && (have as u64) < *len {
                match chunks.blocking_recv() {
                    Some(Ok(piece)) => {
                        have += piece.len();
                        peeked.push(piece);
                    }
                    Some(Err(e)) => return Err(SubmitError::Upload(e)),
                    None => break,
                }
            }
            read_back = peeked.concat();
            if read_back.len() as u64 >= *len {
                Content::Whole(&read_back)
            } else {
                Content::Prefix(&read_back)
            }
        }
    };
    Ok(inspect(
        &req.content_type,
        &req.patient,
        &req.categories,
        req.clinician.as_deref(),
        req.clinician_role.as_deref(),
        content,
    )?)
}

/// The first `limit` bytes of a spilled upload.
fn read_file(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, SubmitError> {
    let file = std::fs::File::open(path).map_err(SubmitError::local)?;
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(SubmitError::local)?;
    Ok(bytes)
}

/// What a denied sender must do, in words a doctor can act on: which categories were found
/// and which consent would permit them ("needs consent for mental-health naming clinic-b").
pub fn explain_denial(
    decision: &policies::Decision,
    categories: &BTreeSet<Category>,
    consent: &policies::ConsentState,
    peer: &Peer,
) -> String {
    let sensitive: Vec<&str> = categories
        .iter()
        .filter(|c| c.is_sensitive())
        .map(|c| c.as_str())
        .collect();
    let ids = &decision.policy_ids;
    if ids.iter().any(|id| id == "forbid-payment-sensitive") {
        // No consent helps here: say what was found, not what to ask the patient for.
        format!(
            "sensitive data categories are never disclosed for payment (found: {})",
            sensitive.join(", ")
        )
    } else if ids
        .iter()
        .any(|id| id == "forbid-sensitive-without-consent")
    {
        let missing: Vec<&str> = categories
            .iter()
            .filter(|c| c.is_sensitive() && !consent.permitted_categories.contains(c))
            .map(|c| c.as_str())
            .collect();
        format!(
            "{}: needs consent for {} naming {}",
            decision.reason,
            missing.join(", "),
            peer.id
        )
    } else if !sensitive.is_empty() {
        format!(
            "{} (categories found: {})",
            decision.reason,
            sensitive.join(", ")
        )
    } else {
        decision.reason.clone()
    }
}

/// The audit reason of a decision: what was asked, and why it was refused if it was.
pub fn decision_reason(
    decision: &policies::Decision,
    what: &str,
    break_glass_reason: Option<&str>,
) -> String {
    let mut reason = if decision.allowed {
        format!("{what} permitted")
    } else {
        format!("{what} denied: {}", decision.reason)
    };
    if !decision.errors.is_empty() {
        reason.push_str(&format!(
            "; evaluation errors: {}",
            decision.errors.join(" | ")
        ));
    }
    if let Some(why) = break_glass_reason {
        reason.push_str(&format!("; break-glass: {why}"));
    }
    reason
}
