//! The healthfed gateway node. See ARCHITECTURE.md for the map; in short:
//!
//! - `config`: node.toml; `identity`: this node's keys; `trust`: CA, CRL, signed directory and
//!   the rustls configs built from them; `transport`: peer identity and pooled mTLS clients.
//! - `outbox` (submit) → `delivery` (send, retry, receipt) → peer's `peer_api` → `inbox` (receive,
//!   verify, store sealed, sign receipt).
//! - `access`: policy decisions with consent context; `requests` + `records`: pull requests.
//! - `local_api`: the facility's JSON API; `api_client` + `cli`: the command line; `demo`.

pub mod access;
pub mod api_client;
pub mod audit;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod identity;
pub mod inbox;
pub mod local_api;
pub mod node;
pub mod outbox;
pub mod outcomes;
pub mod peer_api;
pub mod record;
pub mod records;
pub mod requests;
pub mod retention;
pub mod transport;
pub mod trust;
