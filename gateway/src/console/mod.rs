//! The security officers' console: server-rendered HTML (maud) under `/console/` on the local
//! listener. Pages: overview, audit search, transfer detail, break-glass review queue and the
//! accounting of disclosures for one patient. No script at all (a strict CSP forbids it), so
//! it works with scripts disabled.
//!
//! Invariants: every page but sign-in needs an officer session (`session`); every POST carries
//! the session's CSRF token; patient identifiers travel only in POST bodies, never in a URL
//! (URLs end up in logs and browser history); every read of audit data is itself audited
//! before it is shown, as the API's reads are; the only write is a break-glass review, which
//! is an audit entry. Pages read through the store's queries and the API's models; they never
//! open sled or show a payload.

mod disclosures;
mod overview;
mod page;
mod query;
mod review;
mod search;
mod session;
mod transfer;

pub use disclosures::{report_html, ReportHeading};
pub use page::CSP;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use crate::state::NodeState;

/// The largest form a console page posts (a search, a review note).
const MAX_FORM_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct Console {
    node: Arc<NodeState>,
    sessions: Arc<session::Sessions>,
    verified: Arc<overview::VerifyCache>,
}

/// The console's routes, relative to `/console` (where `api::serve` nests them).
pub fn router(node: Arc<NodeState>) -> Router {
    let cfg = &node.config.console;
    let console = Console {
        sessions: Arc::new(session::Sessions::new(
            Duration::from_secs(cfg.idle_timeout_secs),
            cfg.secure_cookie,
        )),
        verified: Arc::new(overview::VerifyCache::default()),
        node,
    };
    Router::new()
        .route("/", get(overview::page))
        .route("/console.css", get(page::stylesheet))
        .route(
            "/sign-in",
            get(session::sign_in_form).post(session::sign_in),
        )
        .route("/sign-out", post(session::sign_out))
        .route("/audit", get(search::form).post(search::results))
        .route("/transfers/{id}", get(transfer::page))
        .route("/break-glass", get(review::queue))
        .route("/break-glass/review", post(review::review))
        .route(
            "/disclosures",
            get(disclosures::form).post(disclosures::report),
        )
        // Every response, pages and refusals alike, carries the CSP and its companions.
        .layer(middleware::from_fn(page::security_headers))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(console)
}

/// Records an officer's read through the console in the audit log, durably, before the page
/// is served (as the API does for its reads); `Err` is the page to show instead.
async fn record_read(
    console: &Console,
    officer: &session::Officer,
    what: &str,
    patient: Option<String>,
) -> Result<u64, axum::response::Response> {
    let mut rec = crate::audit::record(crate::audit::event::AUDIT_READ, "read");
    rec.reason = Some(format!("console: {what} by {}", officer.name));
    rec.patient_ref = patient;
    crate::audit::append_durable(&console.node.store, rec)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit write failed; console read refused");
            page::problem(
                Some(&officer.chrome()),
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "The audit log could not record this read, so nothing is shown.",
            )
        })
}
