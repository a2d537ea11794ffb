//! `/v1/transfers`: submit a record (the start of the send path), list, show and cancel
//! outbound transfers, and wait for a transfer's outcome (`wait=receipt`).

use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use gateway_envelope::TransferId;
use gateway_store::{OutboxEntry, SpoolKind};

use crate::record::{ContentType, PatientRef};
use crate::send::control;
use crate::send::outbox::{submit_keyed, Accepted, Payload, SubmitError, SubmitRequest};
use crate::state::NodeState;

use super::error::{error, parse_categories, parse_id, parse_purpose};
use super::idempotency::{self, request_digest, Begin, IdempotencyKey};
use super::paging::{transfer_page, PageQuery};
use super::upload::{
    content_digest, drain, forward_upload, read_payload, IN_MEMORY_PAYLOAD, REFUSAL_DRAIN_BYTES,
    STREAM_CHANNEL_CHUNKS,
};
use super::Shared;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    to: String,
    patient: String,
    purpose: String,
    content_type: Option<String>,
    categories: Option<String>,
    clinician: Option<String>,
    clinician_role: Option<String>,
    break_glass_reason: Option<String>,
    /// `receipt`: answer only when the transfer is delivered with a verified receipt (200) or
    /// has failed (502), instead of 202 once it is queued.
    wait: Option<String>,
}

/// Checks a submit's parameters before any of its body is read.
#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer, built once per refused request"
)]
fn validate_submit(q: SubmitQuery) -> Result<(SubmitRequest, bool), Response> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    let patient = PatientRef::parse(&q.patient).map_err(|e| bad(e.to_string()))?;
    let purpose = parse_purpose(&q.purpose).map_err(IntoResponse::into_response)?;
    let content_type = ContentType::parse(q.content_type.as_deref().unwrap_or("fhir"))
        .map_err(|e| bad(e.to_string()))?;
    let categories =
        parse_categories(q.categories.as_deref()).map_err(IntoResponse::into_response)?;
    if q.break_glass_reason
        .as_deref()
        .is_some_and(|r| r.trim().is_empty())
    {
        return Err(bad("break-glass needs a reason".to_owned()));
    }
    let wait = match q.wait.as_deref() {
        None => false,
        Some("receipt") => true,
        Some(_) => return Err(bad("wait must be receipt".to_owned())),
    };
    let req = SubmitRequest {
        to: q.to,
        patient,
        purpose,
        content_type,
        categories,
        clinician: q.clinician,
        clinician_role: q.clinician_role,
        break_glass_reason: q.break_glass_reason,
        break_glass_until_ms: None,
        request_id: None,
    };
    Ok((req, wait))
}

/// How long `wait=receipt` waits before answering 202 with the transfer still in progress.
const WAIT_FOR_RECEIPT: Duration = Duration::from_secs(300);

/// `POST /v1/transfers`. With an `Idempotency-Key` (see `api::idempotency`), a retry of an
/// accepted submission answers with the transfer it created (`replayed: true` and the
/// `Idempotent-Replayed` header) instead of making another.
pub async fn post_transfer(
    State(state): State<Shared>,
    query: Result<Query<SubmitQuery>, QueryRejection>,
    token: Option<axum::Extension<super::auth::TokenName>>,
    headers: axum::http::HeaderMap,
    body: AxumBody,
) -> Response {
    let parsed = match query {
        Ok(Query(q)) => validate_submit(q),
        Err(rejection) => Err(error(StatusCode::BAD_REQUEST, rejection.body_text())),
    };
    let (req, wait) = match parsed {
        Ok(p) => p,
        Err(refusal) => {
            // An HTTP/1.1 client still writing its body would see a broken pipe instead of
            // this answer: read (and discard) a bounded amount first.
            drain(body, REFUSAL_DRAIN_BYTES).await;
            return refusal;
        }
    };
    // Nothing is accepted for sending on a stale trust view (expired directory, CRL past its
    // grace): the caller keeps the record and retries once fresh files are loaded.
    if let Err(stale) = state.trust.usable() {
        drain(body, REFUSAL_DRAIN_BYTES).await;
        return error(StatusCode::SERVICE_UNAVAILABLE, stale.to_string());
    }
    let (declared, key) = match (
        content_digest(&headers),
        IdempotencyKey::from_headers(&headers),
    ) {
        (Ok(d), Ok(k)) => (d, k),
        (Err(problem), _) | (_, Err(problem)) => {
            drain(body, REFUSAL_DRAIN_BYTES).await;
            return error(StatusCode::BAD_REQUEST, problem);
        }
    };
    // Keys are per caller: two systems' keys never meet, and none can probe another's.
    let scope = super::auth::acting(token);
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = state.config.local_api.max_body_bytes;
    if length.is_some_and(|len| len > max) {
        drain(body, REFUSAL_DRAIN_BYTES).await;
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {max} bytes"),
        );
    }
    let mut reservation = None;
    let payload = match (declared, length) {
        // Length and digest known up front, content not parsed by the gateway, too big to
        // hold: sealed while it is uploaded.
        (Some(digest), Some(len))
            if !req.content_type.parsed_whole() && len > IN_MEMORY_PAYLOAD as u64 =>
        {
            // The declared digest is checked against the bytes while they are sealed (a
            // mismatch queues nothing), so the key is looked up before the upload is read.
            if let Some(key) = &key {
                match idempotency::begin(&state, &scope, key, request_digest(&req, &digest)) {
                    Begin::Submit(r) => reservation = Some(r),
                    Begin::Replay(id) => {
                        drain(body, REFUSAL_DRAIN_BYTES).await;
                        return answer_accepted(&state, id, None, wait, true).await;
                    }
                    Begin::Refused(answer) => {
                        drain(body, REFUSAL_DRAIN_BYTES).await;
                        return answer;
                    }
                }
            }
            let (tx, chunks) = tokio::sync::mpsc::channel(STREAM_CHANNEL_CHUNKS);
            tokio::spawn(forward_upload(body, tx));
            Payload::Stream {
                chunks,
                peeked: Vec::new(),
                len,
                digest,
            }
        }
        _ => match read_payload(&state, body).await {
            Ok(p) if declared.is_some_and(|d| d != p.digest()) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "upload refused: the body does not match its Content-Digest",
                )
            }
            Ok(p) => p,
            Err(r) => return r.into_response(),
        },
    };
    if let (Some(key), None) = (&key, &reservation) {
        match idempotency::begin(&state, &scope, key, request_digest(&req, &payload.digest())) {
            Begin::Submit(r) => reservation = Some(r),
            // The payload (and a spilled upload's temp file) goes unused.
            Begin::Replay(id) => return answer_accepted(&state, id, None, wait, true).await,
            Begin::Refused(answer) => return answer,
        }
    }
    // The submission runs as its own task, to the end, even if this request is dropped (its
    // client gave up, the request timed out): a submission stopped half-way would leave its
    // key released while its transfer may still be written, so the client's retry could make
    // a second one. The key's reservation is released by that task, once the transfer and
    // the key are committed (or the submission refused).
    let task = {
        let state = state.clone();
        tokio::spawn(async move {
            let submitted = submit_keyed(&state, req, payload, reservation.as_ref()).await;
            drop(reservation);
            submitted
        })
    };
    let submitted = match task.await {
        Ok(submitted) => submitted,
        Err(e) => Err(SubmitError::Local(format!("submission task stopped: {e}"))),
    };
    match submitted {
        Ok(Accepted { id, state: queued }) => {
            answer_accepted(&state, id, Some(queued), wait, false).await
        }
        Err(SubmitError::Denied { reason, policy_ids }) => (
            StatusCode::FORBIDDEN,
            Json(
                json!({ "error": format!("denied by policy: {reason}"), "policy_ids": policy_ids }),
            ),
        )
            .into_response(),
        Err(e @ SubmitError::Local(_)) => {
            tracing::error!(error = %e, "submit failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "local system error; nothing was queued",
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The answer to an accepted submission (`queued`: the state it was written in, for a new
/// one): 202 with its id and state; with `wait`, once it is delivered (200) or has failed
/// (502), or 202 after [`WAIT_FOR_RECEIPT`]. A replay (`replayed`, the original transfer of an
/// idempotency key) is answered the same way with its current state, marked as a replay.
async fn answer_accepted(
    state: &NodeState,
    id: TransferId,
    queued: Option<gateway_store::TransferState>,
    wait: bool,
    replayed: bool,
) -> Response {
    if replayed {
        // The key's record was read from sled's memory; whoever wrote it has committed unless
        // that commit failed, so this is normally free: the answer waits for it all the same.
        if let Err(e) = state.store.commit().await {
            tracing::error!(error = %e, "commit before an idempotent replay failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "local system error; retry the request",
            );
        }
        tracing::info!(transfer = %id, "idempotent replay: answered with the original transfer");
    }
    let (status, current) = if wait {
        // Register first, then read the state: delivery writes the final state before it
        // hands out the outcome, so one of the two sees it.
        let outcome = state.waiters.register(id.0);
        let settled = match state.store.outbox_get(&id.0) {
            Ok(Some(e)) => match e.state {
                gateway_store::TransferState::Delivered => Some(true),
                gateway_store::TransferState::Failed | gateway_store::TransferState::Cancelled => {
                    Some(false)
                }
                _ => None,
            },
            _ => None,
        };
        let outcome = match settled {
            Some(delivered) => Some(delivered),
            None => tokio::time::timeout(WAIT_FOR_RECEIPT, outcome)
                .await
                .ok()
                .and_then(Result::ok),
        };
        state.waiters.forget(id.0);
        let status = match outcome {
            Some(true) => StatusCode::OK,
            Some(false) => StatusCode::BAD_GATEWAY,
            None => StatusCode::ACCEPTED,
        };
        let view = state.store.outbox_get(&id.0).ok().flatten();
        (status, view.map(|v| v.state.to_string()))
    } else if let (Some(queued), false) = (queued, replayed) {
        (StatusCode::ACCEPTED, Some(queued.as_str().to_owned()))
    } else {
        let view = state.store.outbox_get(&id.0).ok().flatten();
        (StatusCode::ACCEPTED, view.map(|v| v.state.to_string()))
    };
    let mut body = json!({ "transfer_id": id.to_string(), "state": current });
    if replayed {
        body["replayed"] = json!(true);
    }
    let mut answer = (status, Json(body)).into_response();
    if replayed {
        answer.headers_mut().insert(
            idempotency::REPLAYED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    answer
}

#[derive(Serialize)]
pub struct TransferView {
    pub transfer_id: String,
    pub to: String,
    pub state: String,
    pub patient: String,
    pub purpose: String,
    pub content_type: String,
    pub categories: Vec<String>,
    pub clinician: Option<String>,
    pub break_glass: bool,
    pub payload_bytes: u64,
    pub envelope_bytes: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub receipt_held: bool,
    pub request_id: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// When retention removed the sealed envelope (the entry and receipt stay).
    pub envelope_removed_ms: Option<u64>,
    /// For a transfer still pending whose recipient cannot be reached: the recipient's circuit
    /// (one probe delivery at a time until it answers). Absent when the recipient is reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_circuit: Option<CircuitJson>,
}

/// A recipient's open circuit, as `GET /v1/transfers/{id}` shows it (ids and times only).
#[derive(Serialize)]
pub struct CircuitJson {
    pub state: &'static str,
    pub down_since_ms: u64,
    pub next_probe_ms: u64,
    pub probing: bool,
    pub waiting: usize,
}

impl From<&OutboxEntry> for TransferView {
    fn from(e: &OutboxEntry) -> Self {
        TransferView {
            transfer_id: TransferId(e.transfer_id).to_string(),
            to: e.recipient.clone(),
            state: e.state.to_string(),
            patient: e.summary.patient_ref.clone(),
            purpose: e.summary.purpose.clone(),
            content_type: e.summary.content_type.clone(),
            categories: e.summary.categories.clone(),
            clinician: e.summary.clinician.clone(),
            break_glass: e.summary.break_glass,
            payload_bytes: e.payload_len,
            envelope_bytes: e.envelope_len,
            attempts: e.attempts,
            last_error: e.last_error.clone(),
            receipt_held: e.receipt.is_some(),
            request_id: e.request_id.clone(),
            created_ms: e.created_ms,
            updated_ms: e.updated_ms,
            envelope_removed_ms: None,
            peer_circuit: None,
        }
    }
}

pub async fn list_transfers(State(state): State<Shared>, Query(q): Query<PageQuery>) -> Response {
    transfer_page(
        "/v1/transfers",
        &q,
        |after, limit| state.store.outbox_page(after, limit),
        |e: &OutboxEntry| e.transfer_id,
        |e| transfer_view(&state, e),
    )
}

pub async fn get_transfer(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.store.outbox_get(&id.0) {
        Ok(Some(e)) => Json(transfer_view(&state, &e)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no transfer {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn cancel_transfer(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.store.outbox_get(&id.0) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no transfer {id}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    match control::cancel(&state, &id).await {
        Ok(e) => Json(transfer_view(&state, &e)).into_response(),
        Err(msg) => error(StatusCode::CONFLICT, msg),
    }
}

/// When retention removed a transfer's envelope, if it did (a failed lookup shows none: the
/// view is informational, and fetching reports the real state).
pub fn removed_ms(state: &NodeState, kind: SpoolKind, id: &[u8; 16]) -> Option<u64> {
    state.store.envelope_removed_ms(kind, id).ok().flatten()
}

fn transfer_view(state: &NodeState, e: &OutboxEntry) -> TransferView {
    let mut view = TransferView::from(e);
    view.envelope_removed_ms = removed_ms(state, SpoolKind::Outbox, &e.transfer_id);
    if e.state.is_pending() {
        view.peer_circuit = state.circuits.view(&e.recipient).map(|c| CircuitJson {
            state: "open",
            down_since_ms: c.down_since_ms,
            next_probe_ms: c.next_probe_ms,
            probing: c.probing,
            waiting: c.parked,
        });
    }
    view
}

/// `POST /v1/transfers/{id}/requeue`: a failed transfer goes back to the queue (audited as
/// `requeued`, naming the API token). 409 unless it is failed; 410 once retention removed its
/// envelope (nothing is left to send: submit the record again).
pub async fn requeue(
    State(state): State<Shared>,
    Path(id): Path<String>,
    token: Option<axum::Extension<super::auth::TokenName>>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let by = super::auth::acting(token);
    match control::requeue(&state, &id, &by).await {
        Ok(e) => Json(transfer_view(&state, &e)).into_response(),
        Err(e @ control::RequeueError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ control::RequeueError::NotFailed { .. }) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(
            e @ (control::RequeueError::EnvelopeRemoved { .. }
            | control::RequeueError::EnvelopeMissing { .. }),
        ) => error(StatusCode::GONE, e.to_string()),
        Err(e @ control::RequeueError::Store(_)) => {
            tracing::error!(transfer = %id, error = %e, "requeue failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "local system error; the transfer was not requeued",
            )
        }
    }
}
