use std::io::Write;

use super::{open, reopen, tid};
use crate::SpoolKind;

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn writer_round_trip() {
    let (_dir, store) = open();
    let id = tid(1);
    let mut w = store.spool_writer(&id, SpoolKind::Inbox).expect("writer");
    let mut expected = Vec::new();
    for i in 0..100u8 {
        let chunk = vec![i; 10_000];
        w.write_chunk(&chunk).expect("write");
        expected.extend_from_slice(&chunk);
    }
    w.write_all(b"tail").expect("io::Write");
    expected.extend_from_slice(b"tail");
    assert_eq!(w.written(), expected.len() as u64);
    assert_eq!(w.final_path(), store.spool_path(&id, SpoolKind::Inbox));
    assert_eq!(w.finish().expect("finish"), expected.len() as u64);
    let path = store.spool_path(&id, SpoolKind::Inbox);
    assert_eq!(std::fs::read(&path).expect("read"), expected);
    // Kinds are separate directories.
    assert!(!store.spool_path(&id, SpoolKind::Outbox).exists());
    assert_eq!(
        files_in(path.parent().expect("parent")),
        vec![hex::encode(id)]
    );
}

#[test]
fn unfinished_writer_leaves_no_file() {
    let (_dir, store) = open();
    let id = tid(2);
    let path = store.spool_path(&id, SpoolKind::Outbox);
    let dir = path.parent().expect("parent").to_path_buf();
    let mut w = store.spool_writer(&id, SpoolKind::Outbox).expect("writer");
    w.write_chunk(&[1; 1 << 20]).expect("write");
    assert!(!path.exists(), "nothing at the final path before finish");
    assert_eq!(
        files_in(&dir).len(),
        1,
        "the partial file exists while writing"
    );
    drop(w);
    assert!(!path.exists());
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
}

#[test]
fn partial_files_left_by_a_crash_are_removed_on_open() {
    let (dir, store) = open();
    let id = tid(3);
    let mut w = store.spool_writer(&id, SpoolKind::Inbox).expect("writer");
    // Past what a segment takes, so it goes to a file of its own.
    w.write_chunk(&[1; 300 * 1024]).expect("write");
    // Simulates a crash: the writer's cleanup never runs. (Not `mem::forget`: the writer
    // holds the segment index, whose sled handle would keep the database locked.)
    let spool = store.spool_path(&id, SpoolKind::Inbox);
    let spool_dir = spool.parent().expect("parent").to_path_buf();
    let partial = files_in(&spool_dir);
    assert_eq!(partial.len(), 1);
    let kept = std::fs::read(spool_dir.join(&partial[0])).expect("read partial");
    drop(w);
    std::fs::write(spool_dir.join(&partial[0]), kept).expect("leave partial");
    let mut done = store
        .spool_writer(&tid(4), SpoolKind::Inbox)
        .expect("writer");
    done.write_chunk(&[2; 300 * 1024]).expect("write");
    done.finish().expect("finish");
    assert_eq!(files_in(&spool_dir).len(), 2);
    let _store = reopen(&dir, store);
    assert_eq!(files_in(&spool_dir), vec![hex::encode(tid(4))]);
}

#[test]
fn remove_is_durable_and_idempotent() {
    let (_dir, store) = open();
    let id = tid(5);
    let mut w = store.spool_writer(&id, SpoolKind::Inbox).expect("writer");
    w.write_chunk(&[3; 300 * 1024]).expect("write");
    w.finish().expect("finish");
    assert!(store.spool_path(&id, SpoolKind::Inbox).exists());
    store.spool_remove(&id, SpoolKind::Inbox).expect("remove");
    assert!(!store.spool_path(&id, SpoolKind::Inbox).exists());
    assert!(!store.spool_exists(&id, SpoolKind::Inbox).expect("exists"));
    // A small one, in a segment, likewise.
    let mut w = store.spool_writer(&id, SpoolKind::Inbox).expect("writer");
    w.write_chunk(b"rejected envelope").expect("write");
    assert!(w.is_for_segment());
    w.finish().expect("finish");
    assert!(store.spool_exists(&id, SpoolKind::Inbox).expect("exists"));
    store.spool_remove(&id, SpoolKind::Inbox).expect("remove");
    assert!(!store.spool_exists(&id, SpoolKind::Inbox).expect("exists"));
    assert!(store
        .spool_open(&id, SpoolKind::Inbox)
        .expect("open")
        .is_none());
    store
        .spool_remove(&id, SpoolKind::Inbox)
        .expect("remove again");
}

#[tokio::test]
async fn a_finished_file_is_made_durable_by_the_next_commit() {
    let (_dir, store) = open();
    assert!(!store.spool_dirs_dirty(SpoolKind::Outbox));
    let mut w = store
        .spool_writer(&tid(7), SpoolKind::Outbox)
        .expect("writer");
    let envelope = vec![7u8; 300 * 1024];
    w.write_chunk(&envelope).expect("write");
    w.finish().expect("finish");
    // The rename is pending until a group commit fsyncs its spool directory; the inbox
    // directory, which nothing was renamed into, is not synced.
    assert!(store.spool_dirs_dirty(SpoolKind::Outbox));
    assert!(!store.spool_dirs_dirty(SpoolKind::Inbox));
    store.commit().await.expect("commit");
    assert!(!store.spool_dirs_dirty(SpoolKind::Outbox));
    assert_eq!(
        std::fs::read(store.spool_path(&tid(7), SpoolKind::Outbox)).expect("read"),
        envelope
    );
}

/// Past 8 MiB a helper thread writes the file back while it is written; the bytes, `finish`
/// and the cleanup of an abandoned file are as for a small one.
#[test]
fn large_files_are_written_back_while_written() {
    let (_dir, store) = open();
    let id = tid(8);
    let mut w = store.spool_writer(&id, SpoolKind::Inbox).expect("writer");
    let mut expected = Vec::new();
    for i in 0..20u8 {
        let chunk = vec![i; 1 << 20];
        w.write_chunk(&chunk).expect("write");
        expected.extend_from_slice(&chunk);
    }
    assert!(w.is_flushing_early(), "the flusher starts past 8 MiB");
    assert_eq!(w.finish().expect("finish"), expected.len() as u64);
    assert_eq!(
        std::fs::read(store.spool_path(&id, SpoolKind::Inbox)).expect("read"),
        expected
    );

    let abandoned = tid(9);
    let mut w = store
        .spool_writer(&abandoned, SpoolKind::Inbox)
        .expect("writer");
    for _ in 0..12 {
        w.write_chunk(&[7; 1 << 20]).expect("write");
    }
    assert!(w.is_flushing_early());
    drop(w);
    let dir = store.spool_path(&id, SpoolKind::Inbox);
    let dir = dir.parent().expect("parent");
    assert_eq!(files_in(dir), vec![hex::encode(id)]);
}
