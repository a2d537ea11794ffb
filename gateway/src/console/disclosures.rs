//! The accounting of disclosures for one patient, as a page the patient can read and print:
//! to whom their records went, when, why, which kinds of information, what the policy
//! decided and whether emergency (break-glass) access was used. The rows come from
//! `api::disclosures::accounting`; `gateway disclosures --format html` renders the same page
//! through [`report_html`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use crate::api::disclosures::{accounting, Disclosure, DisclosureQuery};
use crate::trust::now_ms;

use super::page::{html_response, layout, parse_form_time, problem, time, STYLESHEET};
use super::session::Officer;
use super::{record_read, Console};

/// Who the report is for and what it covers.
pub struct ReportHeading<'a> {
    pub facility: &'a str,
    pub facility_name: Option<&'a str>,
    pub patient: &'a str,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub generated_ms: u64,
}

fn purpose_words(p: &str) -> &str {
    match p {
        "treatment" => "Your care (treatment)",
        "payment" => "Payment for your care",
        "operations" => "Running the health service (operations)",
        "research" => "Research",
        "public-health" => "Public health reporting",
        other => other,
    }
}

fn category_words(c: &str) -> &str {
    match c {
        "general" => "general health information",
        "hiv-sti" => "HIV and sexually transmitted infections",
        "mental-health" => "mental health",
        "substance-use" => "substance use",
        "reproductive-health" => "reproductive health",
        "genetic" => "genetic information",
        "unclassified" => "information not classified automatically",
        other => other,
    }
}

fn status_words(s: &str) -> &str {
    match s {
        "delivered" => "Delivered",
        "queued" | "delivering" => "Being sent",
        "failed" => "Not delivered (sending failed)",
        "cancelled" => "Not delivered (cancelled)",
        other => other,
    }
}

/// The report itself (heading, explanation, one row per disclosure).
pub fn report_body(h: &ReportHeading<'_>, rows: &[Disclosure]) -> Markup {
    let period = match (h.from_ms, h.to_ms) {
        (None, None) => "all records this facility holds".to_owned(),
        (Some(f), None) => format!("from {}", time(f)),
        (None, Some(t)) => format!("until {}", time(t)),
        (Some(f), Some(t)) => format!("from {} until {}", time(f), time(t)),
    };
    html! {
        section class="report" id="report" {
            p class="lead" {
                "This is the list of times " strong { (h.facility_name.unwrap_or(h.facility)) }
                " (" (h.facility) ") sent health records of patient " strong id="report-patient" { (h.patient) }
                " to another facility, " (period) "."
            }
            p { "Each row says who received the records, when, why, which kinds of information they held, "
                "whether our rules allowed it, and whether emergency access (\"break-glass\") was used. "
                "Emergency access lets a clinician see records without the usual consent when a life is at risk; "
                "every use is reviewed by a security officer." }
            table id="disclosures" {
                thead { tr {
                    th { "Date" } th { "Sent to" } th { "Why" } th { "Kinds of information" }
                    th { "Rules (policy decision)" } th { "Emergency access" } th { "Status" }
                } }
                tbody {
                    @for d in rows {
                        tr {
                            td { (time(d.delivered_ms.unwrap_or(d.time_ms))) }
                            td { (d.recipient_name.as_deref().unwrap_or(&d.recipient)) br; span class="small" { (d.recipient) } }
                            td { (purpose_words(&d.purpose)) }
                            td { (d.categories.iter().map(|c| category_words(c)).collect::<Vec<_>>().join(", ")) }
                            td {
                                @if d.decision == "permit" { "Allowed" } @else { (d.decision) }
                                @if !d.policy_ids.is_empty() { br; span class="small" { (d.policy_ids.join(", ")) } }
                            }
                            td { @if d.break_glass { strong class="bad" { "Yes" } } @else { "No" } }
                            td { (status_words(&d.status)) br; span class="small" { "ref. " (d.transfer_id) } }
                        }
                    }
                    @if rows.is_empty() {
                        tr { td colspan="7" id="no-disclosures" { "No disclosures in this period." } }
                    }
                }
            }
            p class="small" { (rows.len()) " disclosure(s). Prepared " (time(h.generated_ms)) " from the facility's tamper-evident audit log." }
        }
    }
}

/// A complete, self-contained HTML document of the report (its style inline), for
/// `gateway disclosures --format html`: a file to print or hand over.
pub fn report_html(h: &ReportHeading<'_>, rows: &[Disclosure]) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Accounting of disclosures" }
                style { (PreEscaped(STYLESHEET)) }
            }
            body { main { h1 { "Accounting of disclosures" } (report_body(h, rows)) } }
        }
    }
    .into_string()
}

fn form_markup(officer: &Officer) -> Markup {
    html! {
        form method="post" action="/console/disclosures" class="search" id="disclosure-form" {
            input type="hidden" name="csrf" value=(officer.csrf);
            label { "Patient" input type="text" name="patient" id="patient" required; }
            label { "From (UTC)" input type="date" name="from"; }
            label { "To (UTC, exclusive)" input type="date" name="to"; }
            button type="submit" id="report-button" { "Prepare report" }
        }
    }
}

pub async fn form(State(_console): State<Console>, officer: Officer) -> Response {
    html_response(
        StatusCode::OK,
        layout(
            Some(&officer.chrome()),
            "Accounting of disclosures",
            html! { p { "Every disclosure of one patient's records, as a page the patient can read. Print it with your browser." } (form_markup(&officer)) },
        ),
    )
}

#[derive(Deserialize)]
struct ReportForm {
    csrf: String,
    patient: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

pub async fn report(State(console): State<Console>, officer: Officer, body: Bytes) -> Response {
    let chrome = officer.chrome();
    let Ok(f) = serde_urlencoded::from_bytes::<ReportForm>(&body) else {
        return problem(
            Some(&chrome),
            StatusCode::BAD_REQUEST,
            "The form could not be read.",
        );
    };
    if let Some(refused) = officer.csrf_refusal(&f.csrf) {
        return refused;
    }
    let patient = f.patient.trim().to_owned();
    if patient.is_empty() {
        return problem(Some(&chrome), StatusCode::BAD_REQUEST, "Name the patient.");
    }
    let (from_ms, to_ms) = (parse_form_time(&f.from), parse_form_time(&f.to));
    if (!f.from.trim().is_empty() && from_ms.is_none())
        || (!f.to.trim().is_empty() && to_ms.is_none())
    {
        return problem(
            Some(&chrome),
            StatusCode::BAD_REQUEST,
            "A date could not be read.",
        );
    }
    if let Err(refused) = record_read(
        &console,
        &officer,
        "accounting of disclosures",
        Some(patient.clone()),
    )
    .await
    {
        return refused;
    }
    let trust = console.node.trust();
    let q = DisclosureQuery {
        patient: patient.clone(),
        from_ms,
        to_ms,
    };
    let rows =
        match tokio::task::block_in_place(|| accounting(&console.node.store, &trust.directory, &q))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "console disclosures: store unreadable");
                return problem(
                    Some(&chrome),
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The store could not be read.",
                );
            }
        };
    let me = console.node.me().to_string();
    let name = trust
        .directory
        .facilities
        .iter()
        .find(|x| x.id.as_str() == me)
        .map(|x| x.name.clone());
    let heading = ReportHeading {
        facility: &me,
        facility_name: name.as_deref(),
        patient: &patient,
        from_ms,
        to_ms,
        generated_ms: now_ms(),
    };
    html_response(
        StatusCode::OK,
        layout(
            Some(&chrome),
            "Accounting of disclosures",
            report_body(&heading, &rows),
        ),
    )
}
