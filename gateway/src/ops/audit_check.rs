//! A periodic verification of the whole audit chain (`Store::audit_verify`: every hash, link
//! and index), at start and every `INTERVAL`, for the `healthfed_audit_verify_ok` gauge and its
//! alert. `GET /v1/audit/verify` sets the same gauge.

use std::sync::Arc;
use std::time::Duration;

use crate::state::NodeState;
use crate::trust::now_unix;

/// A verification reads the whole log on every core (about 250 k entries/s on a 1 GiB cache):
/// seconds for a year of a small facility's log, so four times a day is cheap and still tells
/// IT the same day.
const INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// Runs until shutdown. The walk runs on its own thread, not a runtime blocking thread: a
/// long walk must not hold up the process's exit (the runtime waits for its blocking tasks).
pub(super) async fn run(state: Arc<NodeState>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let store = state.store.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-verify".to_owned())
            .spawn(move || {
                let _ = tx.send(store.audit_verify());
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "audit verification thread not started");
        }
        let result = tokio::select! {
            r = rx => r.ok(),
            _ = shutdown.changed() => return,
        };
        match result {
            Some(Ok(entries)) => {
                state.metrics.audit_verified(true, now_unix());
                tracing::info!(entries, "audit chain verified");
            }
            Some(Err(e)) => {
                state.metrics.audit_verified(false, now_unix());
                tracing::error!(error = %e, alert = "audit_verify_failed", "audit chain verification failed");
            }
            None => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
