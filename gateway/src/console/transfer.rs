//! Transfer detail: every audit event this node holds for one transfer, its policy decision
//! (policy ids and reason), receipt status, categories, content type and sizes. Never the
//! payload: the page reads the outbox/inbox entries' metadata and the audit log only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use gateway_envelope::TransferId;
use gateway_store::AuditFilter;

use crate::audit::event;

use super::page::{html_response, layout, outcome, problem, size, time};
use super::session::Officer;
use super::{record_read, Console};

pub async fn page(
    State(console): State<Console>,
    officer: Officer,
    Path(id): Path<String>,
) -> Response {
    let chrome = officer.chrome();
    let Ok(transfer) = id.parse::<TransferId>() else {
        return problem(
            Some(&chrome),
            StatusCode::BAD_REQUEST,
            "That is not a transfer id.",
        );
    };
    let store = &console.node.store;
    let read = tokio::task::block_in_place(|| {
        Ok::<_, gateway_store::StoreError>((
            store.audit_list(&AuditFilter {
                transfer_id: Some(transfer.0),
                ..AuditFilter::default()
            })?,
            store.outbox_get(&transfer.0)?,
            store.inbox_get(&transfer.0)?,
        ))
    });
    let (timeline, sent, received) = match read {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "console transfer: store unreadable");
            return problem(
                Some(&chrome),
                StatusCode::INTERNAL_SERVER_ERROR,
                "The store could not be read.",
            );
        }
    };
    if timeline.is_empty() && sent.is_none() && received.is_none() {
        return problem(
            Some(&chrome),
            StatusCode::NOT_FOUND,
            "This node has no record of that transfer.",
        );
    }
    let patient = sent
        .as_ref()
        .map(|s| s.summary.patient_ref.clone())
        .or_else(|| timeline.iter().find_map(|e| e.record.patient_ref.clone()));
    if let Err(refused) = record_read(
        &console,
        &officer,
        &format!("transfer {transfer} viewed"),
        patient,
    )
    .await
    {
        return refused;
    }
    let decisions: Vec<_> = timeline
        .iter()
        .filter(|e| e.record.event == event::DECISION)
        .collect();
    let id_text = transfer.to_string();
    let body = html! {
        p { "Transfer " code id="transfer-id" { (id_text) } }
        @if let Some(s) = &sent {
            h2 { "Sent by this node" }
            dl class="facts" id="sent" {
                dt { "To" } dd { (s.recipient) }
                dt { "State" } dd { (s.state.as_str()) }
                dt { "Submitted" } dd { (time(s.created_ms)) }
                dt { "Last change" } dd { (time(s.updated_ms)) }
                dt { "Attempts" } dd { (s.attempts) }
                @if let Some(err) = &s.last_error { dt { "Last error" } dd { (err) } }
                dt { "Patient" } dd { (s.summary.patient_ref) }
                dt { "Purpose" } dd { (s.summary.purpose) }
                dt { "Clinician" } dd { (s.summary.clinician.as_deref().unwrap_or("—")) }
                dt { "Content type" } dd { (s.summary.content_type) }
                dt { "Categories" } dd { (s.summary.categories.join(", ")) }
                dt { "Break-glass" } dd { @if s.summary.break_glass { span class="bad" { "yes" } } @else { "no" } }
                dt { "Record size" } dd { (size(s.payload_len)) }
                dt { "Envelope size" } dd { (size(s.envelope_len)) }
                dt { "Payload SHA-256" } dd { code { (hex::encode(s.payload_digest)) } }
                dt { "Receipt" } dd id="receipt" {
                    @if s.receipt.is_some() { span class="ok" { "signed receipt verified and kept" } }
                    @else { "none yet" }
                }
                @if let Some(r) = &s.request_id { dt { "Answers request" } dd { (r) } }
            }
        }
        @if let Some(r) = &received {
            h2 { "Received by this node" }
            dl class="facts" id="received" {
                dt { "From" } dd { (r.sender) }
                dt { "Received" } dd { (time(r.received_ms)) }
                dt { "Acknowledged by the EMR" } dd { (r.acked_ms.map(time).unwrap_or_else(|| "not yet".to_owned())) }
                dt { "Record size" } dd { (size(r.payload_len)) }
                dt { "Envelope size" } dd { (size(r.envelope_len)) }
                dt { "Payload SHA-256" } dd { code { (hex::encode(r.payload_digest)) } }
                dt { "Receipt" } dd { span class="ok" { "signed receipt returned to the sender" } }
            }
        }
        h2 { "Policy decision" }
        @if decisions.is_empty() { p { "No policy decision recorded on this node." } }
        @for d in &decisions {
            dl class="facts decision" {
                dt { "Outcome" } dd { (outcome(&d.record.outcome)) }
                dt { "Policies" } dd { (d.record.policy_ids.join(", ")) }
                dt { "Reason" } dd { (d.record.reason.as_deref().unwrap_or("—")) }
                dt { "Time" } dd { (time(d.record.time_ms)) }
            }
        }
        h2 { "Timeline" }
        table id="timeline" {
            thead { tr { th { "#" } th { "Time" } th { "Event" } th { "Outcome" } th { "Peer" } th { "Reason" } } }
            tbody {
                @for e in &timeline {
                    tr {
                        td { (e.seq) }
                        td { (time(e.record.time_ms)) }
                        td { (e.record.event) }
                        td { (outcome(&e.record.outcome)) }
                        td { (e.record.peer.as_deref().unwrap_or("")) }
                        td class="reason" { (e.record.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout(Some(&chrome), "Transfer", body))
}
