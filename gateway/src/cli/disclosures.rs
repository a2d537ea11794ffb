//! `gateway disclosures --patient P [--from --to] [--format html|json|csv]`: the accounting
//! of disclosures of one patient's records, from `POST /v1/disclosures` (the patient travels
//! in the body, not the URL). `html` is the console's printable page as a self-contained file.

use http::Method;
use serde_json::json;

use super::args::DisclosuresArgs;
use super::call::{client, fail, ok_json};
use super::{outln, Failure, EXIT_FAILURE, EXIT_USAGE};
use crate::api::disclosures::Disclosure;
use crate::console::{report_html, ReportHeading};

/// An RFC 3339 time or a date (`2026-12-01`, midnight UTC), as ms since the epoch.
fn parse_time(flag: &str, value: Option<&str>) -> Result<Option<u64>, Failure> {
    use time::format_description::well_known::Rfc3339;
    let Some(value) = value else {
        return Ok(None);
    };
    let t = time::OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| {
            time::Date::parse(
                value,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map(|d| d.midnight().assume_utc())
        })
        .map_err(|_| {
            Failure::new(
                EXIT_USAGE,
                format!("{flag}: not an RFC 3339 time or a YYYY-MM-DD date"),
            )
        })?;
    Ok(Some(
        u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
    ))
}

fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn csv_text(rows: &[Disclosure]) -> Result<String, Failure> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "time",
        "delivered",
        "recipient",
        "recipient_name",
        "purpose",
        "categories",
        "content_type",
        "status",
        "decision",
        "policy_ids",
        "break_glass",
        "transfer_id",
        "request_id",
    ];
    w.write_record(header).map_err(fail)?;
    for d in rows {
        w.write_record([
            rfc3339(d.time_ms),
            d.delivered_ms.map(rfc3339).unwrap_or_default(),
            d.recipient.clone(),
            d.recipient_name.clone().unwrap_or_default(),
            d.purpose.clone(),
            d.categories.join(";"),
            d.content_type.clone(),
            d.status.clone(),
            d.decision.clone(),
            d.policy_ids.join(";"),
            d.break_glass.to_string(),
            d.transfer_id.clone(),
            d.request_id.clone().unwrap_or_default(),
        ])
        .map_err(fail)?;
    }
    let bytes = w.into_inner().map_err(fail)?;
    String::from_utf8(bytes).map_err(fail)
}

pub async fn disclosures(args: DisclosuresArgs) -> Result<(), Failure> {
    if !matches!(args.format.as_str(), "html" | "json" | "csv") {
        return Err(Failure::new(EXIT_USAGE, "--format: html, json or csv"));
    }
    let from_ms = parse_time("--from", args.from.as_deref())?;
    let to_ms = parse_time("--to", args.to.as_deref())?;
    let c = client(&args.config).await?;
    let body = json!({ "patient": args.patient, "from_ms": from_ms, "to_ms": to_ms });
    let answer = ok_json(&c, Method::POST, "/v1/disclosures", Some(body)).await?;
    let rows: Vec<Disclosure> = serde_json::from_value(answer).map_err(|e| {
        Failure::new(
            EXIT_FAILURE,
            format!("unexpected answer from the node: {e}"),
        )
    })?;
    let text = match args.format.as_str() {
        "json" => serde_json::to_string_pretty(&rows).map_err(fail)?,
        "csv" => csv_text(&rows)?,
        _ => {
            let config = super::call::load_config(&args.config)?;
            let facility = config.facility_id.to_string();
            report_html(
                &ReportHeading {
                    facility: &facility,
                    facility_name: None,
                    patient: &args.patient,
                    from_ms,
                    to_ms,
                    generated_ms: crate::trust::now_ms(),
                },
                &rows,
            )
        }
    };
    outln!("{}", text.trim_end())
}
