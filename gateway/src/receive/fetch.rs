//! Handing received records to the local system: a received envelope is opened on fetch, its
//! metadata at once and its payload as a stream of decrypted chunks. Nothing decrypted is
//! written: the inbox keeps the envelope sealed at rest.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use gateway_envelope::{EnvelopeReader, Limits, Opener, TransferId, VerifyingKey};
use gateway_store::{InboxEntry, SpoolKind, SpoolReader};

use crate::record::RecordMetadata;
use crate::state::NodeState;

use super::inbox::{MAX_HEADER_BYTES, MAX_METADATA_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no received transfer {0}")]
    NotFound(String),
    /// The EMR acknowledged it and the retention period ran out: only the entry is left.
    #[error("received transfer {0}: the sealed envelope was removed after acknowledgement (retention); its entry, receipt and audit trail remain")]
    Removed(String),
    #[error("received transfer {id}: {problem}")]
    Open { id: String, problem: String },
    #[error("local system: {0}")]
    Local(String),
}

/// Opens a received envelope: the metadata now, the payload as a stream of decrypted chunks.
/// Decryption happens on fetch only; the inbox keeps the envelope sealed at rest.
pub async fn open_received(
    state: &Arc<NodeState>,
    id: TransferId,
) -> Result<
    (
        InboxEntry,
        RecordMetadata,
        mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ),
    FetchError,
> {
    let entry = state
        .store
        .inbox_get(&id.0)
        .map_err(|e| FetchError::Local(e.to_string()))?
        .ok_or_else(|| FetchError::NotFound(id.to_string()))?;
    match state.store.envelope_removed_ms(SpoolKind::Inbox, &id.0) {
        Ok(None) => {}
        Ok(Some(_)) => return Err(FetchError::Removed(id.to_string())),
        Err(e) => return Err(FetchError::Local(e.to_string())),
    }
    let (meta_tx, meta_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::channel(8);
    let state2 = state.clone();
    let keys = header_keys(state, &entry);
    let header_digest = entry.header_digest;
    tokio::task::spawn_blocking(move || {
        decrypt_stream(&state2, id, (&keys, header_digest), meta_tx, tx);
    });
    let metadata = meta_rx
        .await
        .map_err(|_| FetchError::Local("decryption task stopped".to_owned()))??;
    Ok((entry, metadata, rx))
}

/// The keys the stored header must verify under: the one that verified it at receipt, kept
/// with the entry, so a record stays readable after its sender rotated that key out of the
/// directory. Entries stored before that was kept are checked against the sender's keys in
/// today's directory, as they always were.
fn header_keys(state: &NodeState, entry: &InboxEntry) -> Vec<VerifyingKey> {
    match &entry.header_check {
        Some(check) => vec![VerifyingKey(check.signing_key)],
        None => state
            .trust()
            .peer_by_str(&entry.sender)
            .map(|p| p.signing_keys)
            .unwrap_or_default(),
    }
}

fn decrypt_stream(
    state: &NodeState,
    id: TransferId,
    (keys, header_digest): (&[VerifyingKey], [u8; 32]),
    meta_tx: tokio::sync::oneshot::Sender<Result<RecordMetadata, FetchError>>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let open_err = |problem: String| FetchError::Open {
        id: id.to_string(),
        problem,
    };
    let setup =
        (|| -> Result<(SpoolReader, EnvelopeReader, Opener, RecordMetadata), FetchError> {
            let mut file = state
                .store
                .spool_open(&id.0, SpoolKind::Inbox)
                .map_err(|e| FetchError::Local(e.to_string()))?
                .ok_or_else(|| FetchError::Local("sealed envelope missing".to_owned()))?;
            let mut reader = EnvelopeReader::new(Limits {
                max_header: MAX_HEADER_BYTES,
                max_payload: u64::MAX,
                max_metadata: MAX_METADATA_BYTES,
            });
            let mut buf = vec![0u8; 64 * 1024];
            let header = loop {
                if let Some(h) = reader.header().map_err(|e| open_err(e.to_string()))? {
                    // The header must be the one the entry was written for, as well as signed.
                    if h.header_digest() != header_digest {
                        return Err(open_err(
                            "the stored envelope is not the one this entry was received as"
                                .to_owned(),
                        ));
                    }
                    break h.verify(keys).map_err(|e| open_err(e.to_string()))?;
                }
                let n = file
                    .read(&mut buf)
                    .map_err(|e| FetchError::Local(e.to_string()))?;
                if n == 0 {
                    return Err(open_err("envelope truncated".to_owned()));
                }
                reader.push(buf.get(..n).unwrap_or_default());
            };
            let frame = loop {
                if let Some(f) = reader.next_frame().map_err(|e| open_err(e.to_string()))? {
                    break f;
                }
                let n = file
                    .read(&mut buf)
                    .map_err(|e| FetchError::Local(e.to_string()))?;
                if n == 0 {
                    return Err(open_err("envelope truncated".to_owned()));
                }
                reader.push(buf.get(..n).unwrap_or_default());
            };
            let identity = state.identity();
            let (opener, meta) = Opener::new(&header, &identity.decryption_keys(), &frame)
                .map_err(|e| open_err(e.to_string()))?;
            let meta = RecordMetadata::decode(&meta).map_err(|e| open_err(e.to_string()))?;
            Ok((file, reader, opener, meta))
        })();
    let (mut file, mut reader, mut opener, meta) = match setup {
        Ok(s) => s,
        Err(e) => {
            let _ = meta_tx.send(Err(e));
            return;
        }
    };
    if meta_tx.send(Ok(meta)).is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 * 1024];
    let io_err = |m: String| std::io::Error::other(m);
    loop {
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => match opener.open_chunk(&frame) {
                    Ok(plain) => {
                        if tx.blocking_send(Ok(Bytes::from(plain))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(io_err(e.to_string())));
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.blocking_send(Err(io_err(e.to_string())));
                    return;
                }
            }
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reader.push(buf.get(..n).unwrap_or_default()),
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    if let Err(e) = opener.finish() {
        let _ = tx.blocking_send(Err(io_err(e.to_string())));
    }
}
