//! Restoring a backup into an empty data directory: unpack into a private staging directory
//! beside it, check every entry against the manifest, then let the store build itself from
//! the copy, put the keys in place (0600, keyring 0700), open the store and verify its audit
//! chain, and record the restore in the log. Anything refused leaves the data directory as
//! it was (empty).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use gateway_store::Store;

use super::create::Hashing;
use super::crypt::describe_read_error;
use super::{
    BackupError, FileEntry, Manifest, ARCHIVE_DIR, FORMAT, KEYRING_DIR, MANIFEST, PATIENT_KEY_FILE,
};

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    /// sled entries written.
    pub entries: u64,
    /// Audit entries verified after the restore; `None` when the backup holds no keys (the
    /// store cannot be opened until its key is put in place).
    pub audit_verified: Option<u64>,
}

/// Restores the backup tar read from `input` (already decrypted) into `data_dir`, which must
/// be empty or absent, for the node of facility `facility`. Blocking.
pub fn restore(input: impl Read, data_dir: &Path, facility: &str) -> Result<Restored, BackupError> {
    gateway_store::snapshot::ensure_empty(data_dir)?;
    let staging = Staging::beside(data_dir)?;
    let unpacked = unpack(input, &staging.0);
    let (manifest, found) = unpacked?;
    check(&manifest, &found, facility)?;
    let written = Written::new(data_dir);
    let entries = gateway_store::snapshot::restore(&staging.0, data_dir)?;
    if manifest.keys_included {
        move_folder(&staging.0, data_dir, KEYRING_DIR)?;
    }
    if staging.0.join(ARCHIVE_DIR).exists() {
        move_folder(&staging.0, data_dir, ARCHIVE_DIR)?;
    }
    let audit_verified = if manifest.keys_included {
        let store = Store::open(data_dir)
            .map_err(|e| BackupError::Damaged(format!("the restored store does not open: {e}")))?;
        let verified = store.audit_verify().map_err(|e| {
            BackupError::Damaged(format!("the restored audit log does not verify: {e}"))
        })?;
        if verified < manifest.store.audit_size {
            return Err(BackupError::Damaged(format!(
                "the restored audit log has {verified} entries, the manifest says {}",
                manifest.store.audit_size
            )));
        }
        Some(verified)
    } else {
        None
    };
    written.keep();
    Ok(Restored {
        manifest,
        entries,
        audit_verified,
    })
}

/// Moves the files of `from/folder` into `to/folder` (created 0700), durably.
fn move_folder(from: &Path, to: &Path, folder: &str) -> Result<(), BackupError> {
    let (src, dest) = (from.join(folder), to.join(folder));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dest)
        .map_err(BackupError::io("create directory", &dest))?;
    for entry in std::fs::read_dir(&src).map_err(BackupError::io("list", &src))? {
        let entry = entry.map_err(BackupError::io("list", &src))?;
        let target = dest.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(BackupError::io("move", &target))?;
    }
    for dir in [&dest, &to.to_path_buf()] {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(BackupError::io("fsync directory", dir))?;
    }
    Ok(())
}

/// Records the restore in the restored store's audit log (durable), so that the log says why
/// its entries after the backup's size are not those peers may have witnessed.
pub async fn record_restore(data_dir: &Path, manifest: &Manifest) -> Result<u64, BackupError> {
    let store = Store::open(data_dir)
        .map_err(|e| BackupError::Damaged(format!("the restored store does not open: {e}")))?;
    let mut rec = crate::audit::record(crate::audit::event::STORE_RESTORED, "ok");
    rec.reason = Some(format!(
        "restored from the backup taken {} at audit size {}",
        manifest.created, manifest.store.audit_size
    ));
    crate::audit::append_durable(&store, rec)
        .await
        .map_err(|e| BackupError::Damaged(format!("cannot record the restore: {e}")))
}

/// Reads every tar entry into `dir`, hashing it; the manifest must be the last entry.
fn unpack(input: impl Read, dir: &Path) -> Result<(Manifest, Vec<FileEntry>), BackupError> {
    let mut archive = tar::Archive::new(input);
    let mut found = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let mut last = String::from("the start of the archive");
    let damaged_at = |e: &io::Error, at: &str| {
        BackupError::Damaged(format!("{} (at {at})", describe_read_error(e)))
    };
    let entries = archive.entries().map_err(|e| damaged_at(&e, &last))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged_at(&e, &format!("the entry after {last}")))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| damaged_at(&e, &format!("the entry after {last}")))?;
        if manifest.is_some() {
            return Err(BackupError::Damaged(format!(
                "entry {name} after the manifest"
            )));
        }
        if entry.header().entry_type() != tar::EntryType::Regular || !allowed(&name) {
            return Err(BackupError::Damaged(format!(
                "unexpected entry {name} (not a file this format has)"
            )));
        }
        if name == MANIFEST {
            let mut json = Vec::new();
            entry
                .by_ref()
                .take(16 * 1024 * 1024)
                .read_to_end(&mut json)
                .map_err(|e| damaged_at(&e, &name))?;
            let parsed: Manifest = serde_json::from_slice(&json)
                .map_err(|e| BackupError::Damaged(format!("manifest: {e}")))?;
            manifest = Some(parsed);
            continue;
        }
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(BackupError::io("create directory", parent))?;
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => {
                    BackupError::Damaged(format!("entry {name} appears twice"))
                }
                _ => BackupError::io("create", &path)(e),
            })?;
        let mut reader = Hashing::new(&mut entry);
        io::copy(&mut reader, &mut out).map_err(|e| damaged_at(&e, &name))?;
        found.push(FileEntry {
            path: name.clone(),
            bytes: reader.bytes,
            sha256: hex::encode(reader.digest.finish()),
        });
        last = name;
    }
    // Read to the end of the decrypted stream: age checks its last chunk there, so a file cut
    // after the tar's end is refused too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| damaged_at(&e, "the end of the archive"))?;
    let manifest = manifest
        .ok_or_else(|| BackupError::Damaged("no manifest: the archive is incomplete".to_owned()))?;
    Ok((manifest, found))
}

/// Every file the manifest lists was found with its size and digest, and nothing else.
fn check(manifest: &Manifest, found: &[FileEntry], facility: &str) -> Result<(), BackupError> {
    if manifest.format != FORMAT {
        return Err(BackupError::Damaged(format!(
            "format {:?} is not {FORMAT}",
            manifest.format
        )));
    }
    if manifest.facility != facility {
        return Err(BackupError::Refused(format!(
            "the backup is of facility {}, the config is facility {facility}",
            manifest.facility
        )));
    }
    for want in &manifest.files {
        match found.iter().find(|f| f.path == want.path) {
            None => {
                return Err(BackupError::Damaged(format!(
                    "entry {} is in the manifest but not in the archive",
                    want.path
                )))
            }
            Some(got) if got.bytes != want.bytes || got.sha256 != want.sha256 => {
                return Err(BackupError::Damaged(format!(
                    "entry {}: its SHA-256 or size does not match the manifest",
                    want.path
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = found
        .iter()
        .find(|f| !manifest.files.iter().any(|w| w.path == f.path))
    {
        return Err(BackupError::Damaged(format!(
            "entry {} is not in the manifest",
            extra.path
        )));
    }
    let has_key = found.iter().any(|f| f.path == PATIENT_KEY_FILE);
    if has_key != manifest.keys_included {
        return Err(BackupError::Damaged(
            "the manifest's keys_included does not match the entries".to_owned(),
        ));
    }
    Ok(())
}

/// The names this format has: no absolute paths, no `..`, nothing else.
fn allowed(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    let safe = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    match parts.as_slice() {
        [one] => [
            gateway_store::snapshot::STORE_FILE,
            MANIFEST,
            PATIENT_KEY_FILE,
        ]
        .contains(one),
        ["spool", kind, id] => {
            (*kind == "outbox" || *kind == "inbox")
                && id.len() == 32
                && id.bytes().all(|b| b.is_ascii_hexdigit())
        }
        [dir, file] => (*dir == KEYRING_DIR || *dir == ARCHIVE_DIR) && safe(file),
        _ => false,
    }
}

/// A private directory beside the data directory (same filesystem, so the files are moved,
/// not copied), removed when dropped.
struct Staging(PathBuf);

impl Staging {
    fn beside(data_dir: &Path) -> Result<Staging, BackupError> {
        let parent = data_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(BackupError::io("create directory", parent))?;
        let name = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".to_owned());
        let dir = parent.join(format!(".{name}.restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(BackupError::io("create staging directory", &dir))?;
        Ok(Staging(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Empties the data directory again unless the restore got to the end (it was empty before).
struct Written {
    dir: PathBuf,
    keep: bool,
}

impl Written {
    fn new(dir: &Path) -> Written {
        Written {
            dir: dir.to_path_buf(),
            keep: false,
        }
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Ok(listing) = std::fs::read_dir(&self.dir) {
            for entry in listing.flatten() {
                let p = entry.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FileEntry, Manifest, StoreCounts, FORMAT, MANIFEST};
    use super::{allowed, restore};

    fn sha(bytes: &[u8]) -> String {
        hex::encode(gateway_envelope::sha256(bytes))
    }

    /// A tar of `entries`, then a manifest listing `listed` for facility `facility`.
    fn archive(entries: &[(&str, &[u8])], listed: Vec<FileEntry>, facility: &str) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            tar.append_data(&mut h, name, bytes).unwrap();
        };
        for (name, bytes) in entries {
            add(name, bytes);
        }
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            facility: facility.to_owned(),
            created: "2026-12-03T00:00:00Z".to_owned(),
            gateway_version: "test".to_owned(),
            store: StoreCounts {
                trees: 0,
                entries: 0,
                audit_size: 0,
            },
            keys_included: false,
            files: listed,
        };
        add(MANIFEST, &serde_json::to_vec(&manifest).unwrap());
        tar.into_inner().unwrap()
    }

    fn entry(path: &str, bytes: &[u8]) -> FileEntry {
        FileEntry {
            path: path.to_owned(),
            bytes: bytes.len() as u64,
            sha256: sha(bytes),
        }
    }

    /// Every mismatch between the archive and its manifest is refused, naming the entry, and
    /// leaves the data directory empty.
    #[test]
    fn entries_that_do_not_match_the_manifest_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let kv: &[u8] = b"not really a store";
        let refused = |bytes: Vec<u8>| {
            let e = restore(bytes.as_slice(), &data, "hosp-a")
                .unwrap_err()
                .to_string();
            assert!(!data.exists() || std::fs::read_dir(&data).unwrap().next().is_none());
            e
        };
        let e = refused(archive(
            &[("store.kv", kv)],
            vec![entry("store.kv", b"other bytes")],
            "hosp-a",
        ));
        assert!(
            e.contains("entry store.kv: its SHA-256 or size does not match"),
            "{e}"
        );
        let spool = "spool/inbox/0123456789abcdef0123456789abcdef";
        let e = refused(archive(
            &[("store.kv", kv), (spool, b"sealed")],
            vec![entry("store.kv", kv)],
            "hosp-a",
        ));
        assert!(
            e.contains(&format!("entry {spool} is not in the manifest")),
            "{e}"
        );
        let e = refused(archive(&[], vec![entry("store.kv", kv)], "hosp-a"));
        assert!(
            e.contains("entry store.kv is in the manifest but not in the archive"),
            "{e}"
        );
        let e = refused(archive(
            &[("store.kv", kv)],
            vec![entry("store.kv", kv)],
            "clinic-b",
        ));
        assert!(e.contains("the backup is of facility clinic-b"), "{e}");
        let e = refused(archive(
            &[("sled/db", kv)],
            vec![entry("sled/db", kv)],
            "hosp-a",
        ));
        assert!(e.contains("unexpected entry sled/db"), "{e}");
        let mut cut = archive(&[("store.kv", kv)], vec![entry("store.kv", kv)], "hosp-a");
        cut.truncate(700);
        let e = refused(cut);
        assert!(e.contains("backup refused"), "{e}");
    }

    #[test]
    fn only_the_formats_names_are_allowed() {
        assert!(allowed("store.kv"));
        assert!(allowed("manifest.json"));
        assert!(allowed("spool/inbox/0123456789abcdef0123456789abcdef"));
        assert!(allowed("keys/encryption-00ff.key"));
        assert!(allowed(
            "audit-archives/hosp-a-audit-000000000001-000000000100.json"
        ));
        assert!(!allowed("../store.kv"));
        assert!(!allowed("/etc/passwd"));
        assert!(!allowed("spool/inbox/../../x"));
        assert!(!allowed("spool/other/0123456789abcdef0123456789abcdef"));
        assert!(!allowed("keys/.hidden"));
        assert!(!allowed("keys/a/b"));
        assert!(!allowed("sled/db"));
    }
}
