use super::{audit_record, hold_envelope, open, outbox_entry, reopen, tid};
use crate::{KeyLookup, KeyReservation, Store, StoreError};

const DAY_MS: u64 = 24 * 3_600_000;

fn reserve(store: &Store, scope: &str, key: &str, digest: u8, now: u64) -> KeyReservation {
    match store
        .idempotency_begin(scope, key, [digest; 32], now, DAY_MS)
        .expect("begin")
    {
        KeyLookup::New(r) => r,
        other => panic!("expected a new key, got {other:?}"),
    }
}

fn lookup(store: &Store, scope: &str, key: &str, digest: u8, now: u64) -> KeyLookup {
    store
        .idempotency_begin(scope, key, [digest; 32], now, DAY_MS)
        .expect("begin")
}

#[tokio::test]
async fn a_recorded_key_survives_a_restart_and_answers_the_same_request_only() {
    let (dir, store) = open();
    let held = reserve(&store, "emr", "order-17", 1, 1_000);
    hold_envelope(&store, 1);
    let entry = outbox_entry(1, 1_000);
    store
        .outbox_insert_keyed(
            &entry,
            vec![audit_record(Some("Patient/p-1"), Some(tid(1)), false)],
            &held.claim(),
        )
        .expect("insert");
    store.commit().await.expect("commit");
    drop(held);
    let store = reopen(&dir, store);

    // The entry, its audit record and the key were one transaction.
    assert_eq!(store.outbox_get(&tid(1)).expect("get"), Some(entry));
    assert_eq!(store.audit_len(), 1);
    match lookup(&store, "emr", "order-17", 1, 2_000) {
        KeyLookup::Replay(r) => {
            assert_eq!(r.transfer_id, tid(1));
            assert_eq!(r.created_ms, 1_000);
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    match lookup(&store, "emr", "order-17", 2, 2_000) {
        KeyLookup::Mismatch(r) => assert_eq!(r.transfer_id, tid(1)),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // A replay or a mismatch reserves nothing: the next lookup answers the same.
    assert!(matches!(
        lookup(&store, "emr", "order-17", 1, 2_000),
        KeyLookup::Replay(_)
    ));
}

#[test]
fn keys_are_scoped_to_their_caller() {
    let (_dir, store) = open();
    let held = reserve(&store, "emr", "k", 1, 1_000);
    store
        .outbox_insert_keyed(&outbox_entry(1, 1_000), Vec::new(), &held.claim())
        .expect("insert");
    drop(held);
    // Another token's equal key is another record: neither a replay nor a conflict.
    let other = reserve(&store, "lab-system", "k", 1, 1_000);
    store
        .outbox_insert_keyed(&outbox_entry(2, 1_000), Vec::new(), &other.claim())
        .expect("insert");
    drop(other);
    // (scope, key) pairs whose concatenations agree are different keys too.
    drop(reserve(&store, "em", "rk", 1, 1_000));
    match lookup(&store, "lab-system", "k", 1, 1_000) {
        KeyLookup::Replay(r) => assert_eq!(r.transfer_id, tid(2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.idempotency_len(), 2);
}

#[test]
fn a_key_being_processed_is_in_progress_until_released() {
    let (_dir, store) = open();
    let held = reserve(&store, "emr", "k", 1, 1_000);
    assert!(matches!(
        lookup(&store, "emr", "k", 1, 1_000),
        KeyLookup::InProgress
    ));
    assert!(matches!(
        lookup(&store, "emr", "k", 2, 1_000),
        KeyLookup::InProgress
    ));
    // Released without a transfer (the submission was refused): nothing was recorded, the
    // key is free again.
    drop(held);
    drop(reserve(&store, "emr", "k", 1, 1_000));
    assert_eq!(store.idempotency_len(), 0);
}

#[test]
fn a_refused_insert_records_no_key() {
    let (_dir, store) = open();
    store
        .outbox_insert(&outbox_entry(1, 1_000))
        .expect("insert");
    let held = reserve(&store, "emr", "k", 1, 2_000);
    let err = store
        .outbox_insert_keyed(&outbox_entry(1, 2_000), Vec::new(), &held.claim())
        .expect_err("duplicate transfer id");
    assert!(matches!(err, StoreError::DuplicateTransfer { .. }), "{err}");
    drop(held);
    assert_eq!(store.idempotency_len(), 0);
    drop(reserve(&store, "emr", "k", 1, 2_000));
}

#[test]
fn an_expired_key_is_absent_is_replaced_and_is_swept() {
    let (dir, store) = open();
    let window = 10_000;
    let begin = |store: &Store, digest: u8, now: u64| {
        store
            .idempotency_begin("emr", "k", [digest; 32], now, window)
            .expect("begin")
    };
    let KeyLookup::New(held) = begin(&store, 1, 1_000) else {
        panic!("new key")
    };
    for n in 1..=3 {
        hold_envelope(&store, n);
    }
    store
        .outbox_insert_keyed(&outbox_entry(1, 1_000), Vec::new(), &held.claim())
        .expect("insert");
    drop(held);
    assert!(matches!(begin(&store, 1, 10_999), KeyLookup::Replay(_)));
    // At the end of the window the key is free, even for another request.
    let KeyLookup::New(held) = begin(&store, 2, 11_000) else {
        panic!("expired key still answers")
    };
    store
        .outbox_insert_keyed(&outbox_entry(2, 11_000), Vec::new(), &held.claim())
        .expect("insert");
    drop(held);
    match begin(&store, 2, 12_000) {
        KeyLookup::Replay(r) => assert_eq!(r.transfer_id, tid(2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.idempotency_len(), 1);

    // Another key expires first; the sweep removes what is past the cutoff only.
    let other = match store
        .idempotency_begin("emr", "other", [3; 32], 5_000, window)
        .expect("begin")
    {
        KeyLookup::New(r) => r,
        o => panic!("{o:?}"),
    };
    store
        .outbox_insert_keyed(&outbox_entry(3, 5_000), Vec::new(), &other.claim())
        .expect("insert");
    drop(other);
    assert_eq!(store.idempotency_sweep(4_999, 100).expect("sweep"), 0);
    assert_eq!(store.idempotency_sweep(5_000, 100).expect("sweep"), 1);
    assert_eq!(store.idempotency_len(), 1);
    let store = reopen(&dir, store);
    // The replaced record's old index key went with the rewrite: nothing stale to sweep.
    assert_eq!(store.idempotency_sweep(10_999, 100).expect("sweep"), 0);
    assert!(matches!(begin(&store, 2, 20_999), KeyLookup::Replay(_)));
    assert_eq!(store.idempotency_sweep(11_000, 1).expect("sweep"), 1);
    assert_eq!(store.idempotency_len(), 0);
    // The transfers themselves are never removed by the sweep.
    for n in 1..=3 {
        assert!(store.outbox_get(&tid(n)).expect("get").is_some());
    }
}

#[tokio::test]
async fn neither_the_key_nor_the_request_digest_is_stored_in_clear() {
    let (dir, store) = open();
    let key = "emr-order-7f3c9a1e-distinctive";
    let digest = 0x5c;
    let held = reserve(&store, "emr", key, digest, 1_000);
    store
        .outbox_insert_keyed(&outbox_entry(1, 1_000), Vec::new(), &held.claim())
        .expect("insert");
    store.commit().await.expect("commit");
    drop(held);
    drop(store);
    let mut stack = vec![dir.path().to_path_buf()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                stack.push(entry.expect("dir entry").path());
            }
            continue;
        }
        let bytes = std::fs::read(&path).expect("read file");
        files += 1;
        for needle in [key.as_bytes(), &[digest; 32][..]] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the key or digest in clear",
                path.display()
            );
        }
    }
    assert!(files > 0);
}
