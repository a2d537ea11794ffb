//! The healthfed gateway node. See ARCHITECTURE.md for the map. The folders are layers: each
//! imports only the ones below it.
//!
//! - surfaces: `api` (the facility's local JSON API, one file per resource), `cli` (the command
//!   line and its HTTP client), `demo`, `ops` (health endpoints for monitoring), `export`
//!   (FHIR/CSV audit exports, the syslog stream to a SIEM); `node` loads,
//!   runs and drains a node.
//! - flows: `receive` (peer listener, inbox) → `pull` (pull requests, record sources) → `send`
//!   (outbox submit, delivery, receipts); `retention` (the envelope sweep).
//! - shared: `access` (policy questions with consent context), `audit` (audit records),
//!   `state` (`NodeState`, the policy set, outcome waiters).
//! - bottom: `trust` (own keys, CA/CRL/directory, peer identity, outbound mTLS), `record`
//!   (record metadata, FHIR check), `config`; then the crates `gateway-store`,
//!   `gateway-envelope`, `policies` and `pki-tools`.

pub mod access;
pub mod api;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod evidence;
pub mod export;
pub mod node;
pub mod ops;
pub mod pull;
pub mod receive;
pub mod record;
pub mod retention;
pub mod send;
pub mod state;
pub mod trust;
