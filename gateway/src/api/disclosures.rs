//! `POST /v1/disclosures`: the accounting of disclosures of one patient's records — every
//! transfer this node sent (or tried to send) to another facility, with to whom, when, for
//! what purpose, which data categories, the policy decision and whether it was break-glass.
//! The patient is named in the body, never in the URL (URLs end up in logs). The read is
//! audited before anything is served. The console's printable page and `gateway disclosures`
//! render these rows.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use gateway_envelope::TransferId;
use gateway_store::{AuditFilter, Store, StoreError};

use crate::audit::event;

use super::audit::record_read_durably;
use super::auth::{acting, TokenName};
use super::error::error;
use super::Shared;

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosureQuery {
    pub patient: String,
    /// Only transfers submitted at or after this time (ms since the epoch).
    pub from_ms: Option<u64>,
    /// Only transfers submitted before this time (ms since the epoch).
    pub to_ms: Option<u64>,
}

/// One disclosure (a transfer of the patient's records to another facility).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Disclosure {
    pub transfer_id: String,
    /// When it was submitted.
    pub time_ms: u64,
    /// When the recipient's signed receipt was verified, if it was.
    pub delivered_ms: Option<u64>,
    pub recipient: String,
    /// The recipient's name in the federation directory.
    pub recipient_name: Option<String>,
    pub purpose: String,
    pub categories: Vec<String>,
    pub content_type: String,
    /// `queued`, `delivering`, `delivered`, `failed` or `cancelled`.
    pub status: String,
    /// The policy decision's outcome (`permit`), its policies and reason.
    pub decision: String,
    pub policy_ids: Vec<String>,
    pub decision_reason: Option<String>,
    pub break_glass: bool,
    /// Set when the transfer answered another facility's pull request.
    pub request_id: Option<String>,
}

/// The accounting for `patient` from the node's own audit log and outbox, oldest first.
pub fn accounting(
    store: &Store,
    directory: &pki_tools::directory::Directory,
    q: &DisclosureQuery,
) -> Result<Vec<Disclosure>, StoreError> {
    let entries = store.audit_list(&AuditFilter {
        patient: Some(q.patient.clone()),
        ..AuditFilter::default()
    })?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for e in &entries {
        let Some(id) = e.record.transfer_id else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        // Only what this node sent: the outbox holds it (a received record is not ours to
        // account for).
        let Some(sent) = store.outbox_get(&id)? else {
            continue;
        };
        if sent.summary.patient_ref != q.patient {
            continue;
        }
        if q.from_ms.is_some_and(|from| sent.created_ms < from)
            || q.to_ms.is_some_and(|to| sent.created_ms >= to)
        {
            continue;
        }
        let of_this = entries.iter().filter(|x| x.record.transfer_id == Some(id));
        let mut decision = ("unknown".to_owned(), Vec::new(), None);
        let mut delivered_ms = None;
        for x in of_this {
            if x.record.event == event::DECISION {
                decision = (
                    x.record.outcome.clone(),
                    x.record.policy_ids.clone(),
                    x.record.reason.clone(),
                );
            } else if x.record.event == event::DELIVERED {
                delivered_ms = Some(x.record.time_ms);
            }
        }
        let recipient_name = directory
            .facilities
            .iter()
            .find(|f| f.id.as_str() == sent.recipient)
            .map(|f| f.name.clone());
        out.push(Disclosure {
            transfer_id: TransferId(id).to_string(),
            time_ms: sent.created_ms,
            delivered_ms,
            recipient: sent.recipient.clone(),
            recipient_name,
            purpose: sent.summary.purpose.clone(),
            categories: sent.summary.categories.clone(),
            content_type: sent.summary.content_type.clone(),
            status: sent.state.as_str().to_owned(),
            decision: decision.0,
            policy_ids: decision.1,
            decision_reason: decision.2,
            break_glass: sent.summary.break_glass,
            request_id: sent.request_id.clone(),
        });
    }
    out.sort_by_key(|d| d.time_ms);
    Ok(out)
}

pub async fn post_disclosures(
    State(state): State<Shared>,
    token: Option<axum::Extension<TokenName>>,
    Json(q): Json<DisclosureQuery>,
) -> Response {
    if q.patient.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "patient: required");
    }
    let mut rec = crate::audit::record(event::AUDIT_READ, "read");
    rec.reason = Some(format!("accounting of disclosures by {}", acting(token)));
    rec.patient_ref = Some(q.patient.clone());
    if let Err(refused) = record_read_durably(&state, rec).await {
        return refused;
    }
    let trust = state.trust();
    match tokio::task::block_in_place(|| accounting(&state.store, &trust.directory, &q)) {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
