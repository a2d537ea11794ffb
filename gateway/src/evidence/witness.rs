//! Peers witness each other's audit logs (C2SP tlog-witness, add-checkpoint, over the existing
//! mutual-TLS peer links; cosignatures per C2SP tlog-cosignature, Ed25519).
//!
//! Witness side (`incoming`): a facility submits its own log's checkpoint with a consistency
//! proof from the size this witness holds. The witness checks the note against the facility's
//! directory keys and the proof against what it holds, then cosigns and keeps the new
//! checkpoint. A checkpoint that is not an append-only extension (a fork, a rewrite, a smaller
//! size) is refused (422), kept as evidence, audited and raised as an alert.
//!
//! Log side (`submit_all`): after each checkpoint, and at every checkpointer round for a
//! witness still behind (a node that was down catches up), the node submits to its witnesses:
//! the active members of the directory (or those `audit.witnesses` names), by id, at most
//! `audit.max_witnesses`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use gateway_envelope::{SigningKey, VerifyingKey};
use gateway_store::Witnessed;

use crate::audit::{self, event};
use crate::evidence::checkpoint;
use crate::state::NodeState;
use crate::trust::now_unix;
use crate::trust::transport::{text_response, PeerIdentity, PeerResponse};

pub const WITNESS_PATH: &str = "/v1/witness";
/// Peer route: the checkpoint this witness holds for the caller's own log (for
/// `audit verify --with-peers`).
pub const VIEW_PATH: &str = "/v1/witness/view";
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Key type of a C2SP tlog-cosignature/v1 key.
const ALG_COSIGNATURE_V1: u8 = 0x04;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The name a node cosigns with.
pub fn witness_name(facility: &str) -> String {
    format!("healthfed/{facility}/witness")
}

fn cosignature_key_id(name: &str, public: &VerifyingKey) -> u32 {
    signed_note::key_id(name, &[&[ALG_COSIGNATURE_V1][..], &public.0[..]].concat())
}

/// `cosignature/v1\ntime <t>\n<checkpoint text>`: what a cosignature signs.
fn cosigned_message(time: u64, checkpoint_text: &[u8]) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {time}\n").into_bytes();
    msg.extend_from_slice(checkpoint_text);
    msg
}

/// A C2SP tlog-cosignature/v1 line for `checkpoint_text`:
/// `— <name> base64(key id || time_be || Ed25519 signature)`.
pub fn cosign(name: &str, key: &SigningKey, time: u64, checkpoint_text: &[u8]) -> String {
    let sig = key.sign(b"", &cosigned_message(time, checkpoint_text));
    let mut blob = cosignature_key_id(name, &key.verifying_key())
        .to_be_bytes()
        .to_vec();
    blob.extend_from_slice(&time.to_be_bytes());
    blob.extend_from_slice(&sig);
    format!("\u{2014} {name} {}\n", b64().encode(blob))
}

/// Checks a cosignature line by witness `name` (public key `public`) over `checkpoint_text`;
/// returns its time.
pub fn verify_cosignature(
    line: &str,
    name: &str,
    public: &VerifyingKey,
    checkpoint_text: &[u8],
) -> Result<u64, String> {
    let rest = line
        .trim_end_matches('\n')
        .strip_prefix("\u{2014} ")
        .and_then(|r| r.strip_prefix(name))
        .and_then(|r| r.strip_prefix(' '))
        .ok_or("not a cosignature line of this witness")?;
    let blob = b64()
        .decode(rest)
        .map_err(|_| "cosignature is not base64")?;
    if blob.len() != 4 + 8 + 64 {
        return Err("cosignature has the wrong length".to_owned());
    }
    let (id, rest) = blob.split_at(4);
    let (time, sig) = rest.split_at(8);
    if id != cosignature_key_id(name, public).to_be_bytes() {
        return Err("cosignature key id does not match".to_owned());
    }
    let mut time_be = [0u8; 8];
    time_be.copy_from_slice(time);
    let time = u64::from_be_bytes(time_be);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(sig);
    public
        .verify(b"", &cosigned_message(time, checkpoint_text), &signature)
        .map_err(|_| "cosignature does not verify".to_owned())?;
    Ok(time)
}

/// The checkpoint text of a signed note: everything before the blank line.
pub fn note_text(note: &[u8]) -> Option<&[u8]> {
    let end = note.windows(2).position(|w| w == b"\n\n")?;
    note.get(..=end)
}

/// A parsed add-checkpoint request: `old <size>`, the proof lines, a blank line, the note.
/// Public for the fuzz targets (tests/fuzz), which drive the route's parse and checks.
pub struct AddCheckpoint<'a> {
    pub old: u64,
    pub proof: Vec<[u8; 32]>,
    pub note: &'a [u8],
}

/// Parses the body of `POST /v1/witness`; nothing is verified yet.
pub fn parse_request(body: &[u8]) -> Result<AddCheckpoint<'_>, &'static str> {
    let malformed = "malformed add-checkpoint request";
    let split = body
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or(malformed)?;
    let head = std::str::from_utf8(body.get(..split).ok_or(malformed)?).map_err(|_| malformed)?;
    let note = body.get(split + 2..).ok_or(malformed)?;
    let mut lines = head.split('\n');
    let old = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or(malformed)?;
    let mut proof = Vec::new();
    for line in lines {
        let hash = b64().decode(line).map_err(|_| malformed)?;
        proof.push(<[u8; 32]>::try_from(hash.as_slice()).map_err(|_| malformed)?);
        if proof.len() > 64 {
            return Err(malformed);
        }
    }
    Ok(AddCheckpoint { old, proof, note })
}

fn request_body(old: u64, proof: &[[u8; 32]], note: &[u8]) -> Vec<u8> {
    let mut body = format!("old {old}\n").into_bytes();
    for hash in proof {
        body.extend_from_slice(b64().encode(hash).as_bytes());
        body.push(b'\n');
    }
    body.push(b'\n');
    body.extend_from_slice(note);
    body
}

/// The witness side of `POST /v1/witness`.
pub async fn incoming(
    state: &Arc<NodeState>,
    peer: &PeerIdentity,
    req: Request<Incoming>,
) -> PeerResponse {
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return text_response(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
    };
    let request = match parse_request(&body) {
        Ok(r) => r,
        Err(why) => return text_response(StatusCode::BAD_REQUEST, why),
    };
    // A facility submits its own log: the origin is the TLS identity's.
    let origin = checkpoint::origin(peer.facility.as_str());
    let Some(log) = state.trust().peer(&peer.facility).filter(|p| p.active) else {
        return text_response(StatusCode::FORBIDDEN, "not an active federation member");
    };
    let (size, root) = match checkpoint::open(request.note, &origin, &log.signing_keys) {
        Ok(opened) => opened,
        Err(e) => return text_response(StatusCode::FORBIDDEN, &format!("checkpoint refused: {e}")),
    };
    let Some(text) = note_text(request.note) else {
        return text_response(StatusCode::BAD_REQUEST, "malformed checkpoint note");
    };
    let held = match state.store.witnessed(&origin) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "witness state unreadable");
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "witness state unreadable");
        }
    };
    let (held_size, held_root) = held
        .as_ref()
        .map_or((0, gateway_store::merkle::empty_root()), |h| {
            (h.size, h.root)
        });
    if request.old != held_size {
        return size_conflict(held_size);
    }
    if size < held_size {
        let reason = format!("a smaller tree ({size}) than the {held_size} entries witnessed");
        return conflict(state, peer, &origin, &reason, request.note).await;
    }
    if let Err(e) = gateway_store::merkle::verify_consistency(
        held_size,
        size,
        &held_root,
        &root,
        &request.proof,
    ) {
        let reason =
            format!("not an append-only extension of the {held_size} entries witnessed: {e}");
        return conflict(state, peer, &origin, &reason, request.note).await;
    }
    let next = Witnessed {
        size,
        root,
        note: request.note.to_vec(),
    };
    match state.store.witness_advance(&origin, held.as_ref(), &next) {
        Ok(true) => {}
        // Another submission advanced it first (the store's compare-and-swap): say what is
        // held now.
        Ok(false) => {
            let now_held = state.store.witnessed(&origin).ok().flatten();
            return size_conflict(now_held.map_or(0, |w| w.size));
        }
        Err(e) => {
            tracing::error!(error = %e, "witness state not stored");
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "witness state not stored");
        }
    }
    // Durable before the cosignature leaves: a witness never cosigns what it could forget.
    if let Err(e) = state.store.commit().await {
        tracing::error!(error = %e, "witness state not durable");
        return text_response(StatusCode::SERVICE_UNAVAILABLE, "witness state not durable");
    }
    let name = witness_name(state.me().as_str());
    let time = u64::try_from(now_unix()).unwrap_or(0);
    let line = cosign(&name, &state.identity().signing, time, text);
    tracing::debug!(origin = %origin, size, "checkpoint cosigned");
    let mut resp = text_response(StatusCode::OK, "");
    *resp.body_mut() = Full::new(Bytes::from(line));
    resp
}

/// The witness side of `POST /v1/witness/view`: the latest checkpoint of the caller's own log
/// that this node cosigned (200, the signed note), or 404 when it holds none. A facility sees
/// only what is held of its own log.
pub async fn view(state: &Arc<NodeState>, peer: &PeerIdentity) -> PeerResponse {
    let origin = checkpoint::origin(peer.facility.as_str());
    match state.store.witnessed(&origin) {
        Ok(Some(held)) => {
            let mut resp = text_response(StatusCode::OK, "");
            *resp.body_mut() = Full::new(Bytes::from(held.note));
            resp
        }
        Ok(None) => text_response(StatusCode::NOT_FOUND, "no checkpoint of your log is held"),
        Err(e) => {
            tracing::error!(error = %e, "witness state unreadable");
            text_response(StatusCode::SERVICE_UNAVAILABLE, "witness state unreadable")
        }
    }
}

/// A witness's view of this node's log: its id, and the checkpoint it holds (`None`: it
/// holds none), or why it could not be asked.
pub type WitnessView = (String, Result<Option<Vec<u8>>, String>);

/// Each witness's view of this node's log.
pub async fn views(state: &NodeState) -> Vec<WitnessView> {
    let mut out = Vec::new();
    for peer in witnesses(state) {
        let answer = state
            .clients
            .post(
                &peer,
                VIEW_PATH,
                Vec::new(),
                Duration::from_secs(10),
                MAX_REQUEST_BYTES,
            )
            .await
            .and_then(|(status, body)| match status {
                StatusCode::OK => Ok(Some(body.to_vec())),
                StatusCode::NOT_FOUND => Ok(None),
                other => Err(format!("answered {}", other.as_u16())),
            });
        out.push((peer.id.to_string(), answer));
    }
    out
}

/// 409 with the size this witness holds (C2SP tlog-witness): the log retries from it.
fn size_conflict(held_size: u64) -> PeerResponse {
    let mut resp = text_response(StatusCode::CONFLICT, &format!("{held_size}\n"));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/x.tlog.size"),
    );
    resp
}

/// Refuses a checkpoint that contradicts what this witness holds: kept as evidence, audited,
/// raised as an alert.
async fn conflict(
    state: &NodeState,
    peer: &PeerIdentity,
    origin: &str,
    reason: &str,
    note: &[u8],
) -> PeerResponse {
    tracing::error!(
        alert = "witness_conflict",
        origin = %origin,
        reason = %reason,
        "a facility's audit log checkpoint contradicts the one witnessed"
    );
    if let Err(e) = state.store.witness_conflict_put(origin, reason, note) {
        tracing::error!(error = %e, "witness conflict not kept");
    }
    let mut rec = audit::record(event::WITNESS_CONFLICT, "refused");
    rec.peer = Some(peer.facility.to_string());
    rec.reason = Some(format!("checkpoint of {origin}: {reason}"));
    let _ = audit::append_durable(&state.store, rec).await;
    text_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("checkpoint refused: {reason}"),
    )
}

/// The witnesses of this node's log: the active members `audit.witnesses` names (all of
/// them when it names none), by id, this node excepted, at most `audit.max_witnesses`.
pub fn witnesses(state: &NodeState) -> Vec<crate::trust::Peer> {
    let trust = state.trust();
    let chosen = &state.config.audit.witnesses;
    let mut peers: Vec<_> = trust
        .directory
        .facilities
        .iter()
        .filter(|f| f.id != *state.me())
        .filter(|f| chosen.is_empty() || chosen.iter().any(|c| c == f.id.as_str()))
        .filter_map(|f| trust.peer(&f.id))
        .filter(|p| p.active)
        .collect();
    peers.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    peers.truncate(state.config.audit.max_witnesses);
    peers
}

/// Submits the latest checkpoint to every witness that has not cosigned it yet. Failures are
/// logged and retried at the next round.
pub async fn submit_all(state: &Arc<NodeState>) {
    let Ok(Some((size, note))) = state.store.checkpoint_latest() else {
        return;
    };
    for peer in witnesses(state) {
        let id = peer.id.to_string();
        let done = match state.store.cosigned_size(&id) {
            Ok(done) if done >= size => continue,
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, witness = %id, "witness progress unreadable");
                continue;
            }
        };
        if let Err(e) = submit(state, &peer, done, size, &note).await {
            tracing::warn!(witness = %id, size, error = %e, "checkpoint not cosigned yet");
        }
    }
}

/// Submits our checkpoint of `size` to `peer`, from `old`, the size it last cosigned.
async fn submit(
    state: &NodeState,
    peer: &crate::trust::Peer,
    mut old: u64,
    size: u64,
    note: &[u8],
) -> Result<(), String> {
    let id = peer.id.to_string();
    // At most two rounds: a 409 tells the size the witness holds (a witness that lost its
    // state, or a progress record this node lost).
    for _ in 0..2 {
        let proof = state
            .store
            .audit_consistency_proof(old, size)
            .map_err(|e| e.to_string())?;
        let (status, answer) = post(state, peer, request_body(old, &proof, note)).await?;
        match status {
            StatusCode::OK => {
                let line = String::from_utf8_lossy(&answer).into_owned();
                let text = note_text(note).ok_or("own checkpoint malformed")?;
                let name = witness_name(&id);
                if !peer
                    .signing_keys
                    .iter()
                    .any(|k| verify_cosignature(&line, &name, k, text).is_ok())
                {
                    return Err("the witness's cosignature does not verify".to_owned());
                }
                state
                    .store
                    .cosignature_put(size, &name, line.as_bytes())
                    .map_err(|e| e.to_string())?;
                state
                    .store
                    .set_cosigned_size(&id, size)
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            StatusCode::CONFLICT => {
                let held = String::from_utf8_lossy(&answer)
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| "409 without a size")?;
                if held > size {
                    return Err(format!(
                        "the witness holds {held} entries, more than {size}"
                    ));
                }
                old = held;
            }
            other => {
                return Err(format!(
                    "witness answered {}: {}",
                    other.as_u16(),
                    String::from_utf8_lossy(&answer)
                ))
            }
        }
    }
    Err("the witness's size kept changing".to_owned())
}

async fn post(
    state: &NodeState,
    peer: &crate::trust::Peer,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    state
        .clients
        .post(
            peer,
            WITNESS_PATH,
            body,
            Duration::from_secs(30),
            MAX_REQUEST_BYTES,
        )
        .await
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&[seed; 32]);
        SigningKey::from_pkcs8(&der).unwrap()
    }

    #[test]
    fn a_cosignature_verifies_for_its_checkpoint_witness_and_key_only() {
        let witness = key(1);
        let text = b"healthfed/hosp-a/audit\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let name = witness_name("clinic-b");
        let line = cosign(&name, &witness, 1_700_000_000, text);
        assert!(line.starts_with("\u{2014} healthfed/clinic-b/witness "));
        let public = witness.verifying_key();
        assert_eq!(
            verify_cosignature(&line, &name, &public, text),
            Ok(1_700_000_000)
        );
        assert!(verify_cosignature(&line, &name, &key(2).verifying_key(), text).is_err());
        assert!(verify_cosignature(&line, &witness_name("clinic-c"), &public, text).is_err());
        let other = b"healthfed/hosp-a/audit\n6\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        assert!(verify_cosignature(&line, &name, &public, other).is_err());
    }

    #[test]
    fn add_checkpoint_requests_round_trip_and_malformed_ones_are_refused() {
        let note = b"healthfed/a/audit\n2\nroot\n\n\xe2\x80\x94 sig\n";
        let body = request_body(1, &[[7; 32], [8; 32]], note);
        let parsed = parse_request(&body).unwrap();
        assert_eq!(parsed.old, 1);
        assert_eq!(parsed.proof, vec![[7; 32], [8; 32]]);
        assert_eq!(parsed.note, note);
        assert_eq!(note_text(note), Some(&b"healthfed/a/audit\n2\nroot\n"[..]));
        for bad in [
            &b"old x\n\nnote"[..],
            b"old 1\nnot-base64!\n\nnote",
            b"no blank line",
        ] {
            assert!(parse_request(bad).is_err());
        }
    }
}
