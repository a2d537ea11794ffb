//! Removes sealed envelopes the node no longer needs, once their retention has run out.
//!
//! The store decides which envelopes are settled (delivered, failed or cancelled outbox
//! transfers; acknowledged inbox transfers) and removes them crash-safely; this task picks the
//! cut-off from `[retention]`, writes one audit record per removal and runs the sweep at start
//! and every `sweep_interval_secs`. Entries, receipts and the audit log are never removed.

use std::sync::Arc;
use std::time::Duration;

use gateway_store::{RemovedEnvelope, SpoolKind, StoreError};

use crate::audit::{self, event};
use crate::state::NodeState;
use crate::trust::now_ms;

/// Removals per sled transaction: bounds a transaction's size and the audit tail's lock time.
const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("local system: retention sweep task stopped")]
    TaskStopped,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub removed: usize,
    pub files_deleted: usize,
}

/// Runs until shutdown: one sweep now (which also finishes removals a crash interrupted), then
/// one per interval.
pub async fn run_sweeper(state: Arc<NodeState>) {
    let period = Duration::from_secs(state.config.retention.sweep_interval_secs);
    let mut shutdown = state.shutdown.clone();
    loop {
        match sweep(&state).await {
            Ok(s) if s.removed > 0 || s.files_deleted > 0 => tracing::info!(
                removed = s.removed,
                files_deleted = s.files_deleted,
                "envelope retention sweep"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "envelope retention sweep failed"),
        }
        match sweep_idempotency_keys(&state).await {
            Ok(n) if n > 0 => tracing::info!(removed = n, "expired idempotency keys removed"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "idempotency key sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Removes every envelope settled more than `retention.envelope_hours` ago: in sled with its
/// audit record, committed, then the files.
pub async fn sweep(state: &Arc<NodeState>) -> Result<Sweep, SweepError> {
    let keep_ms = state
        .config
        .retention
        .envelope_hours
        .saturating_mul(3_600_000);
    let cutoff = now_ms().saturating_sub(keep_ms);
    let reason = format!(
        "retention: kept {} h after it was settled",
        state.config.retention.envelope_hours
    );
    let mut total = Sweep::default();
    loop {
        let store = state.store.clone();
        let reason = reason.clone();
        let expired = blocking(move || {
            store.expire_envelopes(
                cutoff,
                BATCH,
                |e| removal_record(e, &reason),
                // The signed header outlives the envelope: disclosure evidence needs it.
                |envelope| gateway_envelope::read_signed_header(envelope).ok(),
            )
        })
        .await?;
        total.removed += expired.removed.len();
        // The removals must be durable before any file goes.
        state.store.commit().await?;
        let store = state.store.clone();
        total.files_deleted += blocking(move || store.unlink_removed_envelopes()).await?;
        if expired.taken < BATCH {
            return Ok(total);
        }
    }
}

/// Removes the idempotency keys of submissions older than `local_api.idempotency_window_secs`.
/// An expired key is never answered from even before it is removed (the lookup checks the
/// window), so this only frees their space; removals lost in a crash are redone next time.
pub async fn sweep_idempotency_keys(state: &Arc<NodeState>) -> Result<usize, SweepError> {
    let window_ms = state
        .config
        .local_api
        .idempotency_window_secs
        .saturating_mul(1000);
    let cutoff = now_ms().saturating_sub(window_ms);
    let mut total = 0;
    loop {
        let store = state.store.clone();
        let removed = blocking(move || store.idempotency_sweep(cutoff, BATCH)).await?;
        total += removed;
        if removed < BATCH {
            if total > 0 {
                state.store.commit().await?;
            }
            return Ok(total);
        }
    }
}

fn removal_record(e: &RemovedEnvelope, reason: &str) -> gateway_store::AuditRecord {
    let mut rec = audit::record(
        event::ENVELOPE_REMOVED,
        match e.kind {
            SpoolKind::Outbox => "outbox envelope removed",
            SpoolKind::Inbox => "inbox envelope removed",
        },
    );
    rec.transfer_id = Some(e.transfer_id);
    rec.peer = Some(e.peer.clone());
    rec.patient_ref = e.patient_ref.clone();
    rec.reason = Some(reason.to_owned());
    rec
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SweepError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SweepError::TaskStopped),
    }
}
