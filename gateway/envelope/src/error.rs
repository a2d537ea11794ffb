//! The one error type of this crate.
//!
//! Every variant is a fixed, data-free description: messages never contain payload, metadata,
//! names or key bytes, so an error can go straight into a log or an audit record. The gateway
//! tells the variants apart with [`EnvelopeError::reason`], a stable short string.

/// Why sealing, parsing, verifying or opening failed.
///
/// Unless the message says "local", the cause is the peer that produced the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes do not follow the wire format; the string names the part, never its content.
    #[error("peer sent a malformed envelope: {0}")]
    Malformed(&'static str),
    /// The input ended before the envelope was complete (cut mid-header or mid-frame).
    #[error("peer sent a truncated envelope")]
    Truncated,
    /// A declared or actual size exceeds a limit; the string names which one.
    #[error("envelope too large: {0}")]
    TooLarge(&'static str),
    /// The header declares a format version this code does not speak.
    #[error("peer sent unsupported envelope version {0}")]
    UnsupportedVersion(u16),
    /// The header names an HPKE AEAD this code does not speak.
    #[error("peer sent an unsupported cipher suite")]
    UnsupportedSuite,
    /// No verifying key is known for the claimed signer.
    #[error("no verifying key is known for the sender")]
    UnknownSender,
    /// The signature does not verify under any of the given keys.
    #[error("signature does not verify")]
    BadSignature,
    /// A signed message carries a different domain than the one expected.
    #[error("signed message is for another domain")]
    UnexpectedDomain,
    /// A frame failed to decrypt: wrong key, tampered, reordered, replayed or cut.
    #[error("frame failed to decrypt")]
    Decrypt,
    /// The decrypted payload does not hash to the digest in the signed header.
    #[error("payload digest does not match the header")]
    DigestMismatch,
    /// Frame sizes do not add up to the lengths declared in the header.
    #[error("frame lengths do not match the header")]
    LengthMismatch,
    /// A frame arrived after the frame marked last.
    #[error("frame after the last frame")]
    FrameAfterLast,
    /// The envelope ended without a frame marked last.
    #[error("envelope ended without its last frame")]
    MissingLastFrame,
    /// An earlier error already ended this stream; nothing more is accepted.
    #[error("stream aborted after an earlier error")]
    Aborted,
    /// A local key could not be parsed (operator supplied a bad key file).
    #[error("local key is invalid: {0}")]
    InvalidKey(&'static str),
    /// A local caller passed arguments that cannot form a valid envelope.
    #[error("local caller error: {0}")]
    InvalidInput(&'static str),
    /// The local system random number generator failed.
    #[error("local random number generator failed")]
    Rng,
}

impl EnvelopeError {
    /// A stable, short, kebab-case reason for audit records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Truncated => "truncated",
            Self::TooLarge(_) => "too-large",
            Self::UnsupportedVersion(_) => "unsupported-version",
            Self::UnsupportedSuite => "unsupported-suite",
            Self::UnknownSender => "unknown-sender",
            Self::BadSignature => "bad-signature",
            Self::UnexpectedDomain => "unexpected-domain",
            Self::Decrypt => "decrypt",
            Self::DigestMismatch => "digest-mismatch",
            Self::LengthMismatch => "length-mismatch",
            Self::FrameAfterLast => "frame-after-last",
            Self::MissingLastFrame => "missing-last-frame",
            Self::Aborted => "aborted",
            Self::InvalidKey(_) => "invalid-key",
            Self::InvalidInput(_) => "invalid-input",
            Self::Rng => "rng",
        }
    }
}
