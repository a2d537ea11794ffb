//! Audit search: patient, peer, clinician, purpose, event, outcome, break-glass and a time
//! range, a page at a time on the log's seq cursor. The search is a POST form, so a patient id
//! never appears in a URL; the next page is another POST carrying the cursor. Each row links
//! to its transfer by the transfer's opaque id.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use maud::{html, Markup};
use serde::Deserialize;

use gateway_envelope::TransferId;
use gateway_store::{AuditEntry, AuditFilter};

use super::page::{html_response, layout, outcome, parse_form_time, problem, time};
use super::query::{cursor_at, scan};
use super::session::Officer;
use super::{record_read, Console};

/// Rows a page shows unless the form asks for another size (1 to [`MAX_PAGE`]).
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;

#[derive(Deserialize, Default, Clone)]
pub struct SearchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    patient: String,
    #[serde(default)]
    peer: String,
    #[serde(default)]
    clinician: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    break_glass: Option<String>,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// The cursor: the last seq the previous page read.
    #[serde(default)]
    after: Option<u64>,
    /// The search's snapshot: entries appended after the first page (its own audit entry
    /// included) are left out, so paging ends.
    #[serde(default)]
    until: Option<u64>,
    /// Rows per page (default [`PAGE`]).
    #[serde(default)]
    limit: Option<usize>,
}

fn given(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

impl SearchForm {
    fn keeps(&self, e: &AuditEntry, to_ms: Option<u64>) -> bool {
        let r = &e.record;
        let field = |want: &str, have: Option<&String>| {
            given(want).is_none_or(|w| have.is_some_and(|h| h == w))
        };
        field(&self.peer, r.peer.as_ref())
            && field(&self.clinician, r.clinician.as_ref())
            && field(&self.purpose, r.purpose.as_ref())
            && given(&self.event).is_none_or(|w| r.event == w)
            && given(&self.outcome).is_none_or(|w| r.outcome == w)
            && to_ms.is_none_or(|to| r.time_ms < to)
    }
}

fn form_markup(officer: &Officer, f: &SearchForm) -> Markup {
    html! {
        form method="post" action="/console/audit" class="search" id="search" {
            input type="hidden" name="csrf" value=(officer.csrf);
            label { "Patient" input type="text" name="patient" id="patient" value=(f.patient); }
            label { "Peer facility" input type="text" name="peer" value=(f.peer); }
            label { "Clinician" input type="text" name="clinician" value=(f.clinician); }
            label { "Purpose" input type="text" name="purpose" value=(f.purpose); }
            label { "Event" input type="text" name="event" value=(f.event); }
            label { "Outcome" input type="text" name="outcome" value=(f.outcome); }
            label { "From (UTC)" input type="datetime-local" name="from" value=(f.from); }
            label { "To (UTC)" input type="datetime-local" name="to" value=(f.to); }
            label class="check" {
                input type="checkbox" name="break_glass" value="on" checked[f.break_glass.is_some()];
                "Break-glass only"
            }
            button type="submit" id="search-button" { "Search" }
        }
    }
}

pub async fn form(State(_console): State<Console>, officer: Officer) -> Response {
    let body = form_markup(&officer, &SearchForm::default());
    html_response(
        StatusCode::OK,
        layout(Some(&officer.chrome()), "Audit search", body),
    )
}

pub async fn results(State(console): State<Console>, officer: Officer, body: Bytes) -> Response {
    let chrome = officer.chrome();
    let Ok(f) = serde_urlencoded::from_bytes::<SearchForm>(&body) else {
        return problem(
            Some(&chrome),
            StatusCode::BAD_REQUEST,
            "The search form could not be read.",
        );
    };
    if let Some(refused) = officer.csrf_refusal(&f.csrf) {
        return refused;
    }
    let (from_ms, to_ms) = (parse_form_time(&f.from), parse_form_time(&f.to));
    if (given(&f.from).is_some() && from_ms.is_none())
        || (given(&f.to).is_some() && to_ms.is_none())
    {
        return problem(
            Some(&chrome),
            StatusCode::BAD_REQUEST,
            "A time could not be read; use the date and time fields.",
        );
    }
    let page = f.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&page) {
        return problem(
            Some(&chrome),
            StatusCode::BAD_REQUEST,
            "A page has 1 to 500 rows.",
        );
    }
    let patient = given(&f.patient).map(str::to_owned);
    let read_seq = match record_read(&console, &officer, "audit search", patient.clone()).await {
        Ok(seq) => seq,
        Err(refused) => return refused,
    };
    let until = f.until.unwrap_or(read_seq);
    let store = &console.node.store;
    let base = AuditFilter {
        patient,
        break_glass_only: f.break_glass.is_some(),
        ..AuditFilter::default()
    };
    let scanned = tokio::task::block_in_place(|| {
        let start = match (f.after, from_ms) {
            (Some(after), _) => after,
            (None, Some(from)) => cursor_at(store, from)?,
            (None, None) => 0,
        };
        // The log is in time order: nothing after the end of the range needs reading.
        let last = match to_ms {
            Some(to) => until.min(cursor_at(store, to)?),
            None => until,
        };
        scan(store, &base, start, last, page, |e| f.keeps(e, to_ms))
    });
    let scanned = match scanned {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "console search: audit log unreadable");
            return problem(
                Some(&chrome),
                StatusCode::INTERNAL_SERVER_ERROR,
                "The audit log could not be read.",
            );
        }
    };
    let next = scanned.next.map(|after| SearchForm {
        after: Some(after),
        until: Some(until),
        ..f.clone()
    });
    let body = html! {
        (form_markup(&officer, &f))
        p class="small" { (scanned.entries.len()) " matching entries on this page (" (scanned.read) " read)." }
        table id="results" {
            thead { tr {
                th { "#" } th { "Time" } th { "Event" } th { "Outcome" } th { "Transfer" }
                th { "Peer" } th { "Patient" } th { "Purpose" } th { "Clinician" } th { "Break-glass" } th { "Reason" }
            } }
            tbody {
                @for e in &scanned.entries {
                    @let r = &e.record;
                    tr {
                        td { (e.seq) }
                        td { (time(r.time_ms)) }
                        td { (r.event) }
                        td { (outcome(&r.outcome)) }
                        td { @if let Some(t) = r.transfer_id {
                            @let id = TransferId(t).to_string();
                            a href={ "/console/transfers/" (id) } class="transfer-link" { (id.get(..8).unwrap_or(&id)) "…" }
                        } }
                        td { (r.peer.as_deref().unwrap_or("")) }
                        td { (r.patient_ref.as_deref().unwrap_or("")) }
                        td { (r.purpose.as_deref().unwrap_or("")) }
                        td { (r.clinician.as_deref().unwrap_or("")) }
                        td { @if r.break_glass { span class="bad" { "yes" } } }
                        td class="reason" { (r.reason.as_deref().unwrap_or("")) }
                    }
                }
                @if scanned.entries.is_empty() {
                    tr { td colspan="11" { "No entries match." } }
                }
            }
        }
        @if let Some(n) = &next {
            form method="post" action="/console/audit" id="next-page" {
                input type="hidden" name="csrf" value=(officer.csrf);
                input type="hidden" name="patient" value=(n.patient);
                input type="hidden" name="peer" value=(n.peer);
                input type="hidden" name="clinician" value=(n.clinician);
                input type="hidden" name="purpose" value=(n.purpose);
                input type="hidden" name="event" value=(n.event);
                input type="hidden" name="outcome" value=(n.outcome);
                input type="hidden" name="from" value=(n.from);
                input type="hidden" name="to" value=(n.to);
                @if n.break_glass.is_some() { input type="hidden" name="break_glass" value="on"; }
                input type="hidden" name="after" value=[n.after];
                input type="hidden" name="until" value=[n.until];
                input type="hidden" name="limit" value=[n.limit];
                button type="submit" { "Next page" }
            }
        }
    };
    html_response(StatusCode::OK, layout(Some(&chrome), "Audit search", body))
}
