//! The audit log's Merkle tree: kept in the append's own transaction by every write path,
//! heads and proofs that verify for every size, reloaded at open, and built once for a log
//! written before the tree existed.

use crate::merkle::{self, verify_consistency, verify_inclusion, Hash};
use crate::Store;

use super::{audit_record, inbox_entry, open, reopen, tid};

/// MTH over leaf hashes, from the RFC's definition (independent of the stored nodes).
fn reference_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => merkle::empty_root(),
        1 => leaves[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            merkle::node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

/// Grows the log through the three append paths: single appends, batches, and entries
/// written with a state change (`inbox_insert_audited`).
fn grow(store: &Store, rounds: u32) {
    for n in 0..rounds {
        store
            .audit_append(audit_record(Some("Patient/p-1"), Some(tid(n)), n % 5 == 0))
            .unwrap();
        store
            .audit_append_batch((0..n % 4).map(|_| audit_record(None, None, false)))
            .unwrap();
        store
            .inbox_insert_audited(
                &inbox_entry(n, 1_700_000_000_000 + u64::from(n)),
                vec![audit_record(Some("Patient/p-2"), Some(tid(n)), false)],
            )
            .unwrap();
    }
}

fn check_every_size(store: &Store) {
    let (len, head) = store.audit_tree_head().unwrap();
    assert_eq!(len, store.audit_len());
    let leaves: Vec<Hash> = (1..=len)
        .map(|seq| store.audit_inclusion_proof(seq, len).unwrap().0)
        .collect();
    assert_eq!(head, reference_root(&leaves));
    for size in 0..=len {
        let root = store.audit_tree_root(size).unwrap();
        assert_eq!(
            root,
            reference_root(&leaves[..size as usize]),
            "head of {size}"
        );
        for seq in 1..=size {
            let (leaf, path) = store.audit_inclusion_proof(seq, size).unwrap();
            verify_inclusion(seq - 1, size, &leaf, &path, &root).unwrap();
        }
        for first in 0..=size {
            let proof = store.audit_consistency_proof(first, size).unwrap();
            let first_root = store.audit_tree_root(first).unwrap();
            verify_consistency(first, size, &first_root, &root, &proof).unwrap();
        }
    }
    assert!(store.audit_tree_root(len + 1).is_err());
    assert!(store.audit_inclusion_proof(len + 1, len).is_err());
    assert!(store.audit_inclusion_proof(0, len).is_err());
}

#[test]
fn every_append_path_extends_the_tree_and_every_proof_verifies() {
    let (dir, store) = open();
    grow(&store, 12);
    assert!(store.audit_len() > 40);
    check_every_size(&store);
    // The right edge is read back from the stored nodes.
    let before = store.audit_tree_head().unwrap();
    let store = reopen(&dir, store);
    assert_eq!(store.audit_tree_head().unwrap(), before);
    grow(&store, 3);
    check_every_size(&store);
    store.audit_verify().unwrap();
}

#[test]
fn a_log_without_its_tree_gets_it_built_once_at_open() {
    let (dir, store) = open();
    grow(&store, 9);
    let head = store.audit_tree_head().unwrap();
    drop(store);
    // As a store written before the tree existed: the tree's tree removed.
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        assert!(db.drop_tree("audit_tree").unwrap());
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.audit_tree_head().unwrap(), head);
    check_every_size(&store);
}
