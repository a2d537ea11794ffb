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

mod sled_files {
    //! What a commit syncs besides sled's log, as the directory watch reports it.

    use std::fs::File;
    use std::io::Write as _;
    use std::path::PathBuf;

    use tempfile::TempDir;

    use crate::commit::{list_dir, SledFiles};
    use crate::spool::SpoolDirs;

    fn open() -> (TempDir, PathBuf, sled::Db, SledFiles) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled_dir = dir.path().join("sled");
        let db = sled::Config::new()
            .path(&sled_dir)
            .open()
            .expect("open sled");
        let spool = SpoolDirs::new(&dir.path().join("spool"));
        let files = SledFiles::open(db.clone(), &sled_dir, spool).expect("open files");
        (dir, sled_dir, db, files)
    }

    fn blob_names(sled_dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        list_dir(&sled_dir.join("blobs"))
            .expect("list blobs")
            .into_iter()
            .collect()
    }

    #[test]
    fn a_quiet_commit_syncs_nothing_but_the_log() {
        let (_dir, _sled_dir, db, mut files) = open();
        let _ = db.insert(b"k", b"small".as_slice()).expect("insert");
        let synced = files.sync().expect("sync");
        assert!(synced.blobs.is_empty(), "{synced:?}");
        assert!(!synced.blobs_dir && !synced.root_dir, "{synced:?}");
    }

    #[test]
    fn a_blob_sled_writes_is_synced_once_with_its_directory() {
        let (_dir, sled_dir, db, mut files) = open();
        assert!(blob_names(&sled_dir).is_empty());
        // Large enough that sled writes the page to its own file under blobs/.
        let _ = db.insert(b"big", vec![b'x'; 600 * 1024]).expect("insert");
        let synced = files.sync().expect("sync");
        let on_disk = blob_names(&sled_dir);
        assert!(!on_disk.is_empty(), "sled wrote no blob file");
        assert_eq!(synced.blobs.iter().cloned().collect::<Vec<_>>(), on_disk);
        assert!(synced.blobs_dir, "{synced:?}");
        let again = files.sync().expect("sync");
        assert!(again.blobs.is_empty() && !again.blobs_dir, "{again:?}");
    }

    #[test]
    fn a_blob_is_reported_when_closed_not_when_created() {
        let (_dir, sled_dir, _db, mut files) = open();
        let path = sled_dir.join("blobs").join("12345");
        let mut writing = File::create(&path).expect("create");
        writing.write_all(b"first half").expect("write");
        let synced = files.sync().expect("sync");
        assert!(synced.blobs.is_empty(), "still being written: {synced:?}");
        assert!(synced.blobs_dir, "its creation changed the directory");
        writing.write_all(b"second half").expect("write");
        drop(writing);
        let synced = files.sync().expect("sync");
        assert_eq!(
            synced.blobs.into_iter().collect::<Vec<_>>(),
            vec![std::ffi::OsString::from("12345")]
        );
        assert!(!synced.blobs_dir);
    }

    #[test]
    fn a_new_entry_in_sleds_directory_syncs_that_directory() {
        let (_dir, sled_dir, _db, mut files) = open();
        // What sled does with a snapshot: write it, then rename it into place.
        std::fs::write(sled_dir.join("snap.00.generating"), b"snapshot").expect("write");
        std::fs::rename(
            sled_dir.join("snap.00.generating"),
            sled_dir.join("snap.00"),
        )
        .expect("rename");
        let synced = files.sync().expect("sync");
        assert!(synced.root_dir && !synced.blobs_dir, "{synced:?}");
        assert!(!files.sync().expect("sync").root_dir);
    }

    #[test]
    fn after_an_event_overflow_every_blob_and_both_directories_are_synced() {
        let (_dir, sled_dir, db, mut files) = open();
        let _ = db.insert(b"big", vec![b'x'; 600 * 1024]).expect("insert");
        let _ = files.sync().expect("sync");
        let on_disk = blob_names(&sled_dir);
        assert!(!on_disk.is_empty());
        files.assume_overflow();
        let synced = files.sync().expect("sync");
        assert_eq!(synced.blobs.into_iter().collect::<Vec<_>>(), on_disk);
        assert!(synced.blobs_dir && synced.root_dir);
        let again = files.sync().expect("sync");
        assert!(again.blobs.is_empty() && !again.blobs_dir && !again.root_dir);
    }

    #[test]
    fn a_watched_directory_that_goes_away_fails_the_commit() {
        let (_dir, sled_dir, _db, mut files) = open();
        // No event would ever come from it again, so a commit cannot say what it must sync.
        std::fs::remove_dir(sled_dir.join("blobs")).expect("remove blobs/");
        let err = files.sync().expect_err("a commit without its watch");
        assert!(err.to_string().contains("inotify watch"), "{err}");
    }
}
