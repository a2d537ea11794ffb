//! TLS to an audit collector (a SIEM's syslog receiver, RFC 5425): the collector's certificate
//! must chain to the CA the operator names in `[audit.syslog] ca_file` and carry the host name
//! (or IP) of `address`. The federation's CA is not used: the collector is outside the
//! federation.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum CollectorTlsError {
    #[error("operator: audit.syslog.ca_file: {0}")]
    Ca(String),
    #[error("operator: audit.syslog.address: not a valid TLS server name")]
    ServerName,
    #[error("collector: TLS handshake: {0}")]
    Handshake(std::io::Error),
}

/// A connector that trusts only the certificates in `ca_file` (PEM).
pub fn connector(ca_file: &Path) -> Result<TlsConnector, CollectorTlsError> {
    let pem = std::fs::read(ca_file).map_err(|e| CollectorTlsError::Ca(e.kind().to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|_| CollectorTlsError::Ca("not PEM certificates".to_owned()))?;
        roots
            .add(cert)
            .map_err(|e| CollectorTlsError::Ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(CollectorTlsError::Ca("holds no certificate".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        // TLS 1.3, or 1.2, which RFC 5425 (as updated by RFC 9662) still requires and which
        // many collectors speak only (Debian 12's rsyslog GnuTLS driver among them).
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CollectorTlsError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Runs the TLS handshake with the collector at `host` over `tcp`.
pub async fn connect(
    connector: &TlsConnector,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, CollectorTlsError> {
    let name = ServerName::try_from(host.to_owned()).map_err(|_| CollectorTlsError::ServerName)?;
    connector
        .connect(name, tcp)
        .await
        .map_err(CollectorTlsError::Handshake)
}
