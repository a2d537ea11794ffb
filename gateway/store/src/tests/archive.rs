//! Archiving the head of the audit log: entries leave the store, the chain verifies from the
//! floor, the tree keeps every proof, appends go on, and a restart changes nothing.

use super::{audit_record, open, reopen, tid};
use crate::merkle::{verify_consistency, verify_inclusion, Frontier};
use crate::{check_stored_entry, entry_leaf_hash, entry_view, AuditFilter, Store};

fn fill(store: &Store, n: u32) {
    for i in 0..n {
        let patient = (i % 2 == 0).then(|| format!("Patient/{}", i % 3));
        let record = audit_record(patient.as_deref(), Some(tid(i % 4)), i % 5 == 0);
        store.audit_append(record).expect("append");
    }
}

#[test]
fn archived_entries_leave_and_every_later_proof_still_verifies() {
    let (dir, store) = open();
    fill(&store, 100);
    let (size, root100) = store.audit_tree_head().unwrap();
    assert_eq!(size, 100);
    // What an archive of entries 1..=40 holds checks on its own, from an empty frontier.
    let stored = store.audit_stored_range(1, 40).unwrap();
    let mut prev = [0u8; 32];
    let mut frontier = Frontier::from_heads(0, Vec::new()).unwrap();
    for (i, value) in stored.iter().enumerate() {
        let seq = i as u64 + 1;
        let (hash, body) = check_stored_entry(seq, &prev, value).unwrap();
        assert_eq!(entry_view(body).unwrap().seq, seq);
        frontier.push(seq - 1, entry_leaf_hash(body));
        prev = hash;
    }
    assert_eq!(frontier.root(), store.audit_tree_root(40).unwrap());
    assert_eq!(store.audit_frontier(40).unwrap(), frontier.heads().to_vec());

    assert_eq!(store.audit_archive_remove(40).unwrap(), 40);
    assert_eq!(store.audit_floor().unwrap(), (40, prev));
    assert!(store.audit_stored_body(40).unwrap().is_none());
    assert!(store.audit_stored_body(41).unwrap().is_some());
    assert_eq!(store.audit_verify(), Ok(100));
    // The index keys went with the entries: a transfer's listing starts after the floor.
    let listed = store
        .audit_list(&AuditFilter {
            transfer_id: Some(tid(1)),
            ..AuditFilter::default()
        })
        .unwrap();
    assert!(listed.iter().all(|e| e.seq > 40) && !listed.is_empty());
    // Appends, and proofs for later entries and across the floor.
    fill(&store, 30);
    let store = reopen(&dir, store);
    assert_eq!(store.audit_verify(), Ok(130));
    let (size, root) = store.audit_tree_head().unwrap();
    assert_eq!(size, 130);
    for seq in [41, 64, 100, 130] {
        let (leaf, path) = store.audit_inclusion_proof(seq, 130).unwrap();
        verify_inclusion(seq - 1, 130, &leaf, &path, &root).unwrap();
    }
    let proof = store.audit_consistency_proof(100, 130).unwrap();
    verify_consistency(100, 130, &root100, &root, &proof).unwrap();
    let proof = store.audit_consistency_proof(20, 130).unwrap();
    verify_consistency(20, 130, &store.audit_tree_root(20).unwrap(), &root, &proof).unwrap();
    // A second archive continues from the floor; archiving below it removes nothing.
    assert_eq!(store.audit_archive_remove(30).unwrap(), 0);
    assert_eq!(store.audit_archive_remove(90).unwrap(), 50);
    assert_eq!(store.audit_verify(), Ok(130));
    assert!(store.audit_archive_remove(131).is_err());
}

#[test]
fn a_rewritten_entry_after_the_floor_is_still_named() {
    let (_dir, store) = open();
    fill(&store, 20);
    store.audit_archive_remove(10).unwrap();
    let key = 12u64.to_be_bytes();
    let mut value = store.trees().audit.get(key).unwrap().unwrap().to_vec();
    let last = value.len() - 1;
    value[last] ^= 1;
    store.trees().audit.insert(key, value).unwrap();
    assert_eq!(store.audit_verify().unwrap_err().seq, 12);
}

#[test]
fn the_recomputed_tree_matches_the_stored_one_until_a_node_is_changed() {
    let (_dir, store) = open();
    fill(&store, 37);
    store.audit_archive_remove(9).unwrap();
    let sizes = [12u64, 37].into_iter().collect();
    let (size, root, roots) = store.audit_tree_recompute(&sizes).unwrap();
    assert_eq!((size, root), store.audit_tree_head().unwrap());
    assert_eq!(roots[&12], store.audit_tree_root(12).unwrap());
    // A stored node that no longer matches the entries (a tree rewritten on its own).
    let key = crate::audit::tree_key(5, 0);
    store
        .trees()
        .audit_tree
        .insert(key, &[7u8; 32][..])
        .unwrap();
    let (_, root, _) = store.audit_tree_recompute(&sizes).unwrap();
    assert_ne!(root, store.audit_tree_root(37).unwrap());
}
