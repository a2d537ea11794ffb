//! Where a holding node takes a patient's record from when another facility asks for it.
//!
//! `RecordSource` is the seam: the shipped source is a records store that the EMR fills through
//! the local API (`PUT /v1/records/{patient}`); a FHIR-server source can implement the same
//! trait. The store keeps each record sealed to this node's own encryption key, so no
//! plaintext sits in sled.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use gateway_envelope::{
    open_all, seal_to_vec, Limits, SealParams, Suite, TransferId, DEFAULT_CHUNK_SIZE,
};

use gateway_store::AuditRecord;

use crate::record::ContentType;
use crate::state::NodeState;
use crate::trust::now_ms;

/// A stored record: what the source hands back for a patient.
pub struct SourceRecord {
    pub content_type: ContentType,
    pub payload: Bytes,
}

pub trait RecordSource: Send + Sync {
    /// Stores (or replaces) the patient's record, with the audit entry `audit` that records
    /// the put: a source in the node's store writes both in one transaction.
    fn put(&self, patient: &str, record: &SourceRecord, audit: AuditRecord) -> Result<(), String>;
    fn fetch(&self, patient: &str) -> Result<Option<SourceRecord>, String>;
}

/// Records kept in the node's own store, sealed to the node itself.
pub struct StoreRecordSource {
    state: Arc<NodeState>,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    content_type: String,
    sealed: Vec<u8>,
}

impl StoreRecordSource {
    pub fn new(state: Arc<NodeState>) -> StoreRecordSource {
        StoreRecordSource { state }
    }
}

impl RecordSource for StoreRecordSource {
    fn put(&self, patient: &str, record: &SourceRecord, audit: AuditRecord) -> Result<(), String> {
        let me = self.state.me().as_str();
        let params = SealParams {
            transfer_id: TransferId::new_random().map_err(|e| e.to_string())?,
            sender: me,
            recipient: me,
            created_at_ms: now_ms(),
            payload_len: record.payload.len() as u64,
            payload_digest: gateway_envelope::sha256(&record.payload),
            // Sealed to this node itself, so the default suite is always one it opens.
            suite: Suite::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
        };
        let identity = self.state.identity();
        let own_key = identity.encryption.public_key();
        let sealed = seal_to_vec(&params, &[], &record.payload, &own_key, &identity.signing)
            .map_err(|e| format!("sealing the record: {e}"))?;
        let stored = StoredRecord {
            content_type: record.content_type.mime().to_owned(),
            sealed,
        };
        let bytes = postcard::to_allocvec(&stored).map_err(|e| e.to_string())?;
        self.state
            .store
            .record_put_audited(patient, &bytes, vec![audit])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn fetch(&self, patient: &str) -> Result<Option<SourceRecord>, String> {
        let Some(bytes) = self
            .state
            .store
            .record_get(patient)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let stored: StoredRecord =
            postcard::from_bytes(&bytes).map_err(|_| "stored record is unreadable".to_owned())?;
        // Verified under this node's current or an earlier signing key: a record stored
        // before a key rotation still opens.
        let identity = self.state.identity();
        let own = identity.own_verifying_keys();
        let opened = open_all(
            &stored.sealed,
            |_| own.clone(),
            &identity.decryption_keys(),
            Limits {
                max_header: 64 * 1024,
                max_payload: u64::MAX,
                max_metadata: 1024,
            },
        )
        .map_err(|e| format!("stored record does not open: {e}"))?;
        let content_type = ContentType::parse(&stored.content_type).map_err(|e| e.to_string())?;
        Ok(Some(SourceRecord {
            content_type,
            payload: Bytes::from(opened.payload),
        }))
    }
}
