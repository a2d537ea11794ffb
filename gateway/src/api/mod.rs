//! The local API for the facility's own systems (EMR, doctors' tools, the CLI): JSON over HTTP
//! on a loopback address, authenticated by bearer tokens whose SHA-256 is in the config.
//! Never served to peers. Documented in `deploy/openapi.yaml`.
//!
//! One file per resource; `auth`, `error`, `paging` and `upload` are shared by them.
//!
//! Invariant: only this layer knows HTTP and JSON on the facility side; every route but
//! `/healthz` needs a token, and every request is bounded in body size, time and concurrency
//! (the stack in `router`). Transfers go through the send path's `submit`, never straight to
//! the store.

mod audit;
pub mod auth;
mod backup;
mod consents;
pub mod disclosures;
mod error;
mod evidence;
pub(crate) mod idempotency;
mod inbox;
pub mod paging;
mod policy;
mod records;
mod requests;
mod status;
mod transfers;
pub(crate) mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder};

use crate::state::NodeState;

use audit::{list_audit, verify_audit};
use auth::require_token;
use consents::{import_consent, list_consents, post_consent, revoke_consent};
use inbox::{ack_inbox, get_inbox, get_inbox_payload, list_inbox};
use policy::{policy_check, policy_reload};
use records::put_record;
use requests::{list_requests, post_request};
use transfers::{cancel_transfer, get_transfer, list_transfers, post_transfer};

pub use paging::{DEFAULT_PAGE, MAX_PAGE};

/// Largest body the buffered routes (JSON, PUT records, consent import) accept.
const MAX_BUFFERED_BODY: usize = 64 * 1024 * 1024;

type Shared = Arc<NodeState>;

/// Serves the API, with the officers' console (`gateway::console`, its own sign-in) under
/// `/console/` when the node gives one.
pub async fn serve(state: Arc<NodeState>, listener: TcpListener, console: Option<Router>) {
    auth::warn_defaulted_roles(&state.config.local_api.token_hashes);
    let router = router_with(state.clone(), console);
    let mut shutdown = state.shutdown.clone();
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "local api stopped");
    }
}

pub fn router(state: Arc<NodeState>) -> Router {
    router_with(state, None)
}

fn router_with(state: Arc<NodeState>, console: Option<Router>) -> Router {
    let cfg = &state.config.local_api;
    let api = Router::new()
        .route("/v1/transfers", post(post_transfer).get(list_transfers))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route("/v1/transfers/{id}/cancel", post(cancel_transfer))
        .route("/v1/transfers/{id}/requeue", post(transfers::requeue))
        .route("/v1/inbox", get(list_inbox))
        .route("/v1/inbox/{id}", get(get_inbox))
        .route("/v1/inbox/{id}/payload", get(get_inbox_payload))
        .route("/v1/inbox/{id}/ack", post(ack_inbox))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/audit/tree", get(audit::tree_head))
        .route("/v1/audit/tree/inclusion", get(audit::inclusion))
        .route("/v1/audit/tree/consistency", get(audit::consistency))
        .route(
            "/v1/audit/checkpoint",
            get(audit::get_checkpoint).post(audit::make_checkpoint),
        )
        .route("/v1/witness", get(audit::witnessed))
        .route("/v1/audit/archive", post(audit::archive))
        .route(
            "/v1/evidence/transfers/{id}",
            get(evidence::transfer_evidence),
        )
        .route("/v1/disclosures", post(disclosures::post_disclosures))
        .route("/v1/consents", post(post_consent).get(list_consents))
        .route("/v1/consents/import", post(import_consent))
        .route("/v1/consents/{id}/revoke", post(revoke_consent))
        .route("/v1/requests", post(post_request).get(list_requests))
        .route("/v1/records/{patient}", put(put_record))
        .route("/v1/policy/check", post(policy_check))
        .route("/v1/policy/reload", post(policy_reload))
        .route("/v1/backup", post(backup::post_backup))
        .route("/v1/status", get(status::status))
        // Token and role: every route above must be in auth::ROUTES with its role.
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Buffered bodies (JSON, records, consent imports); transfers stream and are bounded
        // by local_api.max_body_bytes in read_payload.
        .layer(DefaultBodyLimit::max(MAX_BUFFERED_BODY));
    let mut top = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api);
    if let Some(console) = console {
        top = top.nest_service("/console", console);
    }
    top
        // Outermost first: overload and timeouts become HTTP errors; shed instead of queueing
        // past the concurrency limit; bound every request in time (uploads of large files included).
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .concurrency_limit(cfg.max_concurrent)
                .timeout(Duration::from_secs(3600)),
        )
        .with_state(state)
}

async fn overloaded(err: BoxError) -> (StatusCode, Json<serde_json::Value>) {
    if err.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "gateway overloaded; retry later"})),
        )
    } else if err.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::REQUEST_TIMEOUT,
            Json(json!({"error": "request took too long"})),
        )
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "internal error"})),
        )
    }
}
