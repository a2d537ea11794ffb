use super::{open, outbox_entry, reopen, tid};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[expect(
    clippy::await_holding_lock,
    reason = "the gate blocks only the commit thread, never a task, so holding it cannot deadlock"
)]
async fn concurrent_committers_share_one_flush() {
    let (dir, store) = open();
    let before = store.commit_stats();
    // Holding the gate stops the commit thread before it samples the generation, so all
    // hundred committers are provably waiting when it flushes.
    let gate = store.inner.committer.pause();
    let mut tasks = Vec::new();
    for n in 0..100 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.outbox_insert(&outbox_entry(n, 1000)).expect("insert");
            store.commit().await
        }));
    }
    while store.commit_stats().commits < before.commits + 100 {
        tokio::task::yield_now().await;
    }
    drop(gate);
    for t in tasks {
        t.await.expect("join").expect("commit");
    }
    let after = store.commit_stats();
    assert_eq!(after.commits - before.commits, 100);
    assert_eq!(after.flushes - before.flushes, 1, "{after:?}");
    let store = reopen(&dir, store);
    assert_eq!(store.outbox_list().expect("list").len(), 100);
    assert!(store.outbox_get(&tid(99)).expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn free_running_committers_all_complete() {
    let (dir, store) = open();
    let mut tasks = Vec::new();
    for n in 0..100 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.request_put(&format!("r-{n}"), b"state").expect("put");
            store.commit().await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("commit");
    }
    let stats = store.commit_stats();
    assert_eq!(stats.commits, 100);
    assert!(
        stats.flushes >= 1 && stats.flushes <= stats.commits,
        "{stats:?}"
    );
    let store = reopen(&dir, store);
    assert_eq!(store.request_list().expect("list").len(), 100);
}

#[tokio::test]
async fn commit_with_nothing_written_succeeds() {
    let (_dir, store) = open();
    store.commit().await.expect("commit");
    store.commit().await.expect("commit");
    assert_eq!(store.commit_stats().commits, 2);
}
