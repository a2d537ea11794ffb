//! Consistent copies of a running store (for backups) and building a store from one (restore).
//!
//! sled 0.34 has no snapshot isolation across trees: an iteration sees writes made while it
//! runs, so a copy taken tree by tree could hold an outbox entry without the audit entry
//! written in its transaction, or an audit head behind its entries. So every store operation
//! holds a gate (a read lock taken by [`crate::Store::trees`], re-entrant so that nested calls
//! and other locks never wait on it), and [`Store::snapshot`] takes it exclusively while it
//! copies every tree and hard-links the spool files the copy refers to (an envelope in a spool
//! segment is copied out into a file of its own, and the segment index is left out, so the
//! restored store reads it as a spool file). The copy is therefore
//! a state between two store operations, which is also a state the node could have crashed
//! in, and the node recovers from those by design (transfers left `delivering` are resent,
//! the receiver's dedupe makes that safe). Operations wait while the copy runs: it costs
//! about one pass over the store (seconds per GB of sled data), and the spool files are only
//! linked, not copied. Writes the copy holds may not be durable yet; that does not matter,
//! since it is a consistent state either way.
//!
//! The copy of the trees is one file, `store.kv`:
//!
//! ```text
//! "healthfed-store-snapshot/1\n"
//! ( 'T' u32_be len, tree name | 'E' u32_be len, key, u32_be len, value )*
//! 'Z' u64_be trees, u64_be entries
//! ```
//!
//! [`restore`] reads it back into a new, empty store directory and refuses anything
//! malformed, truncated or trailing.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::commit::sync_dir;
use crate::error::StoreError;
use crate::protect::KEY_FILE;
use crate::types::{transfer_id_hex, SpoolKind, TransferId};
use crate::Store;

/// The first bytes of `store.kv`, with its format version.
const MAGIC: &[u8] = b"healthfed-store-snapshot/1\n";

/// The name of the copy of the trees in a snapshot directory.
pub const STORE_FILE: &str = "store.kv";

/// How long [`Store::snapshot`] waits for a moment when no store operation runs.
const GATE_WAIT: Duration = Duration::from_secs(30);

/// Longest key or value the format carries (sled keeps larger values as blobs, never this big).
const MAX_ITEM: usize = 1 << 30;

/// Why a snapshot or a restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("local system: {context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Store operations never paused long enough to take the copy.
    #[error("local system: the store stayed busy for {}s; retry the backup", GATE_WAIT.as_secs())]
    Busy,
    /// The snapshot file is not what [`Store::snapshot`] writes.
    #[error("snapshot {STORE_FILE}: {problem}")]
    Format { problem: String },
    /// Restore writes only into a directory that holds nothing.
    #[error("{}: not empty; restore only into an empty (or absent) data directory", path.display())]
    NotEmpty { path: PathBuf },
}

/// What [`Store::snapshot`] copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// sled trees copied.
    pub trees: u64,
    /// Key/value pairs copied, over all trees.
    pub entries: u64,
    /// Entries of the audit log in the copy (its last seq).
    pub audit_size: u64,
    /// Spool files linked, relative to the snapshot directory (`spool/<kind>/<id hex>`).
    pub spool_files: Vec<PathBuf>,
    /// Whether the patient index key was copied (`patient-index.key`).
    pub key_file: bool,
}

impl Store {
    /// Writes a consistent copy of the store into the empty directory `to`, which must be on
    /// the store's filesystem (spool files are hard-linked): `store.kv`, `spool/outbox/<id>`
    /// and `spool/inbox/<id>` for every spool file an outbox or inbox entry of the copy refers
    /// to, and, with `with_key`, a copy of `patient-index.key` (0600). Blocking: call it from
    /// a blocking context. Every store operation waits while it runs (see the module docs).
    pub fn snapshot(&self, to: &Path, with_key: bool) -> Result<Snapshot, SnapshotError> {
        let store_file = to.join(STORE_FILE);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&store_file)
            .map_err(io_err("create", &store_file))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let Some(_gate) = self.inner.gate.try_write_for(GATE_WAIT) else {
            return Err(SnapshotError::Busy);
        };
        // From here until `_gate` drops no store operation runs, so nothing below may call a
        // store method (they would wait for the gate): only sled handles and files.
        let mut snap = Snapshot::default();
        let w = |out: &mut BufWriter<File>, bytes: &[u8]| {
            out.write_all(bytes).map_err(io_err("write", &store_file))
        };
        w(&mut out, MAGIC)?;
        let mut names = self.inner.db.tree_names();
        names.sort();
        for name in names {
            // Segment locations are of this store's segment files, which the copy does not
            // hold: their envelopes are written out as spool files below.
            if name == crate::segment::INDEX_TREE.as_bytes() {
                continue;
            }
            let tree = self
                .inner
                .db
                .open_tree(&name)
                .map_err(StoreError::sled("open tree for snapshot"))?;
            w(&mut out, b"T")?;
            write_item(&mut out, &name).map_err(io_err("write", &store_file))?;
            snap.trees += 1;
            for item in tree.iter() {
                let (k, v) = item.map_err(StoreError::sled("read tree for snapshot"))?;
                w(&mut out, b"E")?;
                write_item(&mut out, &k).map_err(io_err("write", &store_file))?;
                write_item(&mut out, &v).map_err(io_err("write", &store_file))?;
                snap.entries += 1;
                if name == "audit" {
                    snap.audit_size = <[u8; 8]>::try_from(k.as_ref())
                        .map(u64::from_be_bytes)
                        .unwrap_or(snap.audit_size);
                }
            }
        }
        w(&mut out, b"Z")?;
        w(&mut out, &snap.trees.to_be_bytes())?;
        w(&mut out, &snap.entries.to_be_bytes())?;
        // Spool files are immutable once in place, but the retention sweep may unlink one
        // after the copy: a link taken now keeps its bytes.
        for (kind, tree) in [
            (SpoolKind::Outbox, &self.inner.trees.outbox),
            (SpoolKind::Inbox, &self.inner.trees.inbox),
        ] {
            let rel = Path::new("spool").join(kind.dir_name());
            let dir = to.join(&rel);
            std::fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
            for item in tree.iter() {
                let (k, _) = item.map_err(StoreError::sled("read tree for snapshot"))?;
                let Ok(id) = TransferId::try_from(k.as_ref()) else {
                    continue;
                };
                let from = self.spool_path(&id, kind);
                let name = transfer_id_hex(&id);
                // An envelope in a segment is copied out (at most a segment record's size);
                // a restored store reads it as a spool file of its own. Not fsynced: the
                // backup packs it from here, and restore syncs every file it moves in.
                let segments = self.inner.spool_dirs.segments();
                if let Some(bytes) = segments.map(|s| s.read(kind, &id)).transpose()?.flatten() {
                    let dest = dir.join(&name);
                    std::fs::write(&dest, bytes).map_err(io_err("write", &dest))?;
                    snap.spool_files.push(rel.join(name));
                    continue;
                }
                match std::fs::hard_link(&from, dir.join(&name)) {
                    Ok(()) => snap.spool_files.push(rel.join(name)),
                    // Removed by retention (the copy records that) or never written.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("link spool file", &from)(e)),
                }
            }
        }
        drop(_gate);
        let file = out
            .into_inner()
            .map_err(|e| io_err("write", &store_file)(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync", &store_file))?;
        if with_key {
            let from = self.inner.dir.join(KEY_FILE);
            let dest = to.join(KEY_FILE);
            let bytes =
                zeroize::Zeroizing::new(std::fs::read(&from).map_err(io_err("read", &from))?);
            write_private(&dest, &bytes)?;
            snap.key_file = true;
        }
        Ok(snap)
    }
}

/// Builds a store in `dir` (absent or empty) from the snapshot directory `from` as
/// [`Store::snapshot`] wrote it: the trees from `store.kv`, the spool files and, if present,
/// the key file, each moved or written into place and made durable. Returns the number of
/// entries restored. The caller opens the store afterwards (`Store::open`), which checks its
/// format and its key.
pub fn restore(from: &Path, dir: &Path) -> Result<u64, SnapshotError> {
    ensure_empty(dir)?;
    std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let sled_dir = dir.join(crate::migrate::LIVE);
    let db = sled::Config::new()
        .path(&sled_dir)
        .open()
        .map_err(StoreError::sled("open database for restore"))?;
    let store_file = from.join(STORE_FILE);
    let file = File::open(&store_file).map_err(io_err("open", &store_file))?;
    let entries = import(&db, &mut BufReader::with_capacity(1 << 20, file))?;
    db.flush()
        .map_err(StoreError::sled("flush restored database"))?;
    drop(db);
    for kind in [SpoolKind::Outbox, SpoolKind::Inbox] {
        let src = from.join("spool").join(kind.dir_name());
        let dest = dir.join("spool").join(kind.dir_name());
        std::fs::create_dir_all(&dest).map_err(io_err("create directory", &dest))?;
        let listing = match std::fs::read_dir(&src) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("list", &src)(e)),
        };
        for entry in listing {
            let entry = entry.map_err(io_err("list", &src))?;
            let target = dest.join(entry.file_name());
            File::open(entry.path())
                .and_then(|f| f.sync_all())
                .map_err(io_err("fsync", &entry.path()))?;
            std::fs::rename(entry.path(), &target).map_err(io_err("move", &target))?;
        }
        sync_dir(&dest)?;
    }
    let key = from.join(KEY_FILE);
    if key.exists() {
        let bytes = zeroize::Zeroizing::new(std::fs::read(&key).map_err(io_err("read", &key))?);
        write_private(&dir.join(KEY_FILE), &bytes)?;
    }
    sync_dir(&dir.join("spool"))?;
    sync_dir(dir)?;
    Ok(entries)
}

/// Refuses a directory that exists and holds anything.
pub fn ensure_empty(dir: &Path) -> Result<(), SnapshotError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(SnapshotError::NotEmpty {
                path: dir.to_path_buf(),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("list", dir)(e)),
    }
}

fn import(db: &sled::Db, r: &mut impl Read) -> Result<u64, SnapshotError> {
    let bad = |problem: &str| SnapshotError::Format {
        problem: problem.to_owned(),
    };
    let mut magic = vec![0u8; MAGIC.len()];
    read_exact(r, &mut magic)?;
    if magic != MAGIC {
        return Err(bad("not a store snapshot of a known version"));
    }
    let mut tree: Option<sled::Tree> = None;
    let (mut trees, mut entries) = (0u64, 0u64);
    loop {
        let mut tag = [0u8; 1];
        read_exact(r, &mut tag)?;
        match &tag {
            b"T" => {
                let name = read_item(r)?;
                tree = Some(
                    db.open_tree(&name)
                        .map_err(StoreError::sled("create tree for restore"))?,
                );
                trees += 1;
            }
            b"E" => {
                let key = read_item(r)?;
                let value = read_item(r)?;
                let t = tree
                    .as_ref()
                    .ok_or_else(|| bad("an entry before any tree"))?;
                t.insert(key, value)
                    .map_err(StoreError::sled("write restored entry"))?;
                entries += 1;
            }
            b"Z" => {
                let mut counts = [0u8; 16];
                read_exact(r, &mut counts)?;
                let (t, e) = counts.split_at(8);
                let expect = (
                    u64::from_be_bytes(t.try_into().map_err(|_| bad("short trailer"))?),
                    u64::from_be_bytes(e.try_into().map_err(|_| bad("short trailer"))?),
                );
                if expect != (trees, entries) {
                    return Err(bad("the trailer's counts do not match the entries read"));
                }
                let mut more = [0u8; 1];
                return match r.read(&mut more) {
                    Ok(0) => Ok(entries),
                    Ok(_) => Err(bad("bytes after the trailer")),
                    Err(e) => Err(bad(&format!("read: {e}"))),
                };
            }
            _ => return Err(bad("unknown record tag")),
        }
    }
}

fn write_item(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&l| l as usize <= MAX_ITEM)
        .ok_or_else(|| io::Error::other("item too large for the snapshot format"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

fn read_item(r: &mut impl Read) -> Result<Vec<u8>, SnapshotError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_ITEM {
        return Err(SnapshotError::Format {
            problem: "an item longer than the format allows".to_owned(),
        });
    }
    let mut buf = vec![0u8; len];
    read_exact(r, &mut buf)?;
    Ok(buf)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), SnapshotError> {
    r.read_exact(buf).map_err(|e| SnapshotError::Format {
        problem: match e.kind() {
            io::ErrorKind::UnexpectedEof => "truncated".to_owned(),
            _ => format!("read: {e}"),
        },
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", path))
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io {
        context,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditRecord, OutboxEntry, TransferState, TransferSummary};

    fn entry(writer: u8, n: u32) -> OutboxEntry {
        let mut transfer_id = [writer; 16];
        transfer_id[12..].copy_from_slice(&n.to_be_bytes());
        OutboxEntry {
            transfer_id,
            recipient: "facility-b".into(),
            state: TransferState::Queued,
            created_ms: 1_700_000_000_000 + u64::from(n),
            updated_ms: 1_700_000_000_000,
            attempts: 0,
            next_attempt_ms: 1_700_000_000_000,
            last_error: None,
            envelope_len: 10,
            payload_len: 5,
            payload_digest: [0; 32],
            receipt: None,
            summary: TransferSummary {
                patient_ref: format!("Patient/p-{n}"),
                purpose: "treatment".into(),
                clinician: None,
                content_type: "application/fhir+json".into(),
                categories: vec![],
                break_glass: false,
            },
            request_id: None,
        }
    }

    fn submitted(id: TransferId) -> AuditRecord {
        AuditRecord {
            time_ms: 1_700_000_000_000,
            event: "submitted".into(),
            transfer_id: Some(id),
            peer: Some("facility-b".into()),
            patient_ref: Some("Patient/p".into()),
            purpose: Some("treatment".into()),
            clinician: None,
            outcome: "ok".into(),
            reason: None,
            policy_ids: vec![],
            break_glass: false,
        }
    }

    /// Writers insert transfers with their audit entry (one transaction each) while snapshots
    /// are taken: every copy restores to a store whose chain verifies and that holds exactly
    /// one audit entry per transfer, never one without the other.
    #[test]
    fn snapshots_taken_under_concurrent_writes_are_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("live")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (1..=3u8)
            .map(|w| {
                let (store, stop) = (store.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 3_000 {
                        let e = entry(w, n);
                        // Its envelope first, as the send path seals it: a pending transfer
                        // restored without one would be failed at open (see `lost`).
                        let mut env = store
                            .spool_writer(&e.transfer_id, crate::SpoolKind::Outbox)
                            .unwrap();
                        env.write_chunk(b"sealed envelope").unwrap();
                        env.finish().unwrap();
                        store
                            .outbox_insert_audited(&e, vec![submitted(e.transfer_id)])
                            .unwrap();
                        n += 1;
                        // A node's store calls are spread between network and crypto work.
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                    n
                })
            })
            .collect();
        let mut sizes = Vec::new();
        for i in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let snap_dir = dir.path().join(format!("snap-{i}"));
            std::fs::create_dir(&snap_dir).unwrap();
            let snap = store.snapshot(&snap_dir, true).unwrap();
            let restored = dir.path().join(format!("restored-{i}"));
            restore(&snap_dir, &restored).unwrap();
            let copy = Store::open(&restored).unwrap();
            let verified = copy.audit_verify().unwrap();
            assert_eq!(verified, snap.audit_size);
            let transfers = copy.outbox_iter().count() as u64;
            assert_eq!(
                transfers, verified,
                "snapshot {i}: transfers and audit entries differ"
            );
            sizes.push(verified);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(
            sizes.windows(2).any(|w| w[0] < w[1]),
            "no writes between snapshots: {sizes:?}"
        );
        // The first copy was taken while the writers were still going.
        assert!(u64::from(written) > sizes[0], "{written} {sizes:?}");
    }

    #[test]
    fn a_snapshot_restores_to_an_equal_store_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let store = Store::open(&src).unwrap();
        store.set_job_done("snapshot-test").unwrap();
        let snap_dir = src.join("snap");
        std::fs::create_dir(&snap_dir).unwrap();
        let snap = store.snapshot(&snap_dir, true).unwrap();
        assert!(snap.key_file);
        assert!(snap.entries > 0);
        drop(store);

        let restored = dir.path().join("restored");
        // Into a non-empty directory: refused.
        std::fs::create_dir(&restored).unwrap();
        std::fs::write(restored.join("x"), b"x").unwrap();
        assert!(matches!(
            restore(&snap_dir, &restored),
            Err(SnapshotError::NotEmpty { .. })
        ));
        std::fs::remove_file(restored.join("x")).unwrap();

        // A damaged copy is refused, naming the problem.
        let bytes = std::fs::read(snap_dir.join(STORE_FILE)).unwrap();
        let bad_dir = dir.path().join("bad");
        std::fs::create_dir(&bad_dir).unwrap();
        std::fs::write(bad_dir.join(STORE_FILE), &bytes[..bytes.len() - 3]).unwrap();
        let err = restore(&bad_dir, &dir.path().join("bad-out")).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        assert_eq!(restore(&snap_dir, &restored).unwrap(), snap.entries);
        let reopened = Store::open(&restored).unwrap();
        assert!(reopened.job_done("snapshot-test").unwrap());
    }
}
