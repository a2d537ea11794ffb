//! `gateway evidence`: export a transfer's disclosure evidence file from a node, and verify
//! one offline with only the federation's CA certificate (no node, no store).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use axum::body::Body;
use http::Method;
use http_body_util::BodyExt as _;

use super::args::EvidenceAction;
use super::call::{api_failure, client, fail};
use super::client::collect_json;
use super::{outln, Failure, EXIT_FAILURE, EXIT_USAGE};
use crate::evidence::bundle;

pub async fn evidence(action: EvidenceAction) -> Result<(), Failure> {
    match action {
        EvidenceAction::Export {
            config,
            transfer,
            out,
        } => {
            let c = client(&config).await?;
            let resp = c
                .call(
                    Method::GET,
                    &format!(
                        "/v1/evidence/transfers/{}",
                        super::call::encode_segment(&transfer)
                    ),
                    Body::empty(),
                    None,
                )
                .await
                .map_err(fail)?;
            if !resp.status().is_success() {
                let (status, body) = collect_json(resp).await.map_err(fail)?;
                return Err(api_failure(status, &body));
            }
            let bytes = resp.into_body().collect().await.map_err(fail)?.to_bytes();
            write_file(&out, &bytes)?;
            outln!("wrote {} (evidence for transfer {transfer})", out.display())
        }
        EvidenceAction::Verify { file, ca } => {
            let bytes = read_bounded(&file, bundle::MAX_FILE_BYTES)?;
            let ca_der = read_ca(&ca)?;
            match bundle::verify(&bytes, &ca_der, crate::trust::now_unix()) {
                Ok(verified) => outln!("{verified}"),
                Err(refused) => Err(Failure::new(
                    EXIT_FAILURE,
                    format!("evidence does NOT verify: {refused}"),
                )),
            }
        }
    }
}

/// Reads a file of at most `max` bytes.
pub(super) fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, Failure> {
    use std::io::Read as _;
    let usage =
        |e: &dyn std::fmt::Display| Failure::new(EXIT_USAGE, format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| usage(&e))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| usage(&e))?;
    if bytes.len() > max {
        return Err(usage(&"file too large"));
    }
    Ok(bytes)
}

/// The first certificate of a PEM file, DER.
pub(super) fn read_ca(path: &Path) -> Result<Vec<u8>, Failure> {
    let pem = read_bounded(path, 1024 * 1024)?;
    let mut slice = pem.as_slice();
    let first = rustls_pemfile::certs(&mut slice).next();
    match first {
        Some(Ok(cert)) => Ok(cert.to_vec()),
        _ => Err(Failure::new(
            EXIT_USAGE,
            format!("{}: no PEM certificate found", path.display()),
        )),
    }
}

/// Writes `bytes` to `out` through a 0600 temp file beside it, synced, then renamed.
pub(super) fn write_file(out: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.partial",
        out.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("evidence")
    ));
    let io = |e: std::io::Error| Failure::new(EXIT_FAILURE, format!("{}: {e}", tmp.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, out).map_err(io)?;
    // The rename is durable once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
