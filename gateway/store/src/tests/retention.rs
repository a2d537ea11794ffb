use std::io::Write;

use super::{inbox_entry, open, outbox_entry, reopen, tid};
use crate::{AuditFilter, AuditRecord, RemovedEnvelope, SpoolKind, Store, TransferState};

fn spool(store: &Store, n: u32, kind: SpoolKind) {
    let mut w = store.spool_writer(&tid(n), kind).expect("writer");
    w.write_all(&[n as u8; 4096]).expect("write");
    w.finish().expect("finish");
}

fn record(e: &RemovedEnvelope) -> AuditRecord {
    AuditRecord {
        time_ms: 0,
        event: "envelope-removed".into(),
        transfer_id: Some(e.transfer_id),
        peer: Some(e.peer.clone()),
        patient_ref: e.patient_ref.clone(),
        purpose: None,
        clinician: None,
        outcome: "removed".into(),
        reason: Some(format!("{:?} envelope removed", e.kind)),
        policy_ids: Vec::new(),
        break_glass: false,
    }
}

fn settle(store: &Store, n: u32, state: TransferState) {
    store
        .outbox_update(&tid(n), |e| e.state = state)
        .expect("settle");
}

/// Outbox 1 delivered, 2 failed, 3 cancelled, 4 still queued; inbox 10 acknowledged,
/// 11 not. Every one has its spool file.
fn populated() -> (tempfile::TempDir, Store) {
    let (dir, store) = open();
    for n in 1..=4 {
        store.outbox_insert(&outbox_entry(n, 100)).expect("insert");
        spool(&store, n, SpoolKind::Outbox);
    }
    settle(&store, 1, TransferState::Delivered);
    settle(&store, 2, TransferState::Failed);
    settle(&store, 3, TransferState::Cancelled);
    for n in [10, 11] {
        store.inbox_insert(&inbox_entry(n, 100)).expect("insert");
        spool(&store, n, SpoolKind::Inbox);
    }
    store.inbox_ack(&tid(10), 5_000).expect("ack");
    (dir, store)
}

fn exists(store: &Store, n: u32, kind: SpoolKind) -> bool {
    store.spool_exists(&tid(n), kind).expect("exists")
}

#[test]
fn settled_envelopes_are_removed_once_their_retention_runs_out() {
    let (_dir, store) = populated();
    assert_eq!(store.retained_envelopes(), 4);

    // The acknowledgement at 5 000 ms is the oldest settlement; outbox ones are "now".
    let audit = store
        .expire_envelopes(5_000, 100, record, |_| None)
        .expect("expire")
        .removed;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].record.transfer_id, Some(tid(10)));
    assert_eq!(audit[0].record.peer.as_deref(), Some("facility-a"));
    // Committed in sled first; the file goes only with the unlink step.
    assert!(exists(&store, 10, SpoolKind::Inbox));
    assert_eq!(store.unlink_removed_envelopes().expect("unlink"), 1);
    assert!(!exists(&store, 10, SpoolKind::Inbox));
    assert!(store
        .envelope_removed_ms(SpoolKind::Inbox, &tid(10))
        .expect("removed")
        .is_some());

    let audit = store
        .expire_envelopes(u64::MAX, 100, record, |_| None)
        .expect("expire")
        .removed;
    assert_eq!(audit.len(), 3);
    let mut ids: Vec<_> = audit.iter().filter_map(|e| e.record.transfer_id).collect();
    ids.sort();
    assert_eq!(ids, vec![tid(1), tid(2), tid(3)]);
    assert!(audit.iter().all(|e| e
        .record
        .patient_ref
        .as_deref()
        .is_some_and(|p| p.starts_with("Patient/"))));
    assert_eq!(store.unlink_removed_envelopes().expect("unlink"), 3);
    for n in 1..=3 {
        assert!(!exists(&store, n, SpoolKind::Outbox), "outbox {n}");
    }
    // What is still needed stays: a queued transfer, an unacknowledged inbox entry.
    assert!(exists(&store, 4, SpoolKind::Outbox));
    assert!(exists(&store, 11, SpoolKind::Inbox));
    assert_eq!(
        store
            .envelope_removed_ms(SpoolKind::Outbox, &tid(4))
            .expect("read"),
        None
    );
    // Entries themselves stay; a second sweep finds nothing; the chain holds.
    assert_eq!(
        store.outbox_get(&tid(1)).expect("get").map(|e| e.state),
        Some(TransferState::Delivered)
    );
    assert_eq!(store.retained_envelopes(), 0);
    assert_eq!(
        store
            .expire_envelopes(u64::MAX, 100, record, |_| None)
            .expect("again")
            .removed
            .len(),
        0
    );
    assert_eq!(store.unlink_removed_envelopes().expect("unlink"), 0);
    store.audit_verify().expect("chain verifies");
}

#[test]
fn sweeps_are_bounded_by_the_limit() {
    let (_dir, store) = populated();
    let first = store
        .expire_envelopes(u64::MAX, 2, record, |_| None)
        .expect("expire");
    assert_eq!((first.taken, first.removed.len()), (2, 2));
    assert_eq!(store.retained_envelopes(), 2);
    let second = store
        .expire_envelopes(u64::MAX, 2, record, |_| None)
        .expect("expire");
    assert_eq!((second.taken, second.removed.len()), (2, 2));
    assert_eq!(store.retained_envelopes(), 0);
}

#[test]
fn an_entry_pending_again_keeps_its_envelope() {
    let (_dir, store) = populated();
    settle(&store, 2, TransferState::Queued);
    let expired = store
        .expire_envelopes(u64::MAX, 100, record, |_| None)
        .expect("expire");
    // Four keys were due; the re-pending one is taken off the index but not removed.
    assert_eq!(expired.taken, 4);
    let audit = expired.removed;
    assert_eq!(audit.len(), 3, "1, 3 and inbox 10");
    assert!(audit.iter().all(|e| e.record.transfer_id != Some(tid(2))));
    store.unlink_removed_envelopes().expect("unlink");
    assert!(exists(&store, 2, SpoolKind::Outbox));
    // Settled again, it is indexed again and removed then.
    settle(&store, 2, TransferState::Failed);
    assert_eq!(
        store
            .expire_envelopes(u64::MAX, 100, record, |_| None)
            .expect("expire")
            .removed
            .len(),
        1
    );
    store.unlink_removed_envelopes().expect("unlink");
    assert!(!exists(&store, 2, SpoolKind::Outbox));
}

#[test]
fn a_crash_between_commit_and_unlink_leaves_nothing_behind_after_the_next_sweep() {
    let (dir, store) = populated();
    store
        .expire_envelopes(u64::MAX, 100, record, |_| None)
        .expect("expire");
    // No unlink: as if the node died right after the commit.
    let store = reopen(&dir, store);
    assert!(exists(&store, 1, SpoolKind::Outbox));
    assert_eq!(store.unlink_removed_envelopes().expect("unlink"), 4);
    assert!(!exists(&store, 1, SpoolKind::Outbox));
    assert!(!exists(&store, 10, SpoolKind::Inbox));
    let removed = store
        .audit_list(&AuditFilter::default())
        .expect("list")
        .into_iter()
        .filter(|e| e.record.event == "envelope-removed")
        .count();
    assert_eq!(removed, 4, "one audit record per removal, none repeated");
}

#[test]
fn stores_from_before_retention_are_indexed_once_at_open() {
    let (dir, store) = populated();
    // Forget the index and the marker, as in a store written by an older gateway.
    store.trees().spool_retained.clear().expect("clear");
    store
        .trees()
        .store_meta
        .remove(b"retention-indexed")
        .expect("remove");
    assert_eq!(store.retained_envelopes(), 0);
    let store = reopen(&dir, store);
    assert_eq!(store.retained_envelopes(), 4);
    // Indexed once: a later clear is not undone by the next open.
    store.trees().spool_retained.clear().expect("clear");
    let store = reopen(&dir, store);
    assert_eq!(store.retained_envelopes(), 0);
}

fn requeued(e: &crate::OutboxEntry) -> Vec<AuditRecord> {
    vec![AuditRecord {
        time_ms: 0,
        event: "requeued".into(),
        transfer_id: Some(e.transfer_id),
        peer: Some(e.recipient.clone()),
        patient_ref: Some(e.summary.patient_ref.clone()),
        purpose: None,
        clinician: None,
        outcome: "queued".into(),
        reason: Some("requeued by test".into()),
        policy_ids: Vec::new(),
        break_glass: false,
    }]
}

#[test]
fn a_failed_transfer_is_requeued_with_its_audit_entry_and_keeps_its_envelope() {
    let (_dir, store) = populated();
    // Only the failed one: the others are refused with their state, nothing written.
    for (n, state) in [
        (1, TransferState::Delivered),
        (3, TransferState::Cancelled),
        (4, TransferState::Queued),
    ] {
        let refused = store
            .outbox_requeue_audited(&tid(n), 9_000, requeued)
            .expect("requeue");
        assert_eq!(refused.err(), Some(crate::RequeueRefusal::NotFailed(state)));
    }
    let (entry, entries) = store
        .outbox_requeue_audited(&tid(2), 9_000, requeued)
        .expect("requeue")
        .expect("a failed transfer is requeued");
    assert_eq!(entry.state, TransferState::Queued);
    assert_eq!((entry.attempts, entry.next_attempt_ms), (0, 9_000));
    assert_eq!(entries.len(), 1);
    assert_eq!(store.outbox_due(9_000, 10).expect("due").len(), 2);
    let requeue_entries = store
        .audit_list(&AuditFilter {
            transfer_id: Some(tid(2)),
            ..AuditFilter::default()
        })
        .expect("audit")
        .into_iter()
        .filter(|e| e.record.event == "requeued")
        .count();
    assert_eq!(requeue_entries, 1);
    // Pending again: the sweep leaves its envelope.
    store
        .expire_envelopes(u64::MAX, 100, record, |_| None)
        .expect("expire");
    store.unlink_removed_envelopes().expect("unlink");
    assert!(exists(&store, 2, SpoolKind::Outbox));
    assert!(!exists(&store, 1, SpoolKind::Outbox));
}

#[test]
fn a_failed_transfer_whose_envelope_was_removed_is_not_requeued() {
    let (_dir, store) = populated();
    store
        .expire_envelopes(u64::MAX, 100, record, |_| None)
        .expect("expire");
    let refused = store
        .outbox_requeue_audited(&tid(2), 9_000, requeued)
        .expect("requeue");
    assert!(
        matches!(
            refused,
            Err(crate::RequeueRefusal::EnvelopeRemoved { removed_ms }) if removed_ms > 0
        ),
        "{refused:?}"
    );
    assert_eq!(
        store.outbox_get(&tid(2)).expect("get").map(|e| e.state),
        Some(TransferState::Failed)
    );
}
