//! Pull requests: a node asks a peer for a patient's records with a signed request; the holder
//! checks it, finds the record in its `RecordSource`, authorizes it and answers with a normal
//! transfer tagged with the request id, or a denial with a reason.
//!
//! Invariant: a request is answered only when its signature and the TLS identity name the same
//! facility; the answer goes through the send path's `submit`, so it is checked and audited like
//! any transfer. It calls `send`, never `receive`.

pub mod records;
pub mod requests;
