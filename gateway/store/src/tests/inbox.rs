use super::{inbox_entry, open, reopen, tid};
use crate::{InboxInsert, StoreError};

#[test]
fn insert_is_idempotent_and_returns_the_existing_entry() {
    let (_dir, store) = open();
    let first = inbox_entry(1, 100);
    assert_eq!(
        store.inbox_insert(&first).expect("insert"),
        InboxInsert::Inserted
    );
    let mut retry = inbox_entry(1, 999);
    retry.receipt = vec![0xff; 10];
    assert_eq!(
        store.inbox_insert(&retry).expect("insert"),
        InboxInsert::AlreadyPresent(first.clone())
    );
    // Nothing written: neither the entry nor the time index changed.
    assert_eq!(store.inbox_get(&tid(1)).expect("get"), Some(first.clone()));
    assert_eq!(store.inbox_list().expect("list"), vec![first]);
    assert_eq!(store.trees().inbox_by_time.len(), 1);
}

#[test]
fn list_is_newest_first() {
    let (_dir, store) = open();
    for (n, t) in [(1, 20), (2, 30), (3, 10)] {
        store.inbox_insert(&inbox_entry(n, t)).expect("insert");
    }
    let times: Vec<u64> = store
        .inbox_list()
        .expect("list")
        .iter()
        .map(|e| e.received_ms)
        .collect();
    assert_eq!(times, vec![30, 20, 10]);
}

#[tokio::test]
async fn ack_records_the_first_acknowledgement_and_persists() {
    let (dir, store) = open();
    store.inbox_insert(&inbox_entry(1, 100)).expect("insert");
    assert_eq!(
        store.inbox_ack(&tid(1), 500).expect("ack").acked_ms,
        Some(500)
    );
    assert_eq!(
        store.inbox_ack(&tid(1), 900).expect("ack").acked_ms,
        Some(500)
    );
    let err = store.inbox_ack(&tid(2), 500).expect_err("absent");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    let entry = store.inbox_get(&tid(1)).expect("get").expect("present");
    assert_eq!(entry.acked_ms, Some(500));
    assert_eq!(entry.receipt, vec![1; 64]);
}

#[test]
fn pages_walk_the_listing_in_order_without_gaps_or_repeats() {
    let (_dir, store) = open();
    for (n, t) in [(1, 20), (2, 30), (3, 10), (4, 30), (5, 40)] {
        store.inbox_insert(&inbox_entry(n, t)).expect("insert");
    }
    let whole = store.inbox_list().expect("list");
    let first = store.inbox_page(None, 2).expect("page");
    let second = store
        .inbox_page(Some(&first[1].transfer_id), 2)
        .expect("page");
    let third = store
        .inbox_page(Some(&second[1].transfer_id), 2)
        .expect("page");
    assert_eq!((first.len(), second.len(), third.len()), (2, 2, 1));
    let paged: Vec<_> = first.into_iter().chain(second).chain(third).collect();
    assert_eq!(paged, whole);
    let err = store
        .inbox_page(Some(&tid(99)), 2)
        .expect_err("unknown cursor");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

/// An entry written before `header_check` existed (the layout of earlier releases) still
/// reads, lists and acknowledges; a new entry keeps its check.
#[test]
fn entries_without_a_header_check_still_read() {
    #[derive(serde::Serialize)]
    struct Old {
        transfer_id: [u8; 16],
        sender: String,
        received_ms: u64,
        envelope_len: u64,
        payload_len: u64,
        payload_digest: [u8; 32],
        header_digest: [u8; 32],
        receipt: Vec<u8>,
        acked_ms: Option<u64>,
    }
    let (_dir, store) = open();
    let expected = inbox_entry(1, 100);
    let old = Old {
        transfer_id: expected.transfer_id,
        sender: expected.sender.clone(),
        received_ms: expected.received_ms,
        envelope_len: expected.envelope_len,
        payload_len: expected.payload_len,
        payload_digest: expected.payload_digest,
        header_digest: expected.header_digest,
        receipt: expected.receipt.clone(),
        acked_ms: None,
    };
    let value = crate::codec::encode("inbox", &old).expect("encode");
    store
        .trees()
        .inbox
        .insert(&expected.transfer_id[..], value)
        .expect("insert");
    assert_eq!(store.inbox_get(&tid(1)).expect("get"), Some(expected));
    let acked = store.inbox_ack(&tid(1), 200).expect("ack");
    assert_eq!(acked.acked_ms, Some(200));
    assert_eq!(acked.header_check, None);

    let mut new = inbox_entry(2, 300);
    new.header_check = Some(crate::HeaderCheck {
        signing_key: [7; 32],
        verified_ms: 299,
    });
    store.inbox_insert(&new).expect("insert");
    assert_eq!(store.inbox_get(&tid(2)).expect("get"), Some(new));
}
