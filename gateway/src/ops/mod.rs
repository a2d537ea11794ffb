//! The ops listener: what the facility's monitoring and orchestrator ask a node, on its own
//! address (`[ops] listen`, loopback by default): `/livez` (the process serves requests),
//! `/readyz` (the node can do its work, see `health`) and `/metrics` (the Prometheus text
//! format, see `metrics`); `audit_check` verifies the audit chain periodically for the
//! `healthfed_audit_verify_ok` gauge.
//!
//! Invariant: answers carry facts about the node only (ready or not, fixed reasons, counts,
//! times and facility ids), never patient data, transfer ids, config values or file contents;
//! there is no authentication, so the config refuses a non-loopback address unless the
//! operator sets `ops.allow_remote`. Every request is bounded in time and concurrency. It reads
//! `NodeState` and changes nothing.

mod audit_check;
mod health;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};
use tower::{BoxError, ServiceBuilder};

use crate::state::NodeState;

pub use health::{NotReady, Readiness};
pub use metrics::Metrics;

/// What the ops routes share.
#[derive(Clone)]
pub struct Ops {
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

impl FromRef<Ops> for Readiness {
    fn from_ref(ops: &Ops) -> Readiness {
        ops.readiness.clone()
    }
}

/// Probes in flight at once; more are shed with 503 (a probe is a few reads and a commit).
const MAX_CONCURRENT: usize = 16;

/// A probe slower than this is answered 503 by the stack (the readiness check bounds its own
/// store commit below this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener task of the node whose end makes it unready (`/readyz` reports it by name).
#[derive(Clone)]
pub struct WatchedTask {
    pub name: &'static str,
    pub task: AbortHandle,
}

/// Binds `ops.listen`.
pub async fn bind(config: &crate::config::NodeConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.ops.listen).await
}

/// Serves the ops endpoints until `node::run` aborts the task at the end of its drain: while
/// the node drains, `/readyz` answers 503 "shutting down", so an orchestrator stops routing to
/// it, and `/livez` still answers.
pub async fn serve(state: Arc<NodeState>, listener: TcpListener, watched: Vec<WatchedTask>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "ops listener started (/livez, /readyz, /metrics)");
    }
    tokio::spawn(audit_check::run(state.clone()));
    let ops = Ops {
        metrics: Arc::new(Metrics::new(state.clone())),
        readiness: Readiness::new(state, watched),
    };
    let router = router(ops);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "ops listener stopped");
    }
}

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        //
        // Outermost first: overload and timeouts become HTTP errors; shed instead of queueing
        // past the concurrency limit; bound every probe in time.
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .concurrency_limit(MAX_CONCURRENT)
                .timeout(REQUEST_TIMEOUT),
        )
        .with_state(ops)
}

async fn overloaded(err: BoxError) -> (StatusCode, &'static str) {
    if err.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::SERVICE_UNAVAILABLE, "probe timed out\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n")
    }
}

/// The node's listener tasks that `/readyz` watches.
pub fn watch(peer: &JoinHandle<()>, local: &JoinHandle<()>) -> Vec<WatchedTask> {
    vec![
        WatchedTask {
            name: "peer listener",
            task: peer.abort_handle(),
        },
        WatchedTask {
            name: "local api",
            task: local.abort_handle(),
        },
    ]
}
