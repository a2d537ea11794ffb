//! The crate's error type.
//!
//! Every message names the file or the facility it is about and the problem, so an operator can
//! act on it without a debugger. No message ever contains key material or file contents.

use std::path::PathBuf;

use crate::directory::DirectoryError;
use crate::FacilityId;

/// Everything that can go wrong in the PKI library and the `pki` tool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading, writing or renaming a file failed (local system).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what it should be (corrupt or wrong input).
    #[error("{}: {problem}", path.display())]
    InvalidFile { path: PathBuf, problem: String },
    /// A private key file is readable or writable by group or others.
    #[error(
        "{}: private key file has mode {mode:04o}, which lets group or others access it (run chmod 600)",
        path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    /// `init` was asked to create a federation where one already exists (operator).
    #[error("{}: a federation already exists there (use --force to replace it)", dir.display())]
    FederationExists { dir: PathBuf },
    /// `add-facility` with an id that is already registered (operator).
    #[error("facility {id} already exists in {}", dir.display())]
    DuplicateFacility { id: FacilityId, dir: PathBuf },
    /// The facility id is not registered in the federation (operator).
    #[error("facility {id} is not registered in {}", dir.display())]
    UnknownFacility { id: FacilityId, dir: PathBuf },
    /// The facility was revoked; it can no longer be rotated or revoked again (operator).
    #[error("facility {id} is revoked in {}", dir.display())]
    FacilityRevoked { id: FacilityId, dir: PathBuf },
    /// The node directory already holds key material that would be overwritten (operator).
    #[error("{}: already exists; refusing to overwrite a node's key material", path.display())]
    WouldOverwrite { path: PathBuf },
    /// A facility id that does not match `^[a-z0-9][a-z0-9-]{1,62}$` (operator).
    #[error("invalid facility id: {0}")]
    InvalidFacilityId(&'static str),
    /// An endpoint that is not `https://HOST:PORT` (operator).
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(&'static str),
    /// An unknown facility kind (operator).
    #[error("invalid facility kind: expected one of hospital, clinic, lab, payer")]
    InvalidKind,
    /// A federation or facility name that cannot go into a certificate (operator).
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    /// An unknown revocation reason (operator).
    #[error(
        "invalid revocation reason: expected one of unspecified, key-compromise, ca-compromise, \
         affiliation-changed, superseded, cessation-of-operation, privilege-withdrawn"
    )]
    InvalidReason,
    /// A validity period that is empty or negative (operator).
    #[error("invalid validity: {0}")]
    InvalidValidity(&'static str),
    /// A certificate handed to the library does not carry what the federation requires (peer).
    #[error("certificate: {0}")]
    Certificate(&'static str),
    /// rcgen refused to build a certificate or CRL.
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
    /// A cryptographic primitive failed (local system: e.g. no randomness).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    /// A signed directory was refused.
    #[error("{}: {source}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: DirectoryError,
    },
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        PkiError::InvalidFile {
            path: path.into(),
            problem: problem.into(),
        }
    }
}
