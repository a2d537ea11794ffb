use super::{open, reopen};

#[tokio::test]
async fn consents_are_indexed_by_exact_patient_and_survive_reopen() {
    let (dir, store) = open();
    store.consent_put("Patient/1", "c-1", b"one").expect("put");
    store.consent_put("Patient/1", "c-2", b"two").expect("put");
    // A patient whose reference extends another's must not leak into its list.
    store
        .consent_put("Patient/10", "c-3", b"three")
        .expect("put");
    assert_eq!(
        store.consent_list("Patient/1").expect("list"),
        vec![
            ("c-1".to_owned(), b"one".to_vec()),
            ("c-2".to_owned(), b"two".to_vec())
        ]
    );
    assert_eq!(
        store.consent_get("c-3").expect("get"),
        Some(("Patient/10".to_owned(), b"three".to_vec()))
    );
    assert_eq!(store.consent_get("c-9").expect("get"), None);
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(store.consent_list("Patient/10").expect("list").len(), 1);
    assert_eq!(store.consent_list("Patient/2").expect("list").len(), 0);
}

#[test]
fn replacing_a_consent_under_another_patient_moves_it() {
    let (_dir, store) = open();
    store.consent_put("Patient/1", "c-1", b"v1").expect("put");
    store.consent_put("Patient/2", "c-1", b"v2").expect("put");
    assert!(store.consent_list("Patient/1").expect("list").is_empty());
    assert_eq!(
        store.consent_list("Patient/2").expect("list"),
        vec![("c-1".to_owned(), b"v2".to_vec())]
    );
    store.consent_put("Patient/2", "c-1", b"v3").expect("put");
    assert_eq!(
        store.consent_get("c-1").expect("get"),
        Some(("Patient/2".to_owned(), b"v3".to_vec()))
    );
}

#[tokio::test]
async fn requests_and_records_round_trip() {
    let (dir, store) = open();
    store.request_put("r-2", b"second").expect("put");
    store.request_put("r-1", b"first").expect("put");
    store.request_put("r-2", b"second v2").expect("put");
    assert_eq!(
        store.request_get("r-2").expect("get"),
        Some(b"second v2".to_vec())
    );
    assert_eq!(store.request_get("r-3").expect("get"), None);
    assert_eq!(
        store.request_list().expect("list"),
        vec![
            ("r-1".to_owned(), b"first".to_vec()),
            ("r-2".to_owned(), b"second v2".to_vec())
        ]
    );
    // Large enough to become a sled blob file, which commit must fdatasync.
    let bundle = vec![b'x'; 600 * 1024];
    store.record_put("Patient/1", &bundle).expect("put");
    store.record_put("Patient/2", b"{}").expect("put");
    assert_eq!(store.record_get("Patient/3").expect("get"), None);
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(store.record_get("Patient/1").expect("get"), Some(bundle));
    assert_eq!(store.request_list().expect("list").len(), 2);
}
