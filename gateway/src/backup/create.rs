//! Taking a backup of a running store: the store's consistent copy, packed as the tar the
//! module docs describe. Blocking: runs on a blocking thread of the node (or of the CLI when
//! the node is not running).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gateway_store::Store;

use super::{
    BackupError, FileEntry, Manifest, StoreCounts, ARCHIVE_DIR, FORMAT, KEYRING_DIR, MANIFEST,
};

/// Makes staging directory names unique within the process.
static NEXT_STAGING: AtomicU64 = AtomicU64::new(0);

/// A private directory in the data directory (the store's filesystem: spool files are
/// hard-linked into it), removed with everything in it when dropped.
struct Staging(PathBuf);

impl Staging {
    fn create(data_dir: &Path) -> Result<Staging, BackupError> {
        use std::os::unix::fs::DirBuilderExt;
        let n = NEXT_STAGING.fetch_add(1, Ordering::Relaxed);
        let dir = data_dir.join(format!(".backup-{}-{n}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(BackupError::io("create staging directory", &dir))?;
        Ok(Staging(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Links and copies only: the store's own files are untouched. A leftover (a crash) is
        // a hidden directory the next backup does not read.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store copy taken and waiting to be packed: [`Prepared::take`] holds the store's gate
/// only for the copy; packing (reading the spool files) runs without it.
pub struct Prepared {
    staging: Staging,
    snap: gateway_store::Snapshot,
    data_dir: PathBuf,
    include_keys: bool,
}

/// What a prepared backup holds, for the answer's headers.
#[derive(Clone, Copy, Debug)]
pub struct Counts {
    pub audit_size: u64,
    pub envelopes: usize,
}

impl Prepared {
    /// Takes the consistent copy of `store` (whose directory is `data_dir`). With
    /// `include_keys`, the patient index key goes in too (and the keyring when packed).
    pub fn take(
        store: &Store,
        data_dir: &Path,
        include_keys: bool,
    ) -> Result<Prepared, BackupError> {
        let staging = Staging::create(data_dir)?;
        let snap = store.snapshot(&staging.0, include_keys)?;
        Ok(Prepared {
            staging,
            snap,
            data_dir: data_dir.to_path_buf(),
            include_keys,
        })
    }

    pub fn counts(&self) -> Counts {
        Counts {
            audit_size: self.snap.audit_size,
            envelopes: self.snap.spool_files.len(),
        }
    }

    /// Writes the backup as a tar to `out` and returns its manifest.
    pub fn write_tar(self, facility: &str, out: impl Write) -> Result<Manifest, BackupError> {
        let files = self.files()?;
        write_tar(&self.snap, facility, self.include_keys, &files, out)
    }

    /// The entries in order: the copy, the envelopes, then the keys.
    fn files(&self) -> Result<Vec<(String, PathBuf)>, BackupError> {
        let staging = &self.staging.0;
        let mut files: Vec<(String, PathBuf)> = vec![(
            gateway_store::snapshot::STORE_FILE.to_owned(),
            staging.join(gateway_store::snapshot::STORE_FILE),
        )];
        let mut spool: Vec<&PathBuf> = self.snap.spool_files.iter().collect();
        spool.sort();
        for rel in spool {
            files.push((rel.to_string_lossy().into_owned(), staging.join(rel)));
        }
        // An archive is written before its entries leave the store, so the archives listed
        // after the copy hold every entry the copy lacks (and perhaps some it has).
        files.extend(folder_files(&self.data_dir, ARCHIVE_DIR)?);
        if !self.include_keys {
            return Ok(files);
        }
        files.push((
            super::PATIENT_KEY_FILE.to_owned(),
            staging.join(super::PATIENT_KEY_FILE),
        ));
        // The keyring only grows (a key is added before it is used), so reading it after the
        // copy holds every key the copy's envelopes need.
        files.extend(folder_files(&self.data_dir, KEYRING_DIR)?);
        Ok(files)
    }
}

/// The regular files of `data_dir/folder` as (tar name, path), sorted; none if it is absent.
fn folder_files(data_dir: &Path, folder: &str) -> Result<Vec<(String, PathBuf)>, BackupError> {
    let dir = data_dir.join(folder);
    let mut names = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(listing) => {
            for entry in listing {
                let entry = entry.map_err(BackupError::io("list", &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Temp files of a writer in progress start with a dot.
                if entry.file_type().is_ok_and(|t| t.is_file()) && !name.starts_with('.') {
                    names.push(name);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(BackupError::io("list", &dir)(e)),
    }
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| (format!("{folder}/{name}"), dir.join(name)))
        .collect())
}

/// Packs `files` (tar name, path) and the manifest into `out`.
fn write_tar(
    snap: &gateway_store::Snapshot,
    facility: &str,
    include_keys: bool,
    files: &[(String, PathBuf)],
    out: impl Write,
) -> Result<Manifest, BackupError> {
    let mtime = crate::trust::now_ms() / 1000;
    let mut tar = tar::Builder::new(out);
    let mut entries = Vec::with_capacity(files.len());
    for (name, path) in files {
        let file = File::open(path).map_err(BackupError::io("open", path))?;
        let len = file
            .metadata()
            .map_err(BackupError::io("read metadata of", path))?
            .len();
        let mut reader = Hashing::new(file);
        let mut header = header(len, mtime);
        tar.append_data(&mut header, name, &mut reader)
            .map_err(BackupError::io("write backup entry", Path::new(name)))?;
        if reader.bytes != len {
            return Err(BackupError::Io {
                context: "write backup entry",
                path: name.clone(),
                source: io::Error::other("the file changed size while it was read"),
            });
        }
        entries.push(FileEntry {
            path: name.clone(),
            bytes: len,
            sha256: hex::encode(reader.digest.finish()),
        });
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        facility: facility.to_owned(),
        created: rfc3339(crate::trust::now_ms()),
        gateway_version: env!("CARGO_PKG_VERSION").to_owned(),
        store: StoreCounts {
            trees: snap.trees,
            entries: snap.entries,
            audit_size: snap.audit_size,
        },
        keys_included: include_keys,
        files: entries,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Io {
        context: "encode",
        path: MANIFEST.to_owned(),
        source: io::Error::other(e),
    })?;
    let mut header = header(json.len() as u64, mtime);
    tar.append_data(&mut header, MANIFEST, json.as_slice())
        .map_err(BackupError::io("write backup entry", Path::new(MANIFEST)))?;
    tar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(BackupError::io("finish backup", Path::new("tar")))?;
    Ok(manifest)
}

/// A regular file's header: owner-only mode, no owner names (they mean nothing elsewhere).
fn header(len: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(len);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h
}

fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct Hashing<R> {
    inner: R,
    pub(crate) digest: gateway_envelope::Sha256,
    pub(crate) bytes: u64,
}

impl<R> Hashing<R> {
    pub(crate) fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            digest: gateway_envelope::Sha256::new(),
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = buf.get(..n).unwrap_or_default();
        self.digest.update(read);
        self.bytes += n as u64;
        Ok(n)
    }
}
