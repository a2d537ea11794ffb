//! Builds a transfer's evidence file (`bundle`) from this node's state: the envelope's signed
//! header read back from the spool, the receipt, this node's audit entries about the
//! transfer with their inclusion proofs, the checkpoint covering them with the cosignatures
//! held, and the directories from the store's history of accepted directories: the one in
//! force at the envelope header's time on this node, the current one, and any other a
//! signature of the file needs (`bundle::directories_needed`).

use std::sync::Arc;

use base64::Engine as _;

use gateway_envelope::read_signed_header;
use gateway_store::directories::directory_in_force;
use gateway_store::SpoolKind;

use crate::evidence::bundle::{self, EvidenceEntry, EvidenceFile, FORMAT};
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
    #[error("transfer {id}: no directory this node has kept lets the file be verified: {refused}")]
    NoDirectory {
        id: String,
        refused: bundle::Refused,
    },
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
    let header = match store.spool_open(&id, kind) {
        Ok(Some(envelope)) => Some(read_signed_header(envelope).map_err(local)?),
        Ok(None) | Err(_) => store.removed_envelope_header(kind, &id).map_err(local)?,
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
    let log = state.me().to_string();
    let directories =
        directories_for(state, (&header, &receipt), &log, &note).map_err(|refused| {
            ExportError::NoDirectory {
                id: id_hex.to_owned(),
                refused,
            }
        })?;
    let file = EvidenceFile {
        format: FORMAT.to_owned(),
        transfer_id: id_hex.to_owned(),
        log,
        directories: directories.iter().map(|d| b64.encode(d)).collect(),
        envelope_header: b64.encode(header),
        receipt: b64.encode(receipt),
        entries,
        checkpoint: String::from_utf8(note).map_err(local)?,
    };
    Ok(file.to_bytes())
}

/// The directories the file carries: of those kept from the one in force at the header's time
/// (the oldest kept if the history starts later) to the current one, the first, the last and
/// each one a signature needs.
fn directories_for(
    state: &NodeState,
    signed: (&[u8], &[u8]),
    log: &str,
    note: &[u8],
) -> Result<Vec<Vec<u8>>, bundle::Refused> {
    let local = |e: &dyn std::fmt::Display| bundle::Refused {
        part: "local system".to_owned(),
        problem: e.to_string(),
    };
    let kept = state.store.kept_directories().map_err(|e| local(&e))?;
    let at = bundle::header_time_ms(signed.0)?;
    let from = directory_in_force(&kept, at)
        .map(|d| d.version)
        .ok_or_else(|| local(&"no directory is kept"))?;
    let candidates: Vec<&[u8]> = kept
        .iter()
        .filter(|d| d.version >= from)
        .map(|d| d.file.as_slice())
        .collect();
    let ca = crate::trust::read_single_cert(&state.config.keys.ca_cert).map_err(|e| local(&e))?;
    let needed = bundle::directories_needed(
        &candidates,
        ca.as_ref(),
        crate::trust::now_unix(),
        signed,
        log,
        note,
    )?;
    Ok(needed
        .into_iter()
        .filter_map(|i| candidates.get(i).map(|d| d.to_vec()))
        .collect())
}
