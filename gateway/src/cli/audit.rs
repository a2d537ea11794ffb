//! `gateway audit`: list the audit log; verify its chain, tree and witnesses' cosignatures
//! (with archives); archive its head; its checkpoint and proofs.

use http::Method;
use serde_json::Value;

use axum::body::Body;
use http::StatusCode;
use http_body_util::BodyExt as _;

use super::args::{AuditAction, AuditVerifyArgs, ConfigArg};
use super::call::{client, fail, load_config, ok_json, query};
use super::output::{for_each_listed, no_header, print_listing_json};
use super::{outln, Failure, EXIT_FAILURE};
use crate::evidence::archive;

pub async fn audit(action: AuditAction) -> Result<(), Failure> {
    match action {
        AuditAction::Verify(args) => verify(args).await,
        AuditAction::Archive {
            config,
            before,
            out,
        } => archive(&config, &before, &out).await,
        AuditAction::Checkpoint(config) => {
            let c = client(&config).await?;
            let resp = c
                .call(Method::POST, "/v1/audit/checkpoint", Body::empty(), None)
                .await
                .map_err(fail)?;
            let (status, body) = raw_body(resp).await?;
            if !status.is_success() {
                return Err(Failure::new(EXIT_FAILURE, String::from_utf8_lossy(&body)));
            }
            super::write_out(format_args!("{}", String::from_utf8_lossy(&body)))
        }
        AuditAction::Proof { config, seq, size } => {
            let c = client(&config).await?;
            let q = query(&[
                ("seq", Some(seq.to_string())),
                ("size", size.map(|s| s.to_string())),
            ]);
            let v = ok_json(
                &c,
                Method::GET,
                &format!("/v1/audit/tree/inclusion?{q}"),
                None,
            )
            .await?;
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        AuditAction::Consistency {
            config,
            first,
            second,
        } => {
            let c = client(&config).await?;
            let q = query(&[
                ("first", Some(first.to_string())),
                ("second", second.map(|s| s.to_string())),
            ]);
            let v = ok_json(
                &c,
                Method::GET,
                &format!("/v1/audit/tree/consistency?{q}"),
                None,
            )
            .await?;
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
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

async fn raw_body(resp: http::Response<Body>) -> Result<(StatusCode, Vec<u8>), Failure> {
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(fail)?.to_bytes();
    Ok((status, body.to_vec()))
}

/// `audit verify [--archive FILE…]`: the live log through the API; archives offline (with the
/// config's CA certificate), then that they and the live log are one history.
async fn verify(args: AuditVerifyArgs) -> Result<(), Failure> {
    let broken =
        |why: String| Failure::new(EXIT_FAILURE, format!("audit log does NOT verify: {why}"));
    let archived = if args.archive.is_empty() {
        None
    } else {
        let config = load_config(&args.config)?;
        let ca = super::evidence::read_ca(&config.keys.ca_cert)?;
        let mut files = Vec::new();
        for path in &args.archive {
            files.push(super::evidence::read_bounded(
                path,
                archive::MAX_FILE_BYTES,
            )?);
        }
        let end = archive::verify_chain(&files, &ca, crate::trust::now_unix())
            .map_err(|r| broken(r.to_string()))?;
        if end.log != config.facility_id.as_str() {
            return Err(broken(format!("the archives are of {}'s log", end.log)));
        }
        if end.first_seq != 1 || end.first_prev != [0; 32] {
            return Err(broken(format!(
                "the archives start at seq {}: the archive of the entries before is missing",
                end.first_seq
            )));
        }
        Some(end)
    };
    let c = client(&args.config).await?;
    let path = if args.with_peers {
        "/v1/audit/verify?with_peers=true"
    } else {
        "/v1/audit/verify"
    };
    let (status, body) = c.json(Method::GET, path, None).await.map_err(fail)?;
    if !status.is_success() || body["ok"].as_bool() != Some(true) {
        return Err(broken(
            body["error"].as_str().unwrap_or("unknown error").to_owned(),
        ));
    }
    let floor = body["archived_through"].as_u64().unwrap_or(0);
    if let Some(end) = &archived {
        use base64::Engine as _;
        let live_link = body["archived_hash"].as_str().unwrap_or("");
        let b64 = base64::engine::general_purpose::STANDARD;
        if end.last_seq != floor || b64.encode(end.last_hash) != live_link {
            return Err(broken(format!(
                "the archives end at seq {}, the live log continues after seq {floor}",
                end.last_seq
            )));
        }
        let head = ok_json(
            &c,
            Method::GET,
            &format!("/v1/audit/tree?size={floor}"),
            None,
        )
        .await?;
        let root = gateway_store::merkle::Frontier::from_heads(floor, end.frontier.clone())
            .map(|f| b64.encode(f.root()));
        if root.as_deref() != head["root_hash"].as_str() {
            return Err(broken(
                "the live tree at the floor is not the archives' tree".to_owned(),
            ));
        }
        for (first, last, size, witnesses) in &end.archives {
            let names: Vec<&str> = witnesses.iter().map(|w| w.id.as_str()).collect();
            outln!(
                "archive of entries {first} to {last} verified: checkpoint of {size} entries, cosigned by [{}]",
                names.join(", ")
            )?;
        }
    }
    outln!(
        "audit chain verified: {} entries{}",
        body["entries"],
        if floor > 0 {
            format!(
                " ({floor} archived{})",
                if archived.is_some() {
                    ", verified with the live log"
                } else {
                    "; pass --archive to verify them"
                }
            )
        } else {
            String::new()
        }
    )?;
    for line in body["peers"].as_array().into_iter().flatten() {
        outln!("{}", line.as_str().unwrap_or(""))?;
    }
    match body["checkpoint_size"].as_u64() {
        Some(size) => {
            let witnesses: Vec<&str> = body["witnesses"]
                .as_array()
                .map(|w| w.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            outln!(
                "tree and checkpoints verified; latest checkpoint {size} entries, cosigned by [{}]",
                witnesses.join(", ")
            )
        }
        None => outln!("tree verified; no checkpoint yet"),
    }
}

/// `audit archive --before DATE --out FILE`.
async fn archive(config: &ConfigArg, before: &str, out: &std::path::Path) -> Result<(), Failure> {
    let before_ms = parse_date_ms(before).ok_or_else(|| {
        Failure::new(
            super::EXIT_USAGE,
            "--before: an RFC 3339 date (2026-01-01) or time (2026-01-01T00:00:00Z)",
        )
    })?;
    let c = client(config).await?;
    let resp = c
        .call(
            Method::POST,
            "/v1/audit/archive",
            Body::from(serde_json::json!({ "before_ms": before_ms }).to_string()),
            Some("application/json"),
        )
        .await
        .map_err(fail)?;
    let range = resp
        .headers()
        .get("x-archive-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (status, body) = raw_body(resp).await?;
    if !status.is_success() {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(super::call::api_failure(status, &v));
    }
    super::evidence::write_file(out, &body)?;
    outln!("archived entries {range} to {}", out.display())
}

/// Unix ms of an RFC 3339 time, or of midnight UTC of a `YYYY-MM-DD` date.
fn parse_date_ms(text: &str) -> Option<u64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .or_else(|| time::OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339).ok())?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}
