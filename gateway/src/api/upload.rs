//! Reading a transfer's upload: held in memory up to 8 MiB, else spilled to a private temp file
//! (deleted once sealed), or streamed straight into the sealer when the client declares its
//! length and digest.

use std::io::Write;

use axum::body::Body as AxumBody;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use gateway_envelope::TransferId;

use crate::send::outbox::Payload;
use crate::state::NodeState;

use super::error::error;

/// Payloads up to this size are held in memory while being sealed; larger ones are spilled
/// to a private temp file (deleted once sealed).
pub const IN_MEMORY_PAYLOAD: usize = 8 * 1024 * 1024;
/// A spilled upload is written to its temp file in batches of this size.
const SPILL_WRITE_BYTES: usize = 1024 * 1024;
/// Body chunks buffered between a streamed upload and the task sealing it (bounded memory).
pub const STREAM_CHANNEL_CHUNKS: usize = 8;
/// A streamed upload is passed to the sealing task in pieces of about this size.
const STREAM_BATCH_BYTES: usize = 256 * 1024;

/// The SHA-256 an upload declares in `Content-Digest` (RFC 9530: `sha-256=:<base64>:`, one
/// of possibly several comma-separated algorithms), if any. A header that is present but
/// carries no well-formed sha-256 value is refused: the client asked for a check we could not
/// do.
pub fn content_digest(headers: &axum::http::HeaderMap) -> Result<Option<[u8; 32]>, &'static str> {
    use base64::Engine as _;
    let Some(value) = headers.get("content-digest") else {
        return Ok(None);
    };
    let refused = || "Content-Digest must carry sha-256=:<base64 of the SHA-256>: (RFC 9530)";
    let text = value.to_str().map_err(|_| refused())?;
    let encoded = text
        .split(',')
        .map(str::trim)
        .find_map(|item| {
            let (algorithm, value) = item.split_once('=')?;
            algorithm
                .trim()
                .eq_ignore_ascii_case("sha-256")
                .then_some(value.trim())
        })
        .and_then(|v| v.strip_prefix(':')?.strip_suffix(':'))
        .ok_or_else(refused)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| refused())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(Some)
        .map_err(|_| refused())
}

/// Feeds a streamed upload to the task sealing it. If that task stops early (a policy denial,
/// a mismatch), a bounded rest of the body is read and discarded so that an HTTP/1.1 client
/// still sending sees the answer instead of a broken pipe.
pub async fn forward_upload(body: AxumBody, tx: tokio::sync::mpsc::Sender<Result<Bytes, String>>) {
    let mut stream = body.into_data_stream();
    // Body chunks are small (kilobytes); each message wakes the sealing thread, so they are
    // passed on in batches.
    let mut batch = BytesMut::new();
    loop {
        let (item, done) = match stream.next().await {
            Some(Ok(chunk)) => {
                batch.extend_from_slice(&chunk);
                if batch.len() < STREAM_BATCH_BYTES {
                    continue;
                }
                (Ok(batch.split().freeze()), false)
            }
            Some(Err(_)) => (Err("upload interrupted".to_owned()), true),
            None if batch.is_empty() => return,
            None => (Ok(batch.split().freeze()), true),
        };
        if tx.send(item).await.is_err() {
            drain_stream(&mut stream, REFUSAL_DRAIN_BYTES).await;
            return;
        }
        if done {
            return;
        }
    }
}

/// Reads the request body, in memory when small, else into a 0600 temp file in the data dir,
/// hashing as it goes; refuses bodies over the configured limit.
pub async fn read_payload(state: &NodeState, body: AxumBody) -> Result<Payload, Response> {
    let max = state.config.local_api.max_body_bytes;
    let mut stream = body.into_data_stream();
    let mut mem = BytesMut::new();
    let mut file: Option<Spill> = None;
    let mut digest = gateway_envelope::Sha256::new();
    let mut total: u64 = 0;
    let local = |e: std::io::Error| {
        tracing::error!(error = %e, "spilling an upload failed");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "local system error while reading the upload",
        )
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| error(StatusCode::BAD_REQUEST, "upload interrupted"))?;
        total += chunk.len() as u64;
        if total > max {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {max} bytes"),
            ));
        }
        digest.update(&chunk);
        mem.extend_from_slice(&chunk);
        if let Some(spill) = file.as_mut() {
            // Written in batches: each block_in_place hands this worker's queue to another
            // thread, too costly for every body chunk of a large upload.
            if mem.len() >= SPILL_WRITE_BYTES {
                tokio::task::block_in_place(|| spill.file.write_all(&mem)).map_err(local)?;
                mem.clear();
            }
        } else if mem.len() > IN_MEMORY_PAYLOAD {
            let dir = state.config.data_dir.join("uploads");
            let (f, path) =
                tokio::task::block_in_place(|| new_private_file(&dir)).map_err(local)?;
            // From here on, any early return (refusal, I/O error, client gone) removes it.
            let spill = file.insert(Spill { file: f, path });
            tokio::task::block_in_place(|| spill.file.write_all(&mem)).map_err(local)?;
            mem.clear();
        }
    }
    if let Some(spill) = file.as_mut() {
        tokio::task::block_in_place(|| spill.file.write_all(&mem)).map_err(local)?;
        mem.clear();
    }
    let digest = digest.finish();
    Ok(match file {
        Some(spill) => {
            let path = spill.into_path();
            Payload::File {
                path,
                len: total,
                digest,
            }
        }
        None => Payload::Memory {
            bytes: mem.freeze(),
            digest,
        },
    })
}

/// An upload being spilled to disk. It holds plaintext, so it is removed when dropped (an upload
/// refused, cut off or abandoned by its client) unless handed over as a `Payload`, which then
/// owns its removal.
struct Spill {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl Spill {
    fn into_path(mut self) -> std::path::PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn new_private_file(dir: &std::path::Path) -> std::io::Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let id = TransferId::new_random().map_err(std::io::Error::other)?;
    let name = format!("upload-{id}");
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((file, path))
}

/// How much of a refused upload is read before answering (see `post_transfer`).
pub const REFUSAL_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

pub async fn drain(body: AxumBody, limit: u64) {
    drain_stream(&mut body.into_data_stream(), limit).await;
}

/// Reads and discards what is left of a body, up to `limit` bytes.
async fn drain_stream(stream: &mut axum::body::BodyDataStream, limit: u64) {
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > limit {
            break;
        }
    }
}
