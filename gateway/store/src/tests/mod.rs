//! Tests against real sled databases in temporary directories.

mod archive;
mod audit;
mod audit_tree;
mod audit_verify_tree;
mod audited;
mod collections;
mod commit;
mod idempotency;
mod inbox;
mod index_keys;
mod lost;
mod migrate;
mod outbox;
mod protect;
mod retention;
mod spool;
mod spool_segment;

use tempfile::TempDir;

use crate::{
    AuditRecord, InboxEntry, OutboxEntry, SpoolKind, Store, TransferId, TransferState,
    TransferSummary,
};

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}

fn reopen(dir: &TempDir, store: Store) -> Store {
    drop(store);
    Store::open(dir.path()).expect("reopen store")
}

fn tid(n: u32) -> TransferId {
    let mut id = [0xa5; 16];
    id[12..].copy_from_slice(&n.to_be_bytes());
    id
}

fn outbox_entry(n: u32, created_ms: u64) -> OutboxEntry {
    OutboxEntry {
        transfer_id: tid(n),
        recipient: "facility-b".into(),
        state: TransferState::Queued,
        created_ms,
        updated_ms: created_ms,
        attempts: 0,
        next_attempt_ms: created_ms,
        last_error: None,
        envelope_len: 1000 + u64::from(n),
        payload_len: 900,
        payload_digest: [n as u8; 32],
        receipt: None,
        summary: TransferSummary {
            patient_ref: format!("Patient/p-{n}"),
            purpose: "treatment".into(),
            clinician: Some("Practitioner/dr-who".into()),
            content_type: "application/fhir+json".into(),
            categories: vec!["laboratory".into()],
            break_glass: false,
        },
        request_id: None,
    }
}

/// Writes a (stand-in) sealed envelope for outbox transfer `n`: at open, a pending transfer
/// without its envelope is failed as lost in a crash (see the `lost` module).
fn hold_envelope(store: &Store, n: u32) {
    let mut w = store
        .spool_writer(&tid(n), SpoolKind::Outbox)
        .expect("writer");
    w.write_chunk(b"sealed envelope").expect("write");
    w.finish().expect("finish");
}

fn inbox_entry(n: u32, received_ms: u64) -> InboxEntry {
    InboxEntry {
        transfer_id: tid(n),
        sender: "facility-a".into(),
        received_ms,
        envelope_len: 2000,
        payload_len: 1800,
        payload_digest: [1; 32],
        header_digest: [2; 32],
        receipt: vec![n as u8; 64],
        acked_ms: None,
        header_check: None,
    }
}

fn audit_record(
    patient: Option<&str>,
    transfer: Option<TransferId>,
    break_glass: bool,
) -> AuditRecord {
    AuditRecord {
        time_ms: 1_700_000_000_000,
        event: "submitted".into(),
        transfer_id: transfer,
        peer: Some("facility-b".into()),
        patient_ref: patient.map(str::to_owned),
        purpose: Some("treatment".into()),
        clinician: Some("Practitioner/dr-who".into()),
        outcome: "ok".into(),
        reason: None,
        policy_ids: vec!["consent-default".into(), "purpose-treatment".into()],
        break_glass,
    }
}
