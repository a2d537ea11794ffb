//! `gateway request` and `gateway requests`: pull requests sent to peers.

use http::Method;
use serde_json::json;

use super::args::{ConfigArg, RequestArgs};
use super::call::{client, ok_json};
use super::output::print_json;
use super::{outln, Failure, EXIT_DENIED, EXIT_FAILURE};

pub async fn request(args: RequestArgs) -> Result<(), Failure> {
    let c = client(&args.config).await?;
    let body = json!({
        "from": args.from,
        "patient": args.patient,
        "purpose": args.purpose,
        "clinician": args.clinician,
        "clinician_role": args.clinician_role,
        "categories": args.categories,
        "break_glass_reason": if args.break_glass { args.reason } else { None },
    });
    let body = ok_json(&c, Method::POST, "/v1/requests", Some(body)).await?;
    let state = body["state"].as_str().unwrap_or("");
    outln!(
        "request {} {}{}{}",
        body["id"].as_str().unwrap_or(""),
        state,
        body["transfer_id"]
            .as_str()
            .map(|t| format!(" transfer {t}"))
            .unwrap_or_default(),
        body["reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    )?;
    if state == "denied" {
        return Err(Failure::new(
            EXIT_DENIED,
            format!("request denied: {}", body["reason"].as_str().unwrap_or("")),
        ));
    }
    if state == "failed" {
        return Err(Failure::new(EXIT_FAILURE, "request failed"));
    }
    Ok(())
}

pub async fn list_requests(config: &ConfigArg, json: bool) -> Result<(), Failure> {
    let c = client(config).await?;
    let body = ok_json(&c, Method::GET, "/v1/requests", None).await?;
    if json {
        print_json(&body)?;
    } else {
        outln!(
            "{:<32}  {:<14} {:<10} {:<32}  REASON",
            "REQUEST",
            "FROM",
            "STATE",
            "TRANSFER"
        )?;
        for r in body.as_array().cloned().unwrap_or_default() {
            outln!(
                "{:<32}  {:<14} {:<10} {:<32}  {}",
                r["id"].as_str().unwrap_or(""),
                r["from"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                r["transfer_id"].as_str().unwrap_or("-"),
                r["reason"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}
