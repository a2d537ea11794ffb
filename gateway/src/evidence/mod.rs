//! Evidence that holds outside the facility: the audit log's Merkle tree heads, signed as
//! C2SP checkpoints with the node's signing key (the key the signed directory lists), so that
//! anyone with the directory can check what the log held at a size.

pub mod archive;
pub mod bundle;
pub mod checkpoint;
pub mod decision;
pub mod export;
pub mod verify;
pub mod witness;

use std::sync::Arc;
use std::time::Duration;

use crate::state::NodeState;

/// Signs a checkpoint of the audit log at start and every `audit.checkpoint_interval_secs`,
/// whenever the log has grown since the last one, and submits it to the witnesses; with
/// `audit.keep_days`, archives the entries older than that; until shutdown.
pub async fn run_checkpointer(state: Arc<NodeState>) {
    let period = Duration::from_secs(state.config.audit.checkpoint_interval_secs);
    let mut shutdown = state.shutdown.clone();
    loop {
        if let Err(e) = checkpoint_if_grown(&state) {
            tracing::error!(error = %e, alert = "checkpoint_failed", "audit checkpoint not made");
        }
        // Also for witnesses still behind from an earlier round (down, or unreachable then).
        witness::submit_all(&state).await;
        if let Some(days) = state.config.audit.keep_days {
            retain(&state, days).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// `audit.keep_days`: archives the entries older than that, through the one archive path.
async fn retain(state: &Arc<NodeState>, days: u64) {
    let cutoff = crate::trust::now_ms().saturating_sub(days.saturating_mul(86_400_000));
    match archive::archive_before(state, cutoff).await {
        Ok(done) => tracing::info!(
            first = done.first_seq,
            last = done.last_seq,
            "audit retention: entries archived"
        ),
        Err(archive::ArchiveError::Nothing) => {}
        Err(e @ archive::ArchiveError::Unsent { .. }) => {
            tracing::warn!(error = %e, "audit retention: waiting for the SIEM stream")
        }
        Err(e) => {
            tracing::error!(error = %e, alert = "audit_archive_failed", "audit retention: archive not made")
        }
    }
}

/// The latest checkpoint, made now if it does not yet cover `seq` (and then submitted to the
/// witnesses, so it carries whichever cosignatures they give now), as a signed note with every
/// cosignature held appended: what an evidence file or an archive carries.
pub async fn cosigned_checkpoint_covering(
    state: &Arc<NodeState>,
    seq: u64,
) -> Result<(u64, Vec<u8>), String> {
    let store = &state.store;
    let covered = store
        .checkpoint_latest()
        .map_err(|e| e.to_string())?
        .map_or(0, |(size, _)| size);
    if covered < seq {
        tokio::task::block_in_place(|| checkpoint_if_grown(state)).map_err(|e| e.to_string())?;
        witness::submit_all(state).await;
    }
    let (size, mut note) = store
        .checkpoint_latest()
        .map_err(|e| e.to_string())?
        .ok_or("no checkpoint was made")?;
    for line in store.cosignatures(size).map_err(|e| e.to_string())? {
        note.extend_from_slice(&line);
    }
    Ok((size, note))
}

/// Makes a checkpoint if the log holds entries the latest one does not cover; returns its size.
pub fn checkpoint_if_grown(state: &NodeState) -> Result<Option<u64>, checkpoint::CheckpointError> {
    let covered = state.store.checkpoint_latest()?.map_or(0, |(size, _)| size);
    if state.store.audit_len() <= covered {
        return Ok(None);
    }
    let origin = checkpoint::origin(state.me().as_str());
    let (size, _) = checkpoint::make(&state.store, &origin, &state.identity().signing)?;
    state.metrics.checkpoint_signed(crate::trust::now_unix());
    tracing::info!(size, "audit checkpoint signed");
    Ok(Some(size))
}
