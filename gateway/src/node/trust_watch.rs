//! Reports the trust view's freshness as it changes: when the directory in use expires or the
//! CRL passes its nextUpdate plus grace, an error line with a stable `alert` field and an audit
//! entry; when fresh files end it, an info line and an audit entry. The refusals themselves
//! happen on use (`Trust::usable` in the send path, the peer listener, the submit route and the
//! TLS verifiers); this task only tells the operator, once per change and then every
//! `REMIND_EVERY` while it lasts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit;
use crate::state::NodeState;
use crate::trust::{now_unix, Stale};

/// The audit event of a change in the trust view's freshness.
const TRUST_FRESHNESS: &str = "trust-freshness";
/// How often the view is looked at: two integer comparisons.
const TICK: Duration = Duration::from_secs(1);
/// How often a stale view is reported again in the log while it lasts.
const REMIND_EVERY: Duration = Duration::from_secs(600);

pub(super) async fn run(state: Arc<NodeState>) {
    let mut shutdown = state.shutdown.clone();
    let mut reported: Option<(Stale, Instant)> = None;
    let mut grace_noted: Option<i64> = None;
    loop {
        let trust = state.trust();
        let now = now_unix();
        let verdict = trust.usable(now).err();
        match (reported.take(), verdict) {
            (None, None) => {}
            (None, Some(stale)) => {
                alert(&state, &stale).await;
                reported = Some((stale, Instant::now()));
            }
            (Some((old, _)), None) => {
                tracing::info!(
                    alert = old.alert(),
                    resolved = true,
                    version = trust.directory.version,
                    "fresh federation trust files are in use: sending and receiving resume"
                );
                append(&state, "resolved", format!("resolved: {old}")).await;
            }
            (Some((old, since)), Some(stale)) if old.alert() == stale.alert() => {
                if since.elapsed() >= REMIND_EVERY {
                    tracing::error!(alert = stale.alert(), reason = %stale, "still refusing new sends and receives");
                    reported = Some((stale, Instant::now()));
                } else {
                    reported = Some((old, since));
                }
            }
            (Some(_), Some(stale)) => {
                alert(&state, &stale).await;
                reported = Some((stale, Instant::now()));
            }
        }
        // Past nextUpdate but within the grace: still used, said once per CRL.
        if now > trust.crl.next_update
            && trust.crl.check(now).is_ok()
            && grace_noted != Some(trust.crl.next_update)
        {
            grace_noted = Some(trust.crl.next_update);
            tracing::warn!(
                alert = "crl_in_grace",
                next_update = %crate::trust::freshness::rfc3339(trust.crl.next_update),
                stale_from = %crate::trust::freshness::rfc3339(trust.crl.deadline()),
                "the federation CRL is past its nextUpdate and used only for its grace: publish a fresh one"
            );
        }
        drop(trust);
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn alert(state: &NodeState, stale: &Stale) {
    tracing::error!(
        alert = stale.alert(),
        reason = %stale,
        "federation trust is stale: new sends and receives are refused until fresh files are loaded"
    );
    append(state, stale.alert(), stale.to_string()).await;
}

async fn append(state: &NodeState, outcome: &str, reason: String) {
    let mut rec = audit::record(TRUST_FRESHNESS, outcome);
    rec.reason = Some(reason);
    if let Err(e) = audit::append_durable(&state.store, rec).await {
        tracing::error!(error = %e, "cannot audit a change of trust freshness");
    }
}
