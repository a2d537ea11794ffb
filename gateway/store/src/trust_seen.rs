//! The highest federation directory this node has accepted, kept in `store_meta` so that a
//! restart cannot take it back to an older one (or to another directory of the same version).

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StoreError;
use crate::Store;

const KEY: &[u8] = b"trust:directory-seen";

/// A directory version and the digest of its signed content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorySeen {
    pub version: u64,
    pub digest: [u8; 32],
}

impl Store {
    /// The highest directory recorded by [`Store::record_directory_seen`], if any.
    pub fn directory_seen(&self) -> Result<Option<DirectorySeen>, StoreError> {
        let value = self
            .trees()
            .store_meta
            .get(KEY)
            .map_err(StoreError::sled("read store metadata"))?;
        value
            .map(|v| codec::decode("directory seen", &v))
            .transpose()
    }

    /// Records `seen` as the directory in use. Refuses (`Ok(Err(recorded))`, the record kept)
    /// one older than the one recorded, or of the same version with other content: the caller
    /// checks that first, so this is the last line. Durable at the next commit, which any action
    /// taken with the new directory (a delivery claim, a receipt) awaits before it has effect.
    pub fn record_directory_seen(
        &self,
        seen: &DirectorySeen,
    ) -> Result<Result<(), DirectorySeen>, StoreError> {
        let tree = &self.trees().store_meta;
        let value = codec::encode("directory seen", seen)?;
        let mut current = tree
            .get(KEY)
            .map_err(StoreError::sled("read store metadata"))?;
        loop {
            if let Some(bytes) = &current {
                let recorded: DirectorySeen = codec::decode("directory seen", bytes)?;
                if recorded == *seen {
                    return Ok(Ok(()));
                }
                if recorded.version >= seen.version {
                    return Ok(Err(recorded));
                }
            }
            match tree
                .compare_and_swap(KEY, current.clone(), Some(value.clone()))
                .map_err(StoreError::sled("write store metadata"))?
            {
                Ok(()) => return Ok(Ok(())),
                Err(conflict) => current = conflict.current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_only_moves_forward_and_survives_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let v = |version, byte| DirectorySeen {
            version,
            digest: [byte; 32],
        };
        {
            let store = Store::open(tmp.path()).unwrap();
            assert_eq!(store.directory_seen().unwrap(), None);
            let record = |seen| store.record_directory_seen(&seen).unwrap();
            assert_eq!(record(v(3, 1)), Ok(()));
            assert_eq!(record(v(3, 1)), Ok(()));
            assert_eq!(record(v(2, 1)), Err(v(3, 1)));
            assert_eq!(record(v(3, 2)), Err(v(3, 1)));
            assert_eq!(record(v(4, 2)), Ok(()));
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(store.commit()).unwrap();
        }
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.directory_seen().unwrap(), Some(v(4, 2)));
    }
}
