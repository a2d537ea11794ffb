//! `GET /v1/status`: the node at a glance for IT (`gateway status`): identity and key
//! fingerprints, certificate and trust-file deadlines, per peer whether it is reachable and
//! what waits for it, and the latest delivery errors. Read-only; built from
//! `state::overview`, the view `/metrics` is computed from too.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::state::overview::Overview;
use crate::trust::freshness::rfc3339;

use super::error::error;
use super::Shared;

pub async fn status(State(state): State<Shared>) -> Response {
    let collected = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || Overview::collect(&state)).await
    };
    match collected {
        Ok(Ok(o)) => Json(to_json(&o)).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "status: store read failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "local system: store unreadable",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "status task failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "local system: status failed",
            )
        }
    }
}

/// A deadline as `{at, in_secs}`: when, and how long from now (negative once past).
fn deadline(at: i64, now: i64) -> Value {
    json!({ "at": rfc3339(at), "in_secs": at - now })
}

fn to_json(o: &Overview) -> Value {
    let now = o.now;
    let now_ms = o.now_ms;
    let ms_to_rfc3339 = |ms: u64| rfc3339(i64::try_from(ms / 1000).unwrap_or(i64::MAX));
    let peers: Vec<Value> = o
        .peers
        .iter()
        .map(|p| {
            json!({
                "facility": p.id,
                "active": p.active,
                "reachable": p.circuit.is_none(),
                "circuit": p.circuit.as_ref().map(|c| json!({
                    "down_since": ms_to_rfc3339(c.down_since_ms),
                    "failed_probes": c.failures,
                    "next_probe": ms_to_rfc3339(c.next_probe_ms),
                    "waiting": c.parked,
                })),
                "pending": p.pending,
                "oldest_pending_age_secs": p.oldest_pending_ms.map(|t| now_ms.saturating_sub(t) / 1000),
            })
        })
        .collect();
    let errors: Vec<Value> = o
        .last_errors
        .iter()
        .map(|e| {
            json!({
                "transfer_id": e.transfer_id,
                "state": e.state,
                "peer": e.peer,
                "at": ms_to_rfc3339(e.at_ms),
                "attempts": e.attempts,
                "error": e.error,
            })
        })
        .collect();
    json!({
        "facility": o.facility,
        "version": env!("CARGO_PKG_VERSION"),
        "now": rfc3339(now),
        "identity": {
            "tls_certificate_sha256": hex::encode(o.tls_fingerprint),
            "signing_key": hex::encode(o.signing_key),
            "certificate_expires": o.cert_not_after.map(|t| deadline(t, now)),
        },
        "ca": { "certificate_expires": o.ca_not_after.map(|t| deadline(t, now)) },
        "directory": {
            "version": o.directory_version,
            "issued": rfc3339(o.directory_issued_at),
            "age_secs": now - o.directory_issued_at,
            "expires": deadline(o.directory_expires_at, now),
            "fresh": o.directory_fresh,
        },
        "crl": {
            "issued": o.crl_this_update.map(rfc3339),
            "age_secs": o.crl_this_update.map(|t| now - t),
            "next_update": deadline(o.crl_next_update, now),
            "refused_after": deadline(o.crl_deadline, now),
            "fresh": o.crl_fresh,
        },
        "peers": peers,
        "pending_total": o.peers.iter().map(|p| p.pending).sum::<u64>(),
        "last_errors": errors,
    })
}
