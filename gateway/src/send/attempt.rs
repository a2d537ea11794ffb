//! One delivery attempt over the wire: the envelope sent (whole from memory, or streamed from
//! the spool), the peer's answer classified, and its signed receipt verified against the
//! recipient's directory key before anything is marked delivered.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_util::io::ReaderStream;

use gateway_envelope::SignedReceipt;
use gateway_store::{OutboxEntry, SpoolKind, SpoolReader};

use crate::state::NodeState;
use crate::trust::transport::Body;

use super::delivery::{Outcome, ENVELOPE_PATH, WHOLE_ENVELOPE_BYTES};

pub(super) async fn attempt_delivery(
    state: &Arc<NodeState>,
    entry: &OutboxEntry,
    envelope: Option<Bytes>,
) -> Outcome {
    let trust = state.trust();
    let local = |reason: &str| Outcome::Local {
        reason: reason.to_owned(),
        retry: false,
    };
    let Some(peer) = trust.peer_by_str(&entry.recipient) else {
        return local("recipient is no longer in the federation directory");
    };
    if !peer.active {
        return local("recipient is no longer active in the federation directory");
    }
    let mut sender = match state.clients.sender(&peer).await {
        Ok(s) => s,
        Err(e) => return Outcome::Unreachable(e.to_string()),
    };
    let store = state.store.clone();
    let id = entry.transfer_id;
    // The envelope's segment record or its own file (see gateway_store's spool).
    let open = move || match store.spool_open(&id, SpoolKind::Outbox) {
        Ok(Some(envelope)) => Ok(envelope),
        Ok(None) => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        Err(e) => Err(std::io::Error::other(e)),
    };
    let missing = |e: std::io::Error| Outcome::Local {
        reason: format!("local system: sealed envelope missing: {e}"),
        retry: false,
    };
    // A small envelope is read with one blocking call and sent as one body; streaming it
    // through tokio::fs would cost a blocking-pool round trip per 256 KiB read.
    let body: Body = if let Some(bytes) = envelope.filter(|b| b.len() as u64 == entry.envelope_len)
    {
        BodyExt::boxed(http_body_util::Full::new(bytes).map_err(|never| match never {}))
    } else if entry.envelope_len <= WHOLE_ENVELOPE_BYTES {
        match tokio::task::spawn_blocking(move || open()?.into_bytes()).await {
            Ok(Ok(bytes)) if bytes.len() as u64 != entry.envelope_len => {
                return local("local system: sealed envelope is not the length recorded")
            }
            Ok(Ok(bytes)) => BodyExt::boxed(
                http_body_util::Full::new(Bytes::from(bytes)).map_err(|never| match never {}),
            ),
            Ok(Err(e)) => return missing(e),
            Err(e) => {
                return Outcome::Local {
                    reason: format!("local system: {e}"),
                    retry: true,
                }
            }
        }
    } else {
        let envelope = match tokio::task::spawn_blocking(open).await {
            Ok(Ok(envelope)) => envelope,
            Ok(Err(e)) => return missing(e),
            Err(e) => {
                return Outcome::Local {
                    reason: format!("local system: {e}"),
                    retry: true,
                }
            }
        };
        match envelope {
            SpoolReader::File(file) => {
                let file = tokio::fs::File::from_std(file);
                let stream = ReaderStream::with_capacity(file, 256 * 1024).map_ok(Frame::data);
                BodyExt::boxed(StreamBody::new(stream))
            }
            SpoolReader::Bytes(bytes) => BodyExt::boxed(
                http_body_util::Full::new(Bytes::from(bytes.into_inner()))
                    .map_err(|never| match never {}),
            ),
        }
    };
    let request = match http::Request::post(format!("https://{}{ENVELOPE_PATH}", peer.id))
        .header(http::header::CONTENT_LENGTH, entry.envelope_len)
        .header(
            http::header::CONTENT_TYPE,
            "application/vnd.healthfed.envelope",
        )
        .body(body)
    {
        Ok(r) => r,
        Err(e) => return local(&format!("local system: {e}")),
    };
    if sender.ready().await.is_err() {
        state.clients.forget(&peer.id).await;
        return Outcome::Unreachable(format!("peer {}: connection closed", peer.id));
    }
    let timeout = Duration::from_secs(state.config.peer.request_timeout_secs);
    let response = match tokio::time::timeout(timeout, sender.send_request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            state.clients.forget(&peer.id).await;
            return Outcome::Unreachable(format!("peer {}: {e}", peer.id));
        }
        Err(_) => return Outcome::Unreachable(format!("peer {}: timed out", peer.id)),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Outcome::Unreachable(format!("peer {}: reading response: {e}", peer.id)),
    };
    match status.as_u16() {
        200 | 409 => match verify_receipt_or_reload(state, entry, &peer, &body) {
            Ok(()) => Outcome::Delivered {
                receipt: body.to_vec(),
                duplicate: status.as_u16() == 409,
            },
            // The receiver stored the record and signed with a key this node's directory does
            // not list (it rotated; the new directory has not reached this node): the resend
            // gets the same receipt back (409), which verifies once the directory arrives.
            Err(ReceiptProblem::Signature(e)) => Outcome::Retry(e),
            // A 409 without a valid receipt is a refusal (e.g. a different envelope reused the id).
            Err(e) if status.as_u16() == 409 => Outcome::Refused(
                format!("peer {} refused: {}", peer.id, peer_reason(&body)) + &format!(" ({e})"),
            ),
            Err(e) => Outcome::Refused(e.to_string()),
        },
        502..=504 => Outcome::Unreachable(format!(
            "peer {}: {} {}",
            peer.id,
            status.as_u16(),
            peer_reason(&body)
        )),
        408 | 429 | 500..=599 => Outcome::Retry(format!(
            "peer {}: {} {}",
            peer.id,
            status.as_u16(),
            peer_reason(&body)
        )),
        _ => Outcome::Refused(format!(
            "peer {} refused ({}): {}",
            peer.id,
            status.as_u16(),
            peer_reason(&body)
        )),
    }
}

#[derive(Debug, thiserror::Error)]
enum ReceiptProblem {
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    Signature(String),
    #[error("{0}")]
    Mismatch(String),
}

/// A receipt whose signature no directory key verifies may be signed with the receiver's new
/// key from a directory this node has not loaded yet: the trust files are looked at once more.
fn verify_receipt_or_reload(
    state: &NodeState,
    entry: &OutboxEntry,
    peer: &crate::trust::Peer,
    body: &Bytes,
) -> Result<(), ReceiptProblem> {
    match verify_receipt(state, entry, peer, body) {
        Err(ReceiptProblem::Signature(e)) => {
            if !matches!(state.trust.reload_if_changed(&state.identity()), Ok(true)) {
                return Err(ReceiptProblem::Signature(e));
            }
            tracing::info!(
                version = state.trust().directory.version,
                "federation trust reloaded (a receipt signature needed it)"
            );
            match state.trust().peer(&peer.id) {
                Some(fresh) => verify_receipt(state, entry, &fresh, body),
                None => Err(ReceiptProblem::Signature(e)),
            }
        }
        other => other,
    }
}

fn verify_receipt(
    state: &NodeState,
    entry: &OutboxEntry,
    peer: &crate::trust::Peer,
    body: &Bytes,
) -> Result<(), ReceiptProblem> {
    let signed = SignedReceipt::from_bytes(body).map_err(|e| {
        ReceiptProblem::Unreadable(format!("peer {}: receipt unreadable: {e}", peer.id))
    })?;
    let receipt = signed.verify(&peer.signing_keys).map_err(|e| {
        ReceiptProblem::Signature(format!(
            "peer {}: receipt signature does not verify under the receiver's keys in this node's directory (retried: a rotation may not have reached this node yet): {e}",
            peer.id
        ))
    })?;
    if receipt.transfer_id.0 != entry.transfer_id
        || receipt.payload_digest != entry.payload_digest
        || receipt.receiver != peer.id.as_str()
        || receipt.sender != state.me().as_str()
    {
        return Err(ReceiptProblem::Mismatch(format!(
            "peer {}: receipt does not match the transfer",
            peer.id
        )));
    }
    Ok(())
}

/// A peer's refusal text, cut short and reduced to printable ASCII before it is stored.
fn peer_reason(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect();
    if text.is_empty() {
        "no reason given".to_owned()
    } else {
        text
    }
}
