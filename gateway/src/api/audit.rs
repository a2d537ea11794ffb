//! `/v1/audit`: list the hash-chained audit log (filtered, paged) and verify the chain.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use gateway_envelope::TransferId;
use gateway_store::{AuditEntry, AuditFilter};

use super::error::{error, parse_id};
use super::paging::{next_after, page_limit, paged};
use super::Shared;

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    patient: Option<String>,
    transfer: Option<String>,
    break_glass: Option<bool>,
    since: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub struct AuditView {
    pub seq: u64,
    pub time_ms: u64,
    pub event: String,
    pub transfer_id: Option<String>,
    pub peer: Option<String>,
    pub patient: Option<String>,
    pub purpose: Option<String>,
    pub clinician: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub policy_ids: Vec<String>,
    pub break_glass: bool,
    pub hash: String,
}

impl From<&AuditEntry> for AuditView {
    fn from(e: &AuditEntry) -> Self {
        let r = &e.record;
        AuditView {
            seq: e.seq,
            time_ms: r.time_ms,
            event: r.event.clone(),
            transfer_id: r.transfer_id.map(|t| TransferId(t).to_string()),
            peer: r.peer.clone(),
            patient: r.patient_ref.clone(),
            purpose: r.purpose.clone(),
            clinician: r.clinician.clone(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
            policy_ids: r.policy_ids.clone(),
            break_glass: r.break_glass,
            hash: hex::encode(e.hash),
        }
    }
}

pub async fn list_audit(State(state): State<Shared>, Query(q): Query<AuditQuery>) -> Response {
    let transfer_id = match q.transfer.as_deref().map(parse_id).transpose() {
        Ok(t) => t.map(|t| t.0),
        Err(r) => return r.into_response(),
    };
    let limit = match page_limit(q.limit) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let filter = AuditFilter {
        patient: q.patient.clone(),
        transfer_id,
        break_glass_only: q.break_glass.unwrap_or(false),
        since_seq: q.since,
        limit: Some(limit),
    };
    match state.store.audit_list(&filter) {
        Ok(entries) => {
            let next = next_after(&entries, limit, |e| AuditQuery {
                since: Some(e.seq),
                limit: Some(limit),
                ..q
            });
            paged(
                "/v1/audit",
                next,
                entries.iter().map(AuditView::from).collect::<Vec<_>>(),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn verify_audit(State(state): State<Shared>) -> Response {
    match tokio::task::block_in_place(|| state.store.audit_verify()) {
        Ok(n) => Json(json!({ "ok": true, "entries": n })).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({ "ok": false, "error": e.to_string() })),
        )
            .into_response(),
    }
}
