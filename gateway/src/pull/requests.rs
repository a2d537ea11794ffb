//! Doctor-initiated record requests (pull).
//!
//! The requesting node sends a signed request over mTLS; the holding node checks the signature
//! and the TLS identity agree, authorizes the request (policy + consent), takes the record from
//! its record source and sends it back as a normal transfer tagged with the request id. A denial
//! comes back at once with a reason the doctor can act on, without protected details.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use gateway_envelope::{sign_message, verify_message, TransferId};
use policies::{Action, Category, Purpose};

use crate::access::{decide, Question};
use crate::audit::{self, event};
use crate::pull::records::{RecordSource, StoreRecordSource};
use crate::record::{break_glass_window_ok, inspect, Content, PatientRef, BREAK_GLASS_WINDOW_MS};
use crate::send::outbox::{decision_reason, submit, Accepted, Payload, SubmitRequest};
use crate::state::NodeState;
use crate::trust::now_ms;
use crate::trust::transport::PeerIdentity;
use crate::trust::transport::{text_response, PeerResponse};

pub const REQUEST_PATH: &str = "/v1/requests";
const REQUEST_DOMAIN: &str = "healthfed/record-request/1";
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Serializes read-modify-write updates of stored request views (the answer to a request and
/// the arrival of its record are handled by different tasks).
static VIEW_UPDATE: Mutex<()> = Mutex::new(());
/// A pull request not answered by a transfer within this time is shown as expired.
const REQUEST_LIFETIME_MS: u64 = 24 * 3600 * 1000;
/// How far a request's creation time may lie from the holder's clock, either way. A requester
/// posts a request once, the moment it is made (it is never queued or retried), so anything
/// older is a capture being replayed; ten minutes leaves room for clocks that drift between
/// NTP corrections. Ids are remembered this long, and refused a second time.
pub const REQUEST_WINDOW_MS: u64 = 10 * 60 * 1000;
/// The longest request id accepted (the node's own ids are 32 hex digits).
const MAX_REQUEST_ID: usize = 64;

/// The signed body of a request (postcard inside `sign_message`).
#[derive(Serialize, Deserialize, Clone)]
struct WireRequest {
    request_id: String,
    requester: String,
    holder: String,
    patient: String,
    purpose: String,
    categories: Vec<String>,
    clinician: String,
    clinician_role: Option<String>,
    break_glass_reason: Option<String>,
    break_glass_until_ms: Option<u64>,
    created_at_ms: u64,
}

/// The holder's answer.
#[derive(Serialize, Deserialize, Clone)]
pub struct WireAnswer {
    pub status: String,
    pub reason: Option<String>,
    pub transfer_id: Option<String>,
    /// The holder's determining policies, so the requester's audit log shows the decision
    /// too (absent in answers from older nodes).
    #[serde(default)]
    pub policy_ids: Vec<String>,
}

/// A request as the requesting doctor sees it (`gateway requests`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RequestView {
    pub id: String,
    pub from: String,
    pub patient: String,
    pub purpose: String,
    pub clinician: String,
    pub break_glass: bool,
    /// pending, fulfilled, denied, failed, expired
    pub state: String,
    pub reason: Option<String>,
    pub transfer_id: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

pub struct NewRequest {
    pub from: String,
    pub patient: PatientRef,
    pub purpose: Purpose,
    pub clinician: String,
    pub clinician_role: Option<String>,
    pub categories: BTreeSet<Category>,
    pub break_glass_reason: Option<String>,
}

fn store_key(id: &str) -> String {
    format!("out:{id}")
}

fn save(state: &NodeState, view: &RequestView) -> Result<(), String> {
    let bytes = serde_json::to_vec(view).map_err(|e| e.to_string())?;
    state
        .store
        .request_put(&store_key(&view.id), &bytes)
        .map_err(|e| e.to_string())
}

pub fn list(state: &NodeState) -> Result<Vec<RequestView>, String> {
    let now = now_ms();
    let mut out: Vec<RequestView> = state
        .store
        .request_list()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(k, _)| k.starts_with("out:"))
        .filter_map(|(_, v)| serde_json::from_slice::<RequestView>(&v).ok())
        .map(|mut v| {
            if v.state == "pending" && now.saturating_sub(v.created_ms) > REQUEST_LIFETIME_MS {
                v.state = "expired".to_owned();
            }
            v
        })
        .collect();
    out.sort_by_key(|v| std::cmp::Reverse(v.created_ms));
    Ok(out)
}

/// Called by the inbox when a transfer answering one of our requests arrives.
pub fn mark_fulfilled(state: &NodeState, request_id: &str, transfer: TransferId) {
    let _guard = VIEW_UPDATE.lock().unwrap_or_else(PoisonError::into_inner);
    let Ok(Some(bytes)) = state.store.request_get(&store_key(request_id)) else {
        return;
    };
    let Ok(mut view) = serde_json::from_slice::<RequestView>(&bytes) else {
        return;
    };
    view.state = "fulfilled".to_owned();
    view.transfer_id = Some(transfer.to_string());
    view.reason = None;
    view.updated_ms = now_ms();
    let _ = save(state, &view);
}

/// Sends a request to the holding facility and records the answer.
pub async fn send(state: &Arc<NodeState>, req: NewRequest) -> Result<RequestView, String> {
    let trust = state.trust();
    let holder = trust
        .peer_by_str(&req.from)
        .filter(|p| p.active)
        .ok_or_else(|| {
            format!(
                "facility {} is not active in the federation directory",
                req.from
            )
        })?;
    let id = TransferId::new_random()
        .map_err(|e| e.to_string())?
        .to_string();
    let now = now_ms();
    let wire = WireRequest {
        request_id: id.clone(),
        requester: state.me().to_string(),
        holder: holder.id.to_string(),
        patient: req.patient.reveal().to_owned(),
        purpose: req.purpose.to_string(),
        categories: req.categories.iter().map(ToString::to_string).collect(),
        clinician: req.clinician.clone(),
        clinician_role: req.clinician_role.clone(),
        break_glass_reason: req.break_glass_reason.clone(),
        break_glass_until_ms: req
            .break_glass_reason
            .is_some()
            .then(|| now + BREAK_GLASS_WINDOW_MS),
        created_at_ms: now,
    };
    let mut view = RequestView {
        id: id.clone(),
        from: holder.id.to_string(),
        patient: wire.patient.clone(),
        purpose: wire.purpose.clone(),
        clinician: wire.clinician.clone(),
        break_glass: wire.break_glass_reason.is_some(),
        state: "pending".to_owned(),
        reason: None,
        transfer_id: None,
        created_ms: now,
        updated_ms: now,
    };
    save(state, &view)?;
    let mut rec = audit::record(event::REQUEST_SENT, "sent");
    rec.peer = Some(holder.id.to_string());
    rec.patient_ref = Some(wire.patient.clone());
    rec.purpose = Some(wire.purpose.clone());
    rec.clinician = Some(wire.clinician.clone());
    rec.break_glass = view.break_glass;
    rec.reason = Some(format!("request {id}"));
    audit::append(&state.store, rec).map_err(|e| e.to_string())?;
    state.store.commit().await.map_err(|e| e.to_string())?;

    let body = postcard::to_allocvec(&wire).map_err(|e| e.to_string())?;
    let signed = sign_message(&state.identity().signing, REQUEST_DOMAIN, &body);
    let answer = post_request(state, &holder, signed).await;
    view.updated_ms = now_ms();
    let mut holder_policy_ids = Vec::new();
    match answer {
        Ok((status, answer)) => {
            holder_policy_ids.clone_from(&answer.policy_ids);
            view.reason = answer.reason.clone();
            view.transfer_id = answer.transfer_id.clone();
            view.state = match (status, answer.status.as_str()) {
                (StatusCode::ACCEPTED, _) => "pending".to_owned(),
                (_, "denied") => "denied".to_owned(),
                _ => "failed".to_owned(),
            };
        }
        Err(e) => {
            view.state = "failed".to_owned();
            view.reason = Some(e);
        }
    }
    {
        // The record may arrive before this answer (the transfer races it) and the inbox marks
        // the request fulfilled from another task: read and write under the same lock as
        // `mark_fulfilled`, so that neither update overwrites the other.
        let _guard = VIEW_UPDATE.lock().unwrap_or_else(PoisonError::into_inner);
        if view.state == "pending" {
            if let Ok(Some(b)) = state.store.request_get(&store_key(&id)) {
                if let Ok(stored) = serde_json::from_slice::<RequestView>(&b) {
                    if stored.state == "fulfilled" {
                        view.state = stored.state;
                        view.transfer_id = stored.transfer_id;
                    }
                }
            }
        }
        save(state, &view)?;
    }
    let mut rec = audit::record(event::REQUEST_ANSWERED, &view.state);
    rec.peer = Some(holder.id.to_string());
    rec.patient_ref = Some(view.patient.clone());
    rec.purpose = Some(view.purpose.clone());
    rec.clinician = Some(view.clinician.clone());
    rec.break_glass = view.break_glass;
    rec.policy_ids = holder_policy_ids;
    rec.reason = Some(format!(
        "request {id}: {}",
        view.reason.clone().unwrap_or_else(|| "accepted".to_owned())
    ));
    audit::append(&state.store, rec).map_err(|e| e.to_string())?;
    state.store.commit().await.map_err(|e| e.to_string())?;
    Ok(view)
}

async fn post_request(
    state: &NodeState,
    holder: &crate::trust::Peer,
    signed: Vec<u8>,
) -> Result<(StatusCode, WireAnswer), String> {
    let (status, bytes) = state
        .clients
        .post(
            holder,
            REQUEST_PATH,
            signed,
            Duration::from_secs(60),
            MAX_REQUEST_BYTES,
        )
        .await?;
    let answer: WireAnswer = serde_json::from_slice(&bytes).unwrap_or(WireAnswer {
        status: "error".to_owned(),
        reason: Some(format!("peer {} answered {}", holder.id, status.as_u16())),
        transfer_id: None,
        policy_ids: Vec::new(),
    });
    Ok((status, answer))
}

fn answer(status: StatusCode, answer: &WireAnswer) -> PeerResponse {
    let mut resp = text_response(status, "");
    *resp.body_mut() = Full::new(Bytes::from(serde_json::to_vec(answer).unwrap_or_default()));
    resp
}

fn denied(reason: &str) -> WireAnswer {
    WireAnswer {
        status: "denied".to_owned(),
        reason: Some(reason.to_owned()),
        transfer_id: None,
        policy_ids: Vec::new(),
    }
}

/// The holding side: a peer asks for a patient's record.
pub async fn incoming(
    state: &Arc<NodeState>,
    peer: &PeerIdentity,
    req: Request<Incoming>,
) -> PeerResponse {
    let bytes = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return text_response(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
    };
    let trust = state.trust();
    let Some(requester) = trust.peer(&peer.facility) else {
        return text_response(StatusCode::FORBIDDEN, "requester not in the directory");
    };
    let body = match verify_message(&bytes, REQUEST_DOMAIN, &requester.signing_keys) {
        Ok(b) => b,
        Err(e) => {
            refuse_audit(state, peer, None, &format!("request refused: {e}")).await;
            return answer(StatusCode::FORBIDDEN, &denied("request signature invalid"));
        }
    };
    let Ok(wire) = postcard::from_bytes::<WireRequest>(&body) else {
        refuse_audit(state, peer, None, "request refused: malformed").await;
        return answer(StatusCode::BAD_REQUEST, &denied("malformed request"));
    };
    if wire.requester != peer.facility.as_str() || wire.holder != state.me().as_str() {
        refuse_audit(
            state,
            peer,
            None,
            "request refused: requester or holder does not match the TLS identities",
        )
        .await;
        return answer(
            StatusCode::FORBIDDEN,
            &denied("request not addressed to this facility"),
        );
    }
    if let Err(why) = accept_once(state, &wire) {
        refuse_audit(state, peer, None, &format!("request refused: {why}")).await;
        return answer(StatusCode::FORBIDDEN, &denied(&why));
    }
    let (Ok(patient), Ok(purpose)) = (
        PatientRef::parse(&wire.patient),
        wire.purpose.parse::<Purpose>(),
    ) else {
        return answer(StatusCode::BAD_REQUEST, &denied("malformed request"));
    };
    let mut declared = BTreeSet::new();
    for c in &wire.categories {
        match c.parse::<Category>() {
            Ok(c) => {
                declared.insert(c);
            }
            Err(_) => return answer(StatusCode::BAD_REQUEST, &denied("unknown data category")),
        }
    }
    let mut rec = audit::record(event::REQUEST_RECEIVED, "received");
    rec.peer = Some(peer.facility.to_string());
    rec.patient_ref = Some(wire.patient.clone());
    rec.purpose = Some(wire.purpose.clone());
    rec.clinician = Some(wire.clinician.clone());
    rec.break_glass = wire.break_glass_reason.is_some();
    rec.reason = Some(format!("request {}", wire.request_id));
    let _ = audit::append(&state.store, rec.clone());

    let break_glass = wire.break_glass_reason.is_some();
    if break_glass {
        if let Err(why) = break_glass_window_ok(wire.break_glass_until_ms, now_ms()) {
            refuse_audit(state, peer, Some(&rec), why).await;
            return answer(StatusCode::FORBIDDEN, &denied(why));
        }
    }
    // Authorized before the record source is consulted, for what the requester asked for: a
    // requester the policy or the patient's consent refuses gets the same answer whether or
    // not this facility holds anything about the patient (no existence oracle).
    let asked = if declared.is_empty() {
        BTreeSet::from([Category::General])
    } else {
        declared.clone()
    };
    let (first, first_rec) = decide_request(
        state,
        &requester,
        &wire,
        purpose,
        &asked,
        "unknown",
        &rec,
        " (decided before the record source was consulted)",
    );
    if !first.allowed {
        // Only a refusal at this step is an audit entry: a permit here decides nothing yet.
        let _ = audit::append(&state.store, first_rec);
        let _ = state.store.commit().await;
        return refused_by(first);
    }

    let source = StoreRecordSource::new(state.clone());
    let record = match tokio::task::block_in_place(|| source.fetch(&wire.patient)) {
        Ok(Some(r)) => r,
        Ok(None) => {
            let reason = "no record for this patient is held at this facility";
            refuse_audit(state, peer, Some(&rec), reason).await;
            return answer(StatusCode::NOT_FOUND, &denied(reason));
        }
        Err(e) => {
            tracing::error!(error = %e, "record source failed");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &denied("record source unavailable; retry later"),
            );
        }
    };
    // The held record is classified from its bytes like any submission; one the gateway can no
    // longer read is refused, never sent under the requester's declared categories.
    let categories = match inspect(
        &record.content_type,
        &patient,
        &declared,
        None,
        None,
        Content::Whole(&record.payload),
    ) {
        Ok(c) => c.categories,
        Err(e) => {
            let reason = format!("the held record cannot be classified: {e}");
            refuse_audit(state, peer, Some(&rec), &reason).await;
            return answer(StatusCode::CONFLICT, &denied(&reason));
        }
    };
    let (decision, decision_rec) = decide_request(
        state,
        &requester,
        &wire,
        purpose,
        &categories,
        record.content_type.mime(),
        &rec,
        "",
    );
    let _ = audit::append(&state.store, decision_rec);
    if !decision.allowed {
        let _ = state.store.commit().await;
        return refused_by(decision);
    }
    let submitted = submit(
        state,
        SubmitRequest {
            to: wire.requester.clone(),
            patient,
            purpose,
            content_type: record.content_type,
            categories,
            clinician: Some(wire.clinician.clone()),
            clinician_role: wire.clinician_role.clone(),
            break_glass_reason: wire.break_glass_reason.clone(),
            break_glass_until_ms: wire.break_glass_until_ms,
            request_id: Some(wire.request_id.clone()),
        },
        Payload::in_memory(record.payload),
    )
    .await;
    match submitted {
        Ok(Accepted { id, .. }) => answer(
            StatusCode::ACCEPTED,
            &WireAnswer {
                status: "accepted".to_owned(),
                reason: None,
                transfer_id: Some(id.to_string()),
                policy_ids: decision.policy_ids,
            },
        ),
        Err(crate::send::outbox::SubmitError::Denied { reason, policy_ids }) => answer(
            StatusCode::FORBIDDEN,
            &WireAnswer {
                policy_ids,
                ..denied(&reason)
            },
        ),
        Err(e) => {
            tracing::error!(error = %e, "answering a request failed");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &denied("the holder could not queue the record; retry later"),
            )
        }
    }
}

/// Freshness and replay protection on the holding side: the request must have been made
/// within [`REQUEST_WINDOW_MS`] of now, and its id is accepted once (remembered durably for the
/// window, then forgotten: an older copy fails the time check instead).
fn accept_once(state: &NodeState, wire: &WireRequest) -> Result<(), String> {
    let now = now_ms();
    if now.abs_diff(wire.created_at_ms) > REQUEST_WINDOW_MS {
        return Err(format!(
            "stale request: made {} s from this facility's clock, more than the {} s allowed \
             (a replayed request, or a clock that is off: check NTP on both nodes)",
            now.abs_diff(wire.created_at_ms) / 1000,
            REQUEST_WINDOW_MS / 1000
        ));
    }
    let id = &wire.request_id;
    if id.is_empty()
        || id.len() > MAX_REQUEST_ID
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("malformed request id".to_owned());
    }
    // Sorted by creation time, so what the window no longer needs is one range to remove.
    let key = |created_ms: u64, rest: &str| format!("seen:{created_ms:016x}:{rest}");
    let forget_before = key(now.saturating_sub(REQUEST_WINDOW_MS), "");
    if let Err(e) = state.store.request_remove_range("seen:", &forget_before) {
        tracing::warn!(error = %e, "could not forget old request ids");
    }
    let seen = key(wire.created_at_ms, &format!("{}:{id}", wire.requester));
    match state.store.request_put_new(&seen, &[]) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("request {id} was already received: a replay")),
        Err(e) => {
            tracing::error!(error = %e, "could not record a request id");
            Err("the holder could not record this request; retry later".to_owned())
        }
    }
}

/// The holder's decision on answering `wire` with `categories` of a record, with its audit
/// record (`note` says at which step it was taken) for the caller to write.
#[expect(
    clippy::too_many_arguments,
    reason = "one decision, taken twice with different categories; a struct would be built once per call"
)]
fn decide_request(
    state: &NodeState,
    requester: &crate::trust::Peer,
    wire: &WireRequest,
    purpose: Purpose,
    categories: &BTreeSet<Category>,
    content_type: &str,
    base: &gateway_store::AuditRecord,
    note: &str,
) -> (policies::Decision, gateway_store::AuditRecord) {
    let break_glass = wire.break_glass_reason.is_some();
    let (decision, _) = decide(
        state,
        &Question {
            action: if break_glass {
                Action::BreakGlass
            } else {
                Action::Request
            },
            counterparty: requester,
            patient: &wire.patient,
            categories,
            content_type,
            purpose,
            clinician_role: wire.clinician_role.as_deref(),
            break_glass,
            asserted: None,
        },
    );
    let mut rec = base.clone();
    rec.event = event::DECISION.to_owned();
    rec.outcome = if decision.allowed { "permit" } else { "deny" }.to_owned();
    rec.policy_ids = decision.policy_ids.clone();
    rec.reason = Some(format!(
        "request {}: {}{note}",
        wire.request_id,
        decision_reason(&decision, "request", wire.break_glass_reason.as_deref())
    ));
    (decision, rec)
}

/// The answer to a request the policy refused: its reason and determining policies.
fn refused_by(decision: policies::Decision) -> PeerResponse {
    answer(
        StatusCode::FORBIDDEN,
        &WireAnswer {
            policy_ids: decision.policy_ids,
            ..denied(&decision.reason)
        },
    )
}

async fn refuse_audit(
    state: &NodeState,
    peer: &PeerIdentity,
    base: Option<&gateway_store::AuditRecord>,
    reason: &str,
) {
    let mut rec = base
        .cloned()
        .unwrap_or_else(|| audit::record(event::REJECTED, "refused"));
    rec.event = event::REJECTED.to_owned();
    rec.outcome = "refused".to_owned();
    rec.peer = Some(peer.facility.to_string());
    rec.reason = Some(reason.to_owned());
    rec.time_ms = now_ms();
    let _ = audit::append(&state.store, rec);
    let _ = state.store.commit().await;
}
