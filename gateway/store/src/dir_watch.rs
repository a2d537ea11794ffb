//! Which of sled's files a commit must sync, told by inotify instead of listing sled's
//! directories on every commit (three listings per commit were ~16 % of the commit thread's CPU:
//! an opendir, two getdents64 and a 32 KiB buffer each; BENCHMARKS.md, "sled's directories
//! watched, not listed").
//!
//! A blob file is reported when its writer closes it (`IN_CLOSE_WRITE`), not when it is
//! created: sled writes a blob and closes it before its log can refer to it, so a blob reported
//! after a flush holds every byte the flushed log may point at. A listing could see a blob's
//! name while sled was still writing it.
//!
//! If the kernel's event queue overflows, the watch cannot say what changed and the commit
//! syncs every blob file and both directories, as at open. If a watch goes away (its directory
//! removed, or its file system unmounted), no event would ever come again: the commit fails.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use crate::error::StoreError;

/// What changed in sled's directory and in `blobs/` since the last [`DirWatch::drain`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Blob files written and closed: each must be fdatasynced.
    pub(crate) closed_blobs: BTreeSet<OsString>,
    /// An entry of `blobs/` was created, renamed or removed: the directory must be fsynced.
    pub(crate) blobs_dir: bool,
    /// An entry of sled's directory was created, renamed or removed (a snapshot).
    pub(crate) root_dir: bool,
    /// The event queue overflowed: anything may have changed.
    pub(crate) overflowed: bool,
}

impl Changes {
    pub(crate) fn merge(&mut self, other: Changes) {
        self.closed_blobs.extend(other.closed_blobs);
        self.blobs_dir |= other.blobs_dir;
        self.root_dir |= other.root_dir;
        self.overflowed |= other.overflowed;
    }
}

/// One inotify instance watching sled's directory and its `blobs/` (which sled creates at open).
pub(crate) struct DirWatch {
    fd: OwnedFd,
    /// sled's directory, for errors.
    dir: PathBuf,
    root: i32,
    blobs: i32,
    buf: Vec<MaybeUninit<u8>>,
}

const ENTRIES: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ONLYDIR);

impl DirWatch {
    pub(crate) fn open(dir: &Path, blobs: &Path) -> Result<DirWatch, StoreError> {
        let io = |what: &'static str, path: &Path, e: Errno| {
            StoreError::io(what, path, std::io::Error::from(e))
        };
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)
            .map_err(|e| io("inotify_init", dir, e))?;
        let root =
            inotify::add_watch(&fd, dir, ENTRIES).map_err(|e| io("inotify watch", dir, e))?;
        let blobs_wd = inotify::add_watch(&fd, blobs, ENTRIES | WatchFlags::CLOSE_WRITE)
            .map_err(|e| io("inotify watch", blobs, e))?;
        Ok(DirWatch {
            fd,
            dir: dir.to_path_buf(),
            root,
            blobs: blobs_wd,
            // Room for many events per read: one read syscall per commit when nothing changed.
            buf: vec![MaybeUninit::uninit(); 16 * 1024],
        })
    }

    /// Every event queued so far; one `read` that finds the queue empty when nothing happened.
    pub(crate) fn drain(&mut self) -> Result<Changes, StoreError> {
        let mut changes = Changes::default();
        let mut reader = inotify::Reader::new(&self.fd, &mut self.buf);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(Errno::WOULDBLOCK) => return Ok(changes),
                Err(Errno::INTR) => continue,
                Err(e) => {
                    return Err(StoreError::io(
                        "read inotify events",
                        &self.dir,
                        std::io::Error::from(e),
                    ))
                }
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                changes.overflowed = true;
                continue;
            }
            if flags.contains(ReadFlags::IGNORED) {
                return Err(StoreError::io(
                    "inotify watch",
                    &self.dir,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "a watched directory was removed or unmounted",
                    ),
                ));
            }
            let entry_changed = flags.intersects(
                ReadFlags::CREATE | ReadFlags::DELETE | ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO,
            );
            if event.wd() == self.root {
                changes.root_dir |= entry_changed;
            } else if event.wd() == self.blobs {
                changes.blobs_dir |= entry_changed;
                if flags.intersects(ReadFlags::CLOSE_WRITE | ReadFlags::MOVED_TO) {
                    if let Some(name) = event.file_name() {
                        let name = OsStr::from_bytes(name.to_bytes()).to_os_string();
                        let _ = changes.closed_blobs.insert(name);
                    }
                }
            }
        }
    }
}
