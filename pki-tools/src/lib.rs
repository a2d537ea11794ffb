//! Offline federation PKI for healthfed: the federation root CA, facility identities (TLS
//! certificate, Ed25519 signing key, X25519 encryption key), the CRL and the signed federation
//! directory that every gateway node loads and verifies.
//!
//! The `pki` binary is a thin CLI over [`Federation`]; the gateway uses [`keys`],
//! [`directory::verify_directory_file`], [`crl::verify_crl`], [`facility_id_from_cert`] and
//! [`cert_fingerprint`].
//!
//! Layouts (file names are in [`layout`]):
//! - federation directory: `ca.crt`, `ca.key` (0600), `federation.json`, and after publish
//!   `crl.pem` and `directory.json`;
//! - node directory: `ca.crt`, `tls.crt`, `tls.key`, `signing.key`, `encryption.key` (keys 0600),
//!   `facility.json`; after a rotation also `tls-previous.crt`, `tls-previous.key`,
//!   `signing-previous.key`, `encryption-previous.key`.

mod cert;
pub mod crl;
pub mod directory;
mod error;
mod facility;
mod federation;
pub mod files;
mod inspect;
pub mod keys;

pub use cert::{cert_fingerprint, facility_id_from_cert};
pub use error::PkiError;
pub use facility::{Endpoint, FacilityId, FacilityKind, FacilityStatus, FACILITY_URI_PREFIX};
pub use federation::{FacilityFile, Federation, Published, CRL_VALIDITY};
pub use inspect::inspect;

/// File names inside the federation and node directories.
pub mod layout {
    /// Federation CA certificate (PEM); also in every node directory.
    pub const CA_CERT: &str = "ca.crt";
    /// Federation CA private key (PKCS#8 PEM, 0600).
    pub const CA_KEY: &str = "ca.key";
    /// The operator's state.
    pub const STATE: &str = "federation.json";
    /// The published CRL (PEM).
    pub const CRL: &str = "crl.pem";
    /// The published signed directory.
    pub const DIRECTORY: &str = "directory.json";

    /// Node: current TLS certificate (PEM).
    pub const TLS_CERT: &str = "tls.crt";
    /// Node: current TLS key (PKCS#8 PEM, 0600).
    pub const TLS_KEY: &str = "tls.key";
    /// Node: current Ed25519 signing key (PKCS#8 PEM, 0600).
    pub const SIGNING_KEY: &str = "signing.key";
    /// Node: current X25519 encryption key (PKCS#8 PEM, 0600).
    pub const ENCRYPTION_KEY: &str = "encryption.key";
    /// Node: the facility's public description.
    pub const FACILITY_JSON: &str = "facility.json";
    /// Node: previous material kept during a rotation overlap.
    pub const TLS_PREVIOUS_CERT: &str = "tls-previous.crt";
    pub const TLS_PREVIOUS_KEY: &str = "tls-previous.key";
    pub const SIGNING_PREVIOUS_KEY: &str = "signing-previous.key";
    pub const ENCRYPTION_PREVIOUS_KEY: &str = "encryption-previous.key";

    pub(crate) const NODE_FILES: &[&str] = &[
        CA_CERT,
        TLS_CERT,
        TLS_KEY,
        SIGNING_KEY,
        ENCRYPTION_KEY,
        FACILITY_JSON,
    ];
    pub(crate) const NODE_PREVIOUS_FILES: &[&str] = &[
        TLS_PREVIOUS_CERT,
        TLS_PREVIOUS_KEY,
        SIGNING_PREVIOUS_KEY,
        ENCRYPTION_PREVIOUS_KEY,
    ];
    /// (current, previous) pairs moved aside by a rotation.
    pub(crate) const ROTATED_FILES: [(&str, &str); 4] = [
        (TLS_CERT, TLS_PREVIOUS_CERT),
        (TLS_KEY, TLS_PREVIOUS_KEY),
        (SIGNING_KEY, SIGNING_PREVIOUS_KEY),
        (ENCRYPTION_KEY, ENCRYPTION_PREVIOUS_KEY),
    ];
}
