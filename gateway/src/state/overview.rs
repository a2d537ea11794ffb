//! What an operator asks of a node at a glance, read from `NodeState` and the store at the
//! moment of asking: its identity and when its certificates and trust files run out, and per
//! peer whether it is reachable and what waits for it. `ops::metrics` turns it into gauges,
//! `api::status` into `GET /v1/status` (`gateway status`).
//!
//! Invariant: read-only, and it carries ids, counts, times and the delivery's last error text
//! (which names peers and reasons, never record content); never a patient or a transfer's
//! content.

use std::collections::BTreeMap;

use gateway_store::TransferState;
use pki_tools::FacilityStatus;

use crate::state::circuits::CircuitView;
use crate::state::NodeState;
use crate::trust::{freshness, now_ms, now_unix, read_single_cert};

/// At most this many of the latest delivery errors are kept in an overview.
const MAX_LAST_ERRORS: usize = 10;

/// How many of the newest outbound transfers are looked at for recent failures (a bounded
/// read, however long the history).
const RECENT_TRANSFERS: usize = 200;

pub struct Overview {
    /// Unix seconds when it was taken.
    pub now: i64,
    /// The same instant in Unix ms (queue ages are in ms).
    pub now_ms: u64,
    pub facility: String,
    pub tls_fingerprint: [u8; 32],
    pub signing_key: [u8; 32],
    /// notAfter of the node's TLS certificate (Unix seconds), if it parses.
    pub cert_not_after: Option<i64>,
    /// notAfter of the federation CA certificate on disk (`keys.ca_cert`).
    pub ca_not_after: Option<i64>,
    pub directory_version: u64,
    pub directory_issued_at: i64,
    pub directory_expires_at: i64,
    pub directory_fresh: bool,
    /// thisUpdate of the newest CRL in the file (`federation.crl`), if it parses.
    pub crl_this_update: Option<i64>,
    pub crl_next_update: i64,
    /// nextUpdate plus `federation.crl_grace_secs`: handshakes fail closed from then on.
    pub crl_deadline: i64,
    pub crl_fresh: bool,
    /// Every other facility of the directory, and any recipient with pending transfers that it
    /// no longer lists; by id.
    pub peers: Vec<PeerView>,
    /// The latest errors of pending transfers and of recent failed ones, newest first.
    pub last_errors: Vec<LastError>,
}

pub struct PeerView {
    pub id: String,
    /// Listed and active in the directory in force.
    pub active: bool,
    /// Open while the peer is unreachable (`state::circuits`).
    pub circuit: Option<CircuitView>,
    /// Transfers queued or being delivered to it.
    pub pending: u64,
    /// When the oldest of them was submitted, Unix ms.
    pub oldest_pending_ms: Option<u64>,
}

pub struct LastError {
    pub transfer_id: String,
    /// `queued`/`delivering` (will be retried) or `failed` (delivery gave up).
    pub state: &'static str,
    pub peer: String,
    pub at_ms: u64,
    pub attempts: u32,
    pub error: String,
}

impl Overview {
    /// Reads the outbox's pending entries (its due index: the settled history is not read),
    /// so call it off the async workers.
    pub fn collect(state: &NodeState) -> Result<Overview, gateway_store::StoreError> {
        let now_ms = now_ms();
        let now = i64::try_from(now_ms / 1000).unwrap_or_else(|_| now_unix());
        let identity = state.identity();
        let trust = state.trust();
        let dir = &trust.directory;

        let mut peers: BTreeMap<String, PeerView> = dir
            .facilities
            .iter()
            .filter(|f| f.id != *state.me())
            .map(|f| {
                let id = f.id.to_string();
                let view = PeerView {
                    active: f.status == FacilityStatus::Active,
                    circuit: state.circuits.view(&id),
                    pending: 0,
                    oldest_pending_ms: None,
                    id: id.clone(),
                };
                (id, view)
            })
            .collect();
        let mut errors = Vec::new();
        for entry in state.store.outbox_pending_iter() {
            let entry = entry?;
            let peer = peers
                .entry(entry.recipient.clone())
                .or_insert_with(|| PeerView {
                    id: entry.recipient.clone(),
                    active: false,
                    circuit: state.circuits.view(&entry.recipient),
                    pending: 0,
                    oldest_pending_ms: None,
                });
            peer.pending += 1;
            // Submission time: a requeued transfer shows its whole wait (the clock may have
            // stepped back since, hence the bound).
            let since = entry.created_ms.min(now_ms);
            peer.oldest_pending_ms = Some(peer.oldest_pending_ms.map_or(since, |o| o.min(since)));
            if let Some(error) = &entry.last_error {
                errors.push(LastError {
                    transfer_id: hex::encode(entry.transfer_id),
                    state: entry.state.as_str(),
                    peer: entry.recipient.clone(),
                    at_ms: entry.updated_ms,
                    attempts: entry.attempts,
                    error: error.clone(),
                });
            }
        }
        for entry in state.store.outbox_page(None, RECENT_TRANSFERS)? {
            if let (TransferState::Failed, Some(error)) = (entry.state, &entry.last_error) {
                errors.push(LastError {
                    transfer_id: hex::encode(entry.transfer_id),
                    state: entry.state.as_str(),
                    peer: entry.recipient.clone(),
                    at_ms: entry.updated_ms,
                    attempts: entry.attempts,
                    error: error.clone(),
                });
            }
        }
        errors.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        errors.truncate(MAX_LAST_ERRORS);

        let ca_not_after = read_single_cert(&state.config.keys.ca_cert)
            .ok()
            .and_then(|der| not_after(&der));
        Ok(Overview {
            now,
            now_ms,
            facility: state.me().to_string(),
            tls_fingerprint: identity.tls_fingerprint(),
            signing_key: identity.verifying_key().0,
            cert_not_after: not_after(&identity.tls_cert),
            ca_not_after,
            directory_version: dir.version,
            directory_issued_at: dir.issued_at,
            directory_expires_at: dir.expires_at,
            directory_fresh: freshness::check_directory(dir.version, dir.expires_at, now).is_ok(),
            crl_this_update: this_update(&state.config.federation.crl),
            crl_next_update: trust.crl.next_update,
            crl_deadline: trust.crl.deadline(),
            crl_fresh: trust.crl.check(now).is_ok(),
            peers: peers.into_values().collect(),
            last_errors: errors,
        })
    }
}

/// A certificate's notAfter in Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, cert)| cert.validity().not_after.timestamp())
}

/// The latest thisUpdate of the CRLs in a PEM file (the trust layer verified them at load;
/// this only dates them for the operator).
fn this_update(path: &std::path::Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let mut slice = pem.as_slice();
    let latest = rustls_pemfile::crls(&mut slice)
        .filter_map(Result::ok)
        .filter_map(|der| {
            x509_parser::parse_x509_crl(&der)
                .ok()
                .map(|(_, crl)| crl.last_update().timestamp())
        })
        .max();
    latest
}
