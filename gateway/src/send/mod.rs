//! The send path: submit (check, authorize, seal to the spool, queue durably), then delivery
//! (scheduler, direct hand-off, retries, receipt verification, cancel).
//!
//! Invariant: a submit is acknowledged only after its envelope and audit entries are committed;
//! a transfer is marked delivered only on a receipt verified against the recipient's directory
//! key. It calls `access`, `audit`, `record`, `state` and `trust`, never the receive or pull path.

pub mod delivery;
pub mod outbox;
mod seal;
