//! Delivering queued transfers: retries with exponential backoff and jitter until the
//! transfer's age passes `delivery.max_age_secs` (and `max_attempts`, if the operator set a
//! cap), then `failed`. A peer that cannot be reached gets one probe delivery at a time (its
//! circuit, `state::circuits`); the rest of its queue waits and drains, bounded by the worker
//! permits, once the peer answers. A transfer is `delivered` only once the recipient's signed
//! receipt has been verified and stored. A failed transfer can be requeued (`requeue`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use gateway_envelope::TransferId;
use gateway_store::{AuditFilter, OutboxEntry, TransferState};

use crate::audit::{self, event};
use crate::state::circuits::Admission;
use crate::state::metrics::Direction;
use crate::state::NodeState;
use crate::trust::now_ms;

use super::attempt::attempt_delivery;

pub const ENVELOPE_PATH: &str = "/v1/envelopes";

/// Envelopes up to this size are read whole into memory to send; larger ones are streamed.
/// Bounded memory: at most this much per delivery worker.
pub const WHOLE_ENVELOPE_BYTES: u64 = 2 * 1024 * 1024;

pub async fn run_scheduler(state: Arc<NodeState>) {
    let permits = state.delivery_permits.clone();
    let mut shutdown = state.shutdown.clone();
    let scale = state.config.delivery.danger_time_scale;
    if scale > 1 {
        tracing::warn!(
            scale,
            "delivery.danger_time_scale is set: backoff and the age bound run this many times \
             faster than configured; for tests only"
        );
    }
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
        // An expired directory or a stale CRL holds every transfer queued (no attempt counted,
        // no circuit opened, the reason kept with it) until fresh files are loaded; the next
        // pass after that sends them.
        let due = match state.trust.usable() {
            Ok(()) => due,
            Err(stale) => {
                hold_for_fresh_trust(&state, &due, &stale);
                Vec::new()
            }
        };
        for entry in due {
            let id = TransferId(entry.transfer_id);
            if !state.mark_inflight(&id) {
                continue;
            }
            if !admitted(&state, &entry) {
                state.clear_inflight(&id);
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                state.circuits.released(&entry.recipient, entry.transfer_id);
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

/// Whether a due transfer may be sent now, as its peer's circuit says; if not, it is parked
/// (its next attempt moved past the peer's next probe) without counting an attempt. An
/// expired transfer always goes on: `deliver` fails it without sending anything.
fn admitted(state: &NodeState, entry: &OutboxEntry) -> bool {
    let now = now_ms();
    if entry.state != TransferState::Queued || now >= expires_ms(state, entry) {
        return true;
    }
    match state
        .circuits
        .admit(&entry.recipient, entry.transfer_id, now)
    {
        Admission::Send | Admission::Probe => true,
        Admission::Wait { next_probe_ms } => {
            park(state, entry, next_probe_ms, now);
            false
        }
    }
}

/// Notes on each due transfer why it waits (shown as its `last_error`), writing only when the
/// note changes; the transfers stay queued and due.
fn hold_for_fresh_trust(state: &NodeState, due: &[OutboxEntry], stale: &crate::trust::Stale) {
    let note = format!("waiting: {stale}");
    for entry in due {
        if entry.state != TransferState::Queued || entry.last_error.as_deref() == Some(&note) {
            continue;
        }
        let result = state.store.outbox_update(&entry.transfer_id, |e| {
            if e.state == TransferState::Queued {
                e.last_error = Some(note.clone());
            }
        });
        if let Err(e) = result {
            tracing::error!(transfer = %TransferId(entry.transfer_id), error = %e, "cannot note why a transfer waits");
        }
    }
}

/// Moves a waiting transfer's next attempt to one backoff step after its peer's next probe.
/// The circuit releases it as soon as the peer answers; the bound only matters after a
/// restart (circuits are in memory), when it comes due by itself.
fn park(state: &NodeState, entry: &OutboxEntry, next_probe_ms: u64, now: u64) {
    let until = next_probe_ms
        .max(now)
        .saturating_add(state.config.delivery.max_backoff());
    let note = format!(
        "peer {} unreachable; waiting for its probe delivery",
        entry.recipient
    );
    let result = state.store.outbox_update(&entry.transfer_id, |e| {
        if e.state == TransferState::Queued && e.next_attempt_ms < until {
            e.next_attempt_ms = until;
            e.last_error = Some(note.clone());
        }
    });
    if let Err(e) = result {
        tracing::error!(transfer = %TransferId(entry.transfer_id), error = %e, "cannot park a transfer");
    }
}

/// When a transfer stops being retried: `max_age_secs` after it was created, or after it was
/// last requeued by an operator (the audit log holds when; it is read only for a transfer
/// that would otherwise have expired).
fn expires_ms(state: &NodeState, entry: &OutboxEntry) -> u64 {
    let max_age = state.config.delivery.max_age_ms();
    let by_creation = entry.created_ms.saturating_add(max_age);
    if now_ms() < by_creation {
        return by_creation;
    }
    let filter = AuditFilter {
        transfer_id: Some(entry.transfer_id),
        ..AuditFilter::default()
    };
    let requeued = state.store.audit_list(&filter).ok().and_then(|entries| {
        entries
            .iter()
            .filter(|e| e.record.event == event::REQUEUED)
            .map(|e| e.record.time_ms)
            .max()
    });
    requeued.map_or(by_creation, |at| {
        at.saturating_add(max_age).max(by_creation)
    })
}

pub(super) enum Outcome {
    Delivered {
        receipt: Vec<u8>,
        duplicate: bool,
    },
    /// The peer answered with a status worth another attempt later (overload, restarting).
    Retry(String),
    /// The peer could not be reached: connect, TLS, a lost connection, a timeout, or a
    /// gateway/unavailable status (502, 503, 504). Opens the peer's circuit.
    Unreachable(String),
    /// The peer refused the envelope; resending the same bytes cannot succeed.
    Refused(String),
    /// A local problem stopped the attempt before the peer was asked; `retry` says whether
    /// another attempt may succeed.
    Local {
        reason: String,
        retry: bool,
    },
}

impl Outcome {
    /// The `outcome` label of `healthfed_delivery_attempts_total`.
    fn class(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retry(_) => "retry",
            Outcome::Unreachable(_) => "unreachable",
            Outcome::Refused(_) => "refused",
            Outcome::Local { .. } => "local_error",
        }
    }
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
    let expired = now >= expires_ms(state, &entry);
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
            format!(
                "expired: not delivered within delivery.max_age_secs ({} s) after {} attempts{}",
                state.config.delivery.max_age_secs,
                entry.attempts.saturating_sub(1),
                entry
                    .last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            ),
        )
        .await;
        return;
    }
    // The attempt is counted durably before any byte leaves: a transfer whose delivery keeps
    // crashing the node still reaches its age bound (or max_attempts) and fails instead of
    // looping forever.
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
    let peer = entry.recipient.clone();
    tokio::spawn(async move {
        match start {
            Start::Queued => deliver(&state, entry).instrument(span).await,
            Start::Claimed { envelope } => {
                deliver_direct(&state, entry, envelope)
                    .instrument(span)
                    .await
            }
        }
        // If this delivery was its peer's probe and ended without news of the peer, the
        // next due transfer may probe instead.
        state.circuits.released(&peer, id.0);
        state.clear_inflight(&id);
        drop(permit);
        state.wake.notify_one();
    });
}

/// A transfer claimed by its submission. The submission hands a transfer to a free worker
/// only while its peer's circuit is closed; if the circuit opened in between, and another
/// transfer probes the peer, this one goes back to the queue instead of sending.
async fn deliver_direct(state: &Arc<NodeState>, entry: OutboxEntry, envelope: Option<Bytes>) {
    let now = now_ms();
    match state
        .circuits
        .admit(&entry.recipient, entry.transfer_id, now)
    {
        Admission::Send | Admission::Probe => deliver_claimed(state, entry, envelope).await,
        Admission::Wait { next_probe_ms } => {
            let reason = format!(
                "not sent: peer {} unreachable; waiting for its probe delivery",
                entry.recipient
            );
            let delay = next_probe_ms
                .max(now)
                .saturating_add(state.config.delivery.max_backoff())
                - now;
            schedule_retry(state, &entry, reason, delay).await;
        }
    }
}

/// One attempt on a claimed (`delivering`, attempt counted) transfer, and its outcome written.
async fn deliver_claimed(state: &Arc<NodeState>, entry: OutboxEntry, envelope: Option<Bytes>) {
    let id = TransferId(entry.transfer_id);
    let cfg = &state.config.delivery;

    let outcome = attempt_delivery(state, &entry, envelope).await;
    state.metrics.attempt(&entry.recipient, outcome.class());
    if matches!(
        outcome,
        Outcome::Delivered { .. } | Outcome::Refused(_) | Outcome::Retry(_)
    ) {
        // The peer answered: it is reachable, and what waited for it may go.
        if let Some(closed) = state.circuits.answered(&entry.recipient, now_ms()) {
            tracing::info!(
                peer = %entry.recipient,
                down_for_ms = closed.down_for_ms,
                waiting = closed.parked.len(),
                circuit = "closed",
                "peer reachable again; its queue drains"
            );
            release_parked(state, closed.parked).await;
        }
    }
    match outcome {
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
            state
                .metrics
                .delivered(now_ms().saturating_sub(entry.created_ms));
            tracing::info!(transfer = %id, peer = %entry.recipient, "delivered");
        }
        Outcome::Refused(reason)
        | Outcome::Local {
            reason,
            retry: false,
        } => finish_failed(state, &entry, reason).await,
        Outcome::Retry(reason)
        | Outcome::Local {
            reason,
            retry: true,
        } => {
            let delay = backoff_ms(entry.attempts, cfg.initial_backoff(), cfg.max_backoff());
            schedule_retry(state, &entry, reason, delay).await;
        }
        Outcome::Unreachable(reason) => {
            let now = now_ms();
            let down =
                state
                    .circuits
                    .unreachable(&entry.recipient, entry.transfer_id, now, |failures| {
                        backoff_ms(failures, cfg.initial_backoff(), cfg.max_backoff())
                    });
            let next_probe_in_ms = down.next_probe_ms.saturating_sub(now);
            if down.opened {
                tracing::warn!(
                    peer = %entry.recipient,
                    transfer = %id,
                    next_probe_in_ms,
                    circuit = "open",
                    "peer unreachable; one probe delivery at a time until it answers"
                );
            } else {
                tracing::info!(
                    peer = %entry.recipient,
                    transfer = %id,
                    failures = down.failures,
                    next_probe_in_ms,
                    circuit = "open",
                    "peer still unreachable"
                );
            }
            let reason = format!("{reason} (peer unreachable: circuit open)");
            schedule_retry(state, &entry, reason, next_probe_in_ms.max(1)).await;
        }
    }
}

/// Puts a claimed transfer back in the queue, due in `delay` ms, with a `retry-scheduled`
/// entry; or fails it if it has reached `max_attempts` (when set) or its age bound.
async fn schedule_retry(state: &NodeState, entry: &OutboxEntry, reason: String, delay: u64) {
    let attempt = entry.attempts;
    let cfg = &state.config.delivery;
    if cfg.max_attempts.is_some_and(|cap| attempt >= cap) {
        finish_failed(
            state,
            entry,
            format!("gave up after {attempt} attempts (delivery.max_attempts): {reason}"),
        )
        .await;
        return;
    }
    let now = now_ms();
    if now >= expires_ms(state, entry) {
        finish_failed(
            state,
            entry,
            format!(
                "expired: not delivered within delivery.max_age_secs ({} s) after {attempt} \
                 attempts: {reason}",
                cfg.max_age_secs
            ),
        )
        .await;
        return;
    }
    let mut rec = base_record(entry, event::RETRY, "retry");
    rec.reason = Some(format!("{reason}; next attempt in {delay} ms"));
    let result = state.store.outbox_update_audited(&entry.transfer_id, |e| {
        if e.state == TransferState::Delivering {
            e.state = TransferState::Queued;
        }
        e.next_attempt_ms = now.saturating_add(delay);
        e.last_error = Some(reason.clone());
        e.updated_ms = now;
        vec![rec.clone()]
    });
    if let Err(e) = result {
        tracing::error!(transfer = %TransferId(entry.transfer_id), error = %e, "cannot schedule a retry");
    }
    state.metrics.retry(&entry.recipient);
    tracing::info!(
        transfer = %TransferId(entry.transfer_id),
        peer = %entry.recipient,
        attempt,
        delay_ms = delay,
        "delivery failed; will retry"
    );
}

/// Makes the transfers that waited for a peer due now and wakes the scheduler, which sends
/// them as worker permits free up (`delivery.workers` at most at once): no retry storm.
async fn release_parked(state: &NodeState, parked: Vec<[u8; 16]>) {
    if parked.is_empty() {
        return;
    }
    let store = state.store.clone();
    let released = tokio::task::spawn_blocking(move || {
        let now = now_ms();
        for id in parked {
            let _ = store.outbox_update(&id, |e| {
                if e.state == TransferState::Queued && e.next_attempt_ms > now {
                    e.next_attempt_ms = now;
                }
            });
        }
    })
    .await;
    if let Err(e) = released {
        tracing::error!(error = %e, "cannot release waiting transfers; they come due by themselves");
    }
    state.wake.notify_one();
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
    state.metrics.transfer(Direction::Outbound, "failed");
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
