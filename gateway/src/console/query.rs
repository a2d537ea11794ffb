//! Reading the audit log for the pages: by time (a binary search over seq, the log is in
//! append order and stamped at append) and a bounded scan with conditions the store's indexes
//! do not serve (peer, clinician, purpose, event, outcome).

use gateway_store::{AuditEntry, AuditFilter, Store, StoreError};

/// Entries a page request reads at most, whatever it filters: a page answers in bounded time
/// even on a log of millions of entries, and offers to continue from where it stopped.
pub const SCAN_LIMIT: usize = 20_000;
const BATCH: usize = 1_000;

fn entry_at(store: &Store, seq: u64) -> Result<Option<AuditEntry>, StoreError> {
    Ok(store
        .audit_list(&AuditFilter {
            since_seq: Some(seq.saturating_sub(1)),
            limit: Some(1),
            ..AuditFilter::default()
        })?
        .into_iter()
        .next())
}

/// The seq just before the first entry stamped at or after `time_ms` (a `since_seq` cursor).
pub fn cursor_at(store: &Store, time_ms: u64) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (1u64, store.audit_len().saturating_add(1));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match entry_at(store, mid)? {
            Some(e) if e.record.time_ms < time_ms => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo.saturating_sub(1))
}

/// What a scan found: the matching entries, and the cursor to continue from when it stopped
/// early (page full or scan limit reached).
pub struct Scanned {
    pub entries: Vec<AuditEntry>,
    pub next: Option<u64>,
    /// Entries read.
    pub read: usize,
}

/// Entries after `since` (up to `until`, inclusive) from the index `base` names, kept when
/// `keep` says so, at most `want` of them, reading at most [`SCAN_LIMIT`].
pub fn scan(
    store: &Store,
    base: &AuditFilter,
    since: u64,
    until: u64,
    want: usize,
    keep: impl Fn(&AuditEntry) -> bool,
) -> Result<Scanned, StoreError> {
    let mut out = Vec::new();
    let mut cursor = since;
    let mut read = 0;
    loop {
        let batch = store.audit_list(&AuditFilter {
            since_seq: Some(cursor),
            limit: Some(BATCH),
            ..base.clone()
        })?;
        let full = batch.len() == BATCH;
        for e in batch {
            if e.seq > until {
                return Ok(Scanned {
                    entries: out,
                    next: None,
                    read,
                });
            }
            read += 1;
            cursor = e.seq;
            if keep(&e) {
                out.push(e);
                if out.len() >= want {
                    return Ok(Scanned {
                        entries: out,
                        next: Some(cursor),
                        read,
                    });
                }
            }
            if read >= SCAN_LIMIT {
                return Ok(Scanned {
                    entries: out,
                    next: Some(cursor),
                    read,
                });
            }
        }
        if !full {
            return Ok(Scanned {
                entries: out,
                next: None,
                read,
            });
        }
    }
}
