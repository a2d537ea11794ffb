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

/// The SHA-256 an upload declares in `Content-Digest` (RFC 9530: a structured-field dictionary,
/// RFC 8941, parsed by `sfv`; `sha-256=:<base64>:` among possibly other algorithms), if any. A
/// header that is present but carries no well-formed sha-256 byte sequence is refused: the
/// client asked for a check we could not do.
pub fn content_digest(headers: &axum::http::HeaderMap) -> Result<Option<[u8; 32]>, &'static str> {
    let Some(value) = headers.get("content-digest") else {
        return Ok(None);
    };
    let refused = "Content-Digest must carry sha-256=:<base64 of the SHA-256>: (RFC 9530)";
    let dictionary: sfv::Dictionary = sfv::Parser::new(value.as_bytes())
        .parse()
        .map_err(|_| refused)?;
    match dictionary.get("sha-256") {
        Some(sfv::ListEntry::Item(sfv::Item {
            bare_item: sfv::BareItem::ByteSequence(bytes),
            ..
        })) => <[u8; 32]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| refused),
        _ => Err(refused),
    }
}

/// The `Content-Digest` header value for a body with this SHA-256 (RFC 9530, serialized by
/// `sfv`).
pub fn content_digest_value(sha256: &[u8; 32]) -> String {
    let mut dictionary = sfv::DictSerializer::new();
    let _ = dictionary.bare_item(sfv::KeyRef::constant("sha-256"), sha256.as_slice());
    dictionary.finish().unwrap_or_default()
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> Result<Option<[u8; 32]>, &'static str> {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("content-digest", value.parse().unwrap());
        content_digest(&headers)
    }

    #[test]
    fn content_digest_is_read_from_any_position_and_written_back_the_same() {
        // RFC 9530 Appendix B.1: the SHA-256 and SHA-512 of `{"hello": "world"}`.
        const SHA512: &str =
            "WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==";
        let b64 = "X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=";
        let sha = <[u8; 32]>::try_from(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap(),
        )
        .unwrap();
        assert_eq!(parsed(&format!("sha-256=:{b64}:")), Ok(Some(sha)));
        assert_eq!(
            parsed(&format!("sha-512=:{SHA512}:, sha-256=:{b64}:;p=1")),
            Ok(Some(sha))
        );
        assert_eq!(content_digest_value(&sha), format!("sha-256=:{b64}:"));
        assert_eq!(parsed(&content_digest_value(&sha)), Ok(Some(sha)));
    }

    #[test]
    fn content_digest_without_a_well_formed_sha256_is_refused() {
        for bad in [
            "sha-256=abc",
            "sha-256=:not base64!:",
            "sha-256=:AAAA:",
            "md5=:AAAA:",
            "SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            "sha-256=(:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:)",
            "",
        ] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
        assert_eq!(content_digest(&axum::http::HeaderMap::new()), Ok(None));
    }
}
