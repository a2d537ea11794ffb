//! Federation trust: the CA, the CRL and the signed directory, and the rustls configurations built
//! from them. Only this module and `transport` touch rustls.
//!
//! A `Trust` is immutable; a reload builds a new one and swaps it in (`TrustHandle`), so a
//! connection always sees one consistent view. A directory that fails verification, is older
//! than the one in use, or a CRL that does not parse, leaves the current view in place.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};

use gateway_envelope::{EncryptionPublicKey, VerifyingKey};
use pki_tools::directory::{verify_directory, Directory, FacilityEntry};
use pki_tools::{FacilityId, FacilityKind, FacilityStatus};

use crate::config::NodeConfig;
use crate::trust::identity::NodeIdentity;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("federation directory: {0}")]
    Directory(String),
    #[error("tls configuration: {0}")]
    Tls(String),
    #[error("this node's facility {0} is not active in the federation directory")]
    SelfNotListed(String),
}

/// A peer as the directory describes it, with the keys a transfer needs.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: FacilityId,
    pub kind: FacilityKind,
    pub endpoint: String,
    pub active: bool,
    pub tls_fingerprints: Vec<[u8; 32]>,
    pub signing_keys: Vec<VerifyingKey>,
    pub encryption_key: EncryptionPublicKey,
}

impl Peer {
    fn from_entry(e: &FacilityEntry) -> Peer {
        Peer {
            id: e.id.clone(),
            kind: e.kind,
            endpoint: e.endpoint.clone(),
            active: e.status == FacilityStatus::Active,
            tls_fingerprints: e.tls_cert_sha256.clone(),
            signing_keys: e.signing_keys.iter().map(|k| VerifyingKey(*k)).collect(),
            encryption_key: EncryptionPublicKey(e.encryption_key),
        }
    }

    pub fn kind_name(&self) -> String {
        self.kind.to_string()
    }
}

/// One consistent view of who belongs to the federation.
pub struct Trust {
    pub directory: Directory,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    sources: Sources,
    /// The certificate of the node identity the TLS configs were built with: a reload also
    /// rebuilds them when the identity changed (`trust::identity`).
    identity_cert: [u8; 32],
}

#[derive(Clone, PartialEq, Eq)]
struct Sources {
    directory_mtime: Option<SystemTime>,
    crl_mtime: Option<SystemTime>,
    cert_mtime: Option<SystemTime>,
}

impl Trust {
    pub fn load(
        config: &NodeConfig,
        identity: &NodeIdentity,
        min_version: Option<u64>,
    ) -> Result<Trust, TrustError> {
        let sources = Sources::read(config);
        let ca_der = read_single_cert(&config.keys.ca_cert)?;
        let dir_bytes = read(&config.federation.directory)?;
        let directory = verify_directory(&dir_bytes, &ca_der, now_unix(), min_version)
            .map_err(|e| TrustError::Directory(e.to_string()))?;
        let me = directory
            .facility(&config.facility_id)
            .filter(|e| e.status == FacilityStatus::Active);
        if me.is_none() {
            return Err(TrustError::SelfNotListed(config.facility_id.to_string()));
        }
        let crls = read_crls(&config.federation.crl)?;
        let (server, client) = build_tls(&ca_der, crls, identity)?;
        Ok(Trust {
            directory,
            server: Arc::new(server),
            client: Arc::new(client),
            sources,
            identity_cert: identity.tls_fingerprint(),
        })
    }

    pub fn peer(&self, id: &FacilityId) -> Option<Peer> {
        self.directory.facility(id).map(Peer::from_entry)
    }

    pub fn peer_by_str(&self, id: &str) -> Option<Peer> {
        id.parse::<FacilityId>().ok().and_then(|id| self.peer(&id))
    }
}

/// The node's current `Trust`, swapped atomically on reload.
#[derive(Clone)]
pub struct TrustHandle {
    inner: Arc<RwLock<Arc<Trust>>>,
    config: Arc<NodeConfig>,
}

impl TrustHandle {
    pub fn new(trust: Trust, config: Arc<NodeConfig>) -> TrustHandle {
        TrustHandle {
            inner: Arc::new(RwLock::new(Arc::new(trust))),
            config,
        }
    }

    pub fn current(&self) -> Arc<Trust> {
        match self.inner.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads if any source file or the node identity changed. Returns `Ok(true)` when a new
    /// view was installed.
    pub fn reload_if_changed(&self, identity: &NodeIdentity) -> Result<bool, TrustError> {
        let current = self.current();
        if Sources::read(&self.config) == current.sources
            && current.identity_cert == identity.tls_fingerprint()
        {
            return Ok(false);
        }
        let fresh = Trust::load(&self.config, identity, Some(current.directory.version))?;
        match self.inner.write() {
            Ok(mut guard) => *guard = Arc::new(fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
        }
        Ok(true)
    }
}

impl Sources {
    fn read(config: &NodeConfig) -> Sources {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Sources {
            directory_mtime: mtime(&config.federation.directory),
            crl_mtime: mtime(&config.federation.crl),
            cert_mtime: mtime(&config.keys.tls_cert),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_tls(
    ca_der: &CertificateDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    identity: &NodeIdentity,
) -> Result<(ServerConfig, ClientConfig), TrustError> {
    let tls = |e: &dyn std::fmt::Display| TrustError::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone()).map_err(|e| tls(&e))?;
    let roots = Arc::new(roots);

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| tls(&e))?;
    let chain = vec![identity.tls_cert.clone()];
    let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.tls_key_der().to_vec()));
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key())
        .map_err(|e| tls(&e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| tls(&e))?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key())
        .map_err(|e| tls(&e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((server, client))
}

fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub fn read_single_cert(path: &Path) -> Result<CertificateDer<'static>, TrustError> {
    let bytes = read(path)?;
    let mut slice = bytes.as_slice();
    let first = rustls_pemfile::certs(&mut slice).next();
    match first {
        Some(Ok(cert)) => Ok(cert),
        _ => Err(TrustError::Invalid {
            path: path.display().to_string(),
            problem: "no PEM certificate found".to_owned(),
        }),
    }
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TrustError> {
    let bytes = read(path)?;
    let mut slice = bytes.as_slice();
    let crls: Result<Vec<_>, _> = rustls_pemfile::crls(&mut slice).collect();
    match crls {
        Ok(crls) if !crls.is_empty() => Ok(crls),
        _ => Err(TrustError::Invalid {
            path: path.display().to_string(),
            problem: "no PEM X509 CRL found".to_owned(),
        }),
    }
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn now_ms() -> u64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    u64::try_from(nanos / 1_000_000).unwrap_or(0)
}
