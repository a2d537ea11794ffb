//! `audit_verify_with_tree`: the Merkle tree recomputed inside the split chain walk (each
//! range's leaves a compact range, joined in order) gives the heads the sequential
//! recompute gives, at every asked size and every split, after an archive floor too, and a
//! broken chain is still named at the same entry.

use std::collections::BTreeSet;

use super::{audit_record, open, tid};
use crate::audit::{AuditTreeCheck, AuditVerifyError};
use crate::{AuditChainError, Store};

fn fill(store: &Store, n: u32) {
    for i in 0..n {
        let patient = (i % 7 != 6).then(|| format!("Patient/{}", i % 7));
        let transfer = (i % 3 != 0).then(|| tid(i % 5));
        store
            .audit_append(audit_record(patient.as_deref(), transfer, i % 10 == 0))
            .unwrap();
    }
}

/// The splits that matter for a log of `len` entries: one range, a few, one per entry,
/// more ranges than entries.
fn splits(len: u64) -> Vec<u64> {
    (1..=9)
        .chain([len.saturating_sub(1), len, len + 1])
        .collect()
}

/// Every split agrees with the sequential recompute (`audit_tree_recompute`, one leaf at a
/// time on a `Frontier`) and with the stored tree; returns the check.
fn check_every_split(store: &Store, sizes: &BTreeSet<u64>) -> AuditTreeCheck {
    let (floor, _) = store.audit_floor().unwrap();
    let (size, root, roots) = store.audit_tree_recompute(sizes).unwrap();
    assert_eq!(root, store.audit_tree_root(size).unwrap());
    let mut first = None;
    for parts in splits(store.audit_len()) {
        let check = store.audit_verify_tree_in(parts, 1, sizes).unwrap();
        assert_eq!((check.entries, check.root), (size, root), "{parts} ranges");
        assert_eq!(check.roots, roots, "{parts} ranges");
        assert!(check.roots.keys().all(|s| *s > floor && *s <= size));
        assert_eq!(check.floor, store.audit_floor().unwrap());
        first.get_or_insert(check);
    }
    let check = first.unwrap();
    assert_eq!(store.audit_verify_with_tree(sizes).unwrap(), check);
    check
}

#[test]
fn the_walk_gives_the_reference_heads_at_every_size_and_split() {
    let (_dir, store) = open();
    // The empty log: the empty tree, no head asked for is there.
    let none: BTreeSet<u64> = [0, 1, 5].into_iter().collect();
    let check = check_every_split(&store, &none);
    assert_eq!(check.root, crate::merkle::empty_root());
    assert!(check.roots.is_empty());
    // One entry, then sizes crossing powers of two.
    fill(&store, 1);
    let one = check_every_split(&store, &[1].into_iter().collect());
    assert_eq!(one.roots[&1], store.audit_tree_root(1).unwrap());
    fill(&store, 136);
    // Every size, so each split has a checkpoint at each of its boundaries; and sizes past
    // the head, which are not answered.
    let every: BTreeSet<u64> = (0..=140).collect();
    let check = check_every_split(&store, &every);
    assert_eq!(check.entries, 137);
    assert_eq!(check.roots.len(), 137);
    for size in [1u64, 2, 63, 64, 65, 127, 128, 129, 137] {
        assert_eq!(check.roots[&size], store.audit_tree_root(size).unwrap());
    }
    // No size asked: the head only.
    assert!(check_every_split(&store, &BTreeSet::new()).roots.is_empty());
}

#[test]
fn after_an_archive_floor_the_walk_continues_the_stored_edge() {
    let (_dir, store) = open();
    fill(&store, 77);
    store.audit_archive_remove(33).unwrap();
    let sizes: BTreeSet<u64> = (1..=80).collect();
    let check = check_every_split(&store, &sizes);
    assert_eq!(check.floor.0, 33);
    assert_eq!(check.roots.len(), 77 - 33);
    assert_eq!(check.roots[&34], store.audit_tree_root(34).unwrap());
    assert_eq!(check.root, store.audit_tree_root(77).unwrap());
    // A floor at a power of two.
    store.audit_archive_remove(64).unwrap();
    assert_eq!(check_every_split(&store, &sizes).roots.len(), 77 - 64);
}

#[test]
fn a_changed_stored_node_at_the_floor_changes_the_recomputed_head() {
    let (_dir, store) = open();
    fill(&store, 40);
    store.audit_archive_remove(32).unwrap();
    let sizes: BTreeSet<u64> = [35, 40].into_iter().collect();
    let honest = store.audit_verify_tree_in(2, 1, &sizes).unwrap();
    // The floor's edge is the stored node over leaves 0..32: the walk starts from it.
    store
        .trees()
        .audit_tree
        .insert(crate::audit::tree_key(5, 0), &[7u8; 32][..])
        .unwrap();
    let changed = store.audit_verify_tree_in(2, 1, &sizes).unwrap();
    assert_ne!(changed.root, honest.root);
    assert_ne!(changed.roots[&35], honest.roots[&35]);
    // A node of the wrong length there is a local fault, not a chain break.
    store
        .trees()
        .audit_tree
        .insert(crate::audit::tree_key(5, 0), &[7u8; 3][..])
        .unwrap();
    assert!(matches!(
        store.audit_verify_tree_in(2, 1, &sizes),
        Err(AuditVerifyError::Tree(_))
    ));
}

/// The fault the walk with the tree reports at every split: the chain walk's own.
fn fault_in_every_split(store: &Store) -> AuditChainError {
    let sizes: BTreeSet<u64> = (1..=store.audit_len()).collect();
    let sequential = store.audit_verify_in(1, 1).unwrap_err();
    for parts in splits(store.audit_len()) {
        match store.audit_verify_tree_in(parts, 1, &sizes) {
            Err(AuditVerifyError::Chain(e)) => assert_eq!(e, sequential, "{parts} ranges"),
            other => panic!("{parts} ranges: {other:?}"),
        }
    }
    sequential
}

#[test]
fn a_bad_entry_is_still_named_at_its_seq() {
    let (_dir, store) = open();
    fill(&store, 120);
    // A flipped body byte of entry 61 (the last byte of the stored value).
    let key = 61u64.to_be_bytes();
    let mut value = store.trees().audit.get(key).unwrap().unwrap().to_vec();
    let last = value.len() - 1;
    value[last] ^= 1;
    store.trees().audit.insert(key, value).unwrap();
    let e = fault_in_every_split(&store);
    assert_eq!(e.seq, 61);
    assert_eq!(e.problem, crate::ChainProblem::HashMismatch);
    // Entry 90 removed as well: 61 is still the first bad one.
    store.trees().audit.remove(90u64.to_be_bytes()).unwrap();
    assert_eq!(fault_in_every_split(&store).seq, 61);
}

#[test]
fn a_missing_entry_is_named_where_the_chain_walk_names_it() {
    let (_dir, store) = open();
    fill(&store, 50);
    store.trees().audit.remove(26u64.to_be_bytes()).unwrap();
    let e = fault_in_every_split(&store);
    assert_eq!(e.seq, 26);
    assert_eq!(e.problem, crate::ChainProblem::Missing);
}
