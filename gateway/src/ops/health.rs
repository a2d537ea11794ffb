//! Readiness: whether the node can do its work now. Ready means: not shutting down, its peer
//! listener and local API still serving, its trust view usable (`trust::freshness`, the checks
//! the send and receive paths make: the directory in force has not expired, the CRL is within
//! nextUpdate plus grace) and listing this facility as active, and its store making writes
//! durable. Each failed check is one fixed, short reason; the details (dates, versions) are in
//! the node's log (`node::trust_watch`, `alert=…`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use pki_tools::FacilityStatus;

use crate::ops::WatchedTask;
use crate::state::NodeState;
use crate::trust::{freshness, now_unix};

/// How long the store check waits for a durable commit before calling the store unready. A
/// commit shares the group flush of the node's own writes, so it normally takes milliseconds.
const STORE_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` checks, shared by its requests.
#[derive(Clone)]
pub struct Readiness {
    state: Arc<NodeState>,
    watched: Vec<WatchedTask>,
}

/// Why the node is not ready: reasons as the operator reads them, none carrying data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady(pub Vec<String>);

impl Readiness {
    pub fn new(state: Arc<NodeState>, watched: Vec<WatchedTask>) -> Readiness {
        Readiness { state, watched }
    }

    /// Runs every check (none stops the others, so the answer lists every reason at once).
    pub async fn check(&self) -> Result<(), NotReady> {
        let mut reasons = Vec::new();
        if *self.state.shutdown.borrow() {
            reasons.push("shutting down".to_owned());
        }
        for w in &self.watched {
            if w.task.is_finished() {
                reasons.push(format!("{} stopped", w.name));
            }
        }
        reasons.extend(self.trust_problems(now_unix()));
        if let Some(problem) = self.store_problem().await {
            reasons.push(problem.to_owned());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(NotReady(reasons))
        }
    }

    /// A view past its directory's expiry or its CRL's grace stays loaded until fresh files
    /// arrive, but the node then refuses new sends and receives (`Trust::usable`): it is up and
    /// not ready. Both checks are made, so both reasons show when both apply.
    fn trust_problems(&self, now: i64) -> Vec<String> {
        let trust = self.state.trust();
        let mut out = Vec::new();
        let (version, expires_at) = (trust.directory.version, trust.directory.expires_at);
        if freshness::check_directory(version, expires_at, now).is_err() {
            out.push("federation directory expired".to_owned());
        }
        if trust.crl.check(now).is_err() {
            out.push("federation CRL stale (past nextUpdate plus grace)".to_owned());
        }
        let active = trust
            .directory
            .facility(self.state.me())
            .is_some_and(|me| me.status == FacilityStatus::Active);
        if !active {
            out.push("this facility is not active in the federation directory".to_owned());
        }
        out
    }

    /// A durable commit through the store's group commit: it fails once a flush has failed
    /// (the store then refuses every later commit, so nothing could be acknowledged).
    async fn store_problem(&self) -> Option<&'static str> {
        match tokio::time::timeout(STORE_COMMIT_TIMEOUT, self.state.store.commit()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: store commit failed");
                Some("store cannot make writes durable")
            }
            Err(_) => Some("store commit did not finish within 5 s"),
        }
    }
}

/// `GET /readyz`: 200 `ok`, or 503 with `{"status": "not ready", "reasons": [...]}`.
pub(super) async fn readyz(State(readiness): State<Readiness>) -> Response {
    match readiness.check().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(NotReady(reasons)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reasons": reasons})),
        )
            .into_response(),
    }
}
