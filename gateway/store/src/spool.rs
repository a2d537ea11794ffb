//! The envelope spool. An envelope of at most `segment::ENVELOPE_MAX` bytes is kept in memory
//! while it is written and appended to its kind's segment file when finished (see the
//! `segment` module); a larger one (up to about a gigabyte) spills to a file of its own next
//! to sled, named by transfer id. A file appears at its final path only once it is complete
//! and durable, so a reader never sees a torn envelope and a crash leaves only `*.partial`
//! files, which the next `Store::open` removes. Readers go through [`crate::Store::spool_open`],
//! which looks in the segment index first, then for the file.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::commit::sync_dir;
use crate::error::StoreError;
use crate::segment::{Segments, ENVELOPE_MAX};
use crate::types::{transfer_id_hex, SpoolKind, TransferId};
use crate::Store;

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

/// The spool directories, and whether a file was renamed into each since the last group
/// commit. A rename is made durable by an fsync of its directory; doing that once per group
/// commit instead of once per file keeps it off every transfer's path (the caller commits
/// before it acknowledges anything, so the ordering guarantee is unchanged). Only the
/// directories renamed into are synced: a node sending large envelopes does not also pay a
/// journal commit for its unchanged inbox directory.
pub(crate) struct SpoolDirs {
    /// Indexed as `dirs`, by [`slot`].
    dirty: [AtomicBool; 2],
    dirs: [PathBuf; 2],
    /// Attached once the database is open (not during a migration, which writes no envelope).
    segments: OnceLock<Arc<Segments>>,
    /// Largest envelope written to a segment (0: none; existing records are still read).
    segment_max: AtomicUsize,
}

impl SpoolDirs {
    pub(crate) fn new(spool_dir: &Path) -> Arc<SpoolDirs> {
        Arc::new(SpoolDirs {
            dirty: [AtomicBool::new(false), AtomicBool::new(false)],
            dirs: [SpoolKind::Outbox, SpoolKind::Inbox].map(|k| spool_dir.join(k.dir_name())),
            segments: OnceLock::new(),
            segment_max: AtomicUsize::new(0),
        })
    }

    /// From here on, envelopes of at most `max` bytes go to `segments` (capped at
    /// [`ENVELOPE_MAX`]), which every commit syncs.
    pub(crate) fn attach(&self, segments: Arc<Segments>, max: usize) {
        let _ = self.segments.set(segments);
        self.segment_max
            .store(max.min(ENVELOPE_MAX), Ordering::Relaxed);
    }

    pub(crate) fn segments(&self) -> Option<&Arc<Segments>> {
        self.segments.get()
    }

    fn mark(&self, kind: SpoolKind) {
        self.dirty[slot(kind)].store(true, Ordering::Release);
    }

    #[cfg(test)]
    pub(crate) fn is_dirty(&self, kind: SpoolKind) -> bool {
        self.dirty[slot(kind)].load(Ordering::Acquire)
    }

    /// Called by the commit thread at the start of every flush: every rename that happened
    /// before the flush started is durable when it ends.
    pub(crate) fn sync_if_dirty(&self) -> Result<(), StoreError> {
        // Segments appended to before the flush started.
        if let Some(segments) = self.segments.get() {
            segments.sync()?;
        }
        for (dirty, dir) in self.dirty.iter().zip(&self.dirs) {
            if dirty.swap(false, Ordering::AcqRel) {
                sync_dir(dir).inspect_err(|_| dirty.store(true, Ordering::Release))?;
            }
        }
        Ok(())
    }

    /// fsyncs both directories now: every rename or removal before the call is durable.
    pub(crate) fn sync_all(&self) -> Result<(), StoreError> {
        self.dirs.iter().try_for_each(|dir| sync_dir(dir))
    }
}

/// The index of `kind` in [`SpoolDirs`]' arrays.
fn slot(kind: SpoolKind) -> usize {
    match kind {
        SpoolKind::Outbox => 0,
        SpoolKind::Inbox => 1,
    }
}

/// Writes one envelope into the spool. Obtain it from [`crate::Store::spool_writer`], write
/// the bytes, then call [`SpoolWriter::finish`]. Dropping it unfinished deletes what was
/// written. Writes are blocking file I/O; `finish` fsyncs, so call it from a blocking
/// context (`tokio::task::spawn_blocking`) in async code.
pub struct SpoolWriter {
    /// The envelope so far while it may still go to a segment.
    memory: Option<Vec<u8>>,
    file: Option<BufWriter<File>>,
    /// Empty until the file is created (and again once it is renamed into place).
    partial: PathBuf,
    dest: PathBuf,
    kind: SpoolKind,
    id: TransferId,
    finished: bool,
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
        kind: SpoolKind,
        dirs: Arc<SpoolDirs>,
    ) -> Result<SpoolWriter, StoreError> {
        let mut w = SpoolWriter {
            memory: None,
            file: None,
            partial: PathBuf::new(),
            dest: dir.join(transfer_id_hex(id)),
            kind,
            id: *id,
            finished: false,
            dirs,
            written: 0,
            flusher: None,
            flushed_at: 0,
        };
        if w.dirs.segments().is_some() && w.dirs.segment_max.load(Ordering::Relaxed) > 0 {
            w.memory = Some(Vec::new());
        } else {
            w.spill()?;
        }
        Ok(w)
    }

    /// Moves what is in memory to a file of its own: the envelope is too large for a segment.
    fn spill(&mut self) -> Result<(), StoreError> {
        let dir = self.dest.parent().unwrap_or(Path::new("."));
        let name = transfer_id_hex(&self.id);
        let n = NEXT_PARTIAL.fetch_add(1, Ordering::Relaxed);
        let partial = dir.join(format!("{name}.{}-{n}{PARTIAL_SUFFIX}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| StoreError::io("create spool file", &partial, e))?;
        self.partial = partial;
        let mut file = BufWriter::with_capacity(BUFFER_BYTES, file);
        if let Some(memory) = self.memory.take() {
            file.write_all(&memory)
                .map_err(|e| StoreError::io("write spool file", &self.partial, e))?;
        }
        self.file = Some(file);
        Ok(())
    }

    /// Appends to the memory buffer if the envelope still fits a segment; false once it
    /// has gone (or must go) to a file.
    fn buffer_in_memory(&mut self, chunk: &[u8]) -> Result<bool, StoreError> {
        if self.finished {
            return Err(finished(&self.dest));
        }
        let Some(memory) = self.memory.as_mut() else {
            return Ok(false);
        };
        if memory.len() + chunk.len() <= self.dirs.segment_max.load(Ordering::Relaxed) {
            memory.extend_from_slice(chunk);
            self.written += chunk.len() as u64;
            return Ok(true);
        }
        self.spill()?;
        Ok(false)
    }

    /// Appends a chunk.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.buffer_in_memory(chunk)? {
            return Ok(());
        }
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

    /// The path the file will have once finished, if the envelope goes to a file of its own
    /// (it does once it has grown past what a segment takes).
    pub fn final_path(&self) -> &Path {
        &self.dest
    }

    /// Whether the envelope is still held in memory, bound for a segment.
    pub fn is_for_segment(&self) -> bool {
        self.memory.is_some()
    }

    /// Finishes the envelope. Small: appends it to its segment (replacing any earlier copy
    /// for the id); large: fsyncs the file and renames it into place (replacing any previous
    /// file for the id). Either becomes durable with the next [`crate::Store::commit`] (which
    /// syncs the segments and the spool directories), so commit before acknowledging it.
    /// Returns its length.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        if self.finished {
            return Err(finished(&self.dest));
        }
        if let Some(memory) = self.memory.take() {
            self.finished = true;
            let segments = self.dirs.segments().ok_or_else(|| finished(&self.dest))?;
            segments.append(self.kind, &self.id, &memory)?;
            return Ok(self.written);
        }
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
        self.finished = true;
        self.dirs.mark(self.kind);
        // The file replaces an earlier copy of the id that a segment may hold.
        if let Some(segments) = self.dirs.segments() {
            segments.remove(self.kind, &self.id)?;
        }
        Ok(self.written)
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.buffer_in_memory(buf).map_err(io::Error::other)? {
            return Ok(buf.len());
        }
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
        if !self.partial.as_os_str().is_empty() {
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
            .field("finished", &self.finished)
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

/// Removes an envelope (its segment record and any file), durably for the file; absent is
/// fine (removal is idempotent). A segment record's removal is durable with the next commit.
pub(crate) fn remove(
    spool_dir: &Path,
    dirs: &SpoolDirs,
    id: &TransferId,
    kind: SpoolKind,
) -> Result<(), StoreError> {
    if unlink(spool_dir, dirs, id, kind)? {
        sync_dir(&spool_dir.join(kind.dir_name()))?;
    }
    Ok(())
}

/// Removes an envelope without syncing its directory (a sweep syncs once, with
/// [`SpoolDirs::sync_all`]): its segment record, if it has one, and its file. Returns
/// whether there was a file.
pub(crate) fn unlink(
    spool_dir: &Path,
    dirs: &SpoolDirs,
    id: &TransferId,
    kind: SpoolKind,
) -> Result<bool, StoreError> {
    if let Some(segments) = dirs.segments() {
        segments.remove(kind, id)?;
    }
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

/// An envelope opened for reading: from its own file, or a segment record read and checked
/// whole (at most `segment::ENVELOPE_MAX` bytes).
#[derive(Debug)]
pub enum SpoolReader {
    File(File),
    Bytes(io::Cursor<Vec<u8>>),
}

impl SpoolReader {
    /// The whole envelope, for one that fits in memory.
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            SpoolReader::Bytes(c) => Ok(c.into_inner()),
            SpoolReader::File(mut f) => {
                let mut v = Vec::new();
                io::Read::read_to_end(&mut f, &mut v)?;
                Ok(v)
            }
        }
    }
}

impl io::Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SpoolReader::File(f) => f.read(buf),
            SpoolReader::Bytes(c) => c.read(buf),
        }
    }
}

impl Store {
    /// Opens the envelope of `id`: its segment record if it has one, else its spool file.
    /// `None` if there is neither. Blocking file I/O.
    pub fn spool_open(
        &self,
        id: &TransferId,
        kind: SpoolKind,
    ) -> Result<Option<SpoolReader>, StoreError> {
        if let Some(segments) = self.inner.spool_dirs.segments() {
            if let Some(bytes) = segments.read(kind, id)? {
                return Ok(Some(SpoolReader::Bytes(io::Cursor::new(bytes))));
            }
        }
        let p = path(&self.inner.spool_dir, id, kind);
        match File::open(&p) {
            Ok(f) => Ok(Some(SpoolReader::File(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("open spool file", &p, e)),
        }
    }

    /// Whether the envelope of `id` is held (in a segment or a file of its own).
    pub fn spool_exists(&self, id: &TransferId, kind: SpoolKind) -> Result<bool, StoreError> {
        if let Some(segments) = self.inner.spool_dirs.segments() {
            if segments.locate(kind, id)?.is_some() {
                return Ok(true);
            }
        }
        Ok(path(&self.inner.spool_dir, id, kind).exists())
    }
}
