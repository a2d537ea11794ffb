//! Builds a transfer's evidence file (`bundle`) from this node's state: the envelope's signed
//! header read back from the spool, the receipt, this node's audit entries about the
//! transfer with their inclusion proofs, the checkpoint covering them with the cosignatures
//! held, and the directory file in force.

use std::sync::Arc;

use base64::Engine as _;

use gateway_envelope::read_signed_header;
use gateway_store::SpoolKind;

use crate::evidence::bundle::{EvidenceEntry, EvidenceFile, FORMAT};
use crate::evidence::cosigned_checkpoint_covering;
use crate::state::NodeState;

/// Why no evidence file can be made for a transfer.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("transfer {0} is not known to this node")]
    Unknown(String),
    #[error("transfer {0} has no receipt yet (not delivered)")]
    NoReceipt(String),
    #[error("transfer {0}: the sealed envelope was removed by retention before its signed header was kept")]
    HeaderGone(String),
    #[error("transfer {0}: no audit entry of it is in the live log (archived?)")]
    NoEntries(String),
    #[error("local system: {0}")]
    Local(String),
}

fn local(e: impl std::fmt::Display) -> ExportError {
    ExportError::Local(e.to_string())
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
    // The spool file while the envelope is held; after retention, the header it kept.
    let header = match std::fs::File::open(store.spool_path(&id, kind)) {
        Ok(file) => Some(read_signed_header(file).map_err(local)?),
        Err(_) => store.removed_envelope_header(kind, &id).map_err(local)?,
    }
    .ok_or_else(|| ExportError::HeaderGone(id_hex.to_owned()))?;
    let seqs = store.audit_seqs_of_transfer(&id).map_err(local)?;
    let last = *seqs
        .last()
        .ok_or_else(|| ExportError::NoEntries(id_hex.to_owned()))?;
    let (size, note) = cosigned_checkpoint_covering(state, last)
        .await
        .map_err(local)?;
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
