//! Builds a transfer's evidence file (`bundle`) from this node's state: the envelope's signed
//! header read back from the spool, the receipt, this node's audit entries about the
//! transfer with their inclusion proofs, the checkpoint covering them with the cosignatures
//! held, and the directory file in force.

use std::io::Read as _;
use std::sync::Arc;

use base64::Engine as _;

use gateway_envelope::MAGIC;
use gateway_store::SpoolKind;

use crate::evidence::bundle::{EvidenceEntry, EvidenceFile, FORMAT};
use crate::evidence::{checkpoint_if_grown, witness};
use crate::state::NodeState;

/// Why no evidence file can be made for a transfer.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("transfer {0} is not known to this node")]
    Unknown(String),
    #[error("transfer {0} has no receipt yet (not delivered)")]
    NoReceipt(String),
    #[error("transfer {0}: the sealed envelope was removed by retention; its signed header is no longer held")]
    HeaderGone(String),
    #[error("transfer {0}: no audit entry of it is in the live log (archived?)")]
    NoEntries(String),
    #[error("local system: {0}")]
    Local(String),
}

fn local(e: impl std::fmt::Display) -> ExportError {
    ExportError::Local(e.to_string())
}

/// The largest signed header an envelope can have, plus its prefix.
const MAX_HEADER_PREFIX: u64 = 8 + 64 * 1024;

/// `MAGIC || len || signed header` from the start of a spool file.
fn read_header(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?.take(MAX_HEADER_PREFIX);
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&prefix[4..]);
    let len = u64::from(u32::from_be_bytes(len));
    if prefix[..4] != MAGIC || len > MAX_HEADER_PREFIX - 8 {
        return Err(std::io::Error::other("spool file is not an envelope"));
    }
    let mut out = prefix.to_vec();
    file.take(len).read_to_end(&mut out)?;
    Ok(out)
}

/// The evidence file of transfer `id` (hex), as this node can prove it.
pub async fn export(
    state: &Arc<NodeState>,
    id_hex: &str,
    id: [u8; 16],
) -> Result<Vec<u8>, ExportError> {
    let store = &state.store;
    let (receipt, kind) = if let Some(out) = store.outbox_get(&id).map_err(local)? {
        (out.receipt, SpoolKind::Outbox)
    } else if let Some(inb) = store.inbox_get(&id).map_err(local)? {
        (Some(inb.receipt), SpoolKind::Inbox)
    } else {
        return Err(ExportError::Unknown(id_hex.to_owned()));
    };
    let receipt = receipt.ok_or_else(|| ExportError::NoReceipt(id_hex.to_owned()))?;
    let header = read_header(&store.spool_path(&id, kind))
        .map_err(|_| ExportError::HeaderGone(id_hex.to_owned()))?;
    let seqs = store.audit_seqs_of_transfer(&id).map_err(local)?;
    let last = *seqs
        .last()
        .ok_or_else(|| ExportError::NoEntries(id_hex.to_owned()))?;
    // A checkpoint that covers every entry, cosigned by whichever witness answers now.
    let covered = store
        .checkpoint_latest()
        .map_err(local)?
        .map_or(0, |(s, _)| s);
    if covered < last {
        tokio::task::block_in_place(|| checkpoint_if_grown(state)).map_err(local)?;
        witness::submit_all(state).await;
    }
    let (size, mut note) = store
        .checkpoint_latest()
        .map_err(local)?
        .ok_or_else(|| local("no checkpoint was made"))?;
    for line in store.cosignatures(size).map_err(local)? {
        note.extend_from_slice(&line);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entries = Vec::new();
    for seq in seqs {
        let Some(body) = store.audit_stored_body(seq).map_err(local)? else {
            continue;
        };
        let (_, path) = store.audit_inclusion_proof(seq, size).map_err(local)?;
        entries.push(EvidenceEntry {
            seq,
            body: b64.encode(body),
            proof: path.iter().map(|h| b64.encode(h)).collect(),
        });
    }
    let directory = std::fs::read(&state.config.federation.directory).map_err(local)?;
    let file = EvidenceFile {
        format: FORMAT.to_owned(),
        transfer_id: id_hex.to_owned(),
        log: state.me().to_string(),
        directory: b64.encode(directory),
        envelope_header: b64.encode(header),
        receipt: b64.encode(receipt),
        entries,
        checkpoint: String::from_utf8(note).map_err(local)?,
    };
    Ok(file.to_bytes())
}
