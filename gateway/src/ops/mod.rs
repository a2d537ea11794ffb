//! The ops listener: what the facility's monitoring and orchestrator ask a node, on its own
//! address (`[ops] listen`, loopback by default): `/livez` (the process serves requests) and
//! `/readyz` (the node can do its work, see `health`). `/metrics` (the Prometheus text format)
//! is planned on this same listener and not built yet: it answers 404 until then.
//!
//! Invariant: answers carry facts about the node only (ready or not, and fixed reasons), never
//! patient data, transfer ids, config values or file contents; there is no authentication, so
//! the config refuses a non-loopback address unless the operator sets `ops.allow_remote`.
//! Every request is bounded in time and concurrency. It reads `NodeState` and changes nothing.

mod health;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};
use tower::{BoxError, ServiceBuilder};

use crate::state::NodeState;

pub use health::{NotReady, Readiness};

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
        tracing::info!(%addr, "ops listener started (/livez, /readyz)");
    }
    let router = router(Readiness::new(state, watched));
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "ops listener stopped");
    }
}

pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        // `/metrics` goes here, rendered from the flows' own counters by a `metrics` module of
        // this folder (prometheus-client); not built yet.
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
        .with_state(readiness)
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
