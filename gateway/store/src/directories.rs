//! Every federation directory this node has accepted, kept so that evidence of an older
//! transfer can carry the directory that was in force when it was signed, after the keys that
//! signed it were rotated out of the current one.
//!
//! Kept in `store_meta` under `trust:directory:` || `version_be` (so a prefix scan yields them
//! by version): the signed directory file exactly as it was loaded (CA-signed, so a reader
//! checks it again without trusting the store), the SHA-256 of its signed payload and the time
//! it took effect on this node. The store does not parse directories: the trust layer verifies
//! one before it records it here. A version is kept once; the same version again with the same
//! digest changes nothing (its first time stays), with another digest it is refused. A store
//! from before this history starts it with the directory loaded at the next start.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StoreError;
use crate::Store;

const PREFIX: &[u8] = b"trust:directory:";

/// One accepted directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptDirectory {
    pub version: u64,
    /// SHA-256 of the directory's signed payload (`pki_tools::directory::VerifiedDirectory`).
    pub digest: [u8; 32],
    /// When this node took it into use, ms since the Unix epoch.
    pub effective_ms: u64,
    /// The signed directory file (`healthfed-directory/1`) as loaded.
    pub file: Vec<u8>,
}

fn key(version: u64) -> Vec<u8> {
    [PREFIX, &version.to_be_bytes()[..]].concat()
}

impl Store {
    /// Keeps `dir` in the history of accepted directories. `Ok(Ok(kept))` is the record now
    /// held: `dir` itself, or the one already kept for that version with the same digest (a
    /// reload of the same directory, whose first time stays). `Ok(Err(kept))` refuses `dir`:
    /// that version is kept with another digest, and stays as it was. Durable at the next
    /// commit, like the highest directory seen (`trust_seen`).
    pub fn keep_directory(
        &self,
        dir: &KeptDirectory,
    ) -> Result<Result<KeptDirectory, KeptDirectory>, StoreError> {
        let tree = &self.trees().store_meta;
        let value = codec::encode("kept directory", dir)?;
        match tree
            .compare_and_swap(key(dir.version), None as Option<&[u8]>, Some(value))
            .map_err(StoreError::sled("write store metadata"))?
        {
            Ok(()) => Ok(Ok(dir.clone())),
            Err(conflict) => {
                let current = conflict.current.ok_or(StoreError::Corrupt {
                    what: "kept directory",
                    problem: "a kept directory vanished while being written",
                })?;
                let kept: KeptDirectory = codec::decode("kept directory", &current)?;
                if kept.version != dir.version {
                    return Err(StoreError::Corrupt {
                        what: "kept directory",
                        problem: "kept under another version's key",
                    });
                }
                Ok(if kept.digest == dir.digest {
                    Ok(kept)
                } else {
                    Err(kept)
                })
            }
        }
    }

    /// Every kept directory, oldest version first.
    pub fn kept_directories(&self) -> Result<Vec<KeptDirectory>, StoreError> {
        let t = self.trees();
        let mut out: Vec<KeptDirectory> = Vec::new();
        for item in t.store_meta.scan_prefix(PREFIX) {
            let (k, v) = item.map_err(StoreError::sled("read store metadata"))?;
            let kept: KeptDirectory = codec::decode("kept directory", &v)?;
            if k.as_ref() != key(kept.version).as_slice() {
                return Err(StoreError::Corrupt {
                    what: "kept directory",
                    problem: "kept under another version's key",
                });
            }
            out.push(kept);
        }
        Ok(out)
    }
}

/// Of `kept` (oldest version first, as [`Store::kept_directories`] returns them), the one in
/// force at `at_ms`: the highest version that took effect at or before it; if none had yet
/// (the history started after that time), the oldest kept.
pub fn directory_in_force(kept: &[KeptDirectory], at_ms: u64) -> Option<&KeptDirectory> {
    kept.iter()
        .filter(|d| d.effective_ms <= at_ms)
        .max_by_key(|d| d.version)
        .or_else(|| kept.first())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(version: u64, byte: u8, effective_ms: u64) -> KeptDirectory {
        KeptDirectory {
            version,
            digest: [byte; 32],
            effective_ms,
            file: format!("directory {version} {byte}").into_bytes(),
        }
    }

    #[test]
    fn the_history_is_ordered_idempotent_refuses_another_digest_and_survives_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = Store::open(tmp.path()).unwrap();
            assert_eq!(store.kept_directories().unwrap(), vec![]);
            let keep = |d: KeptDirectory| store.keep_directory(&d).unwrap();
            // Kept in any order of arrival, listed by version (256 after 2: big-endian keys).
            assert_eq!(keep(dir(2, 1, 2_000)), Ok(dir(2, 1, 2_000)));
            assert_eq!(keep(dir(256, 3, 9_000)), Ok(dir(256, 3, 9_000)));
            assert_eq!(keep(dir(1, 1, 1_000)), Ok(dir(1, 1, 1_000)));
            // The same directory again (a reload, a restart): nothing changes, its time stays.
            assert_eq!(keep(dir(2, 1, 5_000)), Ok(dir(2, 1, 2_000)));
            // Another directory of a kept version: refused, the kept one stays.
            assert_eq!(keep(dir(2, 9, 6_000)), Err(dir(2, 1, 2_000)));
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(store.commit()).unwrap();
        }
        let store = Store::open(tmp.path()).unwrap();
        let kept = store.kept_directories().unwrap();
        assert_eq!(
            kept,
            vec![dir(1, 1, 1_000), dir(2, 1, 2_000), dir(256, 3, 9_000)]
        );
        // Other store metadata is not mistaken for a kept directory.
        store.set_job_done("x").unwrap();
        store
            .record_directory_seen(&crate::DirectorySeen {
                version: 256,
                digest: [3; 32],
            })
            .unwrap()
            .unwrap();
        assert_eq!(store.kept_directories().unwrap(), kept);

        let at = |ms| directory_in_force(&kept, ms).map(|d| d.version);
        assert_eq!(at(500), Some(1), "before the history: the oldest kept");
        assert_eq!(at(1_000), Some(1));
        assert_eq!(at(1_999), Some(1));
        assert_eq!(at(2_000), Some(2));
        assert_eq!(at(8_999), Some(2));
        assert_eq!(at(u64::MAX), Some(256));
        assert_eq!(directory_in_force(&[], 5), None);
    }
}
