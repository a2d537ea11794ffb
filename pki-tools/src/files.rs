//! File handling: atomic writes, private-key permissions, PEM framing.
//!
//! Every write goes to a temporary file in the destination directory, is fsynced, then renamed
//! over the destination, so a crash or a full disk never leaves a half-written file behind.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::PkiError;

/// Atomic write (temp file in same dir + fsync + rename), with mode 0600 for private keys.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    let tmp = temp_path_for(path)?;
    stage(&tmp, bytes, private)?;
    commit(&tmp, path)
}

/// Refuses a private key file whose mode has any group/other bits (mode & 0o077 != 0): error names
/// the file and its mode.
pub fn check_private_key_permissions(path: &Path) -> Result<(), PkiError> {
    let meta = fs::metadata(path).map_err(|e| PkiError::io(path, e))?;
    if !meta.is_file() {
        return Err(PkiError::invalid(path, "not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PkiError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Read a PEM certificate file (e.g. `ca.crt`, `tls.crt`) and return its DER, after checking
/// that it parses as X.509. Errors name the file.
pub fn read_cert_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    let der = pem_decode(path, &read(path)?, "CERTIFICATE")?;
    if crate::cert::parse(&der).is_none() {
        return Err(PkiError::invalid(path, "not a valid X.509 certificate"));
    }
    Ok(der)
}

/// A temporary sibling of `path`, unique per call, hidden from directory listings.
pub(crate) fn temp_path_for(path: &Path) -> Result<PathBuf, PkiError> {
    let name = path
        .file_name()
        .ok_or_else(|| PkiError::invalid(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let mut nonce = [0u8; 8];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| PkiError::Crypto("no randomness available"))?;
    Ok(path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        hex::encode(nonce)
    )))
}

/// Write `bytes` to the new file `tmp` (created exclusively) and fsync it.
pub(crate) fn stage(tmp: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(tmp);
        PkiError::io(tmp, e)
    })
}

/// Rename a staged file over its destination and fsync the directory so the rename is durable.
pub(crate) fn commit(tmp: &Path, dest: &Path) -> Result<(), PkiError> {
    if let Err(e) = fs::rename(tmp, dest) {
        let _ = fs::remove_file(tmp);
        return Err(PkiError::io(dest, e));
    }
    sync_parent(dest)
}

/// Rename without fsync of the directory (the caller syncs once after a batch).
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), PkiError> {
    fs::rename(from, to).map_err(|e| PkiError::io(to, e))
}

pub(crate) fn sync_parent(path: &Path) -> Result<(), PkiError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::io(parent, e))
}

/// Create a directory (and parents) accessible only to the owner, as it will hold private keys.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), PkiError> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| PkiError::io(path, e))
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|e| PkiError::io(path, e))
}

/// Read a private key file after checking that only its owner can access it.
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    check_private_key_permissions(path)?;
    read(path).map(Zeroizing::new)
}

/// Decode the single PEM block with `tag` from `bytes` read from `path`.
pub(crate) fn pem_decode(path: &Path, bytes: &[u8], tag: &str) -> Result<Vec<u8>, PkiError> {
    let block = pem::parse(bytes)
        .map_err(|_| PkiError::invalid(path, format!("not a PEM file (expected {tag})")))?;
    if block.tag() != tag {
        return Err(PkiError::invalid(
            path,
            format!("expected a PEM {tag} block, found {}", block.tag()),
        ));
    }
    Ok(block.into_contents())
}

/// PEM-encode `der`; the result is zeroized on drop because callers use it for private keys too.
pub(crate) fn pem_encode(tag: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    out.push_str("-----BEGIN ");
    out.push_str(tag);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(tag);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_sets_modes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a.key");
        write_atomic(&key, b"one", true).unwrap();
        write_atomic(&key, b"two", true).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        check_private_key_permissions(&key).unwrap();

        let public = dir.path().join("a.crt");
        write_atomic(&public, b"cert", false).unwrap();
        assert_eq!(
            fs::metadata(&public).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn write_atomic_into_missing_dir_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("x.key");
        let err = write_atomic(&path, b"x", true).unwrap_err();
        assert!(matches!(err, PkiError::Io { .. }));
        assert!(err.to_string().contains("x.key"), "{err}");
    }

    #[test]
    fn permissions_check_refuses_group_or_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        write_atomic(&key, b"k", true).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let err = check_private_key_permissions(&key).unwrap_err();
            match &err {
                PkiError::InsecurePermissions { path, mode: m } => {
                    assert_eq!(path, &key);
                    assert_eq!(*m, mode);
                }
                other => panic!("unexpected {other}"),
            }
            assert!(err.to_string().contains(&format!("{mode:04o}")), "{err}");
            assert!(err.to_string().contains("k.key"), "{err}");
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        check_private_key_permissions(&key).unwrap();
    }

    #[test]
    fn pem_round_trip_and_wrong_tag() {
        let der: Vec<u8> = (0..=200u8).collect();
        let text = pem_encode("PRIVATE KEY", &der);
        assert!(text.lines().all(|l| l.len() <= 64));
        let p = Path::new("x.pem");
        assert_eq!(pem_decode(p, text.as_bytes(), "PRIVATE KEY").unwrap(), der);
        let err = pem_decode(p, text.as_bytes(), "CERTIFICATE").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.pem: expected a PEM CERTIFICATE block, found PRIVATE KEY"
        );
        let err = pem_decode(p, b"garbage", "CERTIFICATE").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.pem: not a PEM file (expected CERTIFICATE)"
        );
    }
}
