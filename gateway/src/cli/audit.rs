//! `gateway audit`: list the audit log and verify its hash chain.

use http::Method;
use serde_json::Value;

use super::args::AuditAction;
use super::call::{client, fail};
use super::output::{for_each_listed, no_header, print_listing_json};
use super::{outln, Failure, EXIT_FAILURE};

pub async fn audit(action: AuditAction) -> Result<(), Failure> {
    match action {
        AuditAction::Verify(config) => {
            let c = client(&config).await?;
            let (status, body) = c
                .json(Method::GET, "/v1/audit/verify", None)
                .await
                .map_err(fail)?;
            if status.is_success() && body["ok"].as_bool() == Some(true) {
                outln!("audit chain verified: {} entries", body["entries"])?;
                Ok(())
            } else {
                Err(Failure::new(
                    EXIT_FAILURE,
                    format!(
                        "audit chain does NOT verify: {}",
                        body["error"].as_str().unwrap_or("unknown error")
                    ),
                ))
            }
        }
        AuditAction::List {
            config,
            json,
            patient,
            transfer,
            break_glass,
        } => {
            let c = client(&config).await?;
            let filter = [
                ("patient", patient),
                ("transfer", transfer),
                ("break_glass", break_glass.then(|| "true".to_owned())),
            ];
            if json {
                return print_listing_json(&c, "/v1/audit", &filter).await;
            }
            for_each_listed(&c, "/v1/audit", &filter, no_header, print_audit_row).await
        }
        AuditAction::Export(args) => super::export::export(args).await,
    }
}

pub fn print_audit_row(r: &Value) -> Result<(), Failure> {
    let time = r["time_ms"]
        .as_u64()
        .and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let policies = r["policy_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    outln!(
        "#{:<5} {} {:<18} {:<18} peer={:<12} transfer={} outcome={}{}{}{}",
        r["seq"],
        time,
        r["event"].as_str().unwrap_or(""),
        r["purpose"].as_str().unwrap_or("-"),
        r["peer"].as_str().unwrap_or("-"),
        r["transfer_id"]
            .as_str()
            .map(|t| t.get(..12).unwrap_or(t))
            .unwrap_or("-"),
        r["outcome"].as_str().unwrap_or(""),
        if r["break_glass"].as_bool() == Some(true) {
            " BREAK-GLASS"
        } else {
            ""
        },
        if policies.is_empty() {
            String::new()
        } else {
            format!(" policies=[{policies}]")
        },
        r["reason"]
            .as_str()
            .map(|s| format!(" reason=\"{s}\""))
            .unwrap_or_default(),
    )
}
