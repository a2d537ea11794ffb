//! The break-glass review queue: every break-glass transfer or request this node logged, with
//! its justification, and the officers' reviews of it. A review is itself an audit entry
//! (`break-glass-reviewed`: the officer in `clinician`, `#<seq>: <note>` in `reason`, flagged
//! break-glass so that the break-glass index that lists the items also lists their reviews).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use maud::html;
use serde::Deserialize;

use gateway_envelope::TransferId;
use gateway_store::{AuditFilter, Store, StoreError};

use crate::audit::event;

use super::page::{html_response, layout, problem, see_other, time};
use super::query::scan;
use super::session::Officer;
use super::{record_read, Console};

/// Break-glass entries the queue reads at most.
const QUEUE_SCAN: usize = 50_000;
const MAX_NOTE: usize = 2000;

pub struct Review {
    pub by: String,
    pub time_ms: u64,
    pub note: String,
}

/// One thing to review: a break-glass transfer (all its entries) or a request without one.
pub struct Item {
    /// Its first entry's seq: what a review names.
    pub seq: u64,
    pub time_ms: u64,
    pub event: String,
    pub transfer_id: Option<[u8; 16]>,
    pub peer: Option<String>,
    pub patient: Option<String>,
    pub clinician: Option<String>,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    pub reviews: Vec<Review>,
}

/// `#12: note` → (12, note).
fn parse_review(reason: &str) -> Option<(u64, &str)> {
    let (seq, note) = reason.strip_prefix('#')?.split_once(':')?;
    Some((seq.parse().ok()?, note.trim()))
}

fn justification(reason: Option<&str>) -> Option<String> {
    let r = reason?;
    let at = r.find("break-glass: ")?;
    r.get(at + "break-glass: ".len()..).map(str::to_owned)
}

/// Every review item, oldest first, with its reviews.
pub fn items(store: &Store) -> Result<Vec<Item>, StoreError> {
    let base = AuditFilter {
        break_glass_only: true,
        ..AuditFilter::default()
    };
    let entries = scan(store, &base, 0, u64::MAX, QUEUE_SCAN, |_| true)?.entries;
    let mut by_key: BTreeMap<u64, Item> = BTreeMap::new();
    let mut key_of_transfer: BTreeMap<[u8; 16], u64> = BTreeMap::new();
    let mut reviews = Vec::new();
    for e in entries {
        let r = e.record;
        if r.event == event::BREAK_GLASS_REVIEWED {
            if let Some((seq, note)) = r.reason.as_deref().and_then(parse_review) {
                reviews.push((
                    seq,
                    Review {
                        by: r.clinician.clone().unwrap_or_default(),
                        time_ms: r.time_ms,
                        note: note.to_owned(),
                    },
                ));
            }
            continue;
        }
        let existing = r.transfer_id.and_then(|t| key_of_transfer.get(&t).copied());
        if let Some(item) = existing.and_then(|k| by_key.get_mut(&k)) {
            if item.justification.is_none() {
                item.justification = justification(r.reason.as_deref());
            }
            item.peer = item.peer.take().or(r.peer);
            continue;
        }
        if let Some(t) = r.transfer_id {
            key_of_transfer.insert(t, e.seq);
        }
        by_key.insert(
            e.seq,
            Item {
                seq: e.seq,
                time_ms: r.time_ms,
                event: r.event.clone(),
                transfer_id: r.transfer_id,
                justification: justification(r.reason.as_deref()),
                peer: r.peer,
                patient: r.patient_ref,
                clinician: r.clinician,
                purpose: r.purpose,
                reviews: Vec::new(),
            },
        );
    }
    for (seq, review) in reviews {
        if let Some(item) = by_key.get_mut(&seq) {
            item.reviews.push(review);
        }
    }
    Ok(by_key.into_values().collect())
}

pub async fn queue(State(console): State<Console>, officer: Officer) -> Response {
    let chrome = officer.chrome();
    if let Err(refused) = record_read(&console, &officer, "break-glass review queue", None).await {
        return refused;
    }
    let items = match tokio::task::block_in_place(|| items(&console.node.store)) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "console review queue: audit log unreadable");
            return problem(
                Some(&chrome),
                StatusCode::INTERNAL_SERVER_ERROR,
                "The audit log could not be read.",
            );
        }
    };
    let (pending, done): (Vec<&Item>, Vec<&Item>) =
        items.iter().partition(|i| i.reviews.is_empty());
    let row = |i: &Item| {
        html! {
            td { (time(i.time_ms)) }
            td { (i.event) }
            td { @if let Some(t) = i.transfer_id {
                @let id = TransferId(t).to_string();
                a href={ "/console/transfers/" (id) } { (id.get(..8).unwrap_or(&id)) "…" }
            } }
            td { (i.peer.as_deref().unwrap_or("")) }
            td { (i.patient.as_deref().unwrap_or("")) }
            td { (i.clinician.as_deref().unwrap_or("")) }
            td { (i.purpose.as_deref().unwrap_or("")) }
            td class="reason" { (i.justification.as_deref().unwrap_or("—")) }
        }
    };
    let body = html! {
        h2 { "Pending (" (pending.len()) ")" }
        table id="pending" {
            thead { tr { th { "Time" } th { "Event" } th { "Transfer" } th { "Peer" } th { "Patient" } th { "Clinician" } th { "Purpose" } th { "Justification" } th { "Review" } } }
            tbody {
                @for i in &pending {
                    tr class="pending" {
                        (row(i))
                        td {
                            form method="post" action="/console/break-glass/review" class="review" {
                                input type="hidden" name="csrf" value=(officer.csrf);
                                input type="hidden" name="item" value=(i.seq);
                                textarea name="note" required maxlength=(MAX_NOTE) placeholder="What you checked" {}
                                button type="submit" { "Mark reviewed" }
                            }
                        }
                    }
                }
                @if pending.is_empty() { tr { td colspan="9" { "Nothing to review." } } }
            }
        }
        h2 { "Reviewed (" (done.len()) ")" }
        table id="reviewed" {
            thead { tr { th { "Time" } th { "Event" } th { "Transfer" } th { "Peer" } th { "Patient" } th { "Clinician" } th { "Purpose" } th { "Justification" } th { "Reviews" } } }
            tbody {
                @for i in &done {
                    tr {
                        (row(i))
                        td { @for r in &i.reviews {
                            p class="review-note" { strong { (r.by) } " · " (time(r.time_ms)) br; (r.note) }
                        } }
                    }
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout(Some(&chrome), "Break-glass reviews", body),
    )
}

#[derive(Deserialize)]
struct ReviewForm {
    csrf: String,
    item: u64,
    note: String,
}

pub async fn review(State(console): State<Console>, officer: Officer, body: Bytes) -> Response {
    let chrome = officer.chrome();
    let Ok(form) = serde_urlencoded::from_bytes::<ReviewForm>(&body) else {
        return problem(
            Some(&chrome),
            StatusCode::BAD_REQUEST,
            "The review form could not be read.",
        );
    };
    if let Some(refused) = officer.csrf_refusal(&form.csrf) {
        return refused;
    }
    let note = form.note.trim();
    if note.is_empty() || note.chars().count() > MAX_NOTE {
        return problem(
            Some(&chrome),
            StatusCode::BAD_REQUEST,
            "A review needs a note (at most 2000 characters).",
        );
    }
    let store = &console.node.store;
    let found = tokio::task::block_in_place(|| items(store))
        .map(|items| items.into_iter().find(|i| i.seq == form.item));
    let item = match found {
        Ok(Some(item)) => item,
        Ok(None) => {
            return problem(
                Some(&chrome),
                StatusCode::NOT_FOUND,
                "No break-glass entry with that number.",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "console review: audit log unreadable");
            return problem(
                Some(&chrome),
                StatusCode::INTERNAL_SERVER_ERROR,
                "The audit log could not be read.",
            );
        }
    };
    let mut rec = crate::audit::record(event::BREAK_GLASS_REVIEWED, "reviewed");
    rec.transfer_id = item.transfer_id;
    rec.patient_ref = item.patient;
    rec.peer = item.peer;
    rec.clinician = Some(officer.name.clone());
    rec.break_glass = true;
    rec.reason = Some(format!("#{}: {note}", item.seq));
    if let Err(e) = crate::audit::append_durable(store, rec).await {
        tracing::error!(error = %e, "audit write of a break-glass review failed");
        return problem(
            Some(&chrome),
            StatusCode::INTERNAL_SERVER_ERROR,
            "The review could not be recorded.",
        );
    }
    tracing::info!(officer = %officer.name, item = item.seq, "break-glass entry reviewed");
    see_other("/console/break-glass")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_reasons_and_justifications_parse() {
        assert_eq!(
            parse_review("#12: looked at the chart"),
            Some((12, "looked at the chart"))
        );
        assert_eq!(parse_review("12: no hash"), None);
        assert_eq!(
            justification(Some("send permitted; break-glass: unconscious patient")).as_deref(),
            Some("unconscious patient")
        );
        assert_eq!(justification(Some("send permitted")), None);
    }
}
