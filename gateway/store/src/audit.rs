//! The hash-chained audit log. Trees: `audit` (`seq_be` → entry), `audit_by_patient`
//! (`HMAC(index key, patient_ref) || seq_be`, 40 bytes), `audit_by_transfer`
//! (`transfer_id || seq_be`), `audit_break_glass` (`seq_be`) and `audit_head` (the last seq
//! and hash). An append writes all of them in one transaction, under a mutex so the chain is
//! linear. The only delete is the archive's (`archive.rs`): entries up to a floor move to a
//! signed archive file; the chain then starts after the floor (`FLOOR_KEY`).
//!
//! An entry is stored as `0x01 || postcard(StoredEntry { prev_hash, hash, body })` where
//! `body = postcard((seq, StoredRecord))`: the [`AuditRecord`]'s fields in order, except that
//! the patient reference is replaced by its keyed hash (the `tag` of the patient index) and
//! the reference sealed under the store's key (associated data: `audit.patient_ref`, `seq_be`,
//! `tag`). The chain hash covers exactly these stored bytes, so verification needs no key,
//! opens nothing, and detects any change to them, the sealed reference included; reading an
//! entry opens the reference again.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::ops::Bound;
use std::sync::MutexGuard;

use ring::digest;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional};

use crate::audited::Chained;
use crate::codec::{decode, decode_body, VERSION};
use crate::error::StoreError;
use crate::index_keys::IndexKeys;
use crate::merkle::{self, CompactRange, Frontier, Hash};
use crate::protect::{aad, Keys, PatientTag, TAG_LEN};
use crate::types::{AuditEntry, AuditFilter, AuditRecord, TransferId};
use crate::{tx_err, Store, Trees};

pub(crate) const WHAT: &str = "audit";

/// Domain separation for the chain hash; bump with any change to what is hashed. Version 1
/// hashed the record with its patient reference in clear (store format 1, see `migrate`).
const HASH_DOMAIN: &[u8] = b"healthfed/audit/2";

/// The tree-and-field name in the associated data of a sealed patient reference.
const PATIENT_FIELD: &str = "audit.patient_ref";

pub(crate) const HEAD_KEY: &[u8] = b"head";

/// `audit_head` key of the archive floor: `(seq, hash)` of the last entry archived (and
/// removed); the live chain starts at `seq + 1`, linked to `hash`. Absent: nothing archived.
pub(crate) const FLOOR_KEY: &[u8] = b"floor";

/// The archive floor: `(0, zeros)` when nothing was archived.
pub(crate) fn floor(trees: &Trees) -> Result<(u64, [u8; 32]), StoreError> {
    match trees
        .audit_head
        .get(FLOOR_KEY)
        .map_err(StoreError::sled("read audit floor"))?
    {
        Some(v) => decode::<(u64, [u8; 32])>("audit floor", &v),
        None => Ok((0, [0; 32])),
    }
}

/// The end of the chain, guarded by the append mutex.
pub(crate) struct Tail {
    pub(crate) last_seq: u64,
    pub(crate) hash: [u8; 32],
    /// The Merkle tree's right edge over the `last_seq` entries (leaf `seq - 1` per entry).
    pub(crate) frontier: Frontier,
}

/// The `audit_tree` key of a complete subtree: `level || index_be`.
pub(crate) fn tree_key(level: u8, index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = level;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// How an entry sits in the `audit` tree: the chain links and the exact bytes hashed.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEntry<'a> {
    pub(crate) prev_hash: [u8; 32],
    pub(crate) hash: [u8; 32],
    #[serde(borrow)]
    pub(crate) body: &'a [u8],
}

/// An [`AuditRecord`] as stored and hashed: the same fields in the same order, the patient
/// reference replaced by [`SealedPatient`].
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredRecord<'a> {
    time_ms: u64,
    #[serde(borrow)]
    event: &'a str,
    transfer_id: Option<TransferId>,
    #[serde(borrow)]
    peer: Option<&'a str>,
    #[serde(borrow)]
    patient: Option<SealedPatient<'a>>,
    #[serde(borrow)]
    purpose: Option<&'a str>,
    #[serde(borrow)]
    clinician: Option<&'a str>,
    #[serde(borrow)]
    outcome: &'a str,
    #[serde(borrow)]
    reason: Option<&'a str>,
    #[serde(borrow)]
    policy_ids: Vec<&'a str>,
    break_glass: bool,
}

/// A patient reference at rest: its keyed hash (as in the patient index) and the reference
/// sealed (`nonce || ciphertext || tag`).
#[derive(Serialize, Deserialize)]
pub(crate) struct SealedPatient<'a> {
    tag: PatientTag,
    #[serde(borrow)]
    sealed: &'a [u8],
}

impl<'a> StoredRecord<'a> {
    /// `record` as stored at `seq`, its patient reference (if any) sealed into `sealed_buf`.
    pub(crate) fn seal(
        keys: &Keys,
        seq: u64,
        record: &'a AuditRecord,
        sealed_buf: &'a mut Vec<u8>,
    ) -> Result<(StoredRecord<'a>, Option<PatientTag>), StoreError> {
        let tag = match &record.patient_ref {
            Some(p) => {
                let tag = keys.tag(p);
                sealed_buf.clear();
                keys.seal_into(&patient_aad(seq, &tag), p.as_bytes(), sealed_buf)?;
                Some(tag)
            }
            None => None,
        };
        let stored = StoredRecord {
            time_ms: record.time_ms,
            event: &record.event,
            transfer_id: record.transfer_id,
            peer: record.peer.as_deref(),
            patient: tag.map(|tag| SealedPatient {
                tag,
                sealed: sealed_buf.as_slice(),
            }),
            purpose: record.purpose.as_deref(),
            clinician: record.clinician.as_deref(),
            outcome: &record.outcome,
            reason: record.reason.as_deref(),
            policy_ids: record.policy_ids.iter().map(String::as_str).collect(),
            break_glass: record.break_glass,
        };
        Ok((stored, tag))
    }

    /// The record, its patient reference opened.
    fn open(self, keys: &Keys, seq: u64) -> Result<AuditRecord, StoreError> {
        let patient_ref = match self.patient {
            Some(p) => {
                let plain = keys.open(WHAT, &patient_aad(seq, &p.tag), p.sealed)?;
                Some(String::from_utf8(plain).map_err(|_| StoreError::Corrupt {
                    what: WHAT,
                    problem: "patient reference is not UTF-8",
                })?)
            }
            None => None,
        };
        Ok(AuditRecord {
            time_ms: self.time_ms,
            event: self.event.to_owned(),
            transfer_id: self.transfer_id,
            peer: self.peer.map(str::to_owned),
            patient_ref,
            purpose: self.purpose.map(str::to_owned),
            clinician: self.clinician.map(str::to_owned),
            outcome: self.outcome.to_owned(),
            reason: self.reason.map(str::to_owned),
            policy_ids: self.policy_ids.into_iter().map(str::to_owned).collect(),
            break_glass: self.break_glass,
        })
    }
}

/// Associated data of the patient reference sealed in entry `seq`: binds it to its entry and
/// to the tag stored next to it.
fn patient_aad(seq: u64, tag: &PatientTag) -> Vec<u8> {
    let mut key = [0u8; 8 + TAG_LEN];
    let (s, t) = key.split_at_mut(8);
    s.copy_from_slice(&seq.to_be_bytes());
    t.copy_from_slice(tag);
    aad(PATIENT_FIELD, &key)
}

/// The audit chain is broken at `seq`: the first entry, in log order, that fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {problem}")]
pub struct AuditChainError {
    pub seq: u64,
    pub problem: ChainProblem,
}

/// What is wrong at the named seq.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainProblem {
    /// The entry is absent (deleted, or the tail was truncated).
    Missing,
    /// The entry cannot be decoded, or its key is malformed.
    Undecodable,
    /// The entry's own seq differs from its key.
    SeqMismatch,
    /// The entry's prev_hash is not the previous entry's hash.
    PrevHashMismatch,
    /// The entry's contents do not hash to its stored hash (it was altered).
    HashMismatch,
    /// The head record disagrees with the last entry.
    HeadMismatch,
    /// An index (patient, transfer, break-glass) lacks a key for this entry or has a key
    /// that does not match it.
    IndexMismatch { index: &'static str },
    /// The store could not be read.
    Storage(String),
}

/// Why a verification with the tree ([`Store::audit_verify_with_tree`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditVerifyError {
    /// The chain or an index is broken: the first bad entry.
    #[error(transparent)]
    Chain(#[from] AuditChainError),
    /// The stored tree's right edge at the archive floor (where the live entries' leaves
    /// continue the tree) could not be read, or the segments' leaf ranges did not join.
    #[error("local system: audit tree: {0}")]
    Tree(StoreError),
}

/// The tree recomputed from the entries' bodies in the chain walk itself (RFC 9162 leaf
/// hashes over the stored bodies, continuing the stored right edge at the archive floor),
/// independently of the stored tree nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditTreeCheck {
    /// The last seq verified (the head when the walk started).
    pub entries: u64,
    /// The archive floor the walk started after: `(seq, hash)`, `(0, zeros)` if none.
    pub floor: (u64, Hash),
    /// The head of the tree of `entries` entries.
    pub root: Hash,
    /// The heads of the trees at the asked sizes that are live entries (`floor < size <=
    /// entries`); sizes outside that are absent.
    pub roots: BTreeMap<u64, Hash>,
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainProblem::Missing => f.write_str("entry missing"),
            ChainProblem::Undecodable => f.write_str("entry undecodable"),
            ChainProblem::SeqMismatch => f.write_str("entry seq differs from its key"),
            ChainProblem::PrevHashMismatch => {
                f.write_str("prev_hash does not match previous entry")
            }
            ChainProblem::HashMismatch => f.write_str("hash does not match contents"),
            ChainProblem::HeadMismatch => f.write_str("head record does not match last entry"),
            ChainProblem::IndexMismatch { index } => write!(f, "{index} index inconsistent"),
            ChainProblem::Storage(e) => write!(f, "local system: read failed: {e}"),
        }
    }
}

impl Tail {
    /// Reads the end of the chain from the head record (or, if there is none, the last entry),
    /// and the Merkle tree's right edge, building the tree first if the log predates it.
    pub(crate) fn load(trees: &Trees) -> Result<Tail, StoreError> {
        let (last_seq, hash) = chain_end(trees)?;
        let frontier =
            match Frontier::of_size(last_seq, |level, index| stored_node(trees, level, index)) {
                Ok(frontier) => frontier,
                Err(StoreError::NotFound { .. }) => build_tree(trees, last_seq)?,
                Err(e) => return Err(e),
            };
        Ok(Tail {
            last_seq,
            hash,
            frontier,
        })
    }
}

fn chain_end(trees: &Trees) -> Result<(u64, [u8; 32]), StoreError> {
    if let Some(head) = trees
        .audit_head
        .get(HEAD_KEY)
        .map_err(StoreError::sled("read audit head"))?
    {
        return decode::<(u64, [u8; 32])>("audit head", &head);
    }
    match trees
        .audit
        .last()
        .map_err(StoreError::sled("read audit tail"))?
    {
        Some((key, value)) => {
            let stored: StoredEntry<'_> = decode(WHAT, &value)?;
            let seq = seq_of_key(&key).ok_or(StoreError::Corrupt {
                what: WHAT,
                problem: "malformed key",
            })?;
            Ok((seq, stored.hash))
        }
        None => Ok((0, [0; 32])),
    }
}

/// A complete subtree's hash from `audit_tree`; `NotFound` if it was never written.
pub(crate) fn stored_node(trees: &Trees, level: u8, index: u64) -> Result<Hash, StoreError> {
    let value = trees
        .audit_tree
        .get(tree_key(level, index))
        .map_err(StoreError::sled("read audit tree"))?
        .ok_or_else(|| StoreError::NotFound {
            what: "audit tree node",
            id: format!("{level}/{index}"),
        })?;
    <Hash>::try_from(value.as_ref()).map_err(|_| StoreError::Corrupt {
        what: "audit tree",
        problem: "a node is not 32 bytes",
    })
}

/// Builds the Merkle tree over the first `size` entries of a log written before the tree
/// existed (once, at open; the chain itself is not touched). Returns its right edge.
fn build_tree(trees: &Trees, size: u64) -> Result<Frontier, StoreError> {
    let mut frontier = Frontier::default();
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let mut next = 1u64;
    for item in trees.audit.range(1u64.to_be_bytes()..=size.to_be_bytes()) {
        let (key, value) = item.map_err(StoreError::sled("read audit log"))?;
        let (_, _, body) = split_stored(&value).ok_or(StoreError::Corrupt {
            what: WHAT,
            problem: "entry undecodable",
        })?;
        if seq_of_key(&key) != Some(next) {
            return Err(StoreError::Corrupt {
                what: WHAT,
                problem: "an entry is missing; the Merkle tree cannot be built",
            });
        }
        for (level, index, hash) in frontier.push(next - 1, merkle::leaf_hash(body)) {
            batch.insert(&tree_key(level, index)[..], &hash[..]);
            pending += 1;
        }
        if pending >= 10_000 {
            trees
                .audit_tree
                .apply_batch(std::mem::take(&mut batch))
                .map_err(StoreError::sled("write audit tree"))?;
            pending = 0;
        }
        next += 1;
    }
    if next != size + 1 {
        return Err(StoreError::Corrupt {
            what: WHAT,
            problem: "the log ends before its head; the Merkle tree cannot be built",
        });
    }
    trees
        .audit_tree
        .apply_batch(batch)
        .map_err(StoreError::sled("write audit tree"))?;
    Ok(frontier)
}

impl Store {
    /// Appends a record: assigns the next seq, stamps `time_ms` if it is 0, links and hashes
    /// it. Durable after the next [`Store::commit`].
    pub fn audit_append(&self, record: AuditRecord) -> Result<AuditEntry, StoreError> {
        self.audit_append_batch([record])?
            .pop()
            .ok_or(StoreError::Corrupt {
                what: WHAT,
                problem: "append returned no entry",
            })
    }

    /// Appends several records atomically and in order, as consecutive seqs. One sled
    /// transaction for the whole batch: much cheaper per entry than single appends when an
    /// operation produces several events, or for bulk loads.
    pub fn audit_append_batch(
        &self,
        records: impl IntoIterator<Item = AuditRecord>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut tail = self.lock_tail()?;
        let chained = Chained::new(&tail, records, self.keys())?;
        if chained.is_empty() {
            return Ok(Vec::new());
        }
        let t = self.trees();
        (
            &t.audit,
            &t.audit_by_patient,
            &t.audit_by_transfer,
            &t.audit_break_glass,
            &t.audit_head,
            &t.audit_tree,
        )
            .transaction(
                |(audit, by_patient, by_transfer, break_glass, head, tree)| {
                    chained.write([audit, by_patient, by_transfer, break_glass, head, tree])?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                },
            )
            .map_err(tx_err("append audit entries"))?;
        Ok(chained.advance(&mut tail))
    }

    /// Entries matching every condition of `filter`, in ascending seq order. A patient or
    /// transfer filter is served from its index, so its cost does not grow with the log.
    pub fn audit_list(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let Some(first) = filter.since_seq.unwrap_or(0).checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let t = self.trees();
        // Pick the narrowest index; the remaining conditions are checked on each entry.
        let (tree, prefix): (&sled::Tree, Vec<u8>) = if let Some(id) = &filter.transfer_id {
            (&t.audit_by_transfer, id.to_vec())
        } else if let Some(patient) = &filter.patient {
            (&t.audit_by_patient, self.keys().tag(patient).to_vec())
        } else if filter.break_glass_only {
            (&t.audit_break_glass, Vec::new())
        } else {
            (&t.audit, Vec::new())
        };
        let mut start = prefix.clone();
        start.extend_from_slice(&first.to_be_bytes());
        let mut items = tree.range(start..);
        if std::ptr::eq(tree, &t.audit) {
            for item in items {
                let (key, value) = item.map_err(StoreError::sled("list audit entries"))?;
                let Some(seq) = seq_of_key(&key) else {
                    continue;
                };
                let entry = decode_entry(self.keys(), seq, &value)?;
                if matches(&entry, filter) {
                    out.push(entry);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            return Ok(out);
        }
        // From an index: the seqs are read a batch at a time and their entries fetched in
        // parallel (each is a random read in the audit tree, often of a page not in sled's
        // cache), then judged in index order, so that the result, and which error (if any) is
        // returned, are those of a one-by-one walk.
        let mut seqs = Vec::new();
        loop {
            seqs.clear();
            let want = limit.saturating_sub(out.len()).clamp(1, LIST_BATCH);
            let mut index_error = None;
            let mut exhausted = false;
            while seqs.len() < want {
                let Some(item) = items.next() else {
                    exhausted = true;
                    break;
                };
                let key = match item {
                    Ok((key, _)) => key,
                    Err(e) => {
                        index_error = Some(e);
                        break;
                    }
                };
                if !key.starts_with(&prefix) {
                    exhausted = true;
                    break;
                }
                // Every key under the prefix is `prefix || seq_be` (tags and transfer ids have a
                // fixed length); a malformed one is skipped here and reported by verify.
                if let Some(seq) = key.get(prefix.len()..).and_then(seq_of_key) {
                    seqs.push(seq);
                }
            }
            for entry in fetch_entries(self.keys(), &t.audit, &seqs) {
                // None is only reachable if the log was tampered with; audit_verify reports it.
                let Some(entry) = entry? else {
                    continue;
                };
                if matches(&entry, filter) {
                    out.push(entry);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if let Some(e) = index_error {
                return Err(StoreError::sled("list audit entries")(e));
            }
            if exhausted {
                return Ok(out);
            }
        }
    }

    /// The number of entries appended (the last seq).
    pub fn audit_len(&self) -> u64 {
        match self.inner.audit_tail.lock() {
            Ok(tail) => tail.last_seq,
            Err(poisoned) => poisoned.into_inner().last_seq,
        }
    }

    /// The Merkle tree head over the whole log (RFC 9162): `(size, root hash)`.
    pub fn audit_tree_head(&self) -> Result<(u64, Hash), StoreError> {
        let tail = self.lock_tail()?;
        Ok((tail.last_seq, tail.frontier.root()))
    }

    /// The head of the tree of the log's first `size` entries, for any size it has reached.
    pub fn audit_tree_root(&self, size: u64) -> Result<Hash, StoreError> {
        self.within_log(size)?;
        merkle::root(size, |level, index| {
            stored_node(&self.trees(), level, index)
        })
    }

    /// The inclusion proof of entry `seq` in the tree of the first `size` entries: the entry's
    /// leaf hash and the audit path (RFC 9162 §2.1.3), leaf index `seq - 1`.
    pub fn audit_inclusion_proof(
        &self,
        seq: u64,
        size: u64,
    ) -> Result<(Hash, Vec<Hash>), StoreError> {
        self.within_log(size)?;
        let beyond = || StoreError::BeyondLog {
            size,
            len: self.audit_len(),
        };
        let Some(index) = seq.checked_sub(1).filter(|i| *i < size) else {
            return Err(beyond());
        };
        let value = self
            .trees()
            .audit
            .get(seq.to_be_bytes())
            .map_err(StoreError::sled("read audit entry"))?
            .ok_or_else(beyond)?;
        let (_, _, body) = split_stored(&value).ok_or(StoreError::Corrupt {
            what: WHAT,
            problem: "entry undecodable",
        })?;
        let path =
            merkle::inclusion_proof(index, size, |level, i| stored_node(&self.trees(), level, i))?
                .unwrap_or_default();
        Ok((merkle::leaf_hash(body), path))
    }

    /// The consistency proof between the trees of the first `first` and `second` entries
    /// (RFC 9162 §2.1.4).
    pub fn audit_consistency_proof(
        &self,
        first: u64,
        second: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        self.within_log(second)?;
        merkle::consistency_proof(first, second, |level, i| {
            stored_node(&self.trees(), level, i)
        })?
        .ok_or(StoreError::BeyondLog {
            size: first,
            len: second,
        })
    }

    pub(crate) fn within_log(&self, size: u64) -> Result<(), StoreError> {
        let len = self.audit_len();
        if size > len {
            return Err(StoreError::BeyondLog { size, len });
        }
        Ok(())
    }

    /// Walks the whole log in order: recomputes every hash, checks the links, seq continuity,
    /// the head record and that the indexes hold exactly the keys the entries imply. Returns
    /// the number of entries verified, or the first bad seq. Entries appended while it runs
    /// are not covered (it checks the log up to the head it read first).
    pub fn audit_verify(&self) -> Result<u64, AuditChainError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.audit_verify_in(u64::try_from(cores).unwrap_or(1), MIN_SEGMENT)
    }

    /// [`Store::audit_verify`], and in the same walk the Merkle tree recomputed from the
    /// entries' bodies (RFC 9162 leaf hashes, continuing the stored right edge at the archive
    /// floor): each parallel range hashes its own leaves into a compact range, and the
    /// ranges are joined in order. Returns the tree's head and its heads at the asked `sizes`
    /// (kept checkpoints) that are live entries; read `sizes` before calling, so that every
    /// size a checkpoint was made of is within the head the walk reads.
    pub fn audit_verify_with_tree(
        &self,
        sizes: &BTreeSet<u64>,
    ) -> Result<AuditTreeCheck, AuditVerifyError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.audit_verify_tree_in(u64::try_from(cores).unwrap_or(1), MIN_SEGMENT, sizes)
    }

    /// [`Store::audit_verify_with_tree`] with the walk split as [`Store::audit_verify_in`].
    pub(crate) fn audit_verify_tree_in(
        &self,
        parts: u64,
        min_segment: u64,
        sizes: &BTreeSet<u64>,
    ) -> Result<AuditTreeCheck, AuditVerifyError> {
        let walked = self.verify_walk(parts, min_segment, Some(sizes))?;
        let (floor_edge, leaves) =
            walked
                .tree
                .ok_or(AuditVerifyError::Tree(StoreError::Corrupt {
                    what: "audit tree",
                    problem: "the walk hashed no leaves",
                }))?;
        let (root, roots) = join_leaves(floor_edge, leaves).map_err(AuditVerifyError::Tree)?;
        Ok(AuditTreeCheck {
            entries: walked.count,
            floor: walked.floor,
            root,
            roots,
        })
    }

    /// [`Store::audit_verify`] with the chain walk split into at most `parts` seq ranges of
    /// at least `min_segment` entries each.
    pub(crate) fn audit_verify_in(
        &self,
        parts: u64,
        min_segment: u64,
    ) -> Result<u64, AuditChainError> {
        match self.verify_walk(parts, min_segment, None) {
            Ok(walked) => Ok(walked.count),
            Err(AuditVerifyError::Chain(e)) => Err(e),
            // Only the tree's work fails so; there is none here.
            Err(AuditVerifyError::Tree(e)) => Err(AuditChainError {
                seq: 0,
                problem: ChainProblem::Storage(e.to_string()),
            }),
        }
    }

    /// The chain walk of [`Store::audit_verify_in`], hashing the leaves as well when `sizes`
    /// is given.
    fn verify_walk(
        &self,
        parts: u64,
        min_segment: u64,
        sizes: Option<&BTreeSet<u64>>,
    ) -> Result<Walked, AuditVerifyError> {
        let gate = self.trees();
        let t: &Trees = &gate;
        let head_fault = |problem| AuditChainError { seq: 0, problem };
        let head = t
            .audit_head
            .get(HEAD_KEY)
            .map_err(|e| head_fault(ChainProblem::Storage(e.to_string())))?
            .map(|v| decode::<(u64, [u8; 32])>("audit head", &v))
            .transpose()
            .map_err(|_| head_fault(ChainProblem::HeadMismatch))?;
        let bound = head.map_or(u64::MAX, |(seq, _)| seq);
        let floor = floor(t).map_err(|e| head_fault(ChainProblem::Storage(e.to_string())))?;
        // The live entries' leaves continue the stored tree's right edge at the floor (the
        // CLI checks that edge against the archives' own).
        let floor_edge = match sizes {
            Some(_) => Some(CompactRange::from(
                Frontier::of_size(floor.0, |level, index| stored_node(t, level, index))
                    .map_err(AuditVerifyError::Tree)?,
            )),
            None => None,
        };
        let tree = sizes
            .zip(floor_edge.as_ref())
            .map(|(sizes, floor_edge)| TreeWork { sizes, floor_edge });
        let state = RandomState::new();
        // Without a head there is no bound to split at; that log fails verification anyway.
        // The live chain starts after the archive floor.
        let starts: Vec<u64> = match head {
            Some((head_seq, _)) => {
                segment_starts(head_seq.saturating_sub(floor.0), parts, min_segment)
                    .into_iter()
                    .map(|s| s + floor.0)
                    .collect()
            }
            None => vec![floor.0 + 1],
        };
        // The chain is walked as contiguous seq ranges, one per thread, and stitched in order;
        // the index trees are scanned on their own threads meanwhile (their digests are
        // order-independent). sled's page decoding, not hashing, dominates, so this scales
        // with cores.
        let (walk, index_digests) = std::thread::scope(|scope| {
            let scans = INDEXES.map(|(_, tree)| {
                let tree = tree(t);
                let state = &state;
                scope.spawn(move || IndexDigest::of_tree(state, tree, floor.0, bound))
            });
            let segments: Vec<_> = starts
                .iter()
                .enumerate()
                .map(|(i, &start)| {
                    let end = starts.get(i + 1).copied();
                    let state = &state;
                    (
                        start,
                        scope.spawn(move || walk_segment(t, state, bound, start, end, tree)),
                    )
                })
                .collect();
            let segments = segments.into_iter().map(|(start, walk)| {
                walk.join()
                    .unwrap_or_else(|_| Segment::failed(start, "chain walk thread panicked"))
            });
            let walk = stitch(segments, floor, bound);
            let digests = scans.map(|scan| scan.join());
            (walk, digests)
        });
        let Stitched {
            count,
            last_hash: prev,
            digests: from_entries,
            leaves,
        } = walk?;
        match head {
            Some((head_seq, head_hash)) => {
                if count < head_seq {
                    return Err(AuditChainError {
                        seq: count + 1,
                        problem: ChainProblem::Missing,
                    }
                    .into());
                }
                if head_hash != prev {
                    return Err(AuditChainError {
                        seq: head_seq,
                        problem: ChainProblem::HeadMismatch,
                    }
                    .into());
                }
            }
            None if count > 0 => {
                return Err(AuditChainError {
                    seq: count,
                    problem: ChainProblem::HeadMismatch,
                }
                .into())
            }
            None => {}
        }
        for (from_index, from_entry) in index_digests.into_iter().zip(from_entries) {
            let from_index = match from_index {
                Ok(Ok(digest)) => digest,
                Ok(Err(e)) => {
                    return Err(AuditChainError {
                        seq: 0,
                        problem: ChainProblem::Storage(e.to_string()),
                    }
                    .into())
                }
                Err(_) => {
                    return Err(AuditChainError {
                        seq: 0,
                        problem: ChainProblem::Storage("index scan thread panicked".into()),
                    }
                    .into())
                }
            };
            if from_index != from_entry {
                return Err(self.locate_index_fault(floor.0, count).into());
            }
        }
        Ok(Walked {
            count,
            floor,
            tree: floor_edge.map(|edge| (edge, leaves)),
        })
    }

    /// The slow path after the index digests disagreed: finds the smallest seq whose index
    /// keys are missing, or that a stray index key points at.
    fn locate_index_fault(&self, floor: u64, count: u64) -> AuditChainError {
        let t = self.trees();
        let mut worst: Option<AuditChainError> = None;
        let note = |worst: &mut Option<AuditChainError>, seq: u64, problem: ChainProblem| {
            if worst.as_ref().is_none_or(|w| seq < w.seq) {
                *worst = Some(AuditChainError { seq, problem });
            }
        };
        // Keys each entry implies but that are absent.
        for seq in floor + 1..=count {
            let Ok(Some(entry)) = t
                .audit
                .get(seq.to_be_bytes())
                .map(|v| v.map(|v| decode_entry(self.keys(), seq, &v)))
            else {
                continue;
            };
            let Ok(entry) = entry else { continue };
            for (index, tree, key) in expected_keys(self.keys(), seq, &entry.record) {
                if !matches!(tree(&t).contains_key(&key), Ok(true)) {
                    note(&mut worst, seq, ChainProblem::IndexMismatch { index });
                }
            }
            if worst.is_some() {
                break;
            }
        }
        // Index keys that no entry implies.
        for (index, tree) in INDEXES {
            for item in tree(&t).iter() {
                let Ok((key, _)) = item else { continue };
                let Some(seq) = key
                    .len()
                    .checked_sub(8)
                    .and_then(|at| key.get(at..))
                    .and_then(seq_of_key)
                else {
                    note(&mut worst, 0, ChainProblem::IndexMismatch { index });
                    continue;
                };
                if seq > count || seq <= floor {
                    continue;
                }
                let implied = t
                    .audit
                    .get(seq.to_be_bytes())
                    .ok()
                    .flatten()
                    .and_then(|v| decode_entry(self.keys(), seq, &v).ok())
                    .is_some_and(|entry| {
                        expected_keys(self.keys(), seq, &entry.record)
                            .iter()
                            .any(|(i, _, k)| *i == index && k.as_slice() == &*key)
                    });
                if !implied {
                    note(&mut worst, seq, ChainProblem::IndexMismatch { index });
                }
            }
        }
        worst.unwrap_or(AuditChainError {
            seq: 0,
            problem: ChainProblem::IndexMismatch { index: "audit" },
        })
    }

    pub(crate) fn lock_tail(&self) -> Result<MutexGuard<'_, Tail>, StoreError> {
        match self.inner.audit_tail.lock() {
            Ok(tail) => Ok(tail),
            Err(poisoned) => {
                // A panic mid-append may have left the in-memory tail behind what was
                // written; the head record is the truth.
                let mut tail = poisoned.into_inner();
                *tail = Tail::load(&self.trees())?;
                self.inner.audit_tail.clear_poison();
                Ok(tail)
            }
        }
    }
}

type TreeOf = fn(&Trees) -> &sled::Tree;

const INDEXES: [(&str, TreeOf); 3] = [
    ("patient", |t| &t.audit_by_patient),
    ("transfer", |t| &t.audit_by_transfer),
    ("break-glass", |t| &t.audit_break_glass),
];

/// The index keys an entry implies.
fn expected_keys(
    crypto: &Keys,
    seq: u64,
    record: &AuditRecord,
) -> Vec<(&'static str, TreeOf, Vec<u8>)> {
    let mut keys: Vec<(&'static str, TreeOf, Vec<u8>)> = Vec::new();
    if let Some(p) = &record.patient_ref {
        keys.push((
            "patient",
            |t| &t.audit_by_patient,
            patient_key(&crypto.tag(p), seq).to_vec(),
        ));
    }
    if let Some(id) = &record.transfer_id {
        keys.push((
            "transfer",
            |t| &t.audit_by_transfer,
            transfer_key(id, seq).to_vec(),
        ));
    }
    if record.break_glass {
        keys.push((
            "break-glass",
            |t| &t.audit_break_glass,
            seq.to_be_bytes().to_vec(),
        ));
    }
    keys
}

/// Order-independent digest of a multiset of index keys: each key is hashed with SipHash
/// under keys drawn at random for this verification (so a forger cannot aim at them) and
/// the hashes are summed. Comparing the digest computed from the entries with the digest of
/// each index tree checks the indexes with one sequential scan each and no lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct IndexDigest {
    sum: u64,
    count: u64,
}

impl IndexDigest {
    fn add(&mut self, state: &RandomState, key: &[u8]) {
        let mut h = state.build_hasher();
        h.write(key);
        self.sum = self.sum.wrapping_add(h.finish());
        self.count += 1;
    }

    fn merge(&mut self, other: IndexDigest) {
        self.sum = self.sum.wrapping_add(other.sum);
        self.count += other.count;
    }

    /// The digest of an index tree's keys for entries up to `bound`; keys of entries appended
    /// after the verification started are not judged.
    fn of_tree(
        state: &RandomState,
        tree: &sled::Tree,
        floor: u64,
        bound: u64,
    ) -> Result<Self, sled::Error> {
        let mut digest = IndexDigest::default();
        for item in tree.iter() {
            let (key, _) = item?;
            let seq = key
                .len()
                .checked_sub(8)
                .and_then(|at| key.get(at..))
                .and_then(seq_of_key);
            // Keys of archived entries a removal has not reached yet are not judged either.
            if seq.is_some_and(|s| s > bound || s <= floor) {
                continue;
            }
            digest.add(state, &key);
        }
        Ok(digest)
    }
}

/// The index digests implied by the entries, accumulated during the walk.
struct EntryDigests<'a> {
    state: &'a RandomState,
    digests: [IndexDigest; 3],
}

impl EntryDigests<'_> {
    fn add(&mut self, view: &IndexKeys<'_>) {
        let [patient, transfer, glass] = &mut self.digests;
        let seq = view.seq;
        if let Some(tag) = view.patient_tag {
            patient.add(self.state, &patient_key(tag, seq));
        }
        if let Some(id) = view.transfer_id {
            transfer.add(self.state, &transfer_key(id, seq));
        }
        if view.break_glass {
            glass.add(self.state, &seq.to_be_bytes());
        }
    }
}

/// Below this many entries per range, splitting the chain walk costs more than it saves.
const MIN_SEGMENT: u64 = 50_000;

/// The first seq of each range when entries `1..=last` are walked in at most `parts` ranges
/// of at least `min_segment` entries: strictly increasing, starting at 1. The last range
/// also runs on past `last` (entries appended during the walk are seen there and stop it).
pub(crate) fn segment_starts(last: u64, parts: u64, min_segment: u64) -> Vec<u64> {
    let parts = parts.min(last / min_segment.max(1)).max(1);
    let mut starts: Vec<u64> = (0..parts)
        .map(|k| {
            // u128: `k * last` may exceed u64.
            let offset = u128::from(k) * u128::from(last) / u128::from(parts);
            1 + u64::try_from(offset).unwrap_or(u64::MAX - 1)
        })
        .collect();
    starts.dedup();
    starts
}

/// What a range walk met first, so that the stitching can tell what the sequential walk
/// would have done on arriving there with a different expected seq.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FirstItem {
    Unreadable(String),
    Malformed,
    Seq(u64),
}

/// One range of the chain, walked as the sequential walk would if it arrived at `start`
/// expecting `start`, except that the first entry's link cannot be checked (the previous
/// hash is in another range): its prev_hash is kept for [`stitch`] to check.
struct Segment {
    start: u64,
    first: Option<FirstItem>,
    /// The first entry's prev_hash, set exactly where the sequential walk checks the link:
    /// faults found at `start` before that point leave it `None`.
    first_prev: Option<[u8; 32]>,
    outcome: Result<SegmentEnd, AuditChainError>,
}

struct SegmentEnd {
    /// The seq expected after the range's last entry.
    next: u64,
    /// The range's last hash, if it holds any entry.
    last_hash: Option<[u8; 32]>,
    /// An entry past the verification bound ended the walk in this range.
    reached_bound: bool,
    digests: [IndexDigest; 3],
    /// The leaves of the range's entries, when the tree is recomputed too.
    leaves: Option<SegmentLeaves>,
}

/// The RFC 9162 leaf hashes of a range's entries, as a compact range, and what the tree
/// looked like at each asked size the range reached.
struct SegmentLeaves {
    /// Leaves `start - 1 ..` of the range's entries; the first range's starts at leaf 0 (it
    /// continues the stored right edge at the floor).
    range: CompactRange,
    /// Tree heads at asked sizes, where the range starts at leaf 0.
    roots: Vec<(u64, Hash)>,
    /// The range up to each asked size, where it does not start at leaf 0: the head needs
    /// the ranges before it, joined after the walk.
    partial: Vec<(u64, CompactRange)>,
}

/// What the walk hashes into the tree: the asked sizes, and the right edge at the floor
/// (which the first range continues).
#[derive(Clone, Copy)]
struct TreeWork<'a> {
    sizes: &'a BTreeSet<u64>,
    floor_edge: &'a CompactRange,
}

impl Segment {
    fn failed(start: u64, why: &str) -> Segment {
        Segment {
            start,
            first: Some(FirstItem::Unreadable(why.into())),
            first_prev: None,
            outcome: Err(AuditChainError {
                seq: start,
                problem: ChainProblem::Storage(why.into()),
            }),
        }
    }
}

/// Walks the entries with keys from `start` up to (not including) `end` (or to the end of the
/// tree), and, for the first range, any malformed keys sorting before seq 1: together the
/// ranges cover every key the sequential walk would see.
fn walk_segment(
    t: &Trees,
    state: &RandomState,
    bound: u64,
    start: u64,
    end: Option<u64>,
    tree: Option<TreeWork<'_>>,
) -> Segment {
    let lo = if start <= 1 {
        Bound::Unbounded
    } else {
        Bound::Included(start.to_be_bytes())
    };
    let hi = end.map_or(Bound::Unbounded, |end| Bound::Excluded(end.to_be_bytes()));
    let (mut first, mut first_prev) = (None, None);
    let outcome = walk_range(
        t.audit.range((lo, hi)),
        state,
        bound,
        start,
        tree,
        &mut first,
        &mut first_prev,
    );
    Segment {
        start,
        first,
        first_prev,
        outcome,
    }
}

/// The loop of [`walk_segment`]: the checks and their order are those of a sequential walk,
/// so that a range reports the fault the sequential walk would report. With `tree`, each
/// entry that passes is also hashed as a leaf (the same stored body the chain hash covers,
/// read once).
fn walk_range(
    items: sled::Iter,
    state: &RandomState,
    bound: u64,
    start: u64,
    tree: Option<TreeWork<'_>>,
    first: &mut Option<FirstItem>,
    first_prev: &mut Option<[u8; 32]>,
) -> Result<SegmentEnd, AuditChainError> {
    let mut digests = EntryDigests {
        state,
        digests: [IndexDigest::default(); 3],
    };
    let mut leaves = tree.map(|tree| SegmentLeaves {
        range: if tree.floor_edge.end() == start - 1 {
            tree.floor_edge.clone()
        } else {
            CompactRange::new(start - 1)
        },
        roots: Vec::new(),
        partial: Vec::new(),
    });
    let mut sizes = tree
        .map(|tree| tree.sizes.range(start..))
        .into_iter()
        .flatten()
        .copied()
        .peekable();
    let mut expected = start;
    // The previous entry's hash; unknown for the range's first entry.
    let mut prev: Option<[u8; 32]> = None;
    let mut reached_bound = false;
    for item in items {
        let fail = |problem| AuditChainError {
            seq: expected,
            problem,
        };
        if first.is_none() {
            *first = Some(match &item {
                Err(e) => FirstItem::Unreadable(e.to_string()),
                Ok((key, _)) => seq_of_key(key).map_or(FirstItem::Malformed, FirstItem::Seq),
            });
        }
        let (key, value) = item.map_err(|e| fail(ChainProblem::Storage(e.to_string())))?;
        let seq = seq_of_key(&key).ok_or_else(|| fail(ChainProblem::Undecodable))?;
        if seq > bound {
            reached_bound = true;
            break;
        }
        if seq != expected {
            return Err(fail(ChainProblem::Missing));
        }
        let (prev_hash, hash, body) =
            split_stored(&value).ok_or_else(|| fail(ChainProblem::Undecodable))?;
        let link = match prev {
            Some(prev) if *prev_hash != prev => return Err(fail(ChainProblem::PrevHashMismatch)),
            Some(prev) => prev,
            None => {
                *first_prev = Some(*prev_hash);
                *prev_hash
            }
        };
        if chain_hash(&link, body) != *hash {
            return Err(fail(ChainProblem::HashMismatch));
        }
        let implied = IndexKeys::parse(body).ok_or_else(|| fail(ChainProblem::Undecodable))?;
        if implied.seq != seq {
            return Err(fail(ChainProblem::SeqMismatch));
        }
        digests.add(&implied);
        if let Some(leaves) = leaves.as_mut() {
            leaves.range.append(merkle::leaf_hash(body));
            while let Some(size) = sizes.next_if(|size| *size <= seq) {
                if size != seq {
                    continue;
                }
                match leaves.range.root() {
                    Some(root) => leaves.roots.push((seq, root)),
                    None => leaves.partial.push((seq, leaves.range.clone())),
                }
            }
        }
        prev = Some(*hash);
        expected += 1;
    }
    Ok(SegmentEnd {
        next: expected,
        last_hash: prev,
        reached_bound,
        digests: digests.digests,
        leaves,
    })
}

/// Joins the ranges, in order, into the sequential walk's outcome: the number of entries, the
/// last hash and the index digests the entries imply, or the first bad seq. Each range was
/// walked as if the sequential walk had arrived at its start expecting its start; when it
/// did not (the previous range ended short) or the link to the previous range is broken,
/// the fault is the one the sequential walk would have found there.
fn stitch(
    segments: impl IntoIterator<Item = Segment>,
    floor: (u64, [u8; 32]),
    bound: u64,
) -> Result<Stitched, AuditChainError> {
    let mut expected = floor.0 + 1;
    let mut prev = floor.1;
    let mut digests = [IndexDigest::default(); 3];
    let mut leaves = Vec::new();
    for segment in segments {
        let fail = |problem| AuditChainError {
            seq: expected,
            problem,
        };
        if segment.start != expected {
            // The walk arrives here expecting an earlier seq: the range's first item decides.
            match segment.first {
                None => continue,
                Some(FirstItem::Unreadable(e)) => return Err(fail(ChainProblem::Storage(e))),
                Some(FirstItem::Malformed) => return Err(fail(ChainProblem::Undecodable)),
                Some(FirstItem::Seq(seq)) if seq > bound => break,
                Some(FirstItem::Seq(_)) => return Err(fail(ChainProblem::Missing)),
            }
        }
        if segment
            .first_prev
            .is_some_and(|first_prev| first_prev != prev)
        {
            return Err(fail(ChainProblem::PrevHashMismatch));
        }
        let end = segment.outcome?;
        expected = end.next;
        if let Some(hash) = end.last_hash {
            prev = hash;
        }
        for (total, part) in digests.iter_mut().zip(end.digests) {
            total.merge(part);
        }
        leaves.extend(end.leaves);
        if end.reached_bound {
            break;
        }
    }
    Ok(Stitched {
        count: expected - 1,
        last_hash: prev,
        digests,
        leaves,
    })
}

/// A verification walk's outcome: the entries verified, the floor it started after, and
/// (when asked) the floor's right edge with the leaves of the ranges walked.
struct Walked {
    count: u64,
    floor: (u64, Hash),
    tree: Option<(CompactRange, Vec<SegmentLeaves>)>,
}

/// The sequential walk's outcome, from [`stitch`].
struct Stitched {
    count: u64,
    last_hash: [u8; 32],
    digests: [IndexDigest; 3],
    /// The leaves of the ranges the walk went through, in order.
    leaves: Vec<SegmentLeaves>,
}

/// Joins the ranges' leaves, in order, into the tree of the walked entries: its head and the
/// heads at the asked sizes. A range's head at a size inside it is the join of the ranges
/// before it and its own range up to that size.
fn join_leaves(
    floor_edge: CompactRange,
    leaves: Vec<SegmentLeaves>,
) -> Result<(Hash, BTreeMap<u64, Hash>), StoreError> {
    let gap = |e: merkle::RangeGap| StoreError::Corrupt {
        what: "audit tree",
        problem: if e.begin > e.end {
            "the walked leaves leave a gap"
        } else {
            "the walked leaves overlap"
        },
    };
    let mut roots = BTreeMap::new();
    let mut prefix = floor_edge;
    for (i, part) in leaves.into_iter().enumerate() {
        roots.extend(part.roots);
        if part.range.begin() == 0 {
            // The first range continues the floor's edge itself.
            if i != 0 {
                return Err(gap(merkle::RangeGap {
                    end: prefix.end(),
                    begin: 0,
                }));
            }
            prefix = part.range;
            continue;
        }
        for (size, partial) in part.partial {
            let mut upto = prefix.clone();
            upto.merge(partial).map_err(gap)?;
            if let Some(root) = upto.root() {
                roots.insert(size, root);
            }
        }
        prefix.merge(part.range).map_err(gap)?;
    }
    let root = prefix.root().ok_or(StoreError::Corrupt {
        what: "audit tree",
        problem: "the walked leaves do not start at the first leaf",
    })?;
    Ok((root, roots))
}

/// Splits a stored entry into (prev_hash, hash, body) without copying. This is exactly the
/// postcard layout of [`StoredEntry`] behind the version byte (arrays carry no length, the
/// body a varint length), parsed by hand because it is the hot loop of verification.
pub(crate) fn split_stored(value: &[u8]) -> Option<(&[u8; 32], &[u8; 32], &[u8])> {
    let (&version, rest) = value.split_first()?;
    if version != VERSION {
        return None;
    }
    let (prev, rest) = rest.split_first_chunk::<32>()?;
    let (hash, rest) = rest.split_first_chunk::<32>()?;
    let (body, rest) = postcard::take_from_bytes::<&[u8]>(rest).ok()?;
    rest.is_empty().then_some((prev, hash, body))
}

pub(crate) fn chain_hash(prev_hash: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(HASH_DOMAIN);
    ctx.update(prev_hash);
    ctx.update(body);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn decode_entry(keys: &Keys, seq: u64, value: &[u8]) -> Result<AuditEntry, StoreError> {
    let stored: StoredEntry<'_> = decode(WHAT, value)?;
    let (body_seq, record): (u64, StoredRecord<'_>) = decode_body(WHAT, stored.body)?;
    if body_seq != seq {
        return Err(StoreError::Corrupt {
            what: WHAT,
            problem: "entry seq differs from its key",
        });
    }
    Ok(AuditEntry {
        seq,
        record: record.open(keys, seq)?,
        prev_hash: stored.prev_hash,
        hash: stored.hash,
    })
}

/// How many index keys [`Store::audit_list`] reads before fetching their entries.
const LIST_BATCH: usize = 1024;

/// Each thread fetching a listing's entries gets at least this many. A thread's start and
/// wake-up cost more than they save on a page of 100 (measured: a limit-100 query at p50
/// 2.5 ms on 2 threads against 1.2 ms on one), while 1 000 entries gain 1.2-1.6x.
const PARALLEL_FETCH_MIN: usize = 128;

/// The entries of `seqs`, in order (`None` where one is absent), fetched on up to
/// `available_parallelism` threads when there are enough of them.
fn fetch_entries(
    keys: &Keys,
    audit: &sled::Tree,
    seqs: &[u64],
) -> Vec<Result<Option<AuditEntry>, StoreError>> {
    let fetch = |seqs: &[u64]| -> Vec<Result<Option<AuditEntry>, StoreError>> {
        seqs.iter()
            .map(|&seq| {
                audit
                    .get(seq.to_be_bytes())
                    .map_err(StoreError::sled("list audit entries"))?
                    .map(|value| decode_entry(keys, seq, &value))
                    .transpose()
            })
            .collect()
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seqs.len() / PARALLEL_FETCH_MIN);
    if threads <= 1 {
        return fetch(seqs);
    }
    let chunk = seqs.len().div_ceil(threads);
    let mut chunks = seqs.chunks(chunk);
    let first = chunks.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let others: Vec<_> = chunks.map(|c| (c, scope.spawn(move || fetch(c)))).collect();
        let mut out = fetch(first);
        for (c, other) in others {
            match other.join() {
                Ok(part) => out.extend(part),
                // A panicking fetch is reported as an error for each entry of its chunk.
                Err(_) => out.extend(c.iter().map(|_| {
                    Err(StoreError::Corrupt {
                        what: WHAT,
                        problem: "entry fetch thread panicked",
                    })
                })),
            }
        }
        out
    })
}

fn matches(entry: &AuditEntry, filter: &AuditFilter) -> bool {
    let r = &entry.record;
    filter
        .patient
        .as_ref()
        .is_none_or(|p| r.patient_ref.as_ref() == Some(p))
        && filter
            .transfer_id
            .is_none_or(|id| r.transfer_id == Some(id))
        && (!filter.break_glass_only || r.break_glass)
}

/// `tag || seq_be`: the patient index key of entry `seq`.
pub(crate) fn patient_key(tag: &PatientTag, seq: u64) -> [u8; TAG_LEN + 8] {
    let mut key = [0; TAG_LEN + 8];
    let (head, tail) = key.split_at_mut(TAG_LEN);
    head.copy_from_slice(tag);
    tail.copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn transfer_key(id: &TransferId, seq: u64) -> [u8; 24] {
    let mut key = [0; 24];
    let (head, tail) = key.split_at_mut(16);
    head.copy_from_slice(id);
    tail.copy_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of_key(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}
