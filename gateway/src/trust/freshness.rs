//! Freshness of the trust files while the node runs: a directory past its `expires_at` and a
//! CRL past its nextUpdate plus the grace (`federation.crl_grace_secs`) are checked on every
//! use, not only when they are loaded, so a node whose operator stopped publishing stops
//! sending and receiving instead of trusting a stale view forever.
//!
//! The CRL deadline is enforced inside the TLS handshake by wrapping rustls' webpki verifiers:
//! rustls' own `ExpirationPolicy::Enforce` refuses a CRL from the instant of its nextUpdate, with
//! no grace, so the wrappers refuse the handshake once `next_update + grace` has passed and
//! otherwise hand the whole check (chain, validity, revocation) to webpki unchanged.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Why the trust in use may not serve a new send or receive now. Retryable: it ends when the
/// operator's fresh files are loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("federation directory expired at {} (version {version}); publish a fresh one", rfc3339(*expires_at))]
    DirectoryExpired { version: u64, expires_at: i64 },
    #[error("federation CRL is stale since {} (nextUpdate {} plus a grace of {grace_secs} s); publish a fresh one", rfc3339(*deadline), rfc3339(*next_update))]
    CrlStale {
        next_update: i64,
        grace_secs: u64,
        deadline: i64,
    },
}

impl Stale {
    /// The `alert` field of the log line that reports it: stable, for operators' alert rules.
    pub fn alert(&self) -> &'static str {
        match self {
            Stale::DirectoryExpired { .. } => "directory_expired",
            Stale::CrlStale { .. } => "crl_stale",
        }
    }
}

/// Until when the CRL in use may be used: its earliest nextUpdate plus the grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlDeadline {
    pub next_update: i64,
    pub grace_secs: u64,
}

impl CrlDeadline {
    pub fn deadline(&self) -> i64 {
        self.next_update
            .saturating_add(i64::try_from(self.grace_secs).unwrap_or(i64::MAX))
    }

    /// Stale once `now` is past the deadline (the deadline itself is still fresh).
    pub fn check(&self, now: i64) -> Result<(), Stale> {
        if now > self.deadline() {
            return Err(Stale::CrlStale {
                next_update: self.next_update,
                grace_secs: self.grace_secs,
                deadline: self.deadline(),
            });
        }
        Ok(())
    }

    fn check_at(&self, now: UnixTime) -> Result<(), rustls::Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        self.check(now)
            .map_err(|stale| rustls::Error::General(stale.to_string()))
    }
}

/// Checks a directory's expiry: it is refused from `expires_at` on (as `pki-tools` does at load).
pub fn check_directory(version: u64, expires_at: i64, now: i64) -> Result<(), Stale> {
    if now >= expires_at {
        return Err(Stale::DirectoryExpired {
            version,
            expires_at,
        });
    }
    Ok(())
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix {unix}"))
}

/// The peer listener's client verifier: the CRL deadline, then webpki.
#[derive(Debug)]
pub(super) struct FreshClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) crl: CrlDeadline,
}

impl ClientCertVerifier for FreshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.crl.check_at(now)?;
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// The outbound connections' server verifier: the CRL deadline, then webpki.
#[derive(Debug)]
pub(super) struct FreshServerVerifier {
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) crl: CrlDeadline,
}

impl ServerCertVerifier for FreshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.crl.check_at(now)?;
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use super::*;

    #[test]
    fn the_crl_is_fresh_through_its_grace_and_stale_after() {
        let crl = CrlDeadline {
            next_update: 1_000,
            grace_secs: 60,
        };
        assert_eq!(crl.check(1_000), Ok(()));
        assert_eq!(crl.check(1_060), Ok(()));
        let stale = crl.check(1_061).unwrap_err();
        assert_eq!(stale.alert(), "crl_stale");
        assert!(stale.to_string().contains("publish a fresh one"), "{stale}");
        // No grace: stale right after nextUpdate, as rustls' ExpirationPolicy::Enforce.
        let strict = CrlDeadline {
            next_update: 1_000,
            grace_secs: 0,
        };
        assert!(strict.check(1_001).is_err());
        // A grace too large to add saturates instead of wrapping into the past.
        let huge = CrlDeadline {
            next_update: 1_000,
            grace_secs: u64::MAX,
        };
        assert_eq!(huge.check(i64::MAX), Ok(()));
    }

    #[test]
    fn the_directory_is_refused_from_its_expiry_on() {
        assert_eq!(check_directory(3, 1_000, 999), Ok(()));
        let expired = check_directory(3, 1_000, 1_000).unwrap_err();
        assert_eq!(expired.alert(), "directory_expired");
        assert_eq!(
            expired.to_string(),
            "federation directory expired at 1970-01-01T00:16:40Z (version 3); publish a fresh one"
        );
    }
}
