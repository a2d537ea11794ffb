//! Spool files: envelope bytes (up to about a gigabyte) live in files next to sled, named by
//! transfer id. A file appears at its final path only once it is complete and durable, so a
//! reader never sees a torn envelope and a crash leaves only `*.partial` files, which the next
//! `Store::open` removes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::commit::sync_dir;
use crate::error::StoreError;
use crate::types::{transfer_id_hex, SpoolKind, TransferId};

/// Suffix of files still being written.
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// Buffer between the caller's chunks and `write(2)`; envelopes arrive as small body frames.
const BUFFER_BYTES: usize = 256 * 1024;

/// A large envelope is written back to disk while it is still being written, `fdatasync`ed by
/// a helper thread every this many bytes, so that `finish` does not meet a gigabyte of dirty
/// pages at once (the kernel starts writeback on its own only at 10 % of RAM dirty).
const FLUSH_EVERY_BYTES: u64 = 8 * 1024 * 1024;

/// Makes temporary names unique within the process, so two concurrent writers for one id
/// (a sender retrying while its first attempt is still streaming) never share a file.
static NEXT_PARTIAL: AtomicU64 = AtomicU64::new(0);

/// The spool directories, and whether a file was renamed into one of them since the last
/// group commit. A rename is made durable by an fsync of its directory; doing that once per
/// group commit instead of once per file keeps it off every transfer's path (the caller
/// commits before it acknowledges anything, so the ordering guarantee is unchanged).
pub(crate) struct SpoolDirs {
    dirty: AtomicBool,
    dirs: Vec<PathBuf>,
}

impl SpoolDirs {
    pub(crate) fn new(spool_dir: &Path) -> Arc<SpoolDirs> {
        Arc::new(SpoolDirs {
            dirty: AtomicBool::new(false),
            dirs: [SpoolKind::Outbox, SpoolKind::Inbox]
                .iter()
                .map(|k| spool_dir.join(k.dir_name()))
                .collect(),
        })
    }

    fn mark(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    #[cfg(test)]
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Called by the commit thread at the start of every flush: every rename that happened
    /// before the flush started is durable when it ends.
    pub(crate) fn sync_if_dirty(&self) -> Result<(), StoreError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.sync_all()
            .inspect_err(|_| self.dirty.store(true, Ordering::Release))
    }

    /// fsyncs both directories now: every rename or removal before the call is durable.
    pub(crate) fn sync_all(&self) -> Result<(), StoreError> {
        self.dirs.iter().try_for_each(|dir| sync_dir(dir))
    }
}

/// Writes one envelope into the spool. Obtain it from [`crate::Store::spool_writer`], write
/// the bytes, then call [`SpoolWriter::finish`]. Dropping it unfinished deletes what was
/// written. Writes are blocking file I/O; `finish` fsyncs, so call it from a blocking
/// context (`tokio::task::spawn_blocking`) in async code.
pub struct SpoolWriter {
    file: Option<BufWriter<File>>,
    partial: PathBuf,
    dest: PathBuf,
    dirs: Arc<SpoolDirs>,
    written: u64,
    /// Started once the file passes `FLUSH_EVERY_BYTES`.
    flusher: Option<Flusher>,
    flushed_at: u64,
}

/// A thread that `fdatasync`s the spool file whenever it is told more was written. It shares
/// the file description with the writer, so an error it sees is reported by `finish` (the
/// kernel reports a writeback error once per description).
struct Flusher {
    more: Option<std::sync::mpsc::SyncSender<()>>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl Flusher {
    fn start(file: &File) -> io::Result<Flusher> {
        let file = file.try_clone()?;
        // One pending request is enough: a sync started after it covers every write before it.
        let (more, requests) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("spool-flush".to_owned())
            .spawn(move || {
                while requests.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Flusher {
            more: Some(more),
            thread,
        })
    }

    fn request(&self) {
        if let Some(more) = &self.more {
            // Full: a sync is already pending. Disconnected: the thread stopped on an error,
            // which `stop` reports.
            let _ = more.try_send(());
        }
    }

    /// Waits for the thread and returns the first error it met.
    fn stop(mut self) -> io::Result<()> {
        drop(self.more.take());
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("spool flusher panicked")))
    }
}

impl SpoolWriter {
    pub(crate) fn create(
        dir: &Path,
        id: &TransferId,
        dirs: Arc<SpoolDirs>,
    ) -> Result<SpoolWriter, StoreError> {
        let name = transfer_id_hex(id);
        let n = NEXT_PARTIAL.fetch_add(1, Ordering::Relaxed);
        let partial = dir.join(format!("{name}.{}-{n}{PARTIAL_SUFFIX}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| StoreError::io("create spool file", &partial, e))?;
        Ok(SpoolWriter {
            file: Some(BufWriter::with_capacity(BUFFER_BYTES, file)),
            partial,
            dest: dir.join(name),
            dirs,
            written: 0,
            flusher: None,
            flushed_at: 0,
        })
    }

    /// Appends a chunk.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let file = self.file.as_mut().ok_or_else(|| finished(&self.partial))?;
        file.write_all(chunk)
            .map_err(|e| StoreError::io("write spool file", &self.partial, e))?;
        self.written += chunk.len() as u64;
        self.maybe_flush()
    }

    /// Asks the flusher thread (started on the first call) to write back what is written.
    fn maybe_flush(&mut self) -> Result<(), StoreError> {
        if self.written - self.flushed_at < FLUSH_EVERY_BYTES {
            return Ok(());
        }
        self.flushed_at = self.written;
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        match &self.flusher {
            Some(flusher) => flusher.request(),
            None => {
                let flusher = Flusher::start(file.get_ref())
                    .map_err(|e| StoreError::io("start spool flusher", &self.partial, e))?;
                flusher.request();
                self.flusher = Some(flusher);
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn is_flushing_early(&self) -> bool {
        self.flusher.is_some()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The path the file will have once finished.
    pub fn final_path(&self) -> &Path {
        &self.dest
    }

    /// Makes the file durable and moves it to its final path: fsync the file, rename it into
    /// place (replacing any previous file for the id). The rename itself becomes durable with
    /// the next [`crate::Store::commit`] (which fsyncs the spool directories), so commit before
    /// acknowledging the file. Returns its length.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        let file = self.file.take().ok_or_else(|| finished(&self.partial))?;
        let file = file
            .into_inner()
            .map_err(|e| StoreError::io("write spool file", &self.partial, e.into_error()))?;
        if let Some(flusher) = self.flusher.take() {
            flusher
                .stop()
                .map_err(|e| StoreError::io("fsync spool file", &self.partial, e))?;
        }
        file.sync_all()
            .map_err(|e| StoreError::io("fsync spool file", &self.partial, e))?;
        drop(file);
        if let Err(e) = std::fs::rename(&self.partial, &self.dest) {
            let _ = std::fs::remove_file(&self.partial);
            return Err(StoreError::io("rename spool file into", &self.dest, e));
        }
        // From here the partial path no longer exists; Drop must not remove anything.
        self.partial = PathBuf::new();
        self.dirs.mark();
        Ok(self.written)
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("spool writer already finished"))?;
        let n = file.write(buf)?;
        self.written += n as u64;
        self.maybe_flush().map_err(io::Error::other)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // An abandoned file's flusher is not waited for (a writer may be dropped on an async
        // worker): it ends after the sync in progress, and its handle on the unlinked file
        // closes with it.
        if let Some(mut flusher) = self.flusher.take() {
            drop(flusher.more.take());
        }
        if self.file.take().is_some() || !self.partial.as_os_str().is_empty() {
            // Unfinished (or failed): the partial bytes are useless. Best effort; a leftover
            // is removed by the next open.
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

impl fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("dest", &self.dest)
            .field("written", &self.written)
            .field("finished", &self.file.is_none())
            .finish()
    }
}

fn finished(path: &Path) -> StoreError {
    StoreError::io(
        "write spool file",
        path,
        io::Error::other("spool writer already finished"),
    )
}

/// The final path of a spool file.
pub(crate) fn path(spool_dir: &Path, id: &TransferId, kind: SpoolKind) -> PathBuf {
    spool_dir.join(kind.dir_name()).join(transfer_id_hex(id))
}

/// Removes a spool file, durably; absent is fine (removal is idempotent).
pub(crate) fn remove(spool_dir: &Path, id: &TransferId, kind: SpoolKind) -> Result<(), StoreError> {
    if unlink(spool_dir, id, kind)? {
        sync_dir(&spool_dir.join(kind.dir_name()))?;
    }
    Ok(())
}

/// Removes a spool file without syncing its directory (a sweep syncs once, with
/// [`SpoolDirs::sync_all`]). Returns whether there was a file.
pub(crate) fn unlink(
    spool_dir: &Path,
    id: &TransferId,
    kind: SpoolKind,
) -> Result<bool, StoreError> {
    let p = path(spool_dir, id, kind);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("remove spool file", &p, e)),
    }
}

/// Creates the spool directories and deletes files left unfinished by a crash.
pub(crate) fn prepare(spool_dir: &Path) -> Result<(), StoreError> {
    for kind in [SpoolKind::Outbox, SpoolKind::Inbox] {
        let dir = spool_dir.join(kind.dir_name());
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
        let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::io("list spool", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list spool", &dir, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                let p = entry.path();
                std::fs::remove_file(&p)
                    .map_err(|e| StoreError::io("remove unfinished spool file", &p, e))?;
            }
        }
        // Also makes the directory's own creation and any removals above durable.
        sync_dir(&dir)?;
    }
    sync_dir(spool_dir)
}
