//! The overview page: the last 24 h and 7 days by event and outcome, refusals by reason,
//! pending break-glass reviews, the audit chain's verification and the witnesses' view of the
//! log (latest signed checkpoint, its cosignatures, conflicts seen).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use gateway_store::AuditFilter;

use crate::trust::now_ms;

use super::page::{html_response, is_refusal, layout, outcome, problem, time};
use super::session::Officer;
use super::{record_read, review, Console};

const DAY_MS: u64 = 24 * 3600 * 1000;
/// Entries the counts read at most (the newest week first found by time): beyond this the
/// page says the counts are partial.
const COUNT_LIMIT: usize = 500_000;
/// A chain verification walks the whole log: the overview reuses one this recent.
const VERIFY_REUSE: Duration = Duration::from_secs(60);

/// The last chain verification: when, and its answer (entries verified, or the problem).
/// One verification: when (monotonic, and ms since the epoch) and its answer.
type Verified = (Instant, u64, Result<u64, String>);

#[derive(Default)]
pub struct VerifyCache(Mutex<Option<Verified>>);

impl VerifyCache {
    fn current(&self, store: &gateway_store::Store) -> (u64, Result<u64, String>) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, when_ms, result)) = slot.as_ref() {
            if at.elapsed() < VERIFY_REUSE {
                return (*when_ms, result.clone());
            }
        }
        let result = store.audit_verify().map_err(|e| e.to_string());
        let when_ms = now_ms();
        *slot = Some((Instant::now(), when_ms, result.clone()));
        (when_ms, result)
    }
}

#[derive(Default)]
struct Counts {
    /// (event, outcome) → (last 24 h, last 7 d)
    by_event: BTreeMap<(String, String), (u64, u64)>,
    /// refusal reason (its first clause) → (last 24 h, last 7 d)
    refusals: BTreeMap<String, (u64, u64)>,
    read: usize,
    partial: bool,
}

fn reason_key(reason: Option<&str>) -> String {
    let r = reason.unwrap_or("(no reason given)");
    // The first clause names the rule; later ones carry per-request detail.
    let first = r.split(';').next().unwrap_or(r).trim();
    first.chars().take(120).collect()
}

fn count(store: &gateway_store::Store, now: u64) -> Result<Counts, gateway_store::StoreError> {
    let week = now.saturating_sub(7 * DAY_MS);
    let day = now.saturating_sub(DAY_MS);
    let mut cursor = super::query::cursor_at(store, week)?;
    let mut c = Counts::default();
    loop {
        let batch = store.audit_list(&AuditFilter {
            since_seq: Some(cursor),
            limit: Some(1000),
            ..AuditFilter::default()
        })?;
        let full = batch.len() == 1000;
        for e in &batch {
            cursor = e.seq;
            c.read += 1;
            let r = &e.record;
            if r.time_ms < week {
                continue;
            }
            let recent = u64::from(r.time_ms >= day);
            let slot = c
                .by_event
                .entry((r.event.clone(), r.outcome.clone()))
                .or_default();
            slot.0 += recent;
            slot.1 += 1;
            if is_refusal(&r.outcome) {
                let slot = c
                    .refusals
                    .entry(reason_key(r.reason.as_deref()))
                    .or_default();
                slot.0 += recent;
                slot.1 += 1;
            }
        }
        if !full {
            return Ok(c);
        }
        if c.read >= COUNT_LIMIT {
            c.partial = true;
            return Ok(c);
        }
    }
}

pub async fn page(State(console): State<Console>, officer: Officer) -> Response {
    if let Err(refused) = record_read(&console, &officer, "overview", None).await {
        return refused;
    }
    let store = &console.node.store;
    let now = now_ms();
    let counted = tokio::task::block_in_place(|| count(store, now));
    let counts = match counted {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "console overview: audit log unreadable");
            return problem(
                Some(&officer.chrome()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "The audit log could not be read.",
            );
        }
    };
    let pending = tokio::task::block_in_place(|| review::items(store))
        .map(|items| items.iter().filter(|i| i.reviews.is_empty()).count());
    let (verified_at, verified) = tokio::task::block_in_place(|| console.verified.current(store));
    let checkpoint = store.checkpoint_latest().ok().flatten();
    let cosignatures = checkpoint
        .as_ref()
        .and_then(|(size, _)| store.cosignatures(*size).ok())
        .map_or(0, |c| c.len());
    let witnessed = store.witnessed_all().map_or(0, |w| w.len());
    let conflicts = store.witness_conflicts().map_or(0, |c| c.len());
    let body = html! {
        section class="cards" {
            div class="card" id="pending-reviews" {
                h2 { "Break-glass reviews" }
                @match &pending {
                    Ok(0) => p class="ok" { "None pending" },
                    Ok(n) => p class="bad" { a href="/console/break-glass" { (n) " pending" } },
                    Err(_) => p class="bad" { "unreadable" },
                }
            }
            div class="card" id="verification" {
                h2 { "Audit chain" }
                @match &verified {
                    Ok(n) => p class="ok" { "Verified: " (n) " entries, hash chain intact" },
                    Err(e) => p class="bad" { "Verification FAILED: " (e) },
                }
                p class="small" { "checked " (time(verified_at)) }
            }
            div class="card" id="witnesses" {
                h2 { "Signed checkpoints and witnesses" }
                @match &checkpoint {
                    Some((size, _)) => p { "Latest checkpoint: " (size) " entries, " (cosignatures) " witness cosignature(s)" },
                    None => p class="bad" { "No checkpoint signed yet" },
                }
                p { "This node witnesses " (witnessed) " other log(s)." }
                @if conflicts > 0 {
                    p class="bad" { (conflicts) " conflicting checkpoint(s) refused and kept as evidence" }
                } @else {
                    p class="ok" { "No witness conflicts" }
                }
            }
        }
        @if counts.partial {
            p class="notice" { "Counts are from the latest " (counts.read) " entries of the week only." }
        }
        h2 { "Events by outcome" }
        table id="events" {
            thead { tr { th { "Event" } th { "Outcome" } th class="num" { "24 h" } th class="num" { "7 days" } } }
            tbody {
                @for ((ev, out), (d, w)) in &counts.by_event {
                    tr { td { (ev) } td { (outcome(out)) } td class="num" { (d) } td class="num" { (w) } }
                }
                @if counts.by_event.is_empty() {
                    tr { td colspan="4" { "Nothing in the last 7 days." } }
                }
            }
        }
        h2 { "Refusals by reason" }
        table id="refusals" {
            thead { tr { th { "Reason" } th class="num" { "24 h" } th class="num" { "7 days" } } }
            tbody {
                @for (reason, (d, w)) in &counts.refusals {
                    tr { td { (reason) } td class="num" { (d) } td class="num" { (w) } }
                }
                @if counts.refusals.is_empty() {
                    tr { td colspan="3" { "No refusals in the last 7 days." } }
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout(Some(&officer.chrome()), "Overview", body),
    )
}
