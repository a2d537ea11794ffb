//! The send path: submit (`outbox`: inspect, authorize, queue durably; `seal`: seal to the
//! spool), then delivery (`delivery`: scheduler, direct hand-off, retries and the per-peer
//! circuit; `attempt`: one attempt over the wire and its receipt check), start-up `recovery`,
//! and `control` (cancel, requeue).
//!
//! Invariant: a submit is acknowledged only after its envelope and audit entries are committed;
//! a transfer is marked delivered only on a receipt verified against the recipient's directory
//! key. It calls `access`, `audit`, `record`, `state` and `trust`, never the receive or pull path.

mod attempt;
pub mod control;
pub mod delivery;
pub mod outbox;
pub mod recovery;
mod seal;
