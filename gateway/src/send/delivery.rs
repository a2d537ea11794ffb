//! Delivering queued transfers: per-transfer retries with exponential backoff and jitter,
//! bounded by attempts and age, then `failed`. A transfer is `delivered` only once the
//! recipient's signed receipt has been verified and stored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::io::ReaderStream;
use tracing::Instrument;

use gateway_envelope::{SignedReceipt, TransferId};
use gateway_store::{OutboxEntry, SpoolKind, TransferState};

use crate::audit::{self, event};
use crate::state::NodeState;
use crate::trust::now_ms;
use crate::trust::transport::Body;

pub const ENVELOPE_PATH: &str = "/v1/envelopes";

/// Envelopes up to this size are read whole into memory to send; larger ones are streamed.
/// Bounded memory: at most this much per delivery worker.
pub const WHOLE_ENVELOPE_BYTES: u64 = 2 * 1024 * 1024;

/// Store job: every outbox entry has its `submitted` (and, once delivered, `delivered`) audit
/// entry. Checked once per store, not at every start: it costs an audit lookup per transfer.
const AUDIT_PAIRS_JOB: &str = "outbox-audit-pairs";

/// After a crash, transfers caught mid-delivery go back to the queue: the receiver's
/// idempotence (same transfer id → same receipt) makes the resend safe.
///
/// A state change and its audit entries are one sled transaction (`outbox_*_audited`), so
/// they are durable together. Stores written by versions before that could hold a transfer
/// that was queued or delivered with no `submitted` or `delivered` entry (the two were
/// separate writes); those entries are written now, marked as recorded at restart, on the
/// first start of a store only.
///
/// Start-up reads only the pending transfers (through the due index), not the node's whole
/// sending history; the one-time backfill reads the outbox one entry at a time.
pub fn recover_after_restart(state: &NodeState) {
    for e in state.store.outbox_pending_iter().flatten() {
        if e.state == TransferState::Delivering {
            let _ = state.store.outbox_update(&e.transfer_id, |e| {
                e.state = TransferState::Queued;
                e.next_attempt_ms = now_ms();
            });
        }
    }
    if state.store.job_done(AUDIT_PAIRS_JOB).unwrap_or(false) {
        return;
    }
    let mut complete = true;
    for e in state.store.outbox_iter() {
        match e {
            Ok(e) => complete &= backfill_audit_pair(state, &e),
            Err(_) => complete = false,
        }
    }
    if complete {
        let _ = state.store.set_job_done(AUDIT_PAIRS_JOB);
    }
}

/// Writes the missing `submitted`/`delivered` entries of one transfer; false if one could not
/// be written (the job then runs again at the next start).
fn backfill_audit_pair(state: &NodeState, e: &OutboxEntry) -> bool {
    let mut ok = true;
    if !audit::has_event(&state.store, e.transfer_id, event::SUBMITTED) {
        let mut rec = base_record(e, event::SUBMITTED, "queued");
        rec.reason = Some(
            "recorded at restart: queued before the node stopped, without this entry".to_owned(),
        );
        ok &= audit::append(&state.store, rec).is_ok();
    }
    if e.state == TransferState::Delivered
        && !audit::has_event(&state.store, e.transfer_id, event::DELIVERED)
    {
        let mut rec = base_record(e, event::DELIVERED, "delivered");
        rec.reason = Some(
            "recorded at restart: the receipt was stored before the node stopped, \
             without this entry"
                .to_owned(),
        );
        ok &= audit::append(&state.store, rec).is_ok();
    }
    ok
}

pub async fn run_scheduler(state: Arc<NodeState>) {
    let permits = state.delivery_permits.clone();
    let mut shutdown = state.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let due = match state.store.outbox_due(now_ms(), 1024) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                Vec::new()
            }
        };
        for entry in due {
            let id = TransferId(entry.transfer_id);
            if !state.mark_inflight(&id) {
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                state.clear_inflight(&id);
                break;
            };
            spawn_worker(&state, entry, Start::Queued, permit);
        }
        tokio::select! {
            _ = state.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => break,
        }
    }
    // Wait for running deliveries so their outcome is recorded.
    let _ = permits
        .acquire_many(u32::try_from(state.config.delivery.workers).unwrap_or(u32::MAX))
        .await;
}

enum Outcome {
    Delivered {
        receipt: Vec<u8>,
        duplicate: bool,
    },
    /// Worth another attempt later (network, overload, peer restarting).
    Retry(String),
    /// The peer refused the envelope; resending the same bytes cannot succeed.
    Refused(String),
}

async fn deliver(state: &Arc<NodeState>, entry: OutboxEntry) {
    let id = TransferId(entry.transfer_id);
    let now = now_ms();
    // `entry` is the scheduler's snapshot, taken before it waited for a worker: the transfer
    // may have been delivered, cancelled or failed since (its in-flight mark is cleared when a
    // delivery ends). Claim it from its current state, atomically, or leave it alone.
    // The claim and its `sent` entry are one write; an expired transfer is claimed without
    // one and failed just below.
    // created_ms never changes (the store refuses it), so the snapshot can tell.
    let expired = now.saturating_sub(entry.created_ms)
        > state.config.delivery.max_age_secs.saturating_mul(1000);
    let mut claimed = false;
    let updated = state.store.outbox_update_audited(&entry.transfer_id, |e| {
        claimed = e.state == TransferState::Queued;
        if !claimed {
            return Vec::new();
        }
        e.state = TransferState::Delivering;
        e.attempts += 1;
        e.updated_ms = now;
        if expired {
            return Vec::new();
        }
        let mut rec = base_record(e, event::SENT, "attempt");
        rec.reason = Some(format!("attempt {}", e.attempts));
        vec![rec]
    });
    let entry = match updated {
        Ok((e, _)) if claimed => e,
        _ => return,
    };
    if expired {
        // finish_failed commits the claim with the failure.
        finish_failed(
            state,
            &entry,
            "expired: not delivered within the maximum age".to_owned(),
        )
        .await;
        return;
    }
    // The attempt is counted durably before any byte leaves: a transfer whose delivery keeps
    // crashing the node still reaches max_attempts and fails instead of looping forever.
    if let Err(e) = state.store.commit().await {
        tracing::error!(transfer = %id, error = %e, "commit failed");
        return;
    }
    deliver_claimed(state, entry, None).await;
}

/// Delivers a transfer submitted a moment ago and claimed in the same write that queued it
/// (attempt 1 and its `sent` entry are durable already), on a worker permit the submission
/// took. `envelope` is the sealed envelope, still in memory, when it is small. The caller has
/// marked the transfer in flight.
pub fn spawn_claimed(
    state: &Arc<NodeState>,
    entry: OutboxEntry,
    envelope: Option<Bytes>,
    permit: OwnedSemaphorePermit,
) {
    spawn_worker(state, entry, Start::Claimed { envelope }, permit);
}

/// How a delivery task starts.
enum Start {
    /// From the queue: claim it first.
    Queued,
    /// Claimed by its submission.
    Claimed { envelope: Option<Bytes> },
}

/// Runs one delivery on a worker permit. When it ends, the transfer leaves the in-flight set,
/// the permit is returned and the scheduler is woken.
fn spawn_worker(
    state: &Arc<NodeState>,
    entry: OutboxEntry,
    start: Start,
    permit: OwnedSemaphorePermit,
) {
    let state = state.clone();
    let id = TransferId(entry.transfer_id);
    let span = tracing::info_span!("delivery", transfer = %id, peer = %entry.recipient);
    tokio::spawn(async move {
        match start {
            Start::Queued => deliver(&state, entry).instrument(span).await,
            Start::Claimed { envelope } => {
                deliver_claimed(&state, entry, envelope)
                    .instrument(span)
                    .await
            }
        }
        state.clear_inflight(&id);
        drop(permit);
        state.wake.notify_one();
    });
}

/// One attempt on a claimed (`delivering`, attempt counted) transfer, and its outcome written.
async fn deliver_claimed(state: &Arc<NodeState>, entry: OutboxEntry, envelope: Option<Bytes>) {
    let id = TransferId(entry.transfer_id);
    let attempt = entry.attempts;

    match attempt_delivery(state, &entry, envelope).await {
        Outcome::Delivered { receipt, duplicate } => {
            let mut verified = base_record(&entry, event::RECEIPT_VERIFIED, "ok");
            verified.reason =
                Some("signed receipt verified against the recipient's directory key".to_owned());
            let mut delivered = base_record(&entry, event::DELIVERED, "delivered");
            if duplicate {
                delivered.reason = Some(
                    "recipient already held this transfer; its receipt was returned".to_owned(),
                );
            }
            let result = state.store.outbox_update_audited(&entry.transfer_id, |e| {
                e.state = TransferState::Delivered;
                e.receipt = Some(receipt.clone());
                e.updated_ms = now_ms();
                e.last_error = None;
                vec![verified.clone(), delivered.clone()]
            });
            if let Err(e) = result {
                tracing::error!(transfer = %id, error = %e, "cannot record delivery");
                return;
            }
            if let Err(e) = state.store.commit().await {
                tracing::error!(transfer = %id, error = %e, "commit failed");
            }
            state.waiters.finish(entry.transfer_id, true);
            tracing::info!(transfer = %id, peer = %entry.recipient, "delivered");
        }
        Outcome::Refused(reason) => finish_failed(state, &entry, reason).await,
        Outcome::Retry(reason) => {
            let cfg = &state.config.delivery;
            if attempt >= cfg.max_attempts {
                finish_failed(
                    state,
                    &entry,
                    format!("gave up after {attempt} attempts: {reason}"),
                )
                .await;
                return;
            }
            let delay = backoff_ms(attempt, cfg.initial_backoff_ms, cfg.max_backoff_ms);
            let mut rec = base_record(&entry, event::RETRY, "retry");
            rec.reason = Some(format!("{reason}; next attempt in {delay} ms"));
            let _ = state.store.outbox_update_audited(&entry.transfer_id, |e| {
                if e.state == TransferState::Delivering {
                    e.state = TransferState::Queued;
                }
                e.next_attempt_ms = now_ms() + delay;
                e.last_error = Some(reason.clone());
                e.updated_ms = now_ms();
                vec![rec.clone()]
            });
            tracing::warn!(transfer = %id, peer = %entry.recipient, attempt, "delivery failed; will retry");
        }
    }
}

async fn finish_failed(state: &NodeState, entry: &OutboxEntry, reason: String) {
    let mut rec = base_record(entry, event::FAILED, "failed");
    rec.reason = Some(reason.clone());
    let _ = state.store.outbox_update_audited(&entry.transfer_id, |e| {
        e.state = TransferState::Failed;
        e.last_error = Some(reason.clone());
        e.updated_ms = now_ms();
        vec![rec.clone()]
    });
    if let Err(e) = state.store.commit().await {
        tracing::error!(error = %e, "commit failed");
    }
    state.waiters.finish(entry.transfer_id, false);
    tracing::warn!(transfer = %TransferId(entry.transfer_id), peer = %entry.recipient, "transfer failed");
}

pub fn base_record(entry: &OutboxEntry, event: &str, outcome: &str) -> gateway_store::AuditRecord {
    let mut rec = audit::record(event, outcome);
    rec.transfer_id = Some(entry.transfer_id);
    rec.peer = Some(entry.recipient.clone());
    rec.patient_ref = Some(entry.summary.patient_ref.clone());
    rec.purpose = Some(entry.summary.purpose.clone());
    rec.clinician = entry.summary.clinician.clone();
    rec.break_glass = entry.summary.break_glass;
    rec
}

/// Exponential backoff with full jitter in the upper half: attempt 1 waits ~initial.
fn backoff_ms(attempt: u32, initial: u64, max: u64) -> u64 {
    let exp = initial.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max).max(1);
    let mut buf = [0u8; 8];
    let jitter = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf) {
        Ok(()) => u64::from_le_bytes(buf) % (capped / 2 + 1),
        Err(_) => 0,
    };
    capped / 2 + jitter
}

async fn attempt_delivery(
    state: &Arc<NodeState>,
    entry: &OutboxEntry,
    envelope: Option<Bytes>,
) -> Outcome {
    let trust = state.trust();
    let Some(peer) = trust.peer_by_str(&entry.recipient) else {
        return Outcome::Refused("recipient is no longer in the federation directory".to_owned());
    };
    if !peer.active {
        return Outcome::Refused(
            "recipient is no longer active in the federation directory".to_owned(),
        );
    }
    let mut sender = match state.clients.sender(&peer).await {
        Ok(s) => s,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let path = state
        .store
        .spool_path(&entry.transfer_id, SpoolKind::Outbox);
    let missing =
        |e: std::io::Error| Outcome::Refused(format!("local system: sealed envelope missing: {e}"));
    // A small envelope is read with one blocking call and sent as one body; streaming it
    // through tokio::fs would cost a blocking-pool round trip per 256 KiB read.
    let body: Body = if let Some(bytes) = envelope.filter(|b| b.len() as u64 == entry.envelope_len)
    {
        BodyExt::boxed(http_body_util::Full::new(bytes).map_err(|never| match never {}))
    } else if entry.envelope_len <= WHOLE_ENVELOPE_BYTES {
        match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
            Ok(Ok(bytes)) if bytes.len() as u64 != entry.envelope_len => {
                return Outcome::Refused(
                    "local system: sealed envelope is not the length recorded".to_owned(),
                )
            }
            Ok(Ok(bytes)) => BodyExt::boxed(
                http_body_util::Full::new(Bytes::from(bytes)).map_err(|never| match never {}),
            ),
            Ok(Err(e)) => return missing(e),
            Err(e) => return Outcome::Retry(format!("local system: {e}")),
        }
    } else {
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => return missing(e),
        };
        let stream = ReaderStream::with_capacity(file, 256 * 1024).map_ok(Frame::data);
        BodyExt::boxed(StreamBody::new(stream))
    };
    let request = match http::Request::post(format!("https://{}{ENVELOPE_PATH}", peer.id))
        .header(http::header::CONTENT_LENGTH, entry.envelope_len)
        .header(
            http::header::CONTENT_TYPE,
            "application/vnd.healthfed.envelope",
        )
        .body(body)
    {
        Ok(r) => r,
        Err(e) => return Outcome::Refused(format!("local system: {e}")),
    };
    if sender.ready().await.is_err() {
        state.clients.forget(&peer.id).await;
        return Outcome::Retry(format!("peer {}: connection closed", peer.id));
    }
    let timeout = Duration::from_secs(state.config.peer.request_timeout_secs);
    let response = match tokio::time::timeout(timeout, sender.send_request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            state.clients.forget(&peer.id).await;
            return Outcome::Retry(format!("peer {}: {e}", peer.id));
        }
        Err(_) => return Outcome::Retry(format!("peer {}: timed out", peer.id)),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Outcome::Retry(format!("peer {}: reading response: {e}", peer.id)),
    };
    match status.as_u16() {
        200 | 409 => match verify_receipt(state, entry, &peer, &body) {
            Ok(()) => Outcome::Delivered {
                receipt: body.to_vec(),
                duplicate: status.as_u16() == 409,
            },
            // A 409 without a valid receipt is a refusal (e.g. a different envelope reused the id).
            Err(e) if status.as_u16() == 409 => Outcome::Refused(
                format!("peer {} refused: {}", peer.id, peer_reason(&body)) + &format!(" ({e})"),
            ),
            Err(e) => Outcome::Refused(e),
        },
        408 | 429 | 500..=599 => Outcome::Retry(format!(
            "peer {}: {} {}",
            peer.id,
            status.as_u16(),
            peer_reason(&body)
        )),
        _ => Outcome::Refused(format!(
            "peer {} refused ({}): {}",
            peer.id,
            status.as_u16(),
            peer_reason(&body)
        )),
    }
}

fn verify_receipt(
    state: &NodeState,
    entry: &OutboxEntry,
    peer: &crate::trust::Peer,
    body: &Bytes,
) -> Result<(), String> {
    let signed = SignedReceipt::from_bytes(body)
        .map_err(|e| format!("peer {}: receipt unreadable: {e}", peer.id))?;
    let receipt = signed
        .verify(&peer.signing_keys)
        .map_err(|e| format!("peer {}: receipt signature invalid: {e}", peer.id))?;
    if receipt.transfer_id.0 != entry.transfer_id
        || receipt.payload_digest != entry.payload_digest
        || receipt.receiver != peer.id.as_str()
        || receipt.sender != state.me().as_str()
    {
        return Err(format!(
            "peer {}: receipt does not match the transfer",
            peer.id
        ));
    }
    Ok(())
}

/// A peer's refusal text, cut short and reduced to printable ASCII before it is stored.
fn peer_reason(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect();
    if text.is_empty() {
        "no reason given".to_owned()
    } else {
        text
    }
}

/// Cancels a transfer that has not been delivered yet.
pub async fn cancel(state: &NodeState, id: &TransferId) -> Result<OutboxEntry, String> {
    if state
        .inflight
        .lock()
        .map(|s| s.contains(&id.0))
        .unwrap_or(true)
    {
        return Err("the transfer is being delivered right now; try again shortly".to_owned());
    }
    let mut refused = None;
    let (entry, _) = state
        .store
        .outbox_update_audited(&id.0, |e| match e.state {
            TransferState::Queued | TransferState::Failed => {
                e.state = TransferState::Cancelled;
                e.updated_ms = now_ms();
                refused = None;
                vec![base_record(e, event::CANCELLED, "cancelled")]
            }
            other => {
                refused = Some(other);
                Vec::new()
            }
        })
        .map_err(|e| e.to_string())?;
    if let Some(state_now) = refused {
        return Err(format!("a {state_now} transfer cannot be cancelled"));
    }
    state.store.commit().await.map_err(|e| e.to_string())?;
    state.waiters.finish(id.0, false);
    Ok(entry)
}
