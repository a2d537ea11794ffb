//! Group commit: one thread makes sled's state power-loss durable on behalf of every caller
//! whose writes precede the start of its flush. See the crate documentation for why a sled
//! `flush()` alone is not enough.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::dir_watch::{Changes, DirWatch};
use crate::error::StoreError;
use crate::spool::SpoolDirs;
use crate::types::CommitStats;

/// The handle the store keeps; dropping it stops and joins the thread, which releases the
/// thread's clone of the sled handle so the directory can be reopened.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    progress: watch::Sender<Progress>,
    flushes: AtomicU64,
    /// Held by a test to stop the thread before it samples the generation, so that many
    /// committers provably pile up behind one flush without relying on timing.
    #[cfg(test)]
    gate: Mutex<()>,
}

struct State {
    /// Generation counter: the number of commit tickets handed out (ticket n is n).
    requested: u64,
    shutdown: bool,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    /// Every ticket up to this one is durable.
    durable: u64,
    /// Set once, by the first failed flush; sticky.
    failed: Option<String>,
}

impl Committer {
    pub(crate) fn start(files: SledFiles) -> Result<Committer, StoreError> {
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requested: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            progress,
            flushes: AtomicU64::new(0),
            #[cfg(test)]
            gate: Mutex::new(()),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || run(&thread_shared, files))
            .map_err(|source| StoreError::Spawn { source })?;
        Ok(Committer {
            shared,
            thread: Some(thread),
        })
    }

    pub(crate) async fn commit(&self) -> Result<(), StoreError> {
        let mut rx = self.shared.progress.subscribe();
        if let Some(reason) = &rx.borrow().failed {
            return Err(StoreError::CommitFailed {
                reason: reason.clone(),
            });
        }
        // The caller's writes happened before this point, so they precede the start of any
        // flush that samples a generation >= ticket.
        let ticket = {
            let mut state = lock(&self.shared.state);
            state.requested += 1;
            state.requested
        };
        self.shared.wake.notify_one();
        let progress = rx
            .wait_for(|p| p.durable >= ticket || p.failed.is_some())
            .await
            .map_err(|_| StoreError::CommitterStopped)?;
        if progress.durable >= ticket {
            return Ok(());
        }
        Err(StoreError::CommitFailed {
            reason: progress.failed.clone().unwrap_or_default(),
        })
    }

    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            commits: lock(&self.shared.state).requested,
            flushes: self.shared.flushes.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    pub(crate) fn pause(&self) -> MutexGuard<'_, ()> {
        lock(&self.shared.gate)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panic in the thread has already been reported by the panic hook; the
            // waiters saw the channel close.
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, mut files: SledFiles) {
    let mut done = 0;
    loop {
        {
            let mut state = lock(&shared.state);
            while state.requested == done && !state.shutdown {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.requested == done {
                return;
            }
        }
        #[cfg(test)]
        let _gate = lock(&shared.gate);
        // Sample the generation just before flushing: every ticket up to here belongs to a
        // caller whose writes are already in sled's memory, so this flush covers them.
        let target = lock(&shared.state).requested;
        let already_failed = shared.progress.borrow().failed.is_some();
        let result = if already_failed {
            Ok(())
        } else {
            shared.flushes.fetch_add(1, Ordering::Relaxed);
            files.sync().map(drop)
        };
        done = target;
        shared.progress.send_modify(|p| match result {
            Ok(()) if !already_failed => p.durable = target,
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "durable commit failed; further commits are refused");
                p.failed = Some(e.to_string());
            }
        });
    }
}

/// The files sled 0.34.7 writes under its directory, and what has been made durable so far.
/// sled writes: `conf` (once, at creation), `db` (the log and all segments, rewritten in
/// place), `blobs/<lsn>` (one file per page too large for a segment, never fsynced by sled)
/// and `snap.<lsn>` (written, `sync_all`ed, then renamed into place). Which of them changed
/// since the last commit is told by a [`DirWatch`].
pub(crate) struct SledFiles {
    db: sled::Db,
    dir: PathBuf,
    blobs: PathBuf,
    data_file: File,
    watch: DirWatch,
    /// Changes seen by a drain whose syncs are not all done yet (a failed commit keeps them).
    pending: Changes,
    spool: Arc<SpoolDirs>,
}

impl SledFiles {
    /// Opens sled's data file and makes everything sled created so far durable.
    pub(crate) fn open(
        db: sled::Db,
        dir: &Path,
        spool: Arc<SpoolDirs>,
    ) -> Result<SledFiles, StoreError> {
        let data_path = dir.join("db");
        let data_file =
            File::open(&data_path).map_err(|e| StoreError::io("open", &data_path, e))?;
        let blobs = dir.join("blobs");
        // Watching starts before the first sync, so nothing sled writes falls between the two.
        let watch = DirWatch::open(dir, &blobs)?;
        let mut files = SledFiles {
            db,
            dir: dir.to_path_buf(),
            blobs,
            data_file,
            watch,
            // What was there before the watch began is unknown: sync all of it once.
            pending: Changes {
                overflowed: true,
                ..Changes::default()
            },
            spool,
        };
        let conf = dir.join("conf");
        sync_file(&conf)?;
        let _ = files.sync()?;
        Ok(files)
    }

    /// One durable commit: sled flush, then fdatasync of every file it may have written,
    /// then fsync of the directories whose entries changed. Returns what it synced.
    pub(crate) fn sync(&mut self) -> Result<Synced, StoreError> {
        let mut synced = Synced::default();
        // Spool files renamed into place before this flush started.
        self.spool.sync_if_dirty()?;
        // Blobs closed before the flush are synced first, so the log never durably refers
        // to a blob that is not; blobs closed during the flush are caught by the second pass.
        self.sync_blobs(&mut synced)?;
        self.db
            .flush()
            .map_err(StoreError::sled("flush for commit"))?;
        // sled's flush uses sync_file_range, which neither flushes the device cache nor
        // the file's metadata (sled issue #1452): fdatasync the log file ourselves.
        self.data_file
            .sync_data()
            .map_err(|e| StoreError::io("fdatasync", self.dir.join("db"), e))?;
        self.sync_blobs(&mut synced)?;
        if self.pending.root_dir {
            // A new snapshot was renamed into place (or sled's files were created).
            sync_dir(&self.dir)?;
            self.pending.root_dir = false;
            synced.root_dir = true;
        }
        Ok(synced)
    }

    /// As if the kernel's event queue had overflowed (the queue holds 16 384 events by default,
    /// too many to fill in a test).
    #[cfg(test)]
    pub(crate) fn assume_overflow(&mut self) {
        self.pending.overflowed = true;
    }

    /// Syncs the blob files closed since the last pass, and `blobs/` if its entries changed.
    /// A root-directory change stays in `pending` for the end of the commit; a failed sync
    /// leaves what it did not finish in `pending` for the next commit.
    fn sync_blobs(&mut self, synced: &mut Synced) -> Result<(), StoreError> {
        let seen = self.watch.drain()?;
        self.pending.merge(seen);
        if self.pending.overflowed {
            // Unknown changes: every blob present, both directories.
            let all = list_dir(&self.blobs)?;
            self.pending.closed_blobs.extend(all);
            self.pending.blobs_dir = true;
            self.pending.root_dir = true;
            self.pending.overflowed = false;
        }
        while let Some(name) = self.pending.closed_blobs.first().cloned() {
            let path = self.blobs.join(&name);
            match File::open(&path) {
                Ok(f) => f
                    .sync_data()
                    .map_err(|e| StoreError::io("fdatasync", &path, e))?,
                // Garbage-collected by sled since it was closed: nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("open", &path, e)),
            }
            let _ = self.pending.closed_blobs.remove(&name);
            let _ = synced.blobs.insert(name);
        }
        if self.pending.blobs_dir {
            sync_dir(&self.blobs)?;
            self.pending.blobs_dir = false;
            synced.blobs_dir = true;
        }
        Ok(())
    }
}

/// What one commit synced besides sled's log (for the tests of what the watch reports).
#[derive(Debug, Default)]
pub(crate) struct Synced {
    pub(crate) blobs: BTreeSet<OsString>,
    pub(crate) blobs_dir: bool,
    pub(crate) root_dir: bool,
}

pub(crate) fn list_dir(dir: &Path) -> Result<BTreeSet<OsString>, StoreError> {
    let mut names = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let _ = names.insert(entry.file_name());
    }
    Ok(names)
}

/// fsync of a directory, which makes the creation, rename or removal of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

fn sync_file(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io("fsync", path, e))
}

/// Locks a mutex whose data stays consistent even if a holder panicked (plain counters).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
