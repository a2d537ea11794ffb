//! `/v1/audit`: list the hash-chained audit log (filtered, paged) and verify the chain.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use gateway_envelope::TransferId;
use gateway_store::{AuditEntry, AuditFilter, AuditRecord};

use crate::audit::event;

use super::auth::{acting, TokenName};
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
    /// The listing's snapshot: entries after this seq are left out, so a listing paged to
    /// its end ends, although every page request is itself appended to the log. Set by the
    /// first page (to the seq of its own `audit-read` entry) and carried in `Link: next`.
    until: Option<u64>,
    limit: Option<usize>,
    /// Set by `gateway audit export`: the read is recorded as an export in that format, so an
    /// officer reviewing the log sees what left the node as a file, not just a listing.
    export: Option<ExportLabel>,
}

/// The formats `gateway audit export` writes (a label of the audit-read entry only).
#[derive(Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportLabel {
    Fhir,
    Jsonl,
    Csv,
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

/// Makes the audit entry of a read durable before anything is served; a read the log cannot
/// record is refused. Returns the entry's seq.
pub(super) async fn record_read_durably(state: &Shared, rec: AuditRecord) -> Result<u64, Response> {
    crate::audit::append_durable(&state.store, rec)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit write failed; read refused");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the audit log could not record this read; nothing was served",
            )
        })
}

/// Records a read of the audit log itself (who, which filter).
async fn record_read(
    state: &Shared,
    token: Option<axum::Extension<TokenName>>,
    what: String,
    patient: Option<String>,
) -> Result<u64, Response> {
    let mut rec = crate::audit::record(event::AUDIT_READ, "read");
    rec.reason = Some(format!("{what} by {}", acting(token)));
    rec.patient_ref = patient;
    record_read_durably(state, rec).await
}

pub async fn list_audit(
    State(state): State<Shared>,
    Query(q): Query<AuditQuery>,
    token: Option<axum::Extension<TokenName>>,
) -> Response {
    let transfer_id = match q.transfer.as_deref().map(parse_id).transpose() {
        Ok(t) => t.map(|t| t.0),
        Err(r) => return r.into_response(),
    };
    let limit = match page_limit(q.limit) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let mut what = match q.export {
        None => "audit log listed",
        Some(ExportLabel::Fhir) => "audit log exported (FHIR AuditEvent)",
        Some(ExportLabel::Jsonl) => "audit log exported (JSON lines)",
        Some(ExportLabel::Csv) => "audit log exported (CSV)",
    }
    .to_owned();
    if let Some(t) = &q.transfer {
        what.push_str(&format!(", transfer {t}"));
    }
    if q.patient.is_some() {
        what.push_str(", by patient");
    }
    if q.break_glass == Some(true) {
        what.push_str(", break-glass only");
    }
    if let Some(since) = q.since {
        what.push_str(&format!(", after #{since}"));
    }
    let read_seq = match record_read(&state, token, what, q.patient.clone()).await {
        Ok(seq) => seq,
        Err(refused) => return refused,
    };
    let until = q.until.unwrap_or(read_seq);
    let filter = AuditFilter {
        patient: q.patient.clone(),
        transfer_id,
        break_glass_only: q.break_glass.unwrap_or(false),
        since_seq: q.since,
        limit: Some(limit),
    };
    match state.store.audit_list(&filter) {
        Ok(mut entries) => {
            let full = entries.len();
            entries.retain(|e| e.seq <= until);
            let next = if entries.len() < full {
                None
            } else {
                next_after(&entries, limit, |e| AuditQuery {
                    since: Some(e.seq),
                    until: Some(until),
                    limit: Some(limit),
                    ..q
                })
            };
            paged(
                "/v1/audit",
                next,
                entries.iter().map(AuditView::from).collect::<Vec<_>>(),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// Also ask each witness for its view of this log (`audit verify --with-peers`).
    with_peers: Option<bool>,
}

pub async fn verify_audit(
    State(state): State<Shared>,
    Query(q): Query<VerifyQuery>,
    token: Option<axum::Extension<TokenName>>,
) -> Response {
    if let Err(refused) = record_read(&state, token, "audit chain verified".to_owned(), None).await
    {
        return refused;
    }
    let refused = |error: String| {
        (
            StatusCode::CONFLICT,
            Json(json!({ "ok": false, "error": error })),
        )
            .into_response()
    };
    // The kept checkpoints' sizes first, so that each is within the head the walk reads; one
    // walk then checks the chain and recomputes the tree with its heads at those sizes.
    let sizes = match crate::evidence::verify::checkpoint_sizes(&state) {
        Ok(sizes) => sizes,
        Err(e) => return refused(e),
    };
    let verified = tokio::task::block_in_place(|| state.store.audit_verify_with_tree(&sizes));
    state
        .metrics
        .audit_verified(verified.is_ok(), crate::trust::now_unix());
    let tree = match verified {
        Ok(tree) => tree,
        Err(e) => return refused(e.to_string()),
    };
    // The chain holds; then the tree, the checkpoints and the witnesses' cosignatures.
    let check = match tokio::task::block_in_place(|| {
        crate::evidence::verify::check_log(&state, &sizes, &tree)
    }) {
        Ok(check) => check,
        Err(e) => return refused(e),
    };
    let peers = if q.with_peers == Some(true) {
        let views = crate::evidence::witness::views(&state).await;
        match tokio::task::block_in_place(|| {
            crate::evidence::verify::check_views(&state, &views, &tree.roots)
        }) {
            Ok(lines) => Some(lines),
            Err(e) => return refused(e),
        }
    } else {
        None
    };
    Json(json!({
        "ok": true,
        "entries": tree.entries,
        "archived_through": check.floor_seq,
        "archived_hash": b64(&check.floor_hash),
        "checkpoint_size": check.checkpoint_size,
        "witnesses": check.witnesses,
        "peers": peers,
    }))
    .into_response()
}

// ---- the Merkle tree and its signed checkpoints (hashes only: no read of patient data) ------

fn b64(hash: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hash)
}

fn tree_error(e: gateway_store::StoreError) -> Response {
    match e {
        gateway_store::StoreError::BeyondLog { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeQuery {
    size: Option<u64>,
}

/// `GET /v1/audit/tree[?size=N]`: the RFC 9162 tree head of the log (or of its first N
/// entries).
pub async fn tree_head(State(state): State<Shared>, Query(q): Query<TreeQuery>) -> Response {
    let head = match q.size {
        None => state.store.audit_tree_head(),
        Some(size) => state.store.audit_tree_root(size).map(|root| (size, root)),
    };
    match head {
        Ok((size, root)) => Json(json!({ "size": size, "root_hash": b64(&root) })).into_response(),
        Err(e) => tree_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    seq: u64,
    size: Option<u64>,
}

/// `GET /v1/audit/tree/inclusion?seq=S[&size=N]`: the audit path of entry S (leaf S - 1) in
/// the tree of N entries (default: the whole log).
pub async fn inclusion(State(state): State<Shared>, Query(q): Query<InclusionQuery>) -> Response {
    let size = q.size.unwrap_or_else(|| state.store.audit_len());
    let proof = state
        .store
        .audit_inclusion_proof(q.seq, size)
        .and_then(|(leaf, path)| Ok((leaf, path, state.store.audit_tree_root(size)?)));
    match proof {
        Ok((leaf, path, root)) => Json(json!({
            "seq": q.seq,
            "leaf_index": q.seq - 1,
            "tree_size": size,
            "leaf_hash": b64(&leaf),
            "path": path.iter().map(b64).collect::<Vec<_>>(),
            "root_hash": b64(&root),
        }))
        .into_response(),
        Err(e) => tree_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    first: u64,
    second: Option<u64>,
}

/// `GET /v1/audit/tree/consistency?first=M[&second=N]`: the proof that the tree of M entries
/// is a prefix of the tree of N (default: the whole log).
pub async fn consistency(
    State(state): State<Shared>,
    Query(q): Query<ConsistencyQuery>,
) -> Response {
    let second = q.second.unwrap_or_else(|| state.store.audit_len());
    match state.store.audit_consistency_proof(q.first, second) {
        Ok(proof) => Json(json!({
            "first": q.first,
            "second": second,
            "proof": proof.iter().map(b64).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => tree_error(e),
    }
}

fn note_response(note: Vec<u8>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        note,
    )
        .into_response()
}

/// A kept checkpoint with the cosignatures its witnesses gave it appended: more signature
/// lines of the same signed note (C2SP tlog-cosignature).
fn with_cosignatures(state: &Shared, size: u64, mut note: Vec<u8>) -> Response {
    match state.store.cosignatures(size) {
        Ok(lines) => {
            for line in lines {
                note.extend_from_slice(&line);
            }
            note_response(note)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/audit/checkpoint[?size=N]`: the latest signed checkpoint (or the one of size N),
/// as the C2SP signed note itself, with its witnesses' cosignatures.
pub async fn get_checkpoint(State(state): State<Shared>, Query(q): Query<TreeQuery>) -> Response {
    let found = match q.size {
        Some(size) => state
            .store
            .checkpoint_get(size)
            .map(|note| note.map(|n| (size, n))),
        None => state.store.checkpoint_latest(),
    };
    match found {
        Ok(Some((size, note))) => with_cosignatures(&state, size, note),
        Ok(None) => error(StatusCode::NOT_FOUND, "no checkpoint of that size"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /v1/audit/checkpoint`: signs a checkpoint now (if the log grew since the last one),
/// submits it to the witnesses, and returns the latest with the cosignatures received.
pub async fn make_checkpoint(State(state): State<Shared>) -> Response {
    if let Err(e) = tokio::task::block_in_place(|| crate::evidence::checkpoint_if_grown(&state)) {
        tracing::error!(error = %e, "audit checkpoint not made");
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    crate::evidence::witness::submit_all(&state).await;
    match state.store.checkpoint_latest() {
        Ok(Some((size, note))) => with_cosignatures(&state, size, note),
        Ok(None) => error(StatusCode::NOT_FOUND, "the audit log is empty"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/witness`: the other facilities' logs this node witnesses (latest size and root),
/// and the checkpoints it refused as contradicting them.
pub async fn witnessed(State(state): State<Shared>) -> Response {
    let logs = match state.store.witnessed_all() {
        Ok(logs) => logs,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let conflicts = match state.store.witness_conflicts() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    Json(json!({
        "logs": logs.iter().map(|(origin, w)| json!({
            "origin": origin, "size": w.size, "root_hash": b64(&w.root),
        })).collect::<Vec<_>>(),
        "conflicts": conflicts.iter().map(|c| json!({
            "time_ms": c.time_ms, "origin": c.origin, "reason": c.reason,
            "note": String::from_utf8_lossy(&c.note),
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRequest {
    /// Entries written before this time (unix ms) are archived.
    before_ms: u64,
}

/// `POST /v1/audit/archive {"before_ms"}`: archives the live entries written before then into
/// a signed archive (kept in the node's archive directory), removes them from the store, and
/// returns the archive file.
pub async fn archive(State(state): State<Shared>, Json(req): Json<ArchiveRequest>) -> Response {
    use crate::evidence::archive::{archive_before, ArchiveError};
    match archive_before(&state, req.before_ms).await {
        Ok(done) => (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/json".to_owned(),
                ),
                (
                    axum::http::HeaderName::from_static("x-archive-range"),
                    format!("{}-{}", done.first_seq, done.last_seq),
                ),
            ],
            done.bytes,
        )
            .into_response(),
        Err(e @ ArchiveError::Nothing) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ArchiveError::Unsent { .. }) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => {
            tracing::error!(error = %e, "audit archive not made");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
