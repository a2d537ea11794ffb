//! The local API for the facility's own systems (EMR, doctors' tools, the CLI): JSON over HTTP
//! on a loopback address, authenticated by bearer tokens whose SHA-256 is in the config.
//! Never served to peers. Documented in `deploy/openapi.yaml`.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::QueryRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder};

use gateway_envelope::TransferId;
use gateway_store::{AuditEntry, AuditFilter, InboxEntry, OutboxEntry, SpoolKind};
use policies::consent::{import_fhir_consent, ConsentDirective};
use policies::{Action, Category, Purpose};

use crate::access::{consent_directives, decide, Question};
use crate::audit::{self, event};
use crate::pull::records::{RecordSource, SourceRecord, StoreRecordSource};
use crate::pull::requests::{self, NewRequest};
use crate::receive::inbox::{open_received, FetchError};
use crate::record::{ContentType, PatientRef};
use crate::send::delivery;
use crate::send::outbox::{submit, Accepted, Payload, SubmitError, SubmitRequest};
use crate::state::NodeState;
use crate::trust::{now_ms, now_unix};

/// Payloads up to this size are held in memory while being sealed; larger ones are spilled
/// to a private temp file (deleted once sealed).
const IN_MEMORY_PAYLOAD: usize = 8 * 1024 * 1024;
/// A spilled upload is written to its temp file in batches of this size.
const SPILL_WRITE_BYTES: usize = 1024 * 1024;
/// Largest body the buffered routes (JSON, PUT records, consent import) accept.
const MAX_BUFFERED_BODY: usize = 64 * 1024 * 1024;

type Shared = Arc<NodeState>;

pub async fn serve(state: Arc<NodeState>, listener: TcpListener) {
    let router = router(state.clone());
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
    let cfg = &state.config.local_api;
    let api = Router::new()
        .route("/v1/transfers", post(post_transfer).get(list_transfers))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route("/v1/transfers/{id}/cancel", post(cancel_transfer))
        .route("/v1/inbox", get(list_inbox))
        .route("/v1/inbox/{id}", get(get_inbox))
        .route("/v1/inbox/{id}/payload", get(get_inbox_payload))
        .route("/v1/inbox/{id}/ack", post(ack_inbox))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/consents", post(post_consent).get(list_consents))
        .route("/v1/consents/import", post(import_consent))
        .route("/v1/consents/{id}/revoke", post(revoke_consent))
        .route("/v1/requests", post(post_request).get(list_requests))
        .route("/v1/records/{patient}", put(put_record))
        .route("/v1/policy/check", post(policy_check))
        .route("/v1/policy/reload", post(policy_reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Buffered bodies (JSON, records, consent imports); transfers stream and are bounded
        // by local_api.max_body_bytes in read_payload.
        .layer(DefaultBodyLimit::max(MAX_BUFFERED_BODY));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
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

async fn require_token(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| gateway_envelope::sha256(t.trim().as_bytes()));
    let ok = presented.is_some_and(|hash| {
        state
            .config
            .local_api
            .token_hashes
            .iter()
            .any(|t| ring_eq(&t.sha256, &hash))
    });
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "missing or unknown API token");
    }
    next.run(req).await
}

fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A request problem found while parsing; small, unlike a `Response`, so helpers can return it.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

fn parse_id(id: &str) -> Result<TransferId, BadRequest> {
    id.parse::<TransferId>()
        .map_err(|_| BadRequest("transfer id must be 32 hex characters".to_owned()))
}

fn parse_categories(list: Option<&str>) -> Result<BTreeSet<Category>, BadRequest> {
    let mut out = BTreeSet::new();
    for c in list
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        out.insert(c.parse::<Category>().map_err(|_| {
            BadRequest(format!("unknown data category {c:?}; use hiv-sti, mental-health, substance-use, reproductive-health, genetic or general"))
        })?);
    }
    Ok(out)
}

fn parse_purpose(p: &str) -> Result<Purpose, BadRequest> {
    p.parse::<Purpose>().map_err(|_| {
        BadRequest(
            "unknown purpose; use treatment, payment, operations, research or public-health"
                .to_owned(),
        )
    })
}

// ---- transfers --------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitQuery {
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

/// How much of a refused upload is read before answering (see `post_transfer`).
const REFUSAL_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

async fn drain(body: AxumBody, limit: u64) {
    drain_stream(&mut body.into_data_stream(), limit).await;
}

/// Reads and discards what is left of a body, up to `limit` bytes.
async fn drain_stream(stream: &mut axum::body::BodyDataStream, limit: u64) {
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > limit {
            break;
        }
    }
}

/// How long `wait=receipt` waits before answering 202 with the transfer still in progress.
const WAIT_FOR_RECEIPT: Duration = Duration::from_secs(300);

async fn post_transfer(
    State(state): State<Shared>,
    query: Result<Query<SubmitQuery>, QueryRejection>,
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
    let declared = match content_digest(&headers) {
        Ok(d) => d,
        Err(problem) => {
            drain(body, REFUSAL_DRAIN_BYTES).await;
            return error(StatusCode::BAD_REQUEST, problem);
        }
    };
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
    let payload = match (declared, length) {
        // Length and digest known up front, content not parsed by the gateway, too big to
        // hold: sealed while it is uploaded.
        (Some(digest), Some(len))
            if req.content_type != ContentType::FhirBundle && len > IN_MEMORY_PAYLOAD as u64 =>
        {
            let (tx, chunks) = tokio::sync::mpsc::channel(STREAM_CHANNEL_CHUNKS);
            tokio::spawn(forward_upload(body, tx));
            Payload::Stream {
                chunks,
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
    match submit(&state, req, payload).await {
        Ok(Accepted { id, .. }) if wait => {
            // Register first, then read the state: delivery writes the final state before it
            // hands out the outcome, so one of the two sees it.
            let outcome = state.waiters.register(id.0);
            let settled = match state.store.outbox_get(&id.0) {
                Ok(Some(e)) => match e.state {
                    gateway_store::TransferState::Delivered => Some(true),
                    gateway_store::TransferState::Failed
                    | gateway_store::TransferState::Cancelled => Some(false),
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
            (status, Json(json!({ "transfer_id": id.to_string(), "state": view.map(|v| v.state.to_string()) }))).into_response()
        }
        Ok(Accepted {
            id,
            state: entry_state,
        }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "transfer_id": id.to_string(), "state": entry_state.as_str() })),
        )
            .into_response(),
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

/// Body chunks buffered between a streamed upload and the task sealing it (bounded memory).
const STREAM_CHANNEL_CHUNKS: usize = 8;
/// A streamed upload is passed to the sealing task in pieces of about this size.
const STREAM_BATCH_BYTES: usize = 256 * 1024;

/// The SHA-256 an upload declares in `Content-Digest` (RFC 9530: `sha-256=:<base64>:`, one
/// of possibly several comma-separated algorithms), if any. A header that is present but
/// carries no well-formed sha-256 value is refused: the client asked for a check we could not
/// do.
fn content_digest(headers: &axum::http::HeaderMap) -> Result<Option<[u8; 32]>, &'static str> {
    use base64::Engine as _;
    let Some(value) = headers.get("content-digest") else {
        return Ok(None);
    };
    let refused = || "Content-Digest must carry sha-256=:<base64 of the SHA-256>: (RFC 9530)";
    let text = value.to_str().map_err(|_| refused())?;
    let encoded = text
        .split(',')
        .map(str::trim)
        .find_map(|item| {
            let (algorithm, value) = item.split_once('=')?;
            algorithm
                .trim()
                .eq_ignore_ascii_case("sha-256")
                .then_some(value.trim())
        })
        .and_then(|v| v.strip_prefix(':')?.strip_suffix(':'))
        .ok_or_else(refused)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| refused())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(Some)
        .map_err(|_| refused())
}

/// Feeds a streamed upload to the task sealing it. If that task stops early (a policy denial,
/// a mismatch), a bounded rest of the body is read and discarded so that an HTTP/1.1 client
/// still sending sees the answer instead of a broken pipe.
async fn forward_upload(body: AxumBody, tx: tokio::sync::mpsc::Sender<Result<Bytes, String>>) {
    let mut stream = body.into_data_stream();
    // Body chunks are small (kilobytes); each message wakes the sealing thread, so they are
    // passed on in batches.
    let mut batch = BytesMut::new();
    loop {
        let (item, done) = match stream.next().await {
            Some(Ok(chunk)) => {
                batch.extend_from_slice(&chunk);
                if batch.len() < STREAM_BATCH_BYTES {
                    continue;
                }
                (Ok(batch.split().freeze()), false)
            }
            Some(Err(_)) => (Err("upload interrupted".to_owned()), true),
            None if batch.is_empty() => return,
            None => (Ok(batch.split().freeze()), true),
        };
        if tx.send(item).await.is_err() {
            drain_stream(&mut stream, REFUSAL_DRAIN_BYTES).await;
            return;
        }
        if done {
            return;
        }
    }
}

/// Reads the request body, in memory when small, else into a 0600 temp file in the data dir,
/// hashing as it goes; refuses bodies over the configured limit.
async fn read_payload(state: &NodeState, body: AxumBody) -> Result<Payload, Response> {
    let max = state.config.local_api.max_body_bytes;
    let mut stream = body.into_data_stream();
    let mut mem = BytesMut::new();
    let mut file: Option<Spill> = None;
    let mut digest = gateway_envelope::Sha256::new();
    let mut total: u64 = 0;
    let local = |e: std::io::Error| {
        tracing::error!(error = %e, "spilling an upload failed");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "local system error while reading the upload",
        )
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| error(StatusCode::BAD_REQUEST, "upload interrupted"))?;
        total += chunk.len() as u64;
        if total > max {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {max} bytes"),
            ));
        }
        digest.update(&chunk);
        mem.extend_from_slice(&chunk);
        if let Some(spill) = file.as_mut() {
            // Written in batches: each block_in_place hands this worker's queue to another
            // thread, too costly for every body chunk of a large upload.
            if mem.len() >= SPILL_WRITE_BYTES {
                tokio::task::block_in_place(|| spill.file.write_all(&mem)).map_err(local)?;
                mem.clear();
            }
        } else if mem.len() > IN_MEMORY_PAYLOAD {
            let dir = state.config.data_dir.join("uploads");
            let (f, path) =
                tokio::task::block_in_place(|| new_private_file(&dir)).map_err(local)?;
            // From here on, any early return (refusal, I/O error, client gone) removes it.
            let spill = file.insert(Spill { file: f, path });
            tokio::task::block_in_place(|| spill.file.write_all(&mem)).map_err(local)?;
            mem.clear();
        }
    }
    if let Some(spill) = file.as_mut() {
        tokio::task::block_in_place(|| spill.file.write_all(&mem)).map_err(local)?;
        mem.clear();
    }
    let digest = digest.finish();
    Ok(match file {
        Some(spill) => {
            let path = spill.into_path();
            Payload::File {
                path,
                len: total,
                digest,
            }
        }
        None => Payload::Memory {
            bytes: mem.freeze(),
            digest,
        },
    })
}

/// An upload being spilled to disk. It holds plaintext, so it is removed when dropped (an upload
/// refused, cut off or abandoned by its client) unless handed over as a `Payload`, which then
/// owns its removal.
struct Spill {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl Spill {
    fn into_path(mut self) -> std::path::PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn new_private_file(dir: &std::path::Path) -> std::io::Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let id = TransferId::new_random().map_err(std::io::Error::other)?;
    let name = format!("upload-{id}");
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((file, path))
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
        }
    }
}

async fn list_transfers(State(state): State<Shared>, Query(q): Query<PageQuery>) -> Response {
    transfer_page(
        "/v1/transfers",
        &q,
        |after, limit| state.store.outbox_page(after, limit),
        |e: &OutboxEntry| e.transfer_id,
        |e| transfer_view(&state, e),
    )
}

async fn get_transfer(State(state): State<Shared>, Path(id): Path<String>) -> Response {
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

async fn cancel_transfer(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.store.outbox_get(&id.0) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no transfer {id}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    match delivery::cancel(&state, &id).await {
        Ok(e) => Json(transfer_view(&state, &e)).into_response(),
        Err(msg) => error(StatusCode::CONFLICT, msg),
    }
}

/// When retention removed a transfer's envelope, if it did (a failed lookup shows none: the
/// view is informational, and fetching reports the real state).
fn removed_ms(state: &NodeState, kind: SpoolKind, id: &[u8; 16]) -> Option<u64> {
    state.store.envelope_removed_ms(kind, id).ok().flatten()
}

fn transfer_view(state: &NodeState, e: &OutboxEntry) -> TransferView {
    let mut view = TransferView::from(e);
    view.envelope_removed_ms = removed_ms(state, SpoolKind::Outbox, &e.transfer_id);
    view
}

// ---- inbox ------------------------------------------------------------------------------------

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

async fn list_inbox(State(state): State<Shared>, Query(q): Query<PageQuery>) -> Response {
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

async fn get_inbox(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match open_received(&state, id).await {
        Ok((entry, meta, _rx)) => Json(json!({
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
        .into_response(),
        Err(e) => fetch_error(e),
    }
}

async fn get_inbox_payload(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match open_received(&state, id).await {
        Ok((entry, meta, rx)) => {
            let mut rec = audit::record(event::FETCHED, "decrypted");
            rec.transfer_id = Some(id.0);
            rec.peer = Some(entry.sender.clone());
            rec.patient_ref = Some(meta.patient.clone());
            rec.purpose = Some(meta.purpose.clone());
            let _ = audit::append(&state.store, rec);
            let _ = state.store.commit().await;
            let stream = tokio_stream_from(rx);
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, meta.content_type)
                .header(header::CONTENT_LENGTH, entry.payload_len)
                .body(AxumBody::from_stream(stream))
                .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
        }
        Err(e) => fetch_error(e),
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn ack_inbox(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match state.store.inbox_ack(&id.0, now_ms()) {
        Ok(entry) => {
            let mut rec = audit::record(event::ACKED, "acknowledged");
            rec.transfer_id = Some(id.0);
            rec.peer = Some(entry.sender.clone());
            let _ = audit::append(&state.store, rec);
            let _ = state.store.commit().await;
            Json(inbox_view(&state, &entry)).into_response()
        }
        Err(gateway_store::StoreError::NotFound { .. }) => {
            error(StatusCode::NOT_FOUND, format!("no received transfer {id}"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

// ---- listings, a page at a time ---------------------------------------------------------------

/// Entries a listing returns when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 1000;
/// The largest `limit` a listing accepts: a page is built in memory, and a node's outbox,
/// inbox and audit log grow without bound.
pub const MAX_PAGE: usize = 10_000;

fn page_limit(limit: Option<usize>) -> Result<usize, BadRequest> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}

/// The transfer listings' query: `after` is the last transfer id of the previous page.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

impl PageQuery {
    fn parse(&self) -> Result<(Option<TransferId>, usize), BadRequest> {
        let after = self.after.as_deref().map(parse_id).transpose()?;
        Ok((after, page_limit(self.limit)?))
    }

    fn next(after: TransferId, limit: usize) -> PageQuery {
        PageQuery {
            after: Some(after.to_string()),
            limit: Some(limit),
        }
    }
}

/// One page of a transfer listing (outbox or inbox): `read` takes the cursor and the limit,
/// `id_of` gives an entry's id (the next page's cursor), `view` what is shown of it.
fn transfer_page<E, V: Serialize>(
    path: &str,
    q: &PageQuery,
    read: impl FnOnce(Option<&[u8; 16]>, usize) -> Result<Vec<E>, gateway_store::StoreError>,
    id_of: fn(&E) -> [u8; 16],
    view: impl Fn(&E) -> V,
) -> Response {
    let (after, limit) = match q.parse() {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match read(after.map(|t| t.0).as_ref(), limit) {
        Ok(entries) => {
            let next = next_after(&entries, limit, |e| {
                PageQuery::next(TransferId(id_of(e)), limit)
            });
            paged(path, next, entries.iter().map(view).collect::<Vec<_>>())
        }
        Err(gateway_store::StoreError::NotFound { id, .. }) => error(
            StatusCode::NOT_FOUND,
            format!("after: no transfer {id} in this listing"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A full page may have a successor: the query of the next one, from the page's last entry.
fn next_after<T, C>(entries: &[T], limit: usize, cursor: impl FnOnce(&T) -> C) -> Option<C> {
    if entries.len() < limit {
        return None;
    }
    entries.last().map(cursor)
}

/// A page as a JSON array, with an RFC 8288 `Link: <…>; rel="next"` header when there may be
/// more (the array stays the whole body, so clients that read one page are unchanged).
fn paged<Q: Serialize, T: Serialize>(path: &str, next: Option<Q>, items: Vec<T>) -> Response {
    let mut response = Json(items).into_response();
    let link = next
        .and_then(|q| serde_urlencoded::to_string(q).ok())
        .and_then(|q| header::HeaderValue::from_str(&format!("<{path}?{q}>; rel=\"next\"")).ok());
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

// ---- audit ------------------------------------------------------------------------------------

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
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

async fn list_audit(State(state): State<Shared>, Query(q): Query<AuditQuery>) -> Response {
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

async fn verify_audit(State(state): State<Shared>) -> Response {
    match tokio::task::block_in_place(|| state.store.audit_verify()) {
        Ok(n) => Json(json!({ "ok": true, "entries": n })).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({ "ok": false, "error": e.to_string() })),
        )
            .into_response(),
    }
}

// ---- consent ----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    pub patient: String,
    /// "permit" or "deny"
    pub effect: String,
    /// Facility ids, or ["all"].
    pub facilities: Vec<String>,
    pub purposes: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    pub valid_until: Option<i64>,
    pub recorded_by: String,
}

async fn post_consent(State(state): State<Shared>, Json(input): Json<ConsentInput>) -> Response {
    let directive = match directive_from_input(&input) {
        Ok(d) => d,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    match store_directive(&state, &directive, "recorded").await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({ "directive_id": directive.id })),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn directive_from_input(input: &ConsentInput) -> Result<ConsentDirective, String> {
    use policies::consent::{Effect, Scope};
    PatientRef::parse(&input.patient).map_err(|e| e.to_string())?;
    let effect = match input.effect.as_str() {
        "permit" | "grant" => Effect::Permit,
        "deny" => Effect::Deny,
        _ => return Err("effect must be permit or deny".to_owned()),
    };
    let scope = if input.facilities.iter().any(|f| f == "all") {
        Scope::AllFederation
    } else if input.facilities.is_empty() {
        return Err("name at least one facility, or all".to_owned());
    } else {
        for f in &input.facilities {
            f.parse::<pki_tools::FacilityId>()
                .map_err(|_| format!("{f:?} is not a facility id"))?;
        }
        Scope::Facilities(input.facilities.clone())
    };
    let purposes = input
        .purposes
        .iter()
        .map(|p| {
            p.parse::<Purpose>()
                .map_err(|_| format!("unknown purpose {p:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let categories = input
        .categories
        .iter()
        .map(|c| {
            c.parse::<Category>()
                .map_err(|_| format!("unknown data category {c:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ConsentDirective {
        id: format!(
            "cd-{}",
            TransferId::new_random().map_err(|e| e.to_string())?
        ),
        patient: input.patient.clone(),
        effect,
        scope,
        purposes,
        categories,
        valid_from: Some(now_unix()),
        valid_until: input.valid_until,
        recorded_by: input.recorded_by.clone(),
        recorded_at: now_unix(),
        revoked_at: None,
        source: None,
        emergency_only: false,
    })
}

async fn store_directive(
    state: &NodeState,
    d: &ConsentDirective,
    what: &str,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(d).map_err(|e| e.to_string())?;
    state
        .store
        .consent_put(&d.patient, &d.id, &bytes)
        .map_err(|e| e.to_string())?;
    let mut rec = audit::record(event::CONSENT, what);
    rec.patient_ref = Some(d.patient.clone());
    rec.clinician = Some(d.recorded_by.clone());
    rec.reason = Some(format!("directive {}", d.id));
    audit::append(&state.store, rec).map_err(|e| e.to_string())?;
    state.store.commit().await.map_err(|e| e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatientQuery {
    patient: String,
}

async fn list_consents(State(state): State<Shared>, Query(q): Query<PatientQuery>) -> Response {
    match consent_directives(&state, &q.patient) {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeInput {
    recorded_by: Option<String>,
}

async fn revoke_consent(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Option<Json<RevokeInput>>,
) -> Response {
    let found = match state.store.consent_get(&id) {
        Ok(Some((_, bytes))) => bytes,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no consent directive {id}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Ok(mut directive) = serde_json::from_slice::<ConsentDirective>(&found) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored directive unreadable",
        );
    };
    if directive.revoked_at.is_some() {
        return error(
            StatusCode::CONFLICT,
            format!("directive {id} is already revoked"),
        );
    }
    directive.revoked_at = Some(now_unix());
    if let Some(Json(RevokeInput {
        recorded_by: Some(by),
    })) = body
    {
        directive.recorded_by = by;
    }
    match store_directive(&state, &directive, "revoked").await {
        Ok(()) => Json(json!({ "directive_id": id, "revoked": true })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn import_consent(State(state): State<Shared>, body: Bytes) -> Response {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    match import_fhir_consent(&value, "fhir-import", now_unix()) {
        Ok(directives) => {
            let mut ids = Vec::new();
            for d in &directives {
                if let Err(e) = store_directive(&state, d, "imported").await {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, e);
                }
                ids.push(d.id.clone());
            }
            (StatusCode::CREATED, Json(json!({ "imported": ids }))).into_response()
        }
        Err(refusal) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("consent not imported: {}", refusal.reason),
        ),
    }
}

// ---- requests, records, policy -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestInput {
    from: String,
    patient: String,
    purpose: String,
    clinician: String,
    clinician_role: Option<String>,
    #[serde(default)]
    categories: Vec<String>,
    break_glass_reason: Option<String>,
}

async fn post_request(State(state): State<Shared>, Json(input): Json<RequestInput>) -> Response {
    let patient = match PatientRef::parse(&input.patient) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let purpose = match parse_purpose(&input.purpose) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let categories = match parse_categories(Some(&input.categories.join(","))) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let req = NewRequest {
        from: input.from,
        patient,
        purpose,
        clinician: input.clinician,
        clinician_role: input.clinician_role,
        categories,
        break_glass_reason: input.break_glass_reason,
    };
    match requests::send(&state, req).await {
        Ok(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn list_requests(State(state): State<Shared>) -> Response {
    match requests::list(&state) {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordQuery {
    content_type: Option<String>,
}

async fn put_record(
    State(state): State<Shared>,
    Path(patient): Path<String>,
    Query(q): Query<RecordQuery>,
    body: Bytes,
) -> Response {
    let patient_ref = match PatientRef::parse(&patient) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let content_type = match ContentType::parse(q.content_type.as_deref().unwrap_or("fhir")) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Err(e) =
        crate::record::check_record(&content_type, &patient_ref, &BTreeSet::new(), Some(&body))
    {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let source = StoreRecordSource::new(state.clone());
    let record = SourceRecord {
        content_type,
        payload: body,
    };
    match tokio::task::block_in_place(|| source.put(patient_ref.reveal(), &record)) {
        Ok(()) => {
            let _ = state.store.commit().await;
            (StatusCode::CREATED, Json(json!({ "stored": true }))).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCheckInput {
    /// "send" (to the facility) or "receive"/"request" (from it).
    pub direction: String,
    pub facility: String,
    pub patient: String,
    pub purpose: String,
    #[serde(default)]
    pub categories: Vec<String>,
    pub clinician_role: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    pub content_type: Option<String>,
}

async fn policy_check(
    State(state): State<Shared>,
    Json(input): Json<PolicyCheckInput>,
) -> Response {
    let trust = state.trust();
    let Some(peer) = trust.peer_by_str(&input.facility) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "facility {} is not in the federation directory",
                input.facility
            ),
        );
    };
    let purpose = match parse_purpose(&input.purpose) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let mut categories = match parse_categories(Some(&input.categories.join(","))) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if categories.is_empty() {
        categories.insert(Category::General);
    }
    // Ask exactly what the transfer paths ask: an inbound break-glass record is a receive with
    // the flag (this node is the recipient); only outbound break-glass is the breakGlass action.
    let action = match (input.direction.as_str(), input.break_glass) {
        ("receive", _) => Action::Receive,
        ("send" | "request", true) => Action::BreakGlass,
        ("send", false) => Action::Send,
        ("request", false) => Action::Request,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "direction must be send, receive or request",
            )
        }
    };
    let content_type = input
        .content_type
        .unwrap_or_else(|| "application/fhir+json".to_owned());
    let (decision, _) = decide(
        &state,
        &Question {
            action,
            counterparty: &peer,
            patient: &input.patient,
            categories: &categories,
            content_type: &content_type,
            purpose,
            clinician_role: input.clinician_role.as_deref(),
            break_glass: input.break_glass,
            asserted: None,
        },
    );
    Json(json!({
        "allowed": decision.allowed,
        "decision": if decision.allowed { "permit" } else { "deny" },
        "policy_ids": decision.policy_ids,
        "reason": decision.reason,
        "errors": decision.errors,
        "categories": categories.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn policy_reload(State(state): State<Shared>) -> Response {
    match state.policy.reload_now() {
        Ok(()) => {
            Json(json!({ "reloaded": true, "policy_ids": state.policy.engine().policy_ids() }))
                .into_response()
        }
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("policy set refused, previous set stays active: {e}"),
        ),
    }
}
