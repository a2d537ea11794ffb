//! Witnessing: what this node holds as a witness of other facilities' audit logs, and the
//! cosignatures other witnesses gave this node's checkpoints. Trees:
//! * `witness_logs`: origin → `(size, root, signed note)`, the latest checkpoint witnessed.
//! * `witness_conflicts`: `time_ms_be || origin` → `(origin, reason, note)`: checkpoints refused
//!   as not an append-only extension (a fork, a rewrite), kept as evidence. Never removed.
//! * `audit_cosignatures`: `size_be || witness name` → the cosignature line for that checkpoint.
//! * `witness_cosigned`: witness facility id → the largest size of ours it has cosigned.
//!
//! Hashes, sizes and signed notes only: no patient data.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::merkle::Hash;
use crate::{now_ms, Store};

const WHAT: &str = "witness";

/// The latest checkpoint witnessed for a log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witnessed {
    pub size: u64,
    pub root: Hash,
    pub note: Vec<u8>,
}

/// A checkpoint a witness refused as inconsistent with the one it held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub time_ms: u64,
    pub origin: String,
    pub reason: String,
    pub note: Vec<u8>,
}

impl Store {
    /// The latest checkpoint witnessed for `origin`.
    pub fn witnessed(&self, origin: &str) -> Result<Option<Witnessed>, StoreError> {
        self.trees()
            .witness_logs
            .get(origin)
            .map_err(StoreError::sled("read witness state"))?
            .map(|v| decode(WHAT, &v))
            .transpose()
    }

    /// Every log witnessed, by origin.
    pub fn witnessed_all(&self) -> Result<Vec<(String, Witnessed)>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees().witness_logs.iter() {
            let (key, value) = item.map_err(StoreError::sled("read witness state"))?;
            let origin = String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt {
                what: WHAT,
                problem: "origin is not UTF-8",
            })?;
            out.push((origin, decode(WHAT, &value)?));
        }
        Ok(out)
    }

    /// Replaces the checkpoint witnessed for `origin` only if it is still `expected_size`
    /// (a compare-and-swap: of two concurrent submissions one wins). Returns whether it did.
    pub fn witness_advance(
        &self,
        origin: &str,
        expected: Option<&Witnessed>,
        next: &Witnessed,
    ) -> Result<bool, StoreError> {
        let old = expected.map(|w| encode(WHAT, w)).transpose()?;
        let new = encode(WHAT, next)?;
        let swapped = self
            .trees()
            .witness_logs
            .compare_and_swap(origin, old, Some(new))
            .map_err(StoreError::sled("store witness state"))?;
        Ok(swapped.is_ok())
    }

    /// Keeps a refused checkpoint as evidence.
    pub fn witness_conflict_put(
        &self,
        origin: &str,
        reason: &str,
        note: &[u8],
    ) -> Result<(), StoreError> {
        let conflict = Conflict {
            time_ms: now_ms(),
            origin: origin.to_owned(),
            reason: reason.to_owned(),
            note: note.to_vec(),
        };
        let mut key = conflict.time_ms.to_be_bytes().to_vec();
        key.extend_from_slice(origin.as_bytes());
        self.trees()
            .witness_conflicts
            .insert(key, encode(WHAT, &conflict)?)
            .map_err(StoreError::sled("store witness conflict"))?;
        Ok(())
    }

    /// Every conflict kept, oldest first.
    pub fn witness_conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees().witness_conflicts.iter() {
            let (_, value) = item.map_err(StoreError::sled("read witness conflicts"))?;
            out.push(decode(WHAT, &value)?);
        }
        Ok(out)
    }

    /// Keeps the cosignature `line` a witness named `witness` gave our checkpoint of `size`.
    pub fn cosignature_put(&self, size: u64, witness: &str, line: &[u8]) -> Result<(), StoreError> {
        let mut key = size.to_be_bytes().to_vec();
        key.extend_from_slice(witness.as_bytes());
        self.trees()
            .audit_cosignatures
            .insert(key, line)
            .map_err(StoreError::sled("store cosignature"))?;
        Ok(())
    }

    /// The cosignature lines kept for our checkpoint of `size`, ordered by witness name.
    pub fn cosignatures(&self, size: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .trees()
            .audit_cosignatures
            .scan_prefix(size.to_be_bytes())
        {
            let (_, value) = item.map_err(StoreError::sled("read cosignatures"))?;
            out.push(value.to_vec());
        }
        Ok(out)
    }

    /// The largest size of our log `witness` has cosigned (0 if none).
    pub fn cosigned_size(&self, witness: &str) -> Result<u64, StoreError> {
        self.trees()
            .witness_cosigned
            .get(witness)
            .map_err(StoreError::sled("read witness progress"))?
            .map(|v| decode::<u64>(WHAT, &v))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    pub fn set_cosigned_size(&self, witness: &str, size: u64) -> Result<(), StoreError> {
        self.trees()
            .witness_cosigned
            .insert(witness, encode(WHAT, &size)?)
            .map_err(StoreError::sled("store witness progress"))?;
        Ok(())
    }
}
