//! Federation trust: the CA, the CRL and the signed directory, and the rustls configurations built
//! from them. Only this module and `transport` touch rustls.
//!
//! A `Trust` is immutable; a reload builds a new one and swaps it in (`TrustHandle`), so a
//! connection always sees one consistent view. A directory that fails verification, is older
//! than the highest one this node has accepted (kept in the store, so also across restarts), has
//! that version with other content, or a CRL whose signature does not verify with the CA or
//! that is stale, leaves the current view in place; at start, it refuses the start. Every
//! directory accepted is also kept in the store with the time it took effect
//! (`gateway_store::directories`), so that an evidence file can carry the one in force when a
//! transfer was signed. While it
//! runs, the view's own freshness is checked on use (`Trust::usable`, `trust::freshness`).

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};

use gateway_envelope::{EncryptionPublicKey, VerifyingKey};
use gateway_store::directories::KeptDirectory;
use gateway_store::{DirectorySeen, Store};
use pki_tools::crl::verify_crl;
use pki_tools::directory::{verify_directory_file, Directory, DirectoryError, FacilityEntry};
use pki_tools::{FacilityId, FacilityKind, FacilityStatus};

use crate::config::NodeConfig;
use crate::trust::freshness::{self, CrlDeadline, FreshClientVerifier, FreshServerVerifier, Stale};
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
    #[error("federation directory: version {version} is older than version {seen}, which this node has already used (recorded in its store); refused: publish a newer version")]
    DirectoryRollback { version: u64, seen: u64 },
    #[error("federation directory: version {version} has other content than the version {version} this node has already used (recorded in its store); refused: publish a newer version")]
    DirectoryConflict { version: u64 },
    #[error("{path}: CRL refused: {problem}")]
    Crl { path: String, problem: String },
    #[error("{path}: {stale}")]
    CrlStale { path: String, stale: Stale },
    #[error("store: the highest directory accepted: {0}")]
    Store(String),
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
    /// SHA-256 of the directory's signed payload (`pki_tools::directory::VerifiedDirectory`).
    pub directory_digest: [u8; 32],
    /// The signed directory file as read, kept in the store's history of accepted directories
    /// (for evidence of transfers signed under it).
    directory_file: Vec<u8>,
    /// Until when the CRL may be used (its nextUpdate plus `federation.crl_grace_secs`).
    pub crl: CrlDeadline,
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
    /// Loads and verifies the trust files. `floor` is the highest directory this node has
    /// accepted before: an older version, or the same version with another digest, is refused.
    pub fn load(
        config: &NodeConfig,
        identity: &NodeIdentity,
        floor: Option<DirectorySeen>,
    ) -> Result<Trust, TrustError> {
        let sources = Sources::read(config);
        let ca_der = read_single_cert(&config.keys.ca_cert)?;
        let dir_bytes = read(&config.federation.directory)?;
        let now = now_unix();
        let verified = verify_directory_file(&dir_bytes, &ca_der, now, floor.map(|f| f.version))
            .map_err(|e| match (e, floor) {
                (DirectoryError::Rollback { version, .. }, Some(seen)) => {
                    TrustError::DirectoryRollback {
                        version,
                        seen: seen.version,
                    }
                }
                (e, _) => TrustError::Directory(e.to_string()),
            })?;
        if let Some(seen) = floor {
            if seen.version == verified.directory.version && seen.digest != verified.digest {
                return Err(TrustError::DirectoryConflict {
                    version: seen.version,
                });
            }
        }
        let directory = verified.directory;
        let me = directory
            .facility(&config.facility_id)
            .filter(|e| e.status == FacilityStatus::Active);
        if me.is_none() {
            return Err(TrustError::SelfNotListed(config.facility_id.to_string()));
        }
        let crl_path = &config.federation.crl;
        let crls = read_crls(crl_path)?;
        let crl = crl_deadline(&crls, &ca_der, crl_path, config.federation.crl_grace_secs)?;
        crl.check(now).map_err(|stale| TrustError::CrlStale {
            path: crl_path.display().to_string(),
            stale,
        })?;
        let (server, client) = build_tls(&ca_der, crls, identity, crl)?;
        Ok(Trust {
            directory,
            directory_digest: verified.digest,
            directory_file: dir_bytes,
            crl,
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

    /// Whether this view may serve a new send or receive at `now` (Unix seconds): the
    /// directory has not expired and the CRL is within its nextUpdate plus grace. Two integer
    /// comparisons: checked on every use.
    pub fn usable(&self, now: i64) -> Result<(), Stale> {
        freshness::check_directory(self.directory.version, self.directory.expires_at, now)?;
        self.crl.check(now)
    }

    /// What the store records for this view's directory.
    pub fn directory_seen(&self) -> DirectorySeen {
        DirectorySeen {
            version: self.directory.version,
            digest: self.directory_digest,
        }
    }
}

/// The node's current `Trust`, swapped atomically on reload.
#[derive(Clone)]
pub struct TrustHandle {
    inner: Arc<RwLock<Arc<Trust>>>,
    config: Arc<NodeConfig>,
    /// Where the highest directory accepted is kept across restarts.
    store: Store,
    /// One reload at a time (interval, SIGHUP, receive and delivery paths may all ask), so the
    /// check against the recorded directory and the swap are not interleaved.
    reloading: Arc<Mutex<()>>,
}

impl TrustHandle {
    /// Loads the trust files at start, refusing a directory older than (or conflicting with)
    /// the highest one recorded in `store`, and records the one loaded.
    pub fn open(
        config: Arc<NodeConfig>,
        identity: &NodeIdentity,
        store: Store,
    ) -> Result<TrustHandle, TrustError> {
        let seen = store
            .directory_seen()
            .map_err(|e| TrustError::Store(e.to_string()))?;
        let trust = Trust::load(&config, identity, seen)?;
        record_seen(&store, &trust)?;
        Ok(TrustHandle {
            inner: Arc::new(RwLock::new(Arc::new(trust))),
            config,
            store,
            reloading: Arc::default(),
        })
    }

    pub fn current(&self) -> Arc<Trust> {
        match self.inner.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether the view in use may serve a new send or receive now (see `Trust::usable`).
    pub fn usable(&self) -> Result<(), Stale> {
        self.current().usable(now_unix())
    }

    /// Reloads if any source file or the node identity changed. Returns `Ok(true)` when a new
    /// view was installed. The new directory is recorded in the store before it is installed,
    /// so nothing is done with a version a restart could forget.
    pub fn reload_if_changed(&self, identity: &NodeIdentity) -> Result<bool, TrustError> {
        let _one_at_a_time = match self.reloading.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = self.current();
        if Sources::read(&self.config) == current.sources
            && current.identity_cert == identity.tls_fingerprint()
        {
            return Ok(false);
        }
        let recorded = self
            .store
            .directory_seen()
            .map_err(|e| TrustError::Store(e.to_string()))?;
        let floor = recorded
            .filter(|r| r.version > current.directory.version)
            .unwrap_or_else(|| current.directory_seen());
        let fresh = Trust::load(&self.config, identity, Some(floor))?;
        record_seen(&self.store, &fresh)?;
        match self.inner.write() {
            Ok(mut guard) => *guard = Arc::new(fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
        }
        Ok(true)
    }
}

/// Records the view's directory as the highest accepted, and keeps it in the history of
/// accepted directories (with now as the time it took effect, unless that version is already
/// kept). Durable with the next group commit, which every delivery claim and receipt awaits
/// before it has effect.
fn record_seen(store: &Store, trust: &Trust) -> Result<(), TrustError> {
    let seen = trust.directory_seen();
    match store.record_directory_seen(&seen) {
        Ok(Ok(())) => keep(store, trust),
        Ok(Err(recorded)) if recorded.version > seen.version => {
            Err(TrustError::DirectoryRollback {
                version: seen.version,
                seen: recorded.version,
            })
        }
        Ok(Err(recorded)) => Err(TrustError::DirectoryConflict {
            version: recorded.version,
        }),
        Err(e) => Err(TrustError::Store(e.to_string())),
    }
}

/// Keeps the view's directory in the store's history. A kept directory of that version with
/// other content refuses the view (the same rule as for the highest one seen).
fn keep(store: &Store, trust: &Trust) -> Result<(), TrustError> {
    let dir = KeptDirectory {
        version: trust.directory.version,
        digest: trust.directory_digest,
        effective_ms: now_ms(),
        file: trust.directory_file.clone(),
    };
    match store.keep_directory(&dir) {
        Ok(Ok(kept)) => {
            if kept.effective_ms == dir.effective_ms {
                tracing::info!(
                    version = dir.version,
                    digest = %hex::encode(dir.digest),
                    "federation directory kept in the history of accepted directories"
                );
            }
            Ok(())
        }
        Ok(Err(kept)) => Err(TrustError::DirectoryConflict {
            version: kept.version,
        }),
        Err(e) => Err(TrustError::Store(e.to_string())),
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
    crl: CrlDeadline,
) -> Result<(ServerConfig, ClientConfig), TrustError> {
    let tls = |e: &dyn std::fmt::Display| TrustError::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone()).map_err(|e| tls(&e))?;
    let roots = Arc::new(roots);

    // webpki checks chain, validity and revocation; the wrapper first refuses the handshake
    // once the CRL is past nextUpdate plus the grace (`trust::freshness` says why not
    // rustls' ExpirationPolicy).
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| tls(&e))?;
    let client_verifier = Arc::new(FreshClientVerifier {
        inner: client_verifier,
        crl,
    });
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
    let server_verifier = Arc::new(FreshServerVerifier {
        inner: server_verifier,
        crl,
    });
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_auth_cert(chain, key())
        .map_err(|e| tls(&e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((server, client))
}

/// Verifies every CRL in the file against the CA (issuer and signature) before any of it is
/// used, and returns the earliest nextUpdate with the grace.
fn crl_deadline(
    crls: &[CertificateRevocationListDer<'static>],
    ca_der: &CertificateDer<'static>,
    path: &Path,
    grace_secs: u64,
) -> Result<CrlDeadline, TrustError> {
    let mut next_update: Option<i64> = None;
    for crl in crls {
        let verified = verify_crl(crl.as_ref(), ca_der.as_ref()).map_err(|e| TrustError::Crl {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        next_update =
            Some(next_update.map_or(verified.next_update, |n| n.min(verified.next_update)));
    }
    let next_update = next_update.ok_or_else(|| TrustError::Invalid {
        path: path.display().to_string(),
        problem: "no PEM X509 CRL found".to_owned(),
    })?;
    Ok(CrlDeadline {
        next_update,
        grace_secs,
    })
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests;
