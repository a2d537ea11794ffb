//! State changes written together with their audit entries.

use super::{audit_record, hold_envelope, inbox_entry, open, outbox_entry, reopen, tid};
use crate::{AuditFilter, InboxInsert, StoreError, TransferState};

fn events(store: &crate::Store) -> Vec<(u64, String)> {
    store
        .audit_list(&AuditFilter::default())
        .expect("list")
        .into_iter()
        .map(|e| (e.seq, e.record.event))
        .collect()
}

fn named(event: &str, n: u32) -> crate::AuditRecord {
    let mut rec = audit_record(Some("Patient/p-1"), Some(tid(n)), false);
    rec.event = event.to_owned();
    rec
}

#[test]
fn insert_with_audit_writes_both_and_survives_reopen() {
    let (dir, store) = open();
    store.audit_append(named("before", 9)).expect("append");
    hold_envelope(&store, 1);
    let entries = store
        .outbox_insert_audited(
            &outbox_entry(1, 100),
            vec![named("policy-decision", 1), named("submitted", 1)],
        )
        .expect("insert");
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let store = reopen(&dir, store);
    assert_eq!(
        store.outbox_get(&tid(1)).expect("get"),
        Some(outbox_entry(1, 100))
    );
    assert_eq!(
        events(&store),
        vec![
            (1, "before".to_owned()),
            (2, "policy-decision".to_owned()),
            (3, "submitted".to_owned())
        ]
    );
    // Both records are in the transfer index, and the chain and head verify.
    let by_transfer = store
        .audit_list(&AuditFilter {
            transfer_id: Some(tid(1)),
            ..AuditFilter::default()
        })
        .expect("list");
    assert_eq!(by_transfer.len(), 2);
    assert_eq!(store.audit_verify(), Ok(3));
    // The next plain append continues the chain after the batch.
    assert_eq!(
        store.audit_append(named("after", 9)).expect("append").seq,
        4
    );
    assert_eq!(store.audit_verify(), Ok(4));
}

#[test]
fn refused_insert_appends_nothing() {
    let (_dir, store) = open();
    store
        .outbox_insert_audited(&outbox_entry(1, 100), vec![named("submitted", 1)])
        .expect("insert");
    let err = store
        .outbox_insert_audited(&outbox_entry(1, 500), vec![named("submitted", 1)])
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateTransfer { .. }), "{err}");
    assert_eq!(store.audit_len(), 1);
    assert_eq!(events(&store).len(), 1);
    // The tail did not move either: the next append gets seq 2 and verifies.
    assert_eq!(store.audit_append(named("x", 2)).expect("append").seq, 2);
    assert_eq!(store.audit_verify(), Ok(2));
}

#[test]
fn update_with_audit_records_what_the_closure_returns() {
    let (_dir, store) = open();
    store.outbox_insert(&outbox_entry(1, 100)).expect("insert");
    let (entry, appended) = store
        .outbox_update_audited(&tid(1), |e| {
            e.state = TransferState::Delivered;
            vec![named("receipt-verified", 1), named("delivered", 1)]
        })
        .expect("update");
    assert_eq!(entry.state, TransferState::Delivered);
    assert_eq!(appended.len(), 2);
    assert_eq!(
        store.outbox_get(&tid(1)).expect("get").map(|e| e.state),
        Some(TransferState::Delivered)
    );
    // Delivered is not pending: nothing is due any more.
    assert!(store.outbox_due(u64::MAX, 10).expect("due").is_empty());
    // A closure that changes nothing and returns no records appends nothing.
    let (_, appended) = store
        .outbox_update_audited(&tid(1), |_| Vec::new())
        .expect("update");
    assert!(appended.is_empty());
    assert_eq!(store.audit_len(), 2);
    assert_eq!(store.audit_verify(), Ok(2));
}

#[test]
fn update_of_a_missing_entry_or_an_immutable_field_appends_nothing() {
    let (_dir, store) = open();
    let err = store
        .outbox_update_audited(&tid(7), |_| vec![named("sent", 7)])
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    store.outbox_insert(&outbox_entry(1, 100)).expect("insert");
    let err = store
        .outbox_update_audited(&tid(1), |e| {
            e.created_ms += 1;
            vec![named("sent", 1)]
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::ImmutableField { .. }), "{err}");
    assert_eq!(store.audit_len(), 0);
    assert!(events(&store).is_empty());
}

#[test]
fn inbox_insert_audits_only_a_new_entry() {
    let (_dir, store) = open();
    let (first, appended) = store
        .inbox_insert_audited(
            &inbox_entry(1, 100),
            vec![named("policy-decision", 1), named("received", 1)],
        )
        .expect("insert");
    assert_eq!(first, InboxInsert::Inserted);
    assert_eq!(appended.len(), 2);
    let (again, appended) = store
        .inbox_insert_audited(&inbox_entry(1, 999), vec![named("received", 1)])
        .expect("insert");
    assert_eq!(again, InboxInsert::AlreadyPresent(inbox_entry(1, 100)));
    assert!(appended.is_empty());
    assert_eq!(store.audit_len(), 2);
    assert_eq!(store.audit_verify(), Ok(2));
}
