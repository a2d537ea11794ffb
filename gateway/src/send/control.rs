//! What an operator or the EMR does to a transfer after submitting it: cancel one not yet
//! delivered, requeue one that failed. Each change and its audit entry are one transaction.

use gateway_envelope::TransferId;
use gateway_store::{OutboxEntry, RequeueRefusal, SpoolKind, TransferState};

use crate::audit::event;
use crate::state::NodeState;
use crate::trust::now_ms;

use super::delivery::base_record;

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
    state
        .metrics
        .transfer(crate::state::metrics::Direction::Outbound, "cancelled");
    Ok(entry)
}

/// Why a failed transfer was not requeued.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("no transfer {0}")]
    NotFound(TransferId),
    #[error("only a failed transfer can be requeued; transfer {id} is {state}")]
    NotFailed {
        id: TransferId,
        state: TransferState,
    },
    #[error(
        "transfer {id}: its sealed envelope was removed by retention (at {removed_ms} ms since \
         the epoch, retention.envelope_hours after it failed); submit the record again"
    )]
    EnvelopeRemoved { id: TransferId, removed_ms: u64 },
    #[error(
        "transfer {id}: its sealed envelope is missing from the spool; submit the record again"
    )]
    EnvelopeMissing { id: TransferId },
    #[error("local system: {0}")]
    Store(#[from] gateway_store::StoreError),
}

/// Puts a failed transfer back in the queue (an operator's decision, e.g. once a refusing
/// peer's problem is fixed or after an outage longer than `max_age_secs`): due now, attempts
/// restarted, its age bound counted from now. The state change and its `requeued` audit entry
/// (naming `by`, the API token's name) are one transaction, committed before this returns.
/// The same sealed envelope is sent again, so the recipient still sees one transfer id.
pub async fn requeue(
    state: &NodeState,
    id: &TransferId,
    by: &str,
) -> Result<OutboxEntry, RequeueError> {
    let Some(entry) = state.store.outbox_get(&id.0)? else {
        return Err(RequeueError::NotFound(*id));
    };
    let refused = |refusal: RequeueRefusal| match refusal {
        RequeueRefusal::NotFailed(state) => RequeueError::NotFailed { id: *id, state },
        RequeueRefusal::EnvelopeRemoved { removed_ms } => RequeueError::EnvelopeRemoved {
            id: *id,
            removed_ms,
        },
    };
    if entry.state != TransferState::Failed {
        return Err(refused(RequeueRefusal::NotFailed(entry.state)));
    }
    let store = state.store.clone();
    let tid = id.0;
    let present = tokio::task::spawn_blocking(move || store.spool_exists(&tid, SpoolKind::Outbox))
        .await
        .map_or(Ok(false), |r| r)?;
    if !present {
        return Err(
            match state.store.envelope_removed_ms(SpoolKind::Outbox, &id.0)? {
                Some(removed_ms) => RequeueError::EnvelopeRemoved {
                    id: *id,
                    removed_ms,
                },
                None => RequeueError::EnvelopeMissing { id: *id },
            },
        );
    }
    let previous = entry.last_error.clone().unwrap_or_default();
    let (entry, _) = state
        .store
        .outbox_requeue_audited(&id.0, now_ms(), |e| {
            let mut rec = base_record(e, event::REQUEUED, "queued");
            rec.reason = Some(format!("requeued by {by}; it had failed: {previous}"));
            vec![rec]
        })?
        .map_err(refused)?;
    state.store.commit().await?;
    tracing::info!(transfer = %id, peer = %entry.recipient, by, "failed transfer requeued");
    state
        .metrics
        .transfer(crate::state::metrics::Direction::Outbound, "requeued");
    state.wake.notify_one();
    Ok(entry)
}
