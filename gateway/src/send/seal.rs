//! Sealing a submission into its outbox spool file: from memory, from a spilled temp file, or
//! as it is uploaded (cut into chunks and hashed on a helper thread). Bounded memory for any
//! size; the caller has inspected and authorized the record before anything here runs.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use gateway_envelope::{EncryptionPublicKey, SealParams, Sealer, TransferId, DEFAULT_CHUNK_SIZE};
use gateway_store::SpoolKind;

use crate::state::NodeState;
use crate::trust::identity::NodeIdentity;
use crate::trust::now_ms;

use super::outbox::{Payload, SubmitError};

pub(super) struct Sealed {
    pub(super) envelope_len: u64,
    pub(super) payload_digest: [u8; 32],
    /// The envelope itself, when it was sealed in memory (small payloads).
    pub(super) envelope: Option<Bytes>,
}

/// Seals the payload into the outbox spool file, chunk by chunk (bounded memory for any size).
pub(super) fn seal_to_spool(
    state: &NodeState,
    transfer_id: TransferId,
    recipient: &str,
    key: EncryptionPublicKey,
    metadata: &[u8],
    payload: Payload,
) -> Result<Sealed, SubmitError> {
    let identity: Arc<NodeIdentity> = state.identity();
    let mut payload = payload;
    let (payload_len, payload_digest) = (payload.len(), payload.digest());
    let params = SealParams {
        transfer_id,
        sender: state.me().as_str(),
        recipient,
        created_at_ms: now_ms(),
        payload_len,
        payload_digest,
        suite: state.config.delivery.envelope_suite,
        chunk_size: DEFAULT_CHUNK_SIZE,
    };
    let (mut sealer, prefix) =
        Sealer::start(&params, metadata, &key, &identity.signing).map_err(SubmitError::local)?;
    let mut writer = state
        .store
        .spool_writer(&transfer_id.0, SpoolKind::Outbox)
        .map_err(SubmitError::local)?;
    let chunk = DEFAULT_CHUNK_SIZE as usize;
    if let Payload::Memory { bytes, .. } = &payload {
        // Sealed into one buffer, written with one call and kept for the first delivery
        // attempt when it is small enough to be sent whole.
        let mut envelope = prefix;
        sealer
            .seal_rest_into(bytes, &mut envelope)
            .map_err(SubmitError::local)?;
        writer.write_chunk(&envelope).map_err(SubmitError::local)?;
        writer.finish().map_err(SubmitError::local)?;
        let envelope_len = envelope.len() as u64;
        return Ok(Sealed {
            envelope_len,
            payload_digest,
            envelope: (envelope_len <= crate::send::delivery::WHOLE_ENVELOPE_BYTES)
                .then(|| Bytes::from(envelope)),
        });
    }
    let mut written = prefix.len() as u64;
    writer.write_chunk(&prefix).map_err(SubmitError::local)?;
    match &mut payload {
        Payload::Memory { .. } => {}
        Payload::File { path, len, .. } => {
            let mut file = std::fs::File::open(path).map_err(SubmitError::local)?;
            let mut remaining = *len;
            let mut buf = vec![0u8; chunk];
            loop {
                let want = remaining.min(chunk as u64) as usize;
                let part = buf
                    .get_mut(..want)
                    .ok_or_else(|| SubmitError::local("chunk"))?;
                file.read_exact(part).map_err(SubmitError::local)?;
                remaining -= want as u64;
                let frame = sealer
                    .seal_chunk(part, remaining == 0)
                    .map_err(SubmitError::local)?;
                written += frame.len() as u64;
                writer.write_chunk(&frame).map_err(SubmitError::local)?;
                if remaining == 0 {
                    break;
                }
            }
        }
        Payload::Stream {
            chunks,
            peeked,
            len,
            digest,
        } => {
            let seal = |part: &[u8], last: bool| -> Result<(), SubmitError> {
                let frame = sealer.seal_chunk(part, last).map_err(SubmitError::local)?;
                written += frame.len() as u64;
                writer.write_chunk(&frame).map_err(SubmitError::local)
            };
            seal_stream(chunks, std::mem::take(peeked), *len, digest, chunk, seal)?;
        }
    }
    writer.finish().map_err(SubmitError::local)?;
    drop(payload);
    Ok(Sealed {
        envelope_len: written,
        payload_digest,
        envelope: None,
    })
}

/// Cuts a streamed upload into `chunk`-sized parts for `seal` (the last one flagged), hashing
/// it as it comes; refuses it if it is longer or shorter than `len`, is cut off, or does not
/// hash to `declared`. The caller's spool file is then dropped unfinished (and deleted).
///
/// The hash runs on a helper thread fed the same (reference-counted) pieces: hashing and
/// sealing each cost about a second per gigabyte, and one after the other on this thread they
/// were the length of a large submission.
fn seal_stream(
    chunks: &mut mpsc::Receiver<Result<Bytes, String>>,
    peeked: Vec<Bytes>,
    len: u64,
    declared: &[u8; 32],
    chunk: usize,
    mut seal: impl FnMut(&[u8], bool) -> Result<(), SubmitError>,
) -> Result<(), SubmitError> {
    std::thread::scope(|scope| {
        let (to_hash, hash_rx) = std::sync::mpsc::sync_channel::<Bytes>(HASH_QUEUE_PIECES);
        let hasher = std::thread::Builder::new()
            .name("upload-hash".to_owned())
            .spawn_scoped(scope, move || {
                let mut hasher = gateway_envelope::Sha256::new();
                for bytes in hash_rx {
                    hasher.update(&bytes);
                }
                hasher.finish()
            })
            .map_err(SubmitError::local)?;
        let cut = cut_and_seal(chunks, peeked, len, chunk, &mut seal, |bytes| {
            to_hash
                .send(bytes.clone())
                .map_err(|_| SubmitError::local("upload hash thread stopped"))
        });
        drop(to_hash);
        let digest = hasher
            .join()
            .map_err(|_| SubmitError::local("upload hash thread panicked"))?;
        let tail = cut?;
        if digest != *declared {
            return Err(SubmitError::Upload(
                "the body does not match its Content-Digest".to_owned(),
            ));
        }
        match tail {
            Some(rest) => seal(&rest, true),
            None => Ok(()),
        }
    })
}

/// Pieces queued for the hash thread: bounds how far the sealer may run ahead of it.
const HASH_QUEUE_PIECES: usize = 4;

/// The sealing half of [`seal_stream`]: hands every received piece to `hash` and seals each
/// chunk as it fills. Returns the final short chunk, not yet sealed, unless the body ended on
/// a chunk boundary (then its last frame is sealed already).
fn cut_and_seal(
    chunks: &mut mpsc::Receiver<Result<Bytes, String>>,
    peeked: Vec<Bytes>,
    len: u64,
    chunk: usize,
    seal: &mut impl FnMut(&[u8], bool) -> Result<(), SubmitError>,
    mut hash: impl FnMut(&Bytes) -> Result<(), SubmitError>,
) -> Result<Option<Vec<u8>>, SubmitError> {
    let mut buf: Vec<u8> = Vec::with_capacity(chunk);
    let mut received: u64 = 0;
    let mut sealed_last = false;
    let mut peeked = peeked.into_iter();
    while let Some(item) = peeked.next().map(Ok).or_else(|| chunks.blocking_recv()) {
        let bytes = item.map_err(SubmitError::Upload)?;
        received += bytes.len() as u64;
        if received > len {
            return Err(SubmitError::Upload(
                "the body is longer than its Content-Length".to_owned(),
            ));
        }
        hash(&bytes)?;
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            let (head, tail) = rest.split_at((chunk - buf.len()).min(rest.len()));
            buf.extend_from_slice(head);
            rest = tail;
            if buf.len() == chunk {
                let last = received == len && rest.is_empty();
                seal(&buf, last)?;
                sealed_last = last;
                buf.clear();
            }
        }
    }
    if received != len {
        return Err(SubmitError::Upload("the upload was cut off".to_owned()));
    }
    Ok((!sealed_last).then_some(buf))
}
