//! Audit archives, the store's side: the exact stored entries of a seq range (what an archive
//! file or an evidence file carries), the tree's right edge before them, and the one removal
//! of audit entries there is: entries up to a seq, after the gateway has written them into a
//! signed archive, leave the live store. The Merkle tree's nodes stay (hashes only), so
//! appends, inclusion proofs of later entries and consistency proofs from any earlier size
//! work as before; the chain then starts after the floor (`audit::FLOOR_KEY`).
//!
//! Also the pure checks an offline verifier needs (no store, no key): an entry's chain link
//! and hash, its leaf hash, and the readable fields of its body. The patient reference stays
//! sealed: a verifier sees that an entry names a patient, not who.

use serde::Deserialize;

use crate::audit::{self, chain_hash, floor, split_stored, FLOOR_KEY, WHAT};
use crate::codec::{decode_body, encode};
use crate::error::StoreError;
use crate::index_keys::IndexKeys;
use crate::merkle::{self, Frontier, Hash};
use crate::protect::PatientTag;
use crate::types::TransferId;
use crate::Store;

/// How many entries one removal batch takes: bounded memory and sled batch size.
const REMOVE_BATCH: u64 = 10_000;

/// An entry's readable fields, decoded from its stored body (the bytes its leaf and chain
/// hash cover). The patient reference is sealed under the facility's store key and is not
/// part of the view; `names_patient` says whether the entry has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub seq: u64,
    pub time_ms: u64,
    pub event: String,
    pub transfer_id: Option<TransferId>,
    pub peer: Option<String>,
    pub names_patient: bool,
    pub purpose: Option<String>,
    pub clinician: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub policy_ids: Vec<String>,
    pub break_glass: bool,
}

/// `audit::StoredRecord` as read without the key: same fields, same order (postcard is
/// positional; the store's tests read real entries with it).
#[derive(Deserialize)]
struct BodyView {
    time_ms: u64,
    event: String,
    transfer_id: Option<TransferId>,
    peer: Option<String>,
    patient: Option<SealedView>,
    purpose: Option<String>,
    clinician: Option<String>,
    outcome: String,
    reason: Option<String>,
    policy_ids: Vec<String>,
    break_glass: bool,
}

#[derive(Deserialize)]
struct SealedView {
    _tag: PatientTag,
    _sealed: Vec<u8>,
}

/// The readable fields of an entry's stored body.
pub fn entry_view(body: &[u8]) -> Result<EntryView, StoreError> {
    let (seq, b): (u64, BodyView) = decode_body(WHAT, body)?;
    Ok(EntryView {
        seq,
        time_ms: b.time_ms,
        event: b.event,
        transfer_id: b.transfer_id,
        peer: b.peer,
        names_patient: b.patient.is_some(),
        purpose: b.purpose,
        clinician: b.clinician,
        outcome: b.outcome,
        reason: b.reason,
        policy_ids: b.policy_ids,
        break_glass: b.break_glass,
    })
}

/// Why a stored entry does not check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("entry undecodable")]
    Undecodable,
    #[error("prev_hash does not match the previous entry")]
    PrevHashMismatch,
    #[error("hash does not match contents")]
    HashMismatch,
    #[error("entry seq differs from its place")]
    SeqMismatch,
}

/// Checks a stored entry (the `audit` tree's value) as entry `seq` after an entry of hash
/// `prev`: its link, its chain hash, its seq. Returns `(hash, body)`.
pub fn check_stored_entry<'a>(
    seq: u64,
    prev: &Hash,
    stored: &'a [u8],
) -> Result<(Hash, &'a [u8]), EntryProblem> {
    let (prev_hash, hash, body) = split_stored(stored).ok_or(EntryProblem::Undecodable)?;
    if prev_hash != prev {
        return Err(EntryProblem::PrevHashMismatch);
    }
    if chain_hash(prev_hash, body) != *hash {
        return Err(EntryProblem::HashMismatch);
    }
    let (body_seq, _) =
        postcard::take_from_bytes::<u64>(body).map_err(|_| EntryProblem::Undecodable)?;
    if body_seq != seq {
        return Err(EntryProblem::SeqMismatch);
    }
    Ok((*hash, body))
}

/// An entry's leaf hash in the audit tree (RFC 9162 over its stored body).
pub fn entry_leaf_hash(body: &[u8]) -> Hash {
    merkle::leaf_hash(body)
}

impl Store {
    /// The archive floor: `(seq, hash)` of the last entry archived and removed, `(0, zeros)`
    /// when none was. The live log holds entries `seq + 1 ..= audit_len()`.
    pub fn audit_floor(&self) -> Result<(u64, Hash), StoreError> {
        floor(&self.trees())
    }

    /// The last seq `s` such that every live entry up to `s` was written before `cutoff_ms`
    /// (the floor itself when the first live entry is not).
    pub fn audit_seq_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let (mut last, _) = self.audit_floor()?;
        let t = self.trees();
        for item in t.audit.range((last + 1).to_be_bytes()..) {
            let (_, value) = item.map_err(StoreError::sled("read audit log"))?;
            let (_, _, body) = split_stored(&value).ok_or(StoreError::Corrupt {
                what: WHAT,
                problem: "entry undecodable",
            })?;
            let view = entry_view(body)?;
            if view.time_ms >= cutoff_ms {
                break;
            }
            last = view.seq;
        }
        Ok(last)
    }

    /// The stored bytes of entries `from ..= to`, in order (an archive's entries). Fails if
    /// one is absent (archived, or never written).
    pub fn audit_stored_range(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let t = self.trees();
        let mut out = Vec::new();
        for seq in from..=to {
            let value = t
                .audit
                .get(seq.to_be_bytes())
                .map_err(StoreError::sled("read audit log"))?
                .ok_or_else(|| StoreError::NotFound {
                    what: "audit entry",
                    id: seq.to_string(),
                })?;
            out.push(value.to_vec());
        }
        Ok(out)
    }

    /// The stored body of entry `seq` (the bytes its leaf hash covers), if it is live.
    pub fn audit_stored_body(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .trees()
            .audit
            .get(seq.to_be_bytes())
            .map_err(StoreError::sled("read audit entry"))?;
        value
            .map(|v| {
                split_stored(&v)
                    .map(|(_, _, body)| body.to_vec())
                    .ok_or(StoreError::Corrupt {
                        what: WHAT,
                        problem: "entry undecodable",
                    })
            })
            .transpose()
    }

    /// The seqs of the live entries about transfer `id`, in order (from the transfer index).
    pub fn audit_seqs_of_transfer(&self, id: &TransferId) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees().audit_by_transfer.scan_prefix(id) {
            let (key, _) = item.map_err(StoreError::sled("read audit index"))?;
            if let Some(seq) = key
                .get(16..)
                .and_then(|k| <[u8; 8]>::try_from(k).ok())
                .map(u64::from_be_bytes)
            {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// The tree's right edge at `size` entries: `(level, hash)` of its complete subtrees,
    /// largest first (what an archive carries so its entries extend the tree on their own).
    pub fn audit_frontier(&self, size: u64) -> Result<Vec<(u8, Hash)>, StoreError> {
        self.within_log(size)?;
        let frontier = Frontier::of_size(size, |level, index| {
            audit::stored_node(&self.trees(), level, index)
        })?;
        Ok(frontier.heads().to_vec())
    }

    /// The tree recomputed from the live entries' bodies (on the stored right edge at the
    /// floor), independently of the stored nodes: `(size, root, roots at the asked sizes)`.
    /// A tree that disagrees with its entries shows here; a checkpoint of a history that
    /// was changed does not match the roots.
    pub fn audit_tree_recompute(
        &self,
        sizes: &std::collections::BTreeSet<u64>,
    ) -> Result<(u64, Hash, std::collections::BTreeMap<u64, Hash>), StoreError> {
        let (floor_seq, _) = self.audit_floor()?;
        let len = self.audit_len();
        let mut frontier = Frontier::from_heads(floor_seq, self.audit_frontier(floor_seq)?).ok_or(
            StoreError::Corrupt {
                what: "audit tree",
                problem: "the right edge at the floor is malformed",
            },
        )?;
        let mut roots = std::collections::BTreeMap::new();
        let t = self.trees();
        let mut expected = floor_seq + 1;
        for item in t.audit.range(expected.to_be_bytes()..) {
            if expected > len {
                break;
            }
            let (key, value) = item.map_err(StoreError::sled("read audit log"))?;
            let seq = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes);
            let body = split_stored(&value).map(|(_, _, body)| body);
            let (Ok(seq), Some(body)) = (seq, body) else {
                return Err(StoreError::Corrupt {
                    what: WHAT,
                    problem: "entry undecodable",
                });
            };
            if seq != expected {
                return Err(StoreError::Corrupt {
                    what: WHAT,
                    problem: "an entry is missing",
                });
            }
            frontier.push(seq - 1, merkle::leaf_hash(body));
            if sizes.contains(&seq) {
                roots.insert(seq, frontier.root());
            }
            expected += 1;
        }
        Ok((expected - 1, frontier.root(), roots))
    }

    /// Removes the live entries up to `through` (and their index keys) from the store and
    /// moves the floor there. Call only once they are in a durable archive. The floor moves
    /// first, so a crash mid-removal leaves entries below the floor that verification and
    /// the chain ignore and the next removal finishes. Returns how many entries were removed.
    /// The audit tree's nodes are kept. Durable after the next [`Store::commit`].
    pub fn audit_archive_remove(&self, through: u64) -> Result<u64, StoreError> {
        // Under the append lock: the tail (and what the floor may reach) does not move.
        let tail = self.lock_tail()?;
        if through > tail.last_seq {
            return Err(StoreError::BeyondLog {
                size: through,
                len: tail.last_seq,
            });
        }
        let t = self.trees();
        let (old_floor, _) = floor(&t)?;
        if through > old_floor {
            let value = t
                .audit
                .get(through.to_be_bytes())
                .map_err(StoreError::sled("read audit entry"))?
                .ok_or(StoreError::Corrupt {
                    what: WHAT,
                    problem: "the last archived entry is missing",
                })?;
            let (_, hash, _) = split_stored(&value).ok_or(StoreError::Corrupt {
                what: WHAT,
                problem: "entry undecodable",
            })?;
            t.audit_head
                .insert(FLOOR_KEY, encode("audit floor", &(through, *hash))?)
                .map_err(StoreError::sled("write audit floor"))?;
        }
        drop(tail);
        // Everything at or below the floor goes, including what an interrupted removal left.
        let (floor_seq, _) = floor(&t)?;
        let mut removed = 0u64;
        let mut from = 1u64;
        while from <= floor_seq {
            let to = floor_seq.min(from + REMOVE_BATCH - 1);
            removed += self.remove_entries(from, to)?;
            from = to + 1;
        }
        Ok(removed)
    }

    /// Removes the entries `from ..= to` that are still present, index keys first.
    fn remove_entries(&self, from: u64, to: u64) -> Result<u64, StoreError> {
        let t = self.trees();
        let mut entries = sled::Batch::default();
        let mut patient = sled::Batch::default();
        let mut transfer = sled::Batch::default();
        let mut glass = sled::Batch::default();
        let mut n = 0u64;
        for item in t.audit.range(from.to_be_bytes()..=to.to_be_bytes()) {
            let (key, value) = item.map_err(StoreError::sled("read audit log"))?;
            if let Some((_, _, body)) = split_stored(&value) {
                if let Some(b) = IndexKeys::parse(body) {
                    let seq = b.seq;
                    if let Some(tag) = b.patient_tag {
                        patient.remove(&audit::patient_key(tag, seq)[..]);
                    }
                    if let Some(id) = b.transfer_id {
                        transfer.remove(&audit::transfer_key(id, seq)[..]);
                    }
                    if b.break_glass {
                        glass.remove(&seq.to_be_bytes()[..]);
                    }
                }
            }
            entries.remove(key);
            n += 1;
        }
        let apply = |tree: &sled::Tree, batch| {
            tree.apply_batch(batch)
                .map_err(StoreError::sled("remove archived audit entries"))
        };
        apply(&t.audit_by_patient, patient)?;
        apply(&t.audit_by_transfer, transfer)?;
        apply(&t.audit_break_glass, glass)?;
        apply(&t.audit, entries)?;
        Ok(n)
    }
}
