//! Signed checkpoints of the audit log's Merkle tree (C2SP tlog-checkpoint notes, made and
//! signed by the gateway; this module keeps their bytes). Tree `audit_checkpoints`:
//! `size_be` → the signed note. A checkpoint holds no patient data: an origin, a size and a
//! root hash.

use crate::error::StoreError;
use crate::Store;

impl Store {
    /// Keeps the signed checkpoint of the tree of `size` entries (replacing one of that size).
    pub fn checkpoint_put(&self, size: u64, note: &[u8]) -> Result<(), StoreError> {
        self.within_log(size)?;
        self.trees()
            .audit_checkpoints
            .insert(size.to_be_bytes(), note)
            .map_err(StoreError::sled("store checkpoint"))?;
        Ok(())
    }

    /// The latest checkpoint kept: `(size, note)`.
    pub fn checkpoint_latest(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let last = self
            .trees()
            .audit_checkpoints
            .last()
            .map_err(StoreError::sled("read checkpoint"))?;
        last.map(|(key, value)| Ok((size_of_key(&key)?, value.to_vec())))
            .transpose()
    }

    /// The sizes of every checkpoint kept, ascending.
    pub fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees().audit_checkpoints.iter() {
            let (key, _) = item.map_err(StoreError::sled("read checkpoint"))?;
            out.push(size_of_key(&key)?);
        }
        Ok(out)
    }

    /// The checkpoint of the tree of exactly `size` entries, if one was made.
    pub fn checkpoint_get(&self, size: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .trees()
            .audit_checkpoints
            .get(size.to_be_bytes())
            .map_err(StoreError::sled("read checkpoint"))?
            .map(|v| v.to_vec()))
    }
}

fn size_of_key(key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            what: "checkpoint",
            problem: "malformed key",
        })
}
