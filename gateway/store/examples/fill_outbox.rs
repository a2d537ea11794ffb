//! Fills a node's store with a history of delivered transfers, as a busy sender accumulates
//! them, for measuring what a node's start-up and listings cost as the history grows.
//!
//! Usage: cargo run --release -p gateway-store --example fill_outbox -- <transfers> <store dir>
//! Each transfer is one outbox entry (delivered, receipt held) written with its `submitted`
//! and `delivered` audit entries in one transaction, as the gateway writes them; commits
//! every 1000. `<store dir>` is a node's `data_dir/store` (or any directory).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use gateway_store::{AuditRecord, OutboxEntry, Store, TransferState, TransferSummary};

const BATCH: u64 = 1_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(n), Some(dir)) = (
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
        args.get(2).map(PathBuf::from),
    ) else {
        eprintln!("usage: fill_outbox <transfers> <store dir>");
        return ExitCode::from(2);
    };
    match fill(n, &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fill_outbox: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fill(n: u64, dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let started = Instant::now();
    let base_ms = 1_790_000_000_000u64;
    // Ids drawn from the clock, so repeated fills of one store do not collide.
    let salt = u64::try_from(started.elapsed().as_nanos()).unwrap_or(0)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64;
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&salt.to_be_bytes());
        id[8..].copy_from_slice(&i.to_be_bytes());
        let t = base_ms + i * 10;
        let patient = format!("pat-{}", i % 50_000);
        let entry = OutboxEntry {
            transfer_id: id,
            recipient: "clinic-north".into(),
            state: TransferState::Delivered,
            created_ms: t,
            updated_ms: t + 20,
            attempts: 1,
            next_attempt_ms: t,
            last_error: None,
            envelope_len: 10_400,
            payload_len: 10_000,
            payload_digest: [7; 32],
            receipt: Some(vec![1; 180]),
            summary: TransferSummary {
                patient_ref: patient.clone(),
                purpose: "treatment".into(),
                clinician: None,
                content_type: "application/fhir+json".into(),
                categories: vec!["general".into()],
                break_glass: false,
            },
            request_id: None,
        };
        let record = |event: &str, outcome: &str| AuditRecord {
            time_ms: t,
            event: event.into(),
            transfer_id: Some(id),
            peer: Some("clinic-north".into()),
            patient_ref: Some(patient.clone()),
            purpose: Some("treatment".into()),
            clinician: None,
            outcome: outcome.into(),
            reason: None,
            policy_ids: Vec::new(),
            break_glass: false,
        };
        store.outbox_insert_audited(
            &entry,
            vec![
                record("submitted", "queued"),
                record("delivered", "delivered"),
            ],
        )?;
        if (i + 1) % BATCH == 0 {
            rt.block_on(store.commit())?;
        }
    }
    rt.block_on(store.commit())?;
    println!(
        "{{\"transfers\":{n},\"seconds\":{:.1},\"audit_entries\":{}}}",
        started.elapsed().as_secs_f64(),
        store.audit_len()
    );
    Ok(())
}
