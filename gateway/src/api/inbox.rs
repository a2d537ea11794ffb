//! `/v1/inbox`: list, show, fetch (decrypt on the way out) and acknowledge received transfers.

use axum::body::Body as AxumBody;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use gateway_envelope::TransferId;
use gateway_store::{InboxEntry, SpoolKind};

use crate::audit::{self, event};
use crate::receive::fetch::{open_received, FetchError};
use crate::state::NodeState;
use crate::trust::now_ms;

use super::auth::{acting, TokenName};
use super::error::{error, parse_id};
use super::paging::{transfer_page, PageQuery};
use super::transfers::removed_ms;
use super::Shared;

#[derive(Serialize)]
struct InboxView {
    transfer_id: String,
    from: String,
    received_ms: u64,
    payload_bytes: u64,
    envelope_bytes: u64,
    acknowledged: bool,
    /// When retention removed the sealed envelope; it can no longer be fetched.
    envelope_removed_ms: Option<u64>,
}

impl From<&InboxEntry> for InboxView {
    fn from(e: &InboxEntry) -> Self {
        InboxView {
            transfer_id: TransferId(e.transfer_id).to_string(),
            from: e.sender.clone(),
            received_ms: e.received_ms,
            payload_bytes: e.payload_len,
            envelope_bytes: e.envelope_len,
            acknowledged: e.acked_ms.is_some(),
            envelope_removed_ms: None,
        }
    }
}

fn inbox_view(state: &NodeState, e: &InboxEntry) -> InboxView {
    let mut view = InboxView::from(e);
    view.envelope_removed_ms = removed_ms(state, SpoolKind::Inbox, &e.transfer_id);
    view
}

pub async fn list_inbox(State(state): State<Shared>, Query(q): Query<PageQuery>) -> Response {
    transfer_page(
        "/v1/inbox",
        &q,
        |after, limit| state.store.inbox_page(after, limit),
        |e: &InboxEntry| e.transfer_id,
        |e| inbox_view(&state, e),
    )
}

fn fetch_error(e: FetchError) -> Response {
    match e {
        FetchError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        FetchError::Removed(_) => error(StatusCode::GONE, e.to_string()),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A received record opened for a caller, with the audit entry of the read (`event`, naming
/// the token) durable before anything is answered.
async fn open_audited(
    state: &Shared,
    id: &str,
    token: Option<axum::Extension<TokenName>>,
    event: &str,
    outcome: &str,
) -> Result<(TransferId, Opened), Response> {
    let id = parse_id(id).map_err(IntoResponse::into_response)?;
    let (entry, meta, rx) = open_received(state, id).await.map_err(fetch_error)?;
    let mut rec = audit::record(event, outcome);
    rec.transfer_id = Some(id.0);
    rec.peer = Some(entry.sender.clone());
    rec.patient_ref = Some(meta.patient.clone());
    rec.purpose = Some(meta.purpose.clone());
    rec.reason = Some(format!("read by {}", acting(token)));
    super::audit::record_read_durably(state, rec).await?;
    Ok((id, (entry, meta, rx)))
}

type Opened = (
    InboxEntry,
    crate::record::RecordMetadata,
    tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
);

pub async fn get_inbox(
    State(state): State<Shared>,
    Path(id): Path<String>,
    token: Option<axum::Extension<TokenName>>,
) -> Response {
    let (id, (entry, meta, _rx)) =
        match open_audited(&state, &id, token, event::METADATA_READ, "read").await {
            Ok(opened) => opened,
            Err(refused) => return refused,
        };
    Json(json!({
        "transfer_id": id.to_string(),
        "from": entry.sender,
        "received_ms": entry.received_ms,
        "payload_bytes": entry.payload_len,
        "acknowledged": entry.acked_ms.is_some(),
        "content_type": meta.content_type,
        "patient": meta.patient,
        "purpose": meta.purpose,
        "categories": meta.categories,
        "clinician": meta.clinician,
        "clinician_role": meta.clinician_role,
        "break_glass_reason": meta.break_glass_reason,
        "request_id": meta.request_id,
    }))
    .into_response()
}

pub async fn get_inbox_payload(
    State(state): State<Shared>,
    Path(id): Path<String>,
    token: Option<axum::Extension<TokenName>>,
) -> Response {
    let (_, (entry, meta, rx)) =
        match open_audited(&state, &id, token, event::FETCHED, "decrypted").await {
            Ok(opened) => opened,
            Err(refused) => return refused,
        };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, meta.content_type)
        .header(header::CONTENT_LENGTH, entry.payload_len)
        .body(AxumBody::from_stream(tokio_stream_from(rx)))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub async fn ack_inbox(
    State(state): State<Shared>,
    Path(id): Path<String>,
    token: Option<axum::Extension<TokenName>>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let by = acting(token);
    // The acknowledgement and its audit entry are one transaction, durable before the answer.
    let acked = state
        .store
        .inbox_ack_audited(&id.0, now_ms(), |entry, first| {
            let outcome = if first {
                "acknowledged"
            } else {
                "already-acknowledged"
            };
            let mut rec = audit::record(event::ACKED, outcome);
            rec.transfer_id = Some(id.0);
            rec.peer = Some(entry.sender.clone());
            rec.reason = Some(format!("acknowledged by {by}"));
            vec![rec]
        });
    match acked {
        Ok((entry, _)) => match state.store.commit().await {
            Ok(()) => Json(inbox_view(&state, &entry)).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(gateway_store::StoreError::NotFound { .. }) => {
            error(StatusCode::NOT_FOUND, format!("no received transfer {id}"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
