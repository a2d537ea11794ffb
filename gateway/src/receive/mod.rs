//! The receive path: the peer listener (TLS accept, identity at the handshake and on every
//! request, the bounded tower stack, routes), the inbox (streaming verify/decrypt/store) and
//! `fetch` (decrypt-on-fetch for the local system).
//!
//! Invariant: nothing is stored before the header is verified against the TLS identity and the
//! directory, and plaintext never reaches the disk: the inbox keeps the sealed bytes. It routes
//! pull requests to `pull` and may use the send path's helpers; neither calls back into it.

pub mod fetch;
pub mod inbox;
pub mod peer_api;
