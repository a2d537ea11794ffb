//! Segment files: envelopes of at most [`ENVELOPE_MAX`] bytes are appended to one file per
//! spool kind instead of getting a file each, so a small transfer costs a `write(2)` into an
//! open file instead of a create, an fdatasync and a rename per node.
//!
//! `spool/<kind>-segments/<n as 16 hex digits>` holds records
//!
//! ```text
//! u32_be len | u32_be crc32(len_be || transfer id || bytes) | transfer id (16) | bytes (len)
//! ```
//!
//! appended to the highest-numbered file (the tail) until it would pass [`SEGMENT_BYTES`];
//! the tail is then fdatasynced and a new one started, so only the tail can end in a torn
//! record. The sled tree `spool_segments` maps `kind || transfer id` to the record's
//! location (segment, offset, length); a transfer id absent from it is read from its own
//! spool file as before (large envelopes, envelopes of unknown size, stores written before).
//!
//! Durability: an append only reaches the page cache. The group commit fdatasyncs every
//! segment written since its last flush (and fsyncs the segment directory when a file was
//! created or removed) before it flushes sled, so whatever a caller commits before
//! acknowledging is on disk. The index entry is written to sled's memory right after the
//! append; sled may write it back on its own before the record is synced, so after a crash
//! [`Segments::open`] truncates the tail at its first torn or checksum-failing record and
//! reports every index entry that points past the end (stale). It does not remove them: the
//! store removes each in one transaction with whatever the lost envelope's outbox or inbox
//! entry needs (see the `lost` module), so a crash in between leaves the entry still pointed
//! at by a stale index entry, which the next open finds again. A read checks the record's
//! length, transfer id and checksum, so a damaged record is refused, never served.
//!
//! Removal: each segment keeps a count of its live records (index entries), rebuilt from
//! the index at open; a segment other than the tail is deleted when its count reaches zero.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::commit::sync_dir;
use crate::error::StoreError;
use crate::types::{SpoolKind, TransferId};

/// Largest envelope kept in a segment; larger ones (and streamed ones that grow past it) get
/// their own spool file. At 256 KiB a record is at most one sixteenth of the smallest
/// segment, and the writer's memory buffer stays that small.
pub(crate) const ENVELOPE_MAX: usize = 256 * 1024;

/// A segment is closed once the next record would take it past this many bytes (small in
/// tests, so theirs roll over).
pub(crate) const SEGMENT_BYTES: u64 = if cfg!(test) {
    1024 * 1024
} else {
    64 * 1024 * 1024
};

/// The sled tree of record locations.
pub(crate) const INDEX_TREE: &str = "spool_segments";

/// `len || crc || transfer id`.
const HEADER: usize = 4 + 4 + 16;

/// Where one envelope is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl Location {
    fn end(self) -> u64 {
        self.offset + HEADER as u64 + u64::from(self.len)
    }

    fn encode(self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..8].copy_from_slice(&self.segment.to_be_bytes());
        v[8..16].copy_from_slice(&self.offset.to_be_bytes());
        v[16..].copy_from_slice(&self.len.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Result<Location, StoreError> {
        let bad = || StoreError::Corrupt {
            what: "spool segment index",
            problem: "a location is not 20 bytes",
        };
        let v: &[u8; 20] = v.try_into().map_err(|_| bad())?;
        let (segment, rest) = v.split_at(8);
        let (offset, len) = rest.split_at(8);
        Ok(Location {
            segment: u64::from_be_bytes(segment.try_into().map_err(|_| bad())?),
            offset: u64::from_be_bytes(offset.try_into().map_err(|_| bad())?),
            len: u32::from_be_bytes(len.try_into().map_err(|_| bad())?),
        })
    }
}

/// The segments of both spool kinds and their index.
pub(crate) struct Segments {
    index: sled::Tree,
    outbox: Kind,
    inbox: Kind,
}

struct Kind {
    dir: PathBuf,
    tail: Mutex<Tail>,
}

struct Tail {
    segment: u64,
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
    /// Live records per segment.
    live: HashMap<u64, u64>,
    /// Files written since the last sync.
    dirty: Vec<Arc<File>>,
    tail_dirty: bool,
    /// A segment file was created or removed since the last sync.
    dir_dirty: bool,
}

/// What [`Segments::open`] found at the end of a tail segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Truncated {
    pub(crate) kind: SpoolKind,
    pub(crate) segment: u64,
    pub(crate) at: u64,
    pub(crate) dropped: u64,
}

/// An index entry [`Segments::open`] found pointing past the valid end of its segments.
pub(crate) type Stale = (SpoolKind, TransferId);

/// What [`Segments::open`] found.
pub(crate) struct Opened {
    pub(crate) segments: Arc<Segments>,
    pub(crate) truncated: Vec<Truncated>,
    /// Index entries pointing past the valid end of their kind's segments: envelopes whose
    /// bytes never reached the disk. Still in the index (not counted as live); the store
    /// removes each with [`Segments::stale_key`] in the transaction that settles its entry.
    pub(crate) stale: Vec<Stale>,
}

impl Segments {
    /// Opens (creating) the segment directories under `spool_dir`, truncates each tail at its
    /// first invalid record, finds the index entries past it (stale), counts live records and
    /// deletes segments left without any. Returns what was truncated, for the caller's log,
    /// and the stale entries, for the caller to settle (see [`Opened::stale`]).
    pub(crate) fn open(db: &sled::Db, spool_dir: &Path) -> Result<Opened, StoreError> {
        let index = db
            .open_tree(INDEX_TREE)
            .map_err(StoreError::sled("open tree"))?;
        let mut truncated = Vec::new();
        let mut stale = Vec::new();
        let mut open_kind = |kind: SpoolKind| -> Result<Kind, StoreError> {
            let dir = spool_dir.join(format!("{}-segments", kind.dir_name()));
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError::io("create directory", &dir, e))?;
            let numbers = list(&dir)?;
            let segment = numbers.iter().copied().max().unwrap_or(1);
            let path = segment_path(&dir, segment);
            let valid_end = if path.exists() {
                let (valid_end, file_len) = scan(&path)?;
                if valid_end == file_len {
                    valid_end
                } else if holds_valid_past(&index, kind, segment, &path, valid_end)? {
                    // Not a torn tail: a damaged record with good ones after it (the disk's
                    // fault, not a crash's). Truncating would lose those; the damaged one is
                    // refused by its checksum whenever it is read.
                    tracing::error!(
                        spool = kind.dir_name(),
                        segment,
                        offset = valid_end,
                        "spool segment holds a damaged record before intact ones: kept as it is"
                    );
                    file_len
                } else {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| StoreError::io("open spool segment", &path, e))?;
                    f.set_len(valid_end)
                        .and_then(|()| f.sync_data())
                        .map_err(|e| StoreError::io("truncate spool segment", &path, e))?;
                    truncated.push(Truncated {
                        kind,
                        segment,
                        at: valid_end,
                        dropped: file_len - valid_end,
                    });
                    valid_end
                }
            } else {
                0
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&path)
                .map_err(|e| StoreError::io("open spool segment", &path, e))?;
            // Index entries of this kind: report those past the tail's valid end, count the rest.
            let mut live: HashMap<u64, u64> = HashMap::new();
            for item in index.scan_prefix([kind_byte(kind)]) {
                let (key, value) = item.map_err(StoreError::sled("read spool segment index"))?;
                let loc = Location::decode(&value)?;
                if loc.segment > segment || (loc.segment == segment && loc.end() > valid_end) {
                    let id = key
                        .get(1..)
                        .and_then(|k| TransferId::try_from(k).ok())
                        .ok_or(StoreError::Corrupt {
                            what: "spool segment index",
                            problem: "a key is not a kind and a transfer id",
                        })?;
                    stale.push((kind, id));
                    continue;
                }
                *live.entry(loc.segment).or_default() += 1;
            }
            for n in numbers {
                if n != segment && !live.contains_key(&n) {
                    let p = segment_path(&dir, n);
                    std::fs::remove_file(&p)
                        .map_err(|e| StoreError::io("remove empty spool segment", &p, e))?;
                }
            }
            sync_dir(&dir)?;
            Ok(Kind {
                dir,
                tail: Mutex::new(Tail {
                    segment,
                    file: Arc::new(file),
                    end: valid_end,
                    live,
                    dirty: Vec::new(),
                    tail_dirty: false,
                    dir_dirty: false,
                }),
            })
        };
        let outbox = open_kind(SpoolKind::Outbox)?;
        let inbox = open_kind(SpoolKind::Inbox)?;
        sync_dir(spool_dir)?;
        Ok(Opened {
            segments: Arc::new(Segments {
                index,
                outbox,
                inbox,
            }),
            truncated,
            stale,
        })
    }

    /// The index key of `id`'s record, for a transaction over the [`INDEX_TREE`] tree that
    /// removes a stale entry (one [`Segments::open`] reported: not counted as live, so its
    /// removal releases nothing).
    pub(crate) fn stale_key(kind: SpoolKind, id: &TransferId) -> [u8; 17] {
        key(kind, id)
    }

    fn kind(&self, kind: SpoolKind) -> &Kind {
        match kind {
            SpoolKind::Outbox => &self.outbox,
            SpoolKind::Inbox => &self.inbox,
        }
    }

    /// Appends the envelope of `id` and points the index at it (replacing an earlier record
    /// of the id). Durable with the next group commit.
    pub(crate) fn append(
        &self,
        kind: SpoolKind,
        id: &TransferId,
        bytes: &[u8],
    ) -> Result<Location, StoreError> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|&l| l as usize <= ENVELOPE_MAX)
            .ok_or(StoreError::Corrupt {
                what: "spool segment",
                problem: "an envelope too large for a segment",
            })?;
        let k = self.kind(kind);
        let mut tail = k.tail.lock();
        let size = HEADER as u64 + u64::from(len);
        if tail.end > 0 && tail.end + size > SEGMENT_BYTES {
            roll(&k.dir, &mut tail)?;
        }
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4..8].copy_from_slice(&checksum(len, id, bytes).to_be_bytes());
        header[8..].copy_from_slice(id);
        let path = segment_path(&k.dir, tail.segment);
        let written = (&*tail.file)
            .write_all(&header)
            .and_then(|()| (&*tail.file).write_all(bytes));
        if let Err(e) = written {
            // Cut a partial record off, so the next append does not follow garbage; if even
            // that fails, start a new segment (a read never serves the garbage: checksums).
            if tail.file.set_len(tail.end).is_err() {
                let _ = roll(&k.dir, &mut tail);
            }
            return Err(StoreError::io("append to spool segment", &path, e));
        }
        let loc = Location {
            segment: tail.segment,
            offset: tail.end,
            len,
        };
        tail.end += size;
        tail.tail_dirty = true;
        *tail.live.entry(loc.segment).or_default() += 1;
        let previous = self
            .index
            .insert(key(kind, id), &loc.encode()[..])
            .map_err(StoreError::sled("write spool segment index"))?;
        if let Some(previous) = previous {
            release(&k.dir, &mut tail, Location::decode(&previous)?)?;
        }
        Ok(loc)
    }

    /// The location of the envelope of `id`, if it is in a segment.
    pub(crate) fn locate(
        &self,
        kind: SpoolKind,
        id: &TransferId,
    ) -> Result<Option<Location>, StoreError> {
        self.index
            .get(key(kind, id))
            .map_err(StoreError::sled("read spool segment index"))?
            .map(|v| Location::decode(&v))
            .transpose()
    }

    /// The envelope of `id`, if it is in a segment, checked against its record's length,
    /// transfer id and checksum.
    pub(crate) fn read(
        &self,
        kind: SpoolKind,
        id: &TransferId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(loc) = self.locate(kind, id)? else {
            return Ok(None);
        };
        let k = self.kind(kind);
        let path = segment_path(&k.dir, loc.segment);
        let file = {
            let tail = k.tail.lock();
            (tail.segment == loc.segment).then(|| Arc::clone(&tail.file))
        };
        let file = match file {
            Some(f) => f,
            None => match File::open(&path) {
                Ok(f) => Arc::new(f),
                // Reclaimed after the lookup (removed concurrently): the envelope is gone.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::io("open spool segment", &path, e)),
            },
        };
        match read_at(&file, loc, id) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                Err(damaged())
            }
            Err(e) => Err(StoreError::io("read spool segment", &path, e)),
        }
    }

    /// Forgets the envelope of `id`; deletes its segment if that held its last live record
    /// and is not the tail. Returns whether there was one.
    pub(crate) fn remove(&self, kind: SpoolKind, id: &TransferId) -> Result<bool, StoreError> {
        let k = self.kind(kind);
        let mut tail = k.tail.lock();
        let Some(previous) = self
            .index
            .remove(key(kind, id))
            .map_err(StoreError::sled("remove spool segment index entry"))?
        else {
            return Ok(false);
        };
        release(&k.dir, &mut tail, Location::decode(&previous)?)?;
        Ok(true)
    }

    /// fdatasyncs every segment written since the last call and fsyncs the directories whose
    /// entries changed: every append before the call is durable when it returns.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        for k in [&self.outbox, &self.inbox] {
            let (files, dir_dirty) = {
                let mut tail = k.tail.lock();
                let mut files = std::mem::take(&mut tail.dirty);
                if std::mem::take(&mut tail.tail_dirty) {
                    files.push(Arc::clone(&tail.file));
                }
                (files, std::mem::take(&mut tail.dir_dirty))
            };
            for f in files {
                f.sync_data()
                    .map_err(|e| StoreError::io("fdatasync", &k.dir, e))?;
            }
            if dir_dirty {
                sync_dir(&k.dir)?;
            }
        }
        Ok(())
    }

    /// Live records per segment of `kind` (for tests and the snapshot).
    #[cfg(test)]
    pub(crate) fn live(&self, kind: SpoolKind) -> HashMap<u64, u64> {
        self.kind(kind).tail.lock().live.clone()
    }

    /// Whether an append awaits the next sync.
    #[cfg(test)]
    pub(crate) fn is_dirty(&self, kind: SpoolKind) -> bool {
        let tail = self.kind(kind).tail.lock();
        tail.tail_dirty || !tail.dirty.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn dir(&self, kind: SpoolKind) -> PathBuf {
        self.kind(kind).dir.clone()
    }
}

/// [`Segments::open`], logging each truncated tail (numbers only: no envelope byte). Returns
/// the segments and the stale index entries.
pub(crate) fn open_logged(
    db: &sled::Db,
    spool_dir: &Path,
) -> Result<(Arc<Segments>, Vec<Stale>), StoreError> {
    let Opened {
        segments,
        truncated,
        stale,
    } = Segments::open(db, spool_dir)?;
    for t in truncated {
        tracing::warn!(
            spool = t.kind.dir_name(),
            segment = t.segment,
            offset = t.at,
            dropped_bytes = t.dropped,
            "spool segment ended in a torn or damaged record (a crash during a write): truncated"
        );
    }
    Ok((segments, stale))
}

/// Closes the tail (durably: only the tail may end torn) and starts the next segment.
fn roll(dir: &Path, tail: &mut Tail) -> Result<(), StoreError> {
    let old = segment_path(dir, tail.segment);
    tail.file
        .sync_data()
        .map_err(|e| StoreError::io("fdatasync", &old, e))?;
    tail.tail_dirty = false;
    let next = tail.segment + 1;
    let path = segment_path(dir, next);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .read(true)
        .open(&path)
        .map_err(|e| StoreError::io("create spool segment", &path, e))?;
    tail.segment = next;
    tail.file = Arc::new(file);
    tail.end = 0;
    tail.dir_dirty = true;
    if !tail.live.contains_key(&(next - 1)) {
        // Every record of the closed segment was already removed.
        std::fs::remove_file(&old).map_err(|e| StoreError::io("remove spool segment", &old, e))?;
    }
    Ok(())
}

/// One live record fewer in `loc`'s segment; a closed segment left without any is deleted.
fn release(dir: &Path, tail: &mut Tail, loc: Location) -> Result<(), StoreError> {
    let Some(count) = tail.live.get_mut(&loc.segment) else {
        return Ok(());
    };
    *count = count.saturating_sub(1);
    if *count > 0 {
        return Ok(());
    }
    let _ = tail.live.remove(&loc.segment);
    if loc.segment != tail.segment {
        let path = segment_path(dir, loc.segment);
        match std::fs::remove_file(&path) {
            Ok(()) => tail.dir_dirty = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove spool segment", &path, e)),
        }
    }
    Ok(())
}

/// Whether an index entry of `segment` points at an intact record at or past `from`.
fn holds_valid_past(
    index: &sled::Tree,
    kind: SpoolKind,
    segment: u64,
    path: &Path,
    from: u64,
) -> Result<bool, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io("open spool segment", path, e))?;
    for item in index.scan_prefix([kind_byte(kind)]) {
        let (key, value) = item.map_err(StoreError::sled("read spool segment index"))?;
        let loc = Location::decode(&value)?;
        let Some(id) = key.get(1..).and_then(|k| TransferId::try_from(k).ok()) else {
            continue;
        };
        if loc.segment == segment && loc.offset >= from && read_at(&file, loc, &id).is_ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The record at `loc`, checked: its length, transfer id and checksum.
fn read_at(file: &File, loc: Location, id: &TransferId) -> Result<Vec<u8>, io::Error> {
    let mut buf = vec![0u8; HEADER + loc.len as usize];
    file.read_exact_at(&mut buf, loc.offset)?;
    let (header, body) = buf.split_at(HEADER);
    let ok = split_header(header).is_some_and(|(len, crc, rid)| {
        len == loc.len && rid == *id && crc == checksum(len, id, body)
    });
    if !ok {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "damaged record"));
    }
    buf.drain(..HEADER);
    Ok(buf)
}

/// Reads a segment from the start; returns the end of its last valid record and its length.
fn scan(path: &Path) -> Result<(u64, u64), StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io("open spool segment", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io("stat spool segment", path, e))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut end = 0u64;
    let mut header = [0u8; HEADER];
    let mut body = Vec::new();
    loop {
        if file_len - end < HEADER as u64 {
            return Ok((end, file_len));
        }
        r.read_exact(&mut header)
            .map_err(|e| StoreError::io("read spool segment", path, e))?;
        let Some((len, crc, id)) = split_header(&header) else {
            return Ok((end, file_len));
        };
        if len as usize > ENVELOPE_MAX || file_len - end - (HEADER as u64) < u64::from(len) {
            return Ok((end, file_len));
        }
        body.resize(len as usize, 0);
        r.read_exact(&mut body)
            .map_err(|e| StoreError::io("read spool segment", path, e))?;
        if crc != checksum(len, &id, &body) {
            return Ok((end, file_len));
        }
        end += HEADER as u64 + u64::from(len);
    }
}

fn split_header(h: &[u8]) -> Option<(u32, u32, TransferId)> {
    let len = u32::from_be_bytes(h.get(..4)?.try_into().ok()?);
    let crc = u32::from_be_bytes(h.get(4..8)?.try_into().ok()?);
    let id: TransferId = h.get(8..HEADER)?.try_into().ok()?;
    Some((len, crc, id))
}

/// CRC-32 (IEEE) of the length, the transfer id and the bytes: detects a torn or damaged
/// record. Not a defence against tampering: the envelope inside is signed and sealed.
fn checksum(len: u32, id: &TransferId, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_be_bytes());
    h.update(id);
    h.update(bytes);
    h.finalize()
}

fn damaged() -> StoreError {
    StoreError::Corrupt {
        what: "spool segment",
        problem: "a record does not match its index entry or checksum",
    }
}

fn kind_byte(kind: SpoolKind) -> u8 {
    match kind {
        SpoolKind::Outbox => b'o',
        SpoolKind::Inbox => b'i',
    }
}

fn key(kind: SpoolKind, id: &TransferId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = kind_byte(kind);
    k[1..].copy_from_slice(id);
    k
}

pub(crate) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}"))
}

/// Segment numbers in `dir` (other names are ignored).
fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 16 {
            if let Ok(n) = u64::from_str_radix(name, 16) {
                out.push(n);
            }
        }
    }
    Ok(out)
}
