use super::{hold_envelope, open, outbox_entry, reopen, tid};
use crate::{StoreError, TransferState};

#[test]
fn insert_get_and_list_newest_first() {
    let (_dir, store) = open();
    for (n, created) in [(1, 300), (2, 100), (3, 200)] {
        store
            .outbox_insert(&outbox_entry(n, created))
            .expect("insert");
    }
    assert_eq!(
        store.outbox_get(&tid(2)).expect("get"),
        Some(outbox_entry(2, 100))
    );
    assert_eq!(store.outbox_get(&tid(9)).expect("get"), None);
    let listed: Vec<u64> = store
        .outbox_list()
        .expect("list")
        .iter()
        .map(|e| e.created_ms)
        .collect();
    assert_eq!(listed, vec![300, 200, 100]);
}

#[test]
fn duplicate_id_is_refused_and_original_kept() {
    let (_dir, store) = open();
    store.outbox_insert(&outbox_entry(1, 100)).expect("insert");
    let mut other = outbox_entry(1, 500);
    other.recipient = "facility-c".into();
    let err = store
        .outbox_insert(&other)
        .expect_err("duplicate must fail");
    assert!(matches!(err, StoreError::DuplicateTransfer { .. }), "{err}");
    assert_eq!(
        store.outbox_get(&tid(1)).expect("get"),
        Some(outbox_entry(1, 100))
    );
    assert_eq!(store.outbox_list().expect("list").len(), 1);
}

#[test]
fn update_is_read_modify_write() {
    let (_dir, store) = open();
    store.outbox_insert(&outbox_entry(1, 100)).expect("insert");
    let updated = store
        .outbox_update(&tid(1), |e| {
            e.attempts += 1;
            e.state = TransferState::Failed;
            e.last_error = Some("peer refused".into());
        })
        .expect("update");
    assert_eq!(updated.attempts, 1);
    assert_eq!(updated.state, TransferState::Failed);
    assert_eq!(store.outbox_get(&tid(1)).expect("get"), Some(updated));
}

#[test]
fn update_of_missing_entry_is_not_found() {
    let (_dir, store) = open();
    let err = store
        .outbox_update(&tid(7), |e| e.attempts += 1)
        .expect_err("absent");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

#[test]
fn update_may_not_change_identity() {
    let (_dir, store) = open();
    store.outbox_insert(&outbox_entry(1, 100)).expect("insert");
    let err = store
        .outbox_update(&tid(1), |e| e.transfer_id = tid(2))
        .expect_err("immutable");
    assert!(
        matches!(
            err,
            StoreError::ImmutableField {
                field: "transfer_id",
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .outbox_update(&tid(1), |e| e.created_ms = 1)
        .expect_err("immutable");
    assert!(
        matches!(
            err,
            StoreError::ImmutableField {
                field: "created_ms",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store.outbox_get(&tid(1)).expect("get"),
        Some(outbox_entry(1, 100))
    );
    assert_eq!(store.outbox_get(&tid(2)).expect("get"), None);
}

#[test]
fn due_returns_pending_entries_whose_time_has_come_oldest_first() {
    let (_dir, store) = open();
    for (n, next) in [(1, 500), (2, 100), (3, 300), (4, 900), (5, 200)] {
        let mut e = outbox_entry(n, 50);
        e.next_attempt_ms = next;
        store.outbox_insert(&e).expect("insert");
    }
    // Delivered and cancelled entries are never due, whatever their time.
    store
        .outbox_update(&tid(5), |e| e.state = TransferState::Delivered)
        .expect("update");
    let mut cancelled = outbox_entry(6, 50);
    cancelled.state = TransferState::Cancelled;
    cancelled.next_attempt_ms = 0;
    store.outbox_insert(&cancelled).expect("insert");
    // A Delivering entry is a lease: due again only once next_attempt_ms has passed.
    store
        .outbox_update(&tid(2), |e| {
            e.state = TransferState::Delivering;
            e.next_attempt_ms = 450;
        })
        .expect("update");

    let ids = |v: Vec<crate::OutboxEntry>| v.iter().map(|e| e.transfer_id).collect::<Vec<_>>();
    assert_eq!(ids(store.outbox_due(400, 10).expect("due")), vec![tid(3)]);
    assert_eq!(
        ids(store.outbox_due(500, 10).expect("due")),
        vec![tid(3), tid(2), tid(1)]
    );
    assert_eq!(
        ids(store.outbox_due(500, 2).expect("due")),
        vec![tid(3), tid(2)]
    );
    assert_eq!(store.outbox_due(500, 0).expect("due").len(), 0);
    assert_eq!(
        ids(store.outbox_due(u64::MAX, 10).expect("due")),
        vec![tid(3), tid(2), tid(1), tid(4)]
    );
    assert_eq!(store.outbox_due(99, 10).expect("due").len(), 0);
}

#[tokio::test]
async fn states_and_due_index_survive_reopen() {
    let (dir, store) = open();
    for n in 1..=3 {
        hold_envelope(&store, n);
        store
            .outbox_insert(&outbox_entry(n, 100 + u64::from(n)))
            .expect("insert");
    }
    store
        .outbox_update(&tid(1), |e| {
            e.state = TransferState::Delivered;
            e.receipt = Some(vec![7; 80]);
        })
        .expect("update");
    store
        .outbox_update(&tid(2), |e| {
            e.state = TransferState::Delivering;
            e.next_attempt_ms = 1_000;
        })
        .expect("update");
    store.commit().await.expect("commit");
    let before = store.outbox_list().expect("list");
    let store = reopen(&dir, store);
    assert_eq!(store.outbox_list().expect("list"), before);
    let delivered = store.outbox_get(&tid(1)).expect("get").expect("present");
    assert_eq!(delivered.state, TransferState::Delivered);
    assert_eq!(delivered.receipt, Some(vec![7; 80]));
    let due: Vec<_> = store
        .outbox_due(1_000, 10)
        .expect("due")
        .into_iter()
        .map(|e| (e.transfer_id, e.state))
        .collect();
    assert_eq!(
        due,
        vec![
            (tid(3), TransferState::Queued),
            (tid(2), TransferState::Delivering)
        ]
    );
}

#[test]
fn debug_output_redacts_patient_and_clinician() {
    let entry = outbox_entry(42, 1);
    let shown = format!("{entry:?}");
    assert!(!shown.contains("p-42"), "{shown}");
    assert!(!shown.contains("dr-who"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(shown.contains("facility-b"), "{shown}");
}

#[test]
fn pages_walk_the_listing_in_order_without_gaps_or_repeats() {
    let (_dir, store) = open();
    // Equal times are ordered by id, so ties must not make a page boundary lose an entry.
    for n in 1..=7u32 {
        let created = if n <= 4 { 100 } else { 100 + u64::from(n) };
        store
            .outbox_insert(&outbox_entry(n, created))
            .expect("insert");
    }
    let whole: Vec<_> = store.outbox_list().expect("list");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.outbox_page(after.as_ref(), 3).expect("page");
        assert!(page.len() <= 3);
        let done = page.len() < 3;
        after = page.last().map(|e| e.transfer_id);
        paged.extend(page);
        if done {
            break;
        }
    }
    assert_eq!(paged, whole);
    assert_eq!(paged.len(), 7);
    // The last page, read from the last entry, is empty; an unknown cursor is an error.
    let last = whole.last().expect("entries").transfer_id;
    assert!(store.outbox_page(Some(&last), 3).expect("page").is_empty());
    let err = store
        .outbox_page(Some(&tid(99)), 3)
        .expect_err("unknown cursor");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

#[test]
fn pending_iter_reads_only_queued_and_delivering_entries() {
    let (_dir, store) = open();
    let states = [
        TransferState::Queued,
        TransferState::Delivered,
        TransferState::Delivering,
        TransferState::Failed,
        TransferState::Cancelled,
    ];
    for (n, state) in (1..).zip(states) {
        let mut e = outbox_entry(n, 100 + u64::from(n));
        e.state = state;
        store.outbox_insert(&e).expect("insert");
    }
    let mut pending: Vec<_> = store
        .outbox_pending_iter()
        .map(|e| e.expect("entry").transfer_id)
        .collect();
    pending.sort_unstable();
    assert_eq!(pending, vec![tid(1), tid(3)]);
    // Once delivered, an entry leaves the pending set; the whole outbox still has all five.
    store
        .outbox_update(&tid(1), |e| e.state = TransferState::Delivered)
        .expect("update");
    let pending: Vec<_> = store
        .outbox_pending_iter()
        .map(|e| e.expect("entry").transfer_id)
        .collect();
    assert_eq!(pending, vec![tid(3)]);
    assert_eq!(store.outbox_iter().count(), 5);
}

#[test]
fn a_job_marked_done_stays_done_across_reopen() {
    let (dir, store) = open();
    assert!(!store.job_done("backfill").expect("read"));
    store.set_job_done("backfill").expect("write");
    assert!(store.job_done("backfill").expect("read"));
    assert!(!store.job_done("other").expect("read"));
    let store = reopen(&dir, store);
    assert!(store.job_done("backfill").expect("read"));
}
