//! Spool segments: small envelopes appended to one file per kind (see the `segment` module).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use super::{open, reopen, tid};
use crate::segment::{segment_path, Segments, ENVELOPE_MAX, SEGMENT_BYTES};
use crate::{SpoolKind, SpoolReader, Store, StoreError};

fn segments(store: &Store) -> &Arc<Segments> {
    store
        .inner
        .spool_dirs
        .segments()
        .expect("segments attached")
}

fn envelope(n: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 ^ n.wrapping_mul(31)) as u8)
        .collect()
}

fn put(store: &Store, n: u32, kind: SpoolKind, bytes: &[u8]) {
    let mut w = store.spool_writer(&tid(n), kind).expect("writer");
    // In two chunks, as the receive path writes them.
    let (a, b) = bytes.split_at(bytes.len() / 2);
    w.write_chunk(a).expect("write");
    w.write_chunk(b).expect("write");
    assert_eq!(w.is_for_segment(), bytes.len() <= ENVELOPE_MAX);
    assert_eq!(w.finish().expect("finish"), bytes.len() as u64);
}

fn get(store: &Store, n: u32, kind: SpoolKind) -> Option<Vec<u8>> {
    let mut r = store.spool_open(&tid(n), kind).expect("open")?;
    let mut v = Vec::new();
    r.read_to_end(&mut v).expect("read");
    Some(v)
}

fn tail_path(store: &Store, kind: SpoolKind) -> PathBuf {
    let s = segments(store);
    let n = s.live(kind).keys().copied().max().unwrap_or(1);
    segment_path(&s.dir(kind), n)
}

#[tokio::test]
async fn small_envelopes_go_to_a_segment_and_read_back_after_reopen() {
    let (dir, store) = open();
    let small = envelope(1, 10_000);
    let edge = envelope(2, ENVELOPE_MAX);
    let large = envelope(3, ENVELOPE_MAX + 1);
    put(&store, 1, SpoolKind::Outbox, &small);
    put(&store, 2, SpoolKind::Outbox, &edge);
    put(&store, 3, SpoolKind::Outbox, &large);
    put(&store, 1, SpoolKind::Inbox, b"inbox copy");
    // Small ones have no file of their own; the large one does.
    assert!(!store.spool_path(&tid(1), SpoolKind::Outbox).exists());
    assert!(!store.spool_path(&tid(2), SpoolKind::Outbox).exists());
    assert!(store.spool_path(&tid(3), SpoolKind::Outbox).exists());
    assert!(matches!(
        store.spool_open(&tid(1), SpoolKind::Outbox).expect("open"),
        Some(SpoolReader::Bytes(_))
    ));
    // An append waits for the group commit, which syncs it.
    assert!(segments(&store).is_dirty(SpoolKind::Outbox));
    store.commit().await.expect("commit");
    assert!(!segments(&store).is_dirty(SpoolKind::Outbox));
    assert!(!segments(&store).is_dirty(SpoolKind::Inbox));

    let store = reopen(&dir, store);
    assert_eq!(get(&store, 1, SpoolKind::Outbox), Some(small));
    assert_eq!(get(&store, 2, SpoolKind::Outbox), Some(edge));
    assert_eq!(get(&store, 3, SpoolKind::Outbox), Some(large));
    assert_eq!(
        get(&store, 1, SpoolKind::Inbox).as_deref(),
        Some(&b"inbox copy"[..])
    );
    assert_eq!(get(&store, 9, SpoolKind::Outbox), None);
    assert!(!store
        .spool_exists(&tid(9), SpoolKind::Outbox)
        .expect("exists"));
    assert_eq!(
        segments(&store)
            .live(SpoolKind::Outbox)
            .values()
            .sum::<u64>(),
        2
    );
}

#[tokio::test]
async fn a_rewritten_envelope_replaces_the_earlier_copy() {
    let (dir, store) = open();
    put(&store, 1, SpoolKind::Inbox, b"first");
    put(&store, 1, SpoolKind::Inbox, b"second");
    assert_eq!(
        get(&store, 1, SpoolKind::Inbox).as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(
        segments(&store)
            .live(SpoolKind::Inbox)
            .values()
            .sum::<u64>(),
        1
    );
    // A large rewrite goes to a file and drops the segment copy.
    let large = envelope(1, ENVELOPE_MAX + 10);
    put(&store, 1, SpoolKind::Inbox, &large);
    assert_eq!(get(&store, 1, SpoolKind::Inbox), Some(large.clone()));
    assert!(segments(&store).live(SpoolKind::Inbox).is_empty());
    store.commit().await.expect("commit");
    let store = reopen(&dir, store);
    assert_eq!(get(&store, 1, SpoolKind::Inbox), Some(large));
}

#[tokio::test]
async fn segments_roll_over_and_one_without_live_records_is_deleted() {
    let (dir, store) = open();
    let per = 100 * 1024;
    let n = (3 * SEGMENT_BYTES as usize / per) as u32;
    for i in 0..n {
        put(&store, i, SpoolKind::Outbox, &envelope(i, per));
    }
    store.commit().await.expect("commit");
    let live = segments(&store).live(SpoolKind::Outbox);
    assert!(live.len() >= 3, "{live:?}");
    assert_eq!(live.values().sum::<u64>(), u64::from(n));
    let first = *live.keys().min().expect("a segment");
    let first_path = segment_path(&segments(&store).dir(SpoolKind::Outbox), first);
    let in_first = live[&first] as u32;
    assert!(first_path.exists());
    // Remove every record of the first segment (the first ids, appended in order).
    for i in 0..in_first {
        store
            .spool_remove(&tid(i), SpoolKind::Outbox)
            .expect("remove");
        assert_eq!(get(&store, i, SpoolKind::Outbox), None);
    }
    assert!(
        !first_path.exists(),
        "a segment without live records is reclaimed"
    );
    assert!(!segments(&store)
        .live(SpoolKind::Outbox)
        .contains_key(&first));
    // The others are untouched, and the counts are rebuilt from the index on open.
    store.commit().await.expect("commit");
    let before = segments(&store).live(SpoolKind::Outbox);
    let store = reopen(&dir, store);
    assert_eq!(segments(&store).live(SpoolKind::Outbox), before);
    for i in in_first..n {
        assert_eq!(
            get(&store, i, SpoolKind::Outbox),
            Some(envelope(i, per)),
            "{i}"
        );
    }
    // Removing everything leaves only the tail.
    for i in in_first..n {
        store
            .spool_remove(&tid(i), SpoolKind::Outbox)
            .expect("remove");
    }
    let files = std::fs::read_dir(segments(&store).dir(SpoolKind::Outbox))
        .expect("list")
        .count();
    assert_eq!(files, 1);
}

#[tokio::test]
async fn a_torn_tail_is_truncated_at_every_byte_and_never_served() {
    let (dir, store) = open();
    let last = envelope(3, 40);
    put(&store, 1, SpoolKind::Inbox, &envelope(1, 100));
    put(&store, 2, SpoolKind::Inbox, &envelope(2, 70));
    let end_of_two = std::fs::metadata(tail_path(&store, SpoolKind::Inbox))
        .expect("stat")
        .len();
    put(&store, 3, SpoolKind::Inbox, &last);
    store.commit().await.expect("commit");
    let path = tail_path(&store, SpoolKind::Inbox);
    let whole = std::fs::read(&path).expect("read");
    assert_eq!(whole.len() as u64, end_of_two + 24 + 40);
    drop(store);
    for cut in end_of_two..whole.len() as u64 {
        // A crash tore the last record: only `cut` bytes of the file reached the disk (its
        // index entry did, written back by sled on its own).
        std::fs::write(&path, &whole[..cut as usize]).expect("tear");
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            end_of_two,
            "cut at {cut}: truncated to the last whole record"
        );
        assert_eq!(get(&store, 3, SpoolKind::Inbox), None, "cut at {cut}");
        assert!(!store
            .spool_exists(&tid(3), SpoolKind::Inbox)
            .expect("exists"));
        assert_eq!(get(&store, 1, SpoolKind::Inbox), Some(envelope(1, 100)));
        assert_eq!(get(&store, 2, SpoolKind::Inbox), Some(envelope(2, 70)));
        // Written again (the sender resends what was never acknowledged): the same bytes.
        put(&store, 3, SpoolKind::Inbox, &last);
        store.commit().await.expect("commit");
        drop(store);
        assert_eq!(std::fs::read(&path).expect("read"), whole, "cut at {cut}");
    }
}

#[tokio::test]
async fn a_flipped_byte_is_detected() {
    let (dir, store) = open();
    put(&store, 1, SpoolKind::Outbox, &envelope(1, 500));
    put(&store, 2, SpoolKind::Outbox, &envelope(2, 500));
    put(&store, 3, SpoolKind::Outbox, &envelope(3, 500));
    store.commit().await.expect("commit");
    let path = tail_path(&store, SpoolKind::Outbox);
    let whole = std::fs::read(&path).expect("read");
    let record = 24 + 500;
    // Every byte of the middle record, header and body: refused while running, and after a
    // reopen (it is followed by an intact record, so it is not a torn tail: nothing is cut).
    for at in record..2 * record {
        let mut damaged = whole.clone();
        damaged[at] ^= 0x10;
        std::fs::write(&path, &damaged).expect("damage");
        let err = store.spool_open(&tid(2), SpoolKind::Outbox);
        assert!(
            matches!(err, Err(StoreError::Corrupt { .. })),
            "byte {at}: {err:?}"
        );
        assert_eq!(get(&store, 1, SpoolKind::Outbox), Some(envelope(1, 500)));
        assert_eq!(get(&store, 3, SpoolKind::Outbox), Some(envelope(3, 500)));
    }
    drop(store);
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        whole.len() as u64
    );
    assert!(store.spool_open(&tid(2), SpoolKind::Outbox).is_err());
    assert_eq!(get(&store, 3, SpoolKind::Outbox), Some(envelope(3, 500)));
    // A flipped byte in the last record is a torn tail: cut, and not served.
    drop(store);
    let mut damaged = whole.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(&path, &damaged).expect("damage");
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(get(&store, 3, SpoolKind::Outbox), None);
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        2 * record as u64
    );
}

#[tokio::test]
async fn a_snapshot_holds_segment_envelopes_as_files_and_restores_them() {
    let (_dir, store) = open();
    store
        .outbox_insert(&super::outbox_entry(1, 100))
        .expect("insert");
    put(&store, 1, SpoolKind::Outbox, &envelope(1, 5000));
    store.commit().await.expect("commit");
    let snap_dir = tempfile::tempdir().expect("tempdir");
    let snap = store.snapshot(snap_dir.path(), true).expect("snapshot");
    let rel = PathBuf::from("spool/outbox").join(hex::encode(tid(1)));
    assert_eq!(snap.spool_files, vec![rel.clone()]);
    assert_eq!(
        std::fs::read(snap_dir.path().join(&rel)).expect("read"),
        envelope(1, 5000)
    );
    let restored = tempfile::tempdir().expect("tempdir");
    let target = restored.path().join("data");
    crate::snapshot::restore(snap_dir.path(), &target).expect("restore");
    let store = Store::open(&target).expect("open restored");
    assert_eq!(get(&store, 1, SpoolKind::Outbox), Some(envelope(1, 5000)));
    assert!(segments(&store).live(SpoolKind::Outbox).is_empty());
}

#[test]
fn a_format_2_store_is_upgraded_and_keeps_its_spool_files() {
    let (dir, store) = open();
    drop(store);
    // What a release before segments left: format 2, one envelope in a file of its own.
    {
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .expect("sled");
        db.open_tree("store_meta")
            .expect("tree")
            .insert(
                crate::migrate::FORMAT_KEY,
                crate::codec::encode("store format", &2u32).expect("encode"),
            )
            .expect("insert");
        db.flush().expect("flush");
    }
    let file = dir.path().join("spool/inbox").join(hex::encode(tid(4)));
    std::fs::write(&file, b"an envelope from before").expect("write");
    let store = Store::open(dir.path()).expect("open");
    let format = store
        .inner
        .trees
        .store_meta
        .get(crate::migrate::FORMAT_KEY)
        .expect("get")
        .expect("a format");
    let format: u32 = crate::codec::decode("store format", &format).expect("decode");
    assert_eq!(format, 3);
    assert_eq!(
        get(&store, 4, SpoolKind::Inbox).as_deref(),
        Some(&b"an envelope from before"[..])
    );
    // A format this release does not know is refused.
    drop(store);
    {
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .expect("sled");
        db.open_tree("store_meta")
            .expect("tree")
            .insert(
                crate::migrate::FORMAT_KEY,
                crate::codec::encode("store format", &4u32).expect("encode"),
            )
            .expect("insert");
        db.flush().expect("flush");
    }
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::UnsupportedFormat { found: 4, .. })
    ));
}
