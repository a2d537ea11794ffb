//! Entries whose envelope was lost in a crash before they were acknowledged (see the `lost`
//! module): the crash window between sled's own write-back and the group commit, reproduced
//! by writing the entry and its segment record, letting sled flush, and tearing the record
//! off the segment's tail before reopening, as a power cut would leave it.

use std::path::PathBuf;

use super::{inbox_entry, open, outbox_entry, reopen, tid};
use crate::segment::segment_path;
use crate::{
    AuditEntry, AuditFilter, AuditRecord, InboxInsert, KeyLookup, SpoolKind, Store, TransferId,
    TransferState, ENVELOPE_LOST_EVENT,
};

const WINDOW_MS: u64 = 24 * 3600 * 1000;

fn envelope(n: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 ^ n.wrapping_mul(17)) as u8)
        .collect()
}

fn put(store: &Store, n: u32, kind: SpoolKind, bytes: &[u8]) {
    let mut w = store.spool_writer(&tid(n), kind).expect("writer");
    w.write_chunk(bytes).expect("write");
    assert!(w.is_for_segment());
    w.finish().expect("finish");
}

fn get(store: &Store, n: u32, kind: SpoolKind) -> Option<Vec<u8>> {
    store
        .spool_open(&tid(n), kind)
        .expect("open")
        .map(|r| r.into_bytes().expect("read"))
}

/// The only segment of `kind` (these tests stay far below a segment's size).
fn tail(dir: &tempfile::TempDir, kind: SpoolKind) -> PathBuf {
    segment_path(
        &dir.path()
            .join("spool")
            .join(format!("{}-segments", kind.dir_name())),
        1,
    )
}

fn record(event: &str, id: TransferId) -> AuditRecord {
    AuditRecord {
        time_ms: 0,
        event: event.into(),
        transfer_id: Some(id),
        peer: Some("facility-a".into()),
        patient_ref: Some("Patient/p-1".into()),
        purpose: Some("treatment".into()),
        clinician: None,
        outcome: "ok".into(),
        reason: None,
        policy_ids: Vec::new(),
        break_glass: false,
    }
}

fn events(store: &Store, id: TransferId) -> Vec<AuditEntry> {
    store
        .audit_list(&AuditFilter {
            transfer_id: Some(id),
            ..AuditFilter::default()
        })
        .expect("audit list")
}

fn lost_events(store: &Store, id: TransferId) -> Vec<AuditEntry> {
    events(store, id)
        .into_iter()
        .filter(|e| e.record.event == ENVELOPE_LOST_EVENT)
        .collect()
}

/// Cuts the file at `len`, as a crash leaves an append that never reached the disk.
fn tear(path: &PathBuf, len: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment");
    f.set_len(len).expect("truncate");
}

/// No inbox entry is left whose envelope is gone.
fn every_inbox_entry_has_its_envelope(store: &Store) {
    for e in store.inbox_list().expect("list") {
        assert!(
            store
                .spool_exists(&e.transfer_id, SpoolKind::Inbox)
                .expect("exists"),
            "inbox entry {} without its envelope",
            hex::encode(e.transfer_id)
        );
    }
}

#[tokio::test]
async fn an_inbox_entry_whose_record_was_torn_off_is_removed_and_the_resend_is_stored() {
    let (dir, store) = open();
    // Transfer 2: stored and committed (acknowledged to its sender).
    put(&store, 2, SpoolKind::Inbox, &envelope(2, 3000));
    store
        .inbox_insert_audited(&inbox_entry(2, 100), vec![record("received", tid(2))])
        .expect("insert");
    store.commit().await.expect("commit");
    let acknowledged_end = std::fs::metadata(tail(&dir, SpoolKind::Inbox))
        .expect("stat")
        .len();
    // Transfer 1: appended and recorded, then sled writes back on its own (its ~500 ms
    // flush) before the group commit syncs the segment: the crash window.
    put(&store, 1, SpoolKind::Inbox, &envelope(1, 5000));
    let (insert, _) = store
        .inbox_insert_audited(&inbox_entry(1, 200), vec![record("received", tid(1))])
        .expect("insert");
    assert_eq!(insert, InboxInsert::Inserted);
    store.inner.db.flush().expect("sled's own flush");
    drop(store);
    // The power cut: of transfer 1's record only part of its header reached the disk.
    tear(&tail(&dir, SpoolKind::Inbox), acknowledged_end + 10);

    let store = Store::open(dir.path()).expect("reopen");
    // The entry is gone (its receipt was never sent), with an audit entry saying why.
    assert_eq!(store.inbox_get(&tid(1)).expect("get"), None);
    assert!(!store
        .spool_exists(&tid(1), SpoolKind::Inbox)
        .expect("exists"));
    let lost = lost_events(&store, tid(1));
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].record.outcome, "removed");
    assert_eq!(lost[0].record.peer.as_deref(), Some("facility-a"));
    assert_eq!(lost[0].record.patient_ref, None);
    // The acknowledged transfer is untouched.
    assert_eq!(
        store.inbox_get(&tid(2)).expect("get"),
        Some(inbox_entry(2, 100))
    );
    assert_eq!(get(&store, 2, SpoolKind::Inbox), Some(envelope(2, 3000)));
    assert!(lost_events(&store, tid(2)).is_empty());
    every_inbox_entry_has_its_envelope(&store);

    // The sender's resend is not a duplicate any more: it is stored as the receive path
    // stores a new transfer, and survives the next crash.
    assert_eq!(store.inbox_get(&tid(1)).expect("get"), None);
    put(&store, 1, SpoolKind::Inbox, &envelope(1, 5000));
    let (insert, _) = store
        .inbox_insert_audited(&inbox_entry(1, 300), vec![record("received", tid(1))])
        .expect("insert");
    assert_eq!(insert, InboxInsert::Inserted);
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(
        store.inbox_get(&tid(1)).expect("get"),
        Some(inbox_entry(1, 300))
    );
    assert_eq!(get(&store, 1, SpoolKind::Inbox), Some(envelope(1, 5000)));
    assert_eq!(store.inbox_list().expect("list").len(), 2);
    // Settled once: the reopen found nothing more to do.
    assert_eq!(lost_events(&store, tid(1)).len(), 1);
    let trail: Vec<String> = events(&store, tid(1))
        .into_iter()
        .map(|e| e.record.event)
        .collect();
    assert_eq!(trail, ["received", ENVELOPE_LOST_EVENT, "received"]);
    every_inbox_entry_has_its_envelope(&store);
    store.audit_verify().expect("audit chain verifies");
}

#[tokio::test]
async fn a_pending_outbox_transfer_whose_record_was_torn_off_fails_and_its_key_is_forgotten() {
    let (dir, store) = open();
    let now = crate::now_ms();
    // Transfer 2: submitted without a key and committed (acknowledged with a 202).
    put(&store, 2, SpoolKind::Outbox, &envelope(2, 2000));
    store
        .outbox_insert_audited(&outbox_entry(2, now), vec![record("submitted", tid(2))])
        .expect("insert");
    store.commit().await.expect("commit");
    let acknowledged_end = std::fs::metadata(tail(&dir, SpoolKind::Outbox))
        .expect("stat")
        .len();
    // Transfer 1: a keyed submission sealed, queued and keyed, then sled's own flush and the
    // crash before the commit (so before its 202).
    let digest = [7; 32];
    let KeyLookup::New(reservation) = store
        .idempotency_begin("emr", "order-1", digest, now, WINDOW_MS)
        .expect("begin")
    else {
        panic!("a new key");
    };
    put(&store, 1, SpoolKind::Outbox, &envelope(1, 4000));
    let mut entry = outbox_entry(1, now);
    entry.state = TransferState::Delivering;
    entry.attempts = 1;
    store
        .outbox_insert_keyed(
            &entry,
            vec![record("submitted", tid(1))],
            &reservation.claim(),
        )
        .expect("insert");
    store.inner.db.flush().expect("sled's own flush");
    drop(reservation);
    drop(store);
    tear(&tail(&dir, SpoolKind::Outbox), acknowledged_end + 30);

    let store = Store::open(dir.path()).expect("reopen");
    let failed = store.outbox_get(&tid(1)).expect("get").expect("kept");
    assert_eq!(failed.state, TransferState::Failed);
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("lost in a crash")),
        "{:?}",
        failed.last_error
    );
    // Not offered to the dispatcher, and not answered from its key: the client's retry (it
    // never had a 202) makes a new transfer.
    let due: Vec<TransferId> = store
        .outbox_due(u64::MAX, 10)
        .expect("due")
        .into_iter()
        .map(|e| e.transfer_id)
        .collect();
    assert_eq!(due, vec![tid(2)]);
    assert!(matches!(
        store
            .idempotency_begin("emr", "order-1", digest, now, WINDOW_MS)
            .expect("begin"),
        KeyLookup::New(_)
    ));
    assert_eq!(store.idempotency_len(), 0);
    let lost = lost_events(&store, tid(1));
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].record.outcome, "failed");
    assert_eq!(lost[0].record.peer.as_deref(), Some("facility-b"));
    assert_eq!(lost[0].record.patient_ref.as_deref(), Some("Patient/p-1"));
    // The acknowledged transfer is untouched.
    let kept = store.outbox_get(&tid(2)).expect("get").expect("kept");
    assert_eq!(kept.state, TransferState::Queued);
    assert_eq!(get(&store, 2, SpoolKind::Outbox), Some(envelope(2, 2000)));
    // Settled once.
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(lost_events(&store, tid(1)).len(), 1);
    assert_eq!(
        store.outbox_get(&tid(1)).expect("get").map(|e| e.state),
        Some(TransferState::Failed)
    );
    store.audit_verify().expect("audit chain verifies");
}

/// A spool file whose rename did not reach the disk leaves the same state as a torn segment
/// record: a pending transfer with no envelope. It is failed at open too.
#[tokio::test]
async fn a_pending_outbox_transfer_without_any_envelope_fails_at_open() {
    let (dir, store) = open();
    let now = crate::now_ms();
    store
        .outbox_insert_audited(&outbox_entry(3, now), vec![record("submitted", tid(3))])
        .expect("insert");
    let mut settled = outbox_entry(4, now);
    settled.state = TransferState::Delivered;
    store.outbox_insert(&settled).expect("insert");
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(
        store.outbox_get(&tid(3)).expect("get").map(|e| e.state),
        Some(TransferState::Failed)
    );
    assert_eq!(lost_events(&store, tid(3)).len(), 1);
    // A settled transfer's envelope may be gone (retention): it is left alone.
    assert_eq!(
        store.outbox_get(&tid(4)).expect("get").map(|e| e.state),
        Some(TransferState::Delivered)
    );
    assert!(lost_events(&store, tid(4)).is_empty());
}

/// The receive path's check before it answers a resend as a duplicate.
#[tokio::test]
async fn a_resend_finds_an_inbox_entry_without_its_envelope_and_may_store_it_again() {
    let (dir, store) = open();
    // Entry 5's envelope was a file of its own whose rename was lost: nothing on disk.
    let lost = inbox_entry(5, 100);
    store.inbox_insert(&lost).expect("insert");
    // Entry 6 holds its envelope.
    put(&store, 6, SpoolKind::Inbox, &envelope(6, 100));
    let held = inbox_entry(6, 100);
    store.inbox_insert(&held).expect("insert");
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    // Not known at open (no stale segment record names it) ...
    assert_eq!(store.inbox_get(&tid(5)).expect("get"), Some(lost.clone()));
    // ... but found by the resend: not if the entry changed since it was read ...
    let mut changed = lost.clone();
    changed.received_ms += 1;
    assert!(!store.inbox_drop_if_envelope_lost(&changed).expect("check"));
    // ... and not for an entry that holds its envelope.
    assert!(!store.inbox_drop_if_envelope_lost(&held).expect("check"));
    assert!(store.inbox_drop_if_envelope_lost(&lost).expect("check"));
    assert_eq!(store.inbox_get(&tid(5)).expect("get"), None);
    assert_eq!(store.inbox_get(&tid(6)).expect("get"), Some(held));
    assert_eq!(lost_events(&store, tid(5)).len(), 1);
    assert!(lost_events(&store, tid(6)).is_empty());
    // Gone, so a second check finds nothing to do.
    assert!(!store.inbox_drop_if_envelope_lost(&lost).expect("check"));
    every_inbox_entry_has_its_envelope(&store);
}

/// An acknowledged inbox envelope removed by retention is not "lost": a late resend of it is
/// still answered as a duplicate.
#[tokio::test]
async fn an_envelope_removed_by_retention_is_not_lost() {
    let (_dir, store) = open();
    put(&store, 7, SpoolKind::Inbox, &envelope(7, 100));
    store.inbox_insert(&inbox_entry(7, 100)).expect("insert");
    let acked = store.inbox_ack(&tid(7), 1000).expect("ack");
    let expired = store
        .expire_envelopes(
            u64::MAX,
            10,
            |removed| record("envelope-removed", removed.transfer_id),
            |_| None,
        )
        .expect("expire");
    assert_eq!(expired.taken, 1);
    store.commit().await.expect("commit");
    store.unlink_removed_envelopes().expect("unlink");
    assert!(!store
        .spool_exists(&tid(7), SpoolKind::Inbox)
        .expect("exists"));
    assert!(!store.inbox_drop_if_envelope_lost(&acked).expect("check"));
    assert!(store.inbox_get(&tid(7)).expect("get").is_some());
}
