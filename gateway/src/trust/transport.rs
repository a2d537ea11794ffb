//! Mutual TLS between nodes: who a connected peer is (from its certificate, never a header), and
//! pooled outbound HTTP/2 connections that check the server is the facility being addressed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use pki_tools::{cert_fingerprint, facility_id_from_cert, Endpoint, FacilityId};

use super::{Peer, Stale, Trust, TrustHandle};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// HTTP/2 windows sized for multi-megabyte records: the defaults (64 KiB) cap throughput per
/// stream at one window per round trip.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// A peer authenticated by mutual TLS and found active in the directory.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub facility: FacilityId,
    pub fingerprint: [u8; 32],
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdentityRejection {
    #[error("no client certificate")]
    NoCertificate,
    #[error("certificate carries no facility id")]
    NoFacilityId,
    #[error("facility {0} is not in the federation directory")]
    NotInDirectory(String),
    #[error("facility {0} is not active in the federation directory")]
    Inactive(String),
    #[error("facility {0} presented a certificate the directory does not list")]
    UnlistedCertificate(String),
    #[error("server is facility {found}, expected {expected}")]
    WrongFacility { found: String, expected: String },
}

impl IdentityRejection {
    /// The facility the certificate claims, when known (for the audit entry).
    pub fn claimed_facility(&self) -> Option<&str> {
        match self {
            IdentityRejection::NotInDirectory(f)
            | IdentityRejection::Inactive(f)
            | IdentityRejection::UnlistedCertificate(f) => Some(f),
            IdentityRejection::WrongFacility { found, .. } => Some(found),
            _ => None,
        }
    }
}

/// Maps a verified certificate chain (rustls has already checked CA, validity and CRL) to a
/// facility the directory lists as active, with this exact certificate.
pub fn identify(
    certs: Option<&[CertificateDer<'_>]>,
    trust: &Trust,
) -> Result<PeerIdentity, IdentityRejection> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(IdentityRejection::NoCertificate)?;
    let facility = facility_id_from_cert(leaf).map_err(|_| IdentityRejection::NoFacilityId)?;
    let peer = trust
        .peer(&facility)
        .ok_or_else(|| IdentityRejection::NotInDirectory(facility.to_string()))?;
    if !peer.active {
        return Err(IdentityRejection::Inactive(facility.to_string()));
    }
    let fingerprint = cert_fingerprint(leaf);
    if !peer.tls_fingerprints.contains(&fingerprint) {
        return Err(IdentityRejection::UnlistedCertificate(facility.to_string()));
    }
    Ok(PeerIdentity {
        facility,
        fingerprint,
    })
}

/// Checks an identity established earlier (at the handshake) against the current trust: the
/// facility must still be active and its certificate still listed. A connection outlives trust
/// reloads (HTTP/2 connections are pooled and kept alive), so a revocation must also reach the
/// requests of connections that were accepted before it.
pub fn still_trusted(identity: &PeerIdentity, trust: &Trust) -> Result<(), IdentityRejection> {
    let facility = identity.facility.to_string();
    let peer = trust
        .peer(&identity.facility)
        .ok_or_else(|| IdentityRejection::NotInDirectory(facility.clone()))?;
    if !peer.active {
        return Err(IdentityRejection::Inactive(facility));
    }
    if !peer.tls_fingerprints.contains(&identity.fingerprint) {
        return Err(IdentityRejection::UnlistedCertificate(facility));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("peer {peer}: endpoint is not https://HOST:PORT")]
    Endpoint { peer: String },
    #[error("peer {peer}: connect: {source}")]
    Connect {
        peer: String,
        source: std::io::Error,
    },
    #[error("peer {peer}: connect timed out")]
    Timeout { peer: String },
    #[error("peer {peer}: tls: {source}")]
    Tls {
        peer: String,
        source: std::io::Error,
    },
    #[error("peer {peer}: {source}")]
    Identity {
        peer: String,
        source: IdentityRejection,
    },
    #[error("peer {peer}: http/2 handshake: {source}")]
    Http { peer: String, source: hyper::Error },
    /// This node's own trust view is stale: nothing is sent until fresh files are loaded.
    #[error("peer {peer}: not contacted: {source}")]
    Stale { peer: String, source: Stale },
}

/// One HTTP/2 connection per peer, shared by all concurrent transfers to it and re-established
/// when it closes.
#[derive(Clone)]
pub struct PeerClients {
    trust: TrustHandle,
    connect_timeout: Duration,
    conns: Arc<tokio::sync::Mutex<HashMap<FacilityId, SendRequest<Body>>>>,
}

impl PeerClients {
    pub fn new(trust: TrustHandle, connect_timeout: Duration) -> PeerClients {
        PeerClients {
            trust,
            connect_timeout,
            conns: Arc::default(),
        }
    }

    /// POSTs `body` to `path` on `peer` and reads the answer (at most `limit` bytes) within
    /// `timeout`: the one-shot peer calls (pull requests, witness submissions). Errors name
    /// the peer, never the body.
    pub async fn post(
        &self,
        peer: &Peer,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), String> {
        use http_body_util::{BodyExt, Limited};
        let mut sender = self.sender(peer).await.map_err(|e| e.to_string())?;
        let body: Body = Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed();
        let request = http::Request::post(format!("https://{}{path}", peer.id))
            .body(body)
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(timeout, sender.send_request(request))
            .await
            .map_err(|_| format!("peer {}: timed out", peer.id))?
            .map_err(|e| format!("peer {}: {e}", peer.id))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("peer {}: {e}", peer.id))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// A connection to `peer`, pooled or new. Refused while this node's directory is expired or
    /// its CRL stale, pooled connections included: what is sent is decided on a current view.
    pub async fn sender(&self, peer: &Peer) -> Result<SendRequest<Body>, ConnectError> {
        self.trust.usable().map_err(|source| ConnectError::Stale {
            peer: peer.id.to_string(),
            source,
        })?;
        let mut conns = self.conns.lock().await;
        if let Some(existing) = conns.get(&peer.id) {
            if !existing.is_closed() {
                return Ok(existing.clone());
            }
        }
        let fresh = tokio::time::timeout(self.connect_timeout, self.connect(peer))
            .await
            .map_err(|_| ConnectError::Timeout {
                peer: peer.id.to_string(),
            })??;
        conns.insert(peer.id.clone(), fresh.clone());
        Ok(fresh)
    }

    /// Drops a connection after a transport error so the next attempt reconnects.
    pub async fn forget(&self, peer: &FacilityId) {
        self.conns.lock().await.remove(peer);
    }

    /// Drops every pooled connection (the node identity changed: new connections present the
    /// new certificate; requests in flight on the old ones finish).
    pub async fn forget_all(&self) {
        self.conns.lock().await.clear();
    }

    async fn connect(&self, peer: &Peer) -> Result<SendRequest<Body>, ConnectError> {
        let name = peer.id.to_string();
        let endpoint: Endpoint = peer
            .endpoint
            .parse()
            .map_err(|_| ConnectError::Endpoint { peer: name.clone() })?;
        let host = endpoint.host().to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| ConnectError::Endpoint { peer: name.clone() })?;
        let tcp = TcpStream::connect((host.as_str(), endpoint.port()))
            .await
            .map_err(|source| ConnectError::Connect {
                peer: name.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let trust = self.trust.current();
        let tls = TlsConnector::from(trust.client.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                peer: name.clone(),
                source,
            })?;
        let identity = identify(tls.get_ref().1.peer_certificates(), &trust).map_err(|source| {
            ConnectError::Identity {
                peer: name.clone(),
                source,
            }
        })?;
        if identity.facility != peer.id {
            return Err(ConnectError::Identity {
                peer: name.clone(),
                source: IdentityRejection::WrongFacility {
                    found: identity.facility.to_string(),
                    expected: name,
                },
            });
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(256 * 1024)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| ConnectError::Http {
                peer: name.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer = %name, error = %e, "peer connection closed");
            }
        });
        Ok(sender)
    }
}

/// A response of the peer protocol: small bodies (receipts, refusal reasons, answers).
pub type PeerResponse = Response<Full<Bytes>>;

pub fn text_response(status: StatusCode, text: &str) -> PeerResponse {
    let mut resp = Response::new(Full::new(Bytes::from(text.to_owned())));
    *resp.status_mut() = status;
    resp
}
