//! Start-up recovery of the outbox: transfers caught mid-delivery go back to the queue, and
//! (once per store) transfers written before state and audit shared a transaction get their
//! missing audit entries.

use gateway_store::{OutboxEntry, TransferState};

use crate::audit::{self, event};
use crate::state::NodeState;
use crate::trust::now_ms;

use super::delivery::base_record;

/// Store job: every outbox entry has its `submitted` (and, once delivered, `delivered`) audit
/// entry. Checked once per store, not at every start: it costs an audit lookup per transfer.
const AUDIT_PAIRS_JOB: &str = "outbox-audit-pairs";

/// After a crash, transfers caught mid-delivery go back to the queue: the receiver's
/// idempotence (same transfer id → same receipt) makes the resend safe.
///
/// A state change and its audit entries are one sled transaction (`outbox_*_audited`), so
/// they are durable together. Stores written by versions before that could hold a transfer
/// that was queued or delivered with no `submitted` or `delivered` entry (the two were
/// separate writes); those entries are written now, marked as recorded at restart, on the
/// first start of a store only.
///
/// Start-up reads only the pending transfers (through the due index), not the node's whole
/// sending history; the one-time backfill reads the outbox one entry at a time.
pub fn recover_after_restart(state: &NodeState) {
    for e in state.store.outbox_pending_iter().flatten() {
        if e.state == TransferState::Delivering {
            let _ = state.store.outbox_update(&e.transfer_id, |e| {
                e.state = TransferState::Queued;
                e.next_attempt_ms = now_ms();
            });
        }
    }
    if state.store.job_done(AUDIT_PAIRS_JOB).unwrap_or(false) {
        return;
    }
    let mut complete = true;
    for e in state.store.outbox_iter() {
        match e {
            Ok(e) => complete &= backfill_audit_pair(state, &e),
            Err(_) => complete = false,
        }
    }
    if complete {
        let _ = state.store.set_job_done(AUDIT_PAIRS_JOB);
    }
}

/// Writes the missing `submitted`/`delivered` entries of one transfer; false if one could not
/// be written (the job then runs again at the next start).
fn backfill_audit_pair(state: &NodeState, e: &OutboxEntry) -> bool {
    let mut ok = true;
    if !audit::has_event(&state.store, e.transfer_id, event::SUBMITTED) {
        let mut rec = base_record(e, event::SUBMITTED, "queued");
        rec.reason = Some(
            "recorded at restart: queued before the node stopped, without this entry".to_owned(),
        );
        ok &= audit::append(&state.store, rec).is_ok();
    }
    if e.state == TransferState::Delivered
        && !audit::has_event(&state.store, e.transfer_id, event::DELIVERED)
    {
        let mut rec = base_record(e, event::DELIVERED, "delivered");
        rec.reason = Some(
            "recorded at restart: the receipt was stored before the node stopped, \
             without this entry"
                .to_owned(),
        );
        ok &= audit::append(&state.store, rec).is_ok();
    }
    ok
}
