//! Receiving envelopes from peers (decrypt-on-fetch for the local system is `fetch`).
//!
//! An incoming envelope is streamed: header checks and signature first, then the metadata
//! frame and the receive-side policy decision, then every payload frame is decrypted (to
//! authenticate it) while the still-sealed bytes go to the inbox spool. Plaintext is never
//! written. The signed receipt goes back only after the inbox entry and its audit entry are
//! committed.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use gateway_envelope::{
    EnvelopeError, EnvelopeReader, Limits, Opener, Receipt, SignedReceipt, TransferId,
    UnverifiedHeader, VerifiedHeader, VerifyingKey,
};
use gateway_store::{AuditRecord, HeaderCheck, InboxEntry, InboxInsert, SpoolKind};
use policies::Action;

use crate::access::{basis_of, decide, Question};
use crate::audit::{self, event};
use crate::evidence::decision::receiver_decision;
use crate::record::{
    break_glass_window_ok, check_received, ConsentBasis, Kept, RecordError, RecordMetadata,
};
use crate::send::outbox::decision_reason;
use crate::state::metrics::Direction;
use crate::state::NodeState;
use crate::trust::transport::{text_response, PeerIdentity, PeerResponse};
use crate::trust::{now_ms, Peer, Trust};

/// An envelope dated this far in the future is refused (clock skew allowance).
const MAX_FUTURE_SKEW_MS: u64 = 5 * 60 * 1000;
pub(super) const MAX_HEADER_BYTES: u32 = 64 * 1024;
pub(super) const MAX_METADATA_BYTES: u32 = 1024 * 1024;
/// Received bytes handled per blocking section (spool write + frame authentication).
const RECEIVE_BATCH_BYTES: usize = 256 * 1024;

fn receipt_response(status: StatusCode, receipt: Vec<u8>) -> PeerResponse {
    let mut resp = Response::new(Full::new(Bytes::from(receipt)));
    *resp.status_mut() = status;
    resp
}

/// Why an envelope was refused: the HTTP status, a stable code for the audit log, and text
/// for the sender. None of it carries record content.
struct Refusal {
    status: StatusCode,
    reason: String,
    /// Seconds, for an answer the sender should retry (`Retry-After`).
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// Not a refusal of the envelope: this node cannot take it yet (503, which the sender's
    /// delivery retries).
    fn retry_later(seconds: u64, reason: impl Into<String>) -> Refusal {
        Refusal {
            retry_after: Some(seconds),
            ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }

    fn envelope(e: &EnvelopeError) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, format!("envelope refused: {e}"))
    }

    /// The `reason` label of `healthfed_refusals_total`, from the status the sender gets.
    fn class(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "envelope",
            StatusCode::FORBIDDEN => "policy_or_content",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "other",
        }
    }
}

struct Received {
    header: VerifiedHeader,
    metadata: RecordMetadata,
    policy_ids: Vec<String>,
    /// Stored by an earlier, interrupted attempt whose `received` audit entry was lost.
    recovered: bool,
}

pub async fn receive(
    state: &Arc<NodeState>,
    peer: &PeerIdentity,
    req: http::Request<Incoming>,
) -> PeerResponse {
    let declared_len = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|len| len > state.config.peer.max_envelope_bytes) {
        return refuse(
            state,
            peer,
            None,
            None,
            None,
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "envelope larger than this node accepts",
            ),
        )
        .await;
    }
    let mut transfer: Option<TransferId> = None;
    let mut meta: Option<RecordMetadata> = None;
    // A permit is recorded with the inbox entry it leads to; if the envelope fails after the
    // decision, it is recorded with the refusal instead.
    let mut decision: Option<AuditRecord> = None;
    let outcome = receive_inner(
        state,
        peer,
        req.into_body(),
        &mut transfer,
        &mut meta,
        &mut decision,
    )
    .await;
    match outcome {
        Ok(Ok((received, receipt))) => accepted(state, peer, received, receipt).await,
        Ok(Err(duplicate_receipt)) => {
            let mut rec = audit::record(event::REJECTED, "duplicate");
            rec.transfer_id = transfer.map(|t| t.0);
            rec.peer = Some(peer.facility.to_string());
            rec.reason = Some(
                "replay: transfer already received; original receipt returned, nothing stored"
                    .to_owned(),
            );
            let _ = state
                .store
                .audit_append_batch(decision.into_iter().chain([rec]));
            let _ = state.store.commit().await;
            state.metrics.transfer(Direction::Inbound, "duplicate");
            receipt_response(StatusCode::CONFLICT, duplicate_receipt)
        }
        Err(refusal) => refuse(state, peer, transfer, meta.as_ref(), decision, refusal).await,
    }
}

async fn accepted(
    state: &Arc<NodeState>,
    peer: &PeerIdentity,
    received: Received,
    receipt: Vec<u8>,
) -> PeerResponse {
    // A new envelope's `received` entry was written with its inbox entry; a recovered one's
    // is written now.
    if received.recovered {
        let rec = received_record(
            peer,
            received.header.transfer_id(),
            &received.metadata,
            received.policy_ids.clone(),
            true,
        );
        if let Err(e) = audit::append(&state.store, rec) {
            tracing::error!(error = %e, "audit append failed");
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "receiver storage unavailable",
            );
        }
    }
    if let Some(request_id) = &received.metadata.request_id {
        crate::pull::requests::mark_fulfilled(state, request_id, received.header.transfer_id());
    }
    if let Err(e) = state.store.commit().await {
        tracing::error!(error = %e, "commit failed");
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "receiver storage unavailable",
        );
    }
    tracing::info!(transfer = %received.header.transfer_id(), peer = %peer.facility, "received");
    state.metrics.transfer(Direction::Inbound, "received");
    receipt_response(StatusCode::OK, receipt)
}

/// The `received` audit record of a stored envelope.
fn received_record(
    peer: &PeerIdentity,
    id: TransferId,
    metadata: &RecordMetadata,
    policy_ids: Vec<String>,
    recovered: bool,
) -> AuditRecord {
    let mut rec = audit::record(event::RECEIVED, "stored");
    rec.transfer_id = Some(id.0);
    rec.peer = Some(peer.facility.to_string());
    rec.patient_ref = Some(metadata.patient.clone());
    rec.purpose = Some(metadata.purpose.clone());
    rec.clinician = metadata.clinician.clone();
    rec.policy_ids = policy_ids;
    rec.break_glass = metadata.break_glass_reason.is_some();
    rec.reason = metadata
        .break_glass_reason
        .as_ref()
        .map(|why| format!("break-glass: {why}"));
    if recovered {
        let note = "stored by an earlier attempt that was interrupted before this entry was \
                    written; recorded on the sender's resend";
        rec.reason = Some(match rec.reason.take() {
            Some(r) => format!("{r}; {note}"),
            None => note.to_owned(),
        });
    }
    rec
}

async fn refuse(
    state: &NodeState,
    peer: &PeerIdentity,
    transfer: Option<TransferId>,
    meta: Option<&RecordMetadata>,
    decision: Option<AuditRecord>,
    refusal: Refusal,
) -> PeerResponse {
    let mut rec = audit::record(event::REJECTED, "refused");
    rec.transfer_id = transfer.map(|t| t.0);
    rec.peer = Some(peer.facility.to_string());
    if let Some(meta) = meta {
        rec.patient_ref = Some(meta.patient.clone());
        rec.purpose = Some(meta.purpose.clone());
        rec.clinician = meta.clinician.clone();
        rec.break_glass = meta.break_glass_reason.is_some();
    }
    rec.reason = Some(refusal.reason.clone());
    let _ = state
        .store
        .audit_append_batch(decision.into_iter().chain([rec]));
    let _ = state.store.commit().await;
    state.metrics.refusal(Direction::Inbound, refusal.class());
    tracing::warn!(peer = %peer.facility, status = refusal.status.as_u16(), "envelope refused");
    let mut response = text_response(refusal.status, &refusal.reason);
    if let Some(seconds) = refusal.retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    }
    response
}

/// Returns the received record and its signed receipt, or `Err(receipt)`-style duplicate
/// (the original receipt), or a refusal.
async fn receive_inner(
    state: &Arc<NodeState>,
    peer: &PeerIdentity,
    mut body: Incoming,
    transfer: &mut Option<TransferId>,
    meta_out: &mut Option<RecordMetadata>,
    decision_out: &mut Option<AuditRecord>,
) -> Result<Result<(Received, Vec<u8>), Vec<u8>>, Refusal> {
    let max = state.config.peer.max_envelope_bytes;
    let mut reader = EnvelopeReader::new(Limits {
        max_header: MAX_HEADER_BYTES,
        max_payload: max,
        max_metadata: MAX_METADATA_BYTES,
    });
    let mut received_bytes: u64 = 0;
    let mut pending: Vec<Bytes> = Vec::new();

    // 1. The header: who sent it, to whom, when; the signature.
    let unverified = loop {
        match reader.header() {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => return Err(Refusal::envelope(&e)),
        }
        let chunk = next_chunk(&mut body, &mut received_bytes, max).await?;
        let Some(chunk) = chunk else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "envelope refused: truncated before the header ended",
            ));
        };
        reader.push(&chunk);
        pending.push(chunk);
    };
    *transfer = Some(unverified.transfer_id());
    if unverified.recipient() != state.me().as_str() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "envelope refused: addressed to another facility",
        ));
    }
    if unverified.sender() != peer.facility.as_str() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "envelope refused: sender does not match the TLS identity",
        ));
    }
    let now = now_ms();
    let created = unverified.created_at_ms();
    let max_age_ms = state.config.peer.replay_window_secs.saturating_mul(1000);
    if created > now + MAX_FUTURE_SKEW_MS || now.saturating_sub(created) > max_age_ms {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "envelope refused: created outside the accepted time window",
        ));
    }
    let (sender, header, verified_key) = verify_header(state, peer, unverified)?;
    let header_check = HeaderCheck {
        signing_key: verified_key.0,
        verified_ms: now_ms(),
    };

    // 2. Replay: a transfer id is accepted once, ever (the inbox never forgets an id, except
    // an entry whose envelope was lost before its receipt was sent: see below).
    let mut stored_before: Option<InboxEntry> = None;
    let found = match state.store.inbox_get(&header.transfer_id().0) {
        // Fail closed: an entry is answered as a duplicate only while it holds its envelope.
        // One without it (and not removed by retention) was written back by sled before a
        // crash cut its envelope off, so its receipt was never sent; answering "duplicate"
        // would make the sender drop a record this node does not hold. The store removes
        // such an entry (audited `envelope-lost`) and the resend is stored as new.
        Ok(Some(existing)) if existing.header_digest == header.header_digest() => {
            let store = &state.store;
            match tokio::task::block_in_place(|| store.inbox_drop_if_envelope_lost(&existing)) {
                Ok(true) => {
                    tracing::warn!(
                        transfer = %header.transfer_id(),
                        peer = %peer.facility,
                        "inbox entry without its envelope (lost in a crash before its receipt \
                         was sent): removed, the resend is stored"
                    );
                    Ok(None)
                }
                Ok(false) => Ok(Some(existing)),
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    match found {
        Ok(Some(existing)) if existing.header_digest == header.header_digest() => {
            if audit::has_event(&state.store, header.transfer_id().0, event::RECEIVED) {
                return Ok(Err(existing.receipt));
            }
            // The inbox insert became durable (another request's commit flushed it) but the
            // node died before its `received` audit entry was: the record is held without a
            // trace in the audit log. Read the metadata again so that entry can be written in
            // full. The payload is not read again: it was verified when it was stored.
            stored_before = Some(existing);
        }
        Ok(Some(_)) => {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                "envelope refused: transfer id already used by another envelope",
            ));
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "inbox read failed");
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "receiver storage unavailable",
            ));
        }
    }

    // 3. The metadata frame, then the receive-side policy decision.
    let metadata_frame = loop {
        match reader.next_frame() {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(e) => return Err(Refusal::envelope(&e)),
        }
        let Some(chunk) = next_chunk(&mut body, &mut received_bytes, max).await? else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "envelope refused: truncated before the metadata",
            ));
        };
        reader.push(&chunk);
        pending.push(chunk);
    };
    let (mut opener, metadata) = open_metadata(state, &header, &metadata_frame).await?;
    let metadata = RecordMetadata::decode(&metadata)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("envelope refused: {e}")))?;
    *meta_out = Some(metadata.clone());
    let categories = metadata
        .categories()
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("envelope refused: {e}")))?;
    let purpose = metadata
        .purpose()
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("envelope refused: {e}")))?;
    let break_glass = metadata.break_glass_reason.is_some();
    if break_glass {
        break_glass_window_ok(metadata.break_glass_until_ms, now_ms()).map_err(|why| {
            Refusal::new(StatusCode::FORBIDDEN, format!("envelope refused: {why}"))
        })?;
    }
    let (decision, consent) = decide(
        state,
        &Question {
            // Inbound break-glass is a receive with the flag set: the engine's BreakGlass action
            // means answering a peer's emergency pull.
            action: Action::Receive,
            counterparty: &sender,
            patient: &metadata.patient,
            categories: &categories,
            content_type: &metadata.content_type,
            purpose,
            clinician_role: metadata.clinician_role.as_deref(),
            break_glass,
            asserted: Some(
                metadata
                    .consent_basis
                    .as_ref()
                    .unwrap_or(&ConsentBasis::default()),
            ),
        },
    );
    let mut rec = audit::record(
        event::DECISION,
        if decision.allowed { "permit" } else { "deny" },
    );
    rec.transfer_id = Some(header.transfer_id().0);
    rec.peer = Some(peer.facility.to_string());
    rec.patient_ref = Some(metadata.patient.clone());
    rec.purpose = Some(metadata.purpose.clone());
    rec.clinician = metadata.clinician.clone();
    rec.policy_ids = decision.policy_ids.clone();
    rec.break_glass = break_glass;
    let mut reason = decision_reason(&decision, "receive", metadata.break_glass_reason.as_deref());
    if let Ok(Some(declaration)) = metadata.declaration() {
        reason.push_str(&format!("; {}", declaration.audit_text()));
    }
    rec.reason = Some(reason);
    if stored_before.is_some() || !decision.allowed {
        let _ = audit::append(&state.store, rec);
    } else {
        *decision_out = Some(rec);
    }
    if let Some(existing) = stored_before {
        // Already stored, so its receipt entry is written whatever today's decision is (the
        // decision entry above records today's answer).
        return Ok(Ok((
            Received {
                header,
                metadata,
                policy_ids: decision.policy_ids,
                recovered: true,
            },
            existing.receipt,
        )));
    }
    if !decision.allowed {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("denied by the receiver's policy: {}", decision.reason),
        ));
    }

    // 4. The payload frames: authenticate each while the sealed bytes go to the spool.
    let id = header.transfer_id();
    let mut writer = state
        .store
        .spool_writer(&id.0, SpoolKind::Inbox)
        .map_err(|_| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "receiver storage unavailable",
            )
        })?;
    let spool_err = |_| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "receiver storage unavailable",
        )
    };
    // Body chunks (HTTP/2 DATA frames of ~16 KiB) are handled in batches: each batch is
    // written to the spool and its complete frames authenticated in one blocking section,
    // because every `block_in_place` hands this worker's queue to another thread.
    // The header and metadata chunks are in the reader already; they still go to the spool.
    let mut batch: Vec<Bytes> = std::mem::take(&mut pending);
    let mut batch_len: usize = batch.iter().map(Bytes::len).sum();
    // The plaintext is authenticated here and never written: one buffer serves every frame, and
    // what the receive-side classification needs is kept in memory only.
    let mut scratch = Vec::new();
    let mut kept = Kept::for_record(&metadata);
    loop {
        let chunk = next_chunk(&mut body, &mut received_bytes, max).await?;
        let end = chunk.is_none();
        if let Some(chunk) = chunk {
            reader.push(&chunk);
            batch_len += chunk.len();
            batch.push(chunk);
        }
        if !end && batch_len < RECEIVE_BATCH_BYTES {
            continue;
        }
        tokio::task::block_in_place(|| -> Result<(), Refusal> {
            for chunk in &batch {
                writer.write_chunk(chunk).map_err(spool_err)?;
            }
            while let Some(frame) = reader.next_frame().map_err(|e| Refusal::envelope(&e))? {
                opener
                    .open_chunk_into(&frame, &mut scratch)
                    .map_err(|e| Refusal::envelope(&e))?;
                kept.push(&scratch);
            }
            Ok(())
        })?;
        batch.clear();
        batch_len = 0;
        if end {
            break;
        }
    }
    if !reader.is_drained() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "envelope refused: truncated mid-frame",
        ));
    }
    opener.finish().map_err(|e| Refusal::envelope(&e))?;
    // 4b. Defence in depth: the receiver classifies what it decrypted itself, and refuses
    // content its metadata misdescribes (format, patient, categories left out).
    tokio::task::block_in_place(|| check_received(&metadata, kept.content())).map_err(|e| {
        let status = match e {
            RecordError::CategoriesOmitted(_) | RecordError::UnclassifiedUndeclared => {
                StatusCode::FORBIDDEN
            }
            _ => StatusCode::BAD_REQUEST,
        };
        Refusal::new(status, format!("envelope refused: {e}"))
    })?;
    tokio::task::block_in_place(|| writer.finish()).map_err(spool_err)?;

    // 5. Record it and sign the receipt.
    let receipt = SignedReceipt::sign(
        &Receipt {
            transfer_id: id,
            sender: peer.facility.to_string(),
            receiver: state.me().to_string(),
            payload_digest: header.payload_digest(),
            header_digest: header.header_digest(),
            received_at_ms: now_ms(),
            // Version 2: the receipt binds the decision taken above and the consent it saw.
            decision: Some(receiver_decision(
                &decision,
                &metadata.purpose,
                &basis_of(&consent),
            )),
        },
        &state.identity().signing,
    )
    .to_bytes();
    let entry = InboxEntry {
        transfer_id: id.0,
        sender: peer.facility.to_string(),
        received_ms: now_ms(),
        envelope_len: received_bytes,
        payload_len: header.payload_len(),
        payload_digest: header.payload_digest(),
        header_digest: header.header_digest(),
        receipt: receipt.clone(),
        acked_ms: None,
        header_check: Some(header_check),
    };
    let received = received_record(peer, id, &metadata, decision.policy_ids.clone(), false);
    let records = decision_out.iter().cloned().chain([received]).collect();
    match state.store.inbox_insert_audited(&entry, records) {
        Ok((InboxInsert::Inserted, _)) => *decision_out = None,
        Ok((InboxInsert::AlreadyPresent(existing), _)) => return Ok(Err(existing.receipt)),
        Err(e) => {
            tracing::error!(error = %e, "inbox insert failed");
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "receiver storage unavailable",
            ));
        }
    }
    Ok(Ok((
        Received {
            header,
            metadata,
            policy_ids: decision.policy_ids,
            recovered: false,
        },
        receipt,
    )))
}

/// Verifies the header's signature under the sender's directory keys and returns which key
/// verified it (kept with the inbox entry, so the record stays fetchable after the sender
/// rotates). A signature no listed key verifies may be from a key a newer directory lists that
/// this node has not loaded yet: the trust files are looked at once more before refusing.
fn verify_header(
    state: &NodeState,
    peer: &PeerIdentity,
    unverified: UnverifiedHeader,
) -> Result<(Peer, VerifiedHeader, VerifyingKey), Refusal> {
    let attempt = |trust: &Trust| -> Result<(Peer, VerifiedHeader, VerifyingKey), Refusal> {
        let Some(sender) = trust.peer(&peer.facility) else {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "envelope refused: sender not in the directory",
            ));
        };
        let mut last = None;
        for key in &sender.signing_keys {
            match unverified.clone().verify(std::slice::from_ref(key)) {
                Ok(header) => return Ok((sender.clone(), header, *key)),
                Err(e) => last = Some(e),
            }
        }
        let why = last.map_or_else(
            || "the sender has no signing key listed".to_owned(),
            |e| e.to_string(),
        );
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("envelope refused: {why}"),
        ))
    };
    match attempt(&state.trust()) {
        Ok(found) => Ok(found),
        Err(refusal) => match state.trust.reload_if_changed(&state.identity()) {
            Ok(true) => {
                tracing::info!(
                    version = state.trust().directory.version,
                    "federation trust reloaded (a header signature needed it)"
                );
                attempt(&state.trust())
            }
            _ => Err(refusal),
        },
    }
}

/// Opens the metadata frame with the keys this node holds. An envelope sealed to the key the
/// directory lists for this node, which this node has not loaded yet (the operator rotated and
/// published, the reload has not run), makes it read its key files at once; if the key is
/// still not there, the sender is told to retry (503, `Retry-After`), because the envelope will
/// open once the node has loaded its key. An envelope that none of the keys opens while the
/// node holds its listed key is refused for good.
async fn open_metadata(
    state: &NodeState,
    header: &VerifiedHeader,
    frame: &[u8],
) -> Result<(Opener, Vec<u8>), Refusal> {
    let first = Opener::new(header, &state.identity().decryption_keys(), frame);
    let error = match first {
        Ok(opened) => return Ok(opened),
        Err(e) => e,
    };
    // The directory (which key peers seal to) and the key files are read again first: either
    // may have changed since the last reload.
    state.reload_keys_and_trust().await;
    let identity = state.identity();
    if let Ok(opened) = Opener::new(header, &identity.decryption_keys(), frame) {
        return Ok(opened);
    }
    let listed = state.trust().peer(state.me()).map(|me| me.encryption_key);
    if listed.is_none_or(|k| identity.holds_encryption_key(&k)) {
        return Err(Refusal::envelope(&error));
    }
    let retry_after = state.config.federation.reload_interval_secs;
    Err(Refusal::retry_later(
        retry_after,
        "receiver has not loaded the encryption key the federation directory lists for it yet; retry later",
    ))
}

async fn next_chunk(
    body: &mut Incoming,
    received: &mut u64,
    max: u64,
) -> Result<Option<Bytes>, Refusal> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(_)) => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "envelope refused: the request body was cut off",
                ))
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    *received += data.len() as u64;
                    if *received > max.saturating_add(u64::from(MAX_HEADER_BYTES)) {
                        return Err(Refusal::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "envelope larger than this node accepts",
                        ));
                    }
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}
