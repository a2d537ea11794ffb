//! Audit exports for the tools security officers already run: FHIR R4 `AuditEvent` resources
//! per IHE BALP (`fhir`), CSV (`table`), and a live RFC 5424 syslog stream to a SIEM
//! (`syslog`). See docs/audit-export.md for the formats and the mapping.
//!
//! Invariant: exports only read the audit log, through the local API's paged listing (the CLI)
//! or gateway-store's listing (the syslog stream); they never write it and never open sled.
//! The syslog stream carries a keyed pseudonym of the patient, never the reference itself.

use std::fmt;

use serde::{Deserialize, Serialize};

use gateway_store::AuditEntry;

pub mod fhir;
pub mod syslog;
pub mod table;

/// One audit entry as exported: the fields of the local API's listing (`/v1/audit`), by name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEntry {
    pub seq: u64,
    pub time_ms: u64,
    pub event: String,
    pub transfer_id: Option<String>,
    pub peer: Option<String>,
    /// The patient reference, as the listing shows it to officers.
    pub patient: Option<String>,
    pub purpose: Option<String>,
    pub clinician: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    #[serde(default)]
    pub policy_ids: Vec<String>,
    #[serde(default)]
    pub break_glass: bool,
    /// The entry's chain hash, hex.
    pub hash: String,
}

impl fmt::Debug for ExportEntry {
    // The patient reference is left out: Debug output ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportEntry")
            .field("seq", &self.seq)
            .field("event", &self.event)
            .field("outcome", &self.outcome)
            .field("transfer_id", &self.transfer_id)
            .finish_non_exhaustive()
    }
}

impl From<&AuditEntry> for ExportEntry {
    fn from(e: &AuditEntry) -> Self {
        let r = &e.record;
        ExportEntry {
            seq: e.seq,
            time_ms: r.time_ms,
            event: r.event.clone(),
            transfer_id: r
                .transfer_id
                .map(|t| gateway_envelope::TransferId(t).to_string()),
            peer: r.peer.clone(),
            patient: r.patient_ref.clone(),
            purpose: r.purpose.clone(),
            clinician: r.clinician.clone(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
            policy_ids: r.policy_ids.clone(),
            break_glass: r.break_glass,
            hash: hex::encode(e.hash),
        }
    }
}

/// What an export keeps beyond the listing's own filters (patient, transfer, break-glass are
/// asked of the node): peer, event, outcome and a time range, checked per entry.
#[derive(Debug, Default, Clone)]
pub struct EntryFilter {
    pub peer: Option<String>,
    pub events: Vec<String>,
    pub outcome: Option<String>,
    /// Inclusive bounds on `time_ms`.
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
}

impl EntryFilter {
    pub fn keeps(&self, e: &ExportEntry) -> bool {
        self.peer
            .as_ref()
            .is_none_or(|p| e.peer.as_ref() == Some(p))
            && (self.events.is_empty() || self.events.contains(&e.event))
            && self.outcome.as_ref().is_none_or(|o| &e.outcome == o)
            && self.from_ms.is_none_or(|from| e.time_ms >= from)
            && self.to_ms.is_none_or(|to| e.time_ms <= to)
    }
}

/// `time_ms` as an RFC 3339 UTC instant with milliseconds (FHIR `instant`, RFC 5424
/// TIMESTAMP), e.g. `2026-12-03T06:26:18.123Z`.
pub fn instant(time_ms: u64) -> String {
    let secs = i64::try_from(time_ms / 1000).unwrap_or(i64::MAX);
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        time_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(1_796_278_778_123), "2026-12-03T06:19:38.123Z");
    }
}
