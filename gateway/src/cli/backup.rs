//! `gateway backup` and `gateway restore`. A backup asks the node (`POST /v1/backup`; the
//! store in-process when no node runs) and encrypts the answer to the operator's passphrase
//! as it arrives; a restore works offline, into an empty data directory, through
//! `backup::restore`, which checks everything before anything is kept.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use axum::body::Body;
use futures_util::TryStreamExt;
use http::Method;

use super::args::{BackupArgs, RestoreArgs};
use super::call::{api_failure, client, fail, load_config};
use super::client::collect_json;
use super::{outln, Failure, EXIT_FAILURE, EXIT_USAGE};
use crate::backup::{crypt, restore as restoring, BackupError};

pub async fn backup(args: BackupArgs) -> Result<(), Failure> {
    let passphrase = crypt::read_passphrase(&args.passphrase_file).map_err(usage)?;
    let c = client(&args.config).await?;
    let path = format!("/v1/backup?include_keys={}", args.include_keys);
    let resp = c
        .call(Method::POST, &path, Body::empty(), None)
        .await
        .map_err(fail)?;
    if !resp.status().is_success() {
        let (status, body) = collect_json(resp).await.map_err(fail)?;
        return Err(api_failure(status, &body));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned()
    };
    let (audit_size, envelopes) = (header("x-backup-audit-size"), header("x-backup-envelopes"));
    let partial = partial_path(&args.out);
    let io = |e: std::io::Error| Failure::new(EXIT_FAILURE, format!("{}: {e}", partial.display()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io)?;
    let removing = Partial {
        path: partial.clone(),
        keep: false,
    };
    let mut writer = crypt::encrypt(BufWriter::new(file), passphrase).map_err(fail)?;
    let mut stream = resp.into_body().into_data_stream();
    let mut plain = 0u64;
    loop {
        match stream.try_next().await {
            Ok(Some(chunk)) => {
                writer.write_all(&chunk).map_err(io)?;
                plain += chunk.len() as u64;
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Failure::new(
                    EXIT_FAILURE,
                    format!("backup failed: the node's answer broke off ({e}); see its log; nothing was written"),
                ))
            }
        }
    }
    let file = writer
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&partial, &args.out).map_err(io)?;
    removing.keep();
    if let Some(dir) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    let written = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    outln!(
        "backup {}: {written} bytes (archive {plain}), audit size {audit_size}, {envelopes} envelopes, {}; encrypted to the passphrase (age)",
        args.out.display(),
        if args.include_keys { "keys included" } else { "no keys" }
    )?;
    if c.is_offline() {
        eprintln!("note: the node is not running; the backup was taken from its store directly");
    }
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> Result<(), Failure> {
    let config = load_config(&args.config)?;
    let passphrase = crypt::read_passphrase(&args.passphrase_file).map_err(usage)?;
    if tokio::net::TcpStream::connect(config.local_api.listen)
        .await
        .is_ok()
    {
        return Err(Failure::new(
            EXIT_FAILURE,
            format!(
                "restore refused: a node answers on this config's local API ({}); stop it first",
                config.local_api.listen
            ),
        ));
    }
    let data_dir = config.data_dir.clone();
    let facility = config.facility_id.to_string();
    let from = args.from.clone();
    let restored = tokio::task::spawn_blocking(move || -> Result<_, BackupError> {
        let file = std::fs::File::open(&from).map_err(BackupError::io("open", &from))?;
        let plain = crypt::decrypt(BufReader::with_capacity(1 << 20, file), passphrase)?;
        restoring::restore(plain, &data_dir, &facility)
    })
    .await
    .map_err(fail)?
    .map_err(|e| Failure::new(EXIT_FAILURE, format!("{}: {e}", args.from.display())))?;
    let m = &restored.manifest;
    match restored.audit_verified {
        Some(verified) => {
            let seq = restoring::record_restore(&config.data_dir, m)
                .await
                .map_err(fail)?;
            outln!(
                "restored {} into {}: facility {}, backup of {}, {} store entries, audit log verified ({verified} entries; the restore is entry {seq})",
                args.from.display(),
                config.data_dir.display(),
                m.facility,
                m.created,
                restored.entries
            )?;
        }
        None => {
            outln!(
                "restored {} into {}: facility {}, backup of {}, {} store entries; no keys in this backup",
                args.from.display(),
                config.data_dir.display(),
                m.facility,
                m.created,
                restored.entries
            )?;
            eprintln!(
                "note: put patient-index.key (0600) and the keys/ folder (0700) from your key backup into {} before starting the node; then run `gateway audit verify`",
                config.data_dir.display()
            );
        }
    }
    Ok(())
}

fn usage(e: BackupError) -> Failure {
    Failure::new(EXIT_USAGE, e.to_string())
}

fn partial_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".to_owned());
    out.with_file_name(format!(".{name}.partial"))
}

/// Removes an unfinished backup file unless kept.
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Partial {
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
