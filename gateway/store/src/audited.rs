//! Audit entries written in the same sled transaction as the state change they record.
//!
//! A transfer step (queue it, claim it, mark it delivered, store it in the inbox) changes an
//! outbox or inbox entry and appends one or more audit records. Written as one transaction,
//! the two become durable together (no recovery pass has to fill in a missing entry) and cost
//! one sled transaction instead of two or three, which is most of the store's CPU per
//! transfer. The chain is extended under the audit tail's mutex, as every append is.

use sled::transaction::{
    ConflictableTransactionError, Transactional, TransactionalTree, UnabortableTransactionError,
};

use crate::audit::{
    chain_hash, patient_key, transfer_key, tree_key, StoredEntry, StoredRecord, Tail, HEAD_KEY,
    WHAT,
};
use crate::codec::encode;
use crate::error::StoreError;
use crate::merkle::{self, Frontier, Hash};
use crate::protect::{Keys, TAG_LEN};
use crate::types::{AuditEntry, AuditRecord};
use crate::{now_ms, tx_err, Store};

/// The result a transaction body returns; `abort` with a [`StoreError`] to refuse.
pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// One record, chained and encoded, with the index keys it implies.
struct Row {
    seq_key: [u8; 8],
    /// The Merkle tree nodes this entry completes, as `(audit_tree key, hash)`.
    tree_nodes: Vec<([u8; 9], Hash)>,
    value: Vec<u8>,
    patient_key: Option<[u8; TAG_LEN + 8]>,
    transfer_key: Option<[u8; 24]>,
    break_glass: bool,
}

/// Records linked onto a tail: their seqs, hashes and encoded rows, ready to write. Valid only
/// while the tail they were chained on is locked and unchanged.
pub(crate) struct Chained {
    rows: Vec<Row>,
    entries: Vec<AuditEntry>,
    head: Option<(u64, [u8; 32])>,
    frontier: Frontier,
}

impl Chained {
    /// Assigns the next seqs after `tail`, stamps `time_ms` where it is 0, seals the patient
    /// reference, links and hashes.
    pub(crate) fn new(
        tail: &Tail,
        records: impl IntoIterator<Item = AuditRecord>,
        keys: &Keys,
    ) -> Result<Chained, StoreError> {
        let (mut seq, mut hash) = (tail.last_seq, tail.hash);
        let mut frontier = tail.frontier.clone();
        let mut rows = Vec::new();
        let mut entries = Vec::new();
        let mut sealed = Vec::new();
        for mut record in records {
            if record.time_ms == 0 {
                record.time_ms = now_ms();
            }
            seq += 1;
            let (stored, tag) = StoredRecord::seal(keys, seq, &record, &mut sealed)?;
            let body = postcard::to_allocvec(&(seq, &stored))
                .map_err(|source| StoreError::Encode { what: WHAT, source })?;
            let prev_hash = hash;
            hash = chain_hash(&prev_hash, &body);
            // Leaf `seq - 1` of the Merkle tree: the entry's canonical bytes, as chained.
            let tree_nodes = frontier
                .push(seq - 1, merkle::leaf_hash(&body))
                .into_iter()
                .map(|(level, index, hash)| (tree_key(level, index), hash))
                .collect();
            let value = encode(
                WHAT,
                &StoredEntry {
                    prev_hash,
                    hash,
                    body: &body,
                },
            )?;
            rows.push(Row {
                seq_key: seq.to_be_bytes(),
                tree_nodes,
                value,
                patient_key: tag.map(|tag| patient_key(&tag, seq)),
                transfer_key: record.transfer_id.map(|id| transfer_key(&id, seq)),
                break_glass: record.break_glass,
            });
            entries.push(AuditEntry {
                seq,
                record,
                prev_hash,
                hash,
            });
        }
        let head = (!entries.is_empty()).then_some((seq, hash));
        Ok(Chained {
            rows,
            entries,
            head,
            frontier,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the rows, their index keys and the new head into the audit trees of a
    /// transaction: `audit`, `audit_by_patient`, `audit_by_transfer`, `audit_break_glass`,
    /// `audit_head`, `audit_tree`, in that order.
    pub(crate) fn write(
        &self,
        [audit, by_patient, by_transfer, break_glass, head, tree]: [&TransactionalTree; 6],
    ) -> Result<(), UnabortableTransactionError> {
        let Some(new_head) = self.head else {
            return Ok(());
        };
        for row in &self.rows {
            audit.insert(&row.seq_key[..], row.value.as_slice())?;
            if let Some(key) = &row.patient_key {
                by_patient.insert(&key[..], &[][..])?;
            }
            if let Some(key) = &row.transfer_key {
                by_transfer.insert(&key[..], &[][..])?;
            }
            if row.break_glass {
                break_glass.insert(&row.seq_key[..], &[][..])?;
            }
            for (key, hash) in &row.tree_nodes {
                tree.insert(&key[..], &hash[..])?;
            }
        }
        // Encoding a (u64, [u8; 32]) cannot fail; were it to, the transaction is refused.
        let value = encode("audit head", &new_head).map_err(|_| {
            UnabortableTransactionError::Storage(sled::Error::Unsupported(
                "audit head not encodable".to_owned(),
            ))
        })?;
        head.insert(HEAD_KEY, value)?;
        Ok(())
    }

    /// Moves the in-memory tail past the written rows; call only once the transaction that
    /// wrote them has committed, so a failed write leaves the chain where it was.
    pub(crate) fn advance(self, tail: &mut Tail) -> Vec<AuditEntry> {
        if let Some((seq, hash)) = self.head {
            tail.last_seq = seq;
            tail.hash = hash;
            tail.frontier = self.frontier;
        }
        self.entries
    }
}

impl Store {
    /// Runs `body` on the transactional views of `trees` and appends the audit records it
    /// returns, all in one sled transaction. `body` may run more than once (sled retries on
    /// conflict), so it must not have side effects outside the transaction. Returns what
    /// `body` returned and the appended entries.
    pub(crate) fn write_audited<R, const N: usize>(
        &self,
        context: &'static str,
        trees: [&sled::Tree; N],
        body: impl Fn(&[TransactionalTree; N]) -> TxResult<(R, Vec<AuditRecord>)>,
    ) -> Result<(R, Vec<AuditEntry>), StoreError> {
        let mut tail = self.lock_tail()?;
        let t = self.trees();
        let mut all: Vec<&sled::Tree> = trees.to_vec();
        all.extend([
            &t.audit,
            &t.audit_by_patient,
            &t.audit_by_transfer,
            &t.audit_break_glass,
            &t.audit_head,
            &t.audit_tree,
        ]);
        let (result, chained) = all
            .as_slice()
            .transaction(|views| {
                // sled hands back one view per tree given, in order: N of ours, then 6.
                let Some((own, [a, p, tr, bg, h, mt])) = views.split_first_chunk::<N>() else {
                    return Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
                        what: WHAT,
                        problem: "transaction views do not match its trees",
                    }));
                };
                let (result, records) = body(own)?;
                let chained = Chained::new(&tail, records, self.keys())
                    .map_err(ConflictableTransactionError::Abort)?;
                chained.write([a, p, tr, bg, h, mt])?;
                Ok((result, chained))
            })
            .map_err(tx_err(context))?;
        Ok((result, chained.advance(&mut tail)))
    }
}
