//! Evidence that holds outside the facility: the audit log's Merkle tree heads, signed as
//! C2SP checkpoints with the node's signing key (the key the signed directory lists), so that
//! anyone with the directory can check what the log held at a size.

pub mod checkpoint;
