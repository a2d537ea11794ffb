//! The trust layer: this node's own identity and keys, the verified view of the federation
//! (CA, CRL, signed directory) with the rustls configs built from it, peer identification from a
//! certificate, and pooled outbound mTLS connections; TLS to the audit collector (`collector`).
//!
//! Invariant: a peer is who its certificate and the signed directory say it is, never a header;
//! only this layer and the peer listener (`receive::peer_api`, accepting with the server config
//! built here) touch rustls. A view in use is checked for freshness on every use (`freshness`:
//! directory expiry, CRL nextUpdate plus grace), and a directory older than the highest one
//! accepted is never taken (that one is kept in the store, with every directory accepted, for
//! evidence of older transfers). It sits at the bottom: it imports only `config` and the lower
//! crates (`pki-tools`, `gateway-envelope`, and `gateway-store` for those records).

pub mod collector;
pub mod directory;
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fixture: a failed unwrap is a failed test"
)]
mod fixture;
pub mod freshness;
pub mod identity;
pub mod transport;

pub use directory::{now_ms, now_unix, read_single_cert, Peer, Trust, TrustError, TrustHandle};
pub use freshness::Stale;
