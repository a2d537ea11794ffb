//! `gateway consent`: record, list, revoke and import patient consent directives.

use axum::body::Body;
use http::Method;
use serde_json::json;

use super::client::collect_json;

use super::args::{ConsentAction, DirectiveArgs};
use super::call::{api_failure, client, fail, ok_json, query};
use super::output::print_json;
use super::{outln, Failure, EXIT_FAILURE, EXIT_USAGE};

pub async fn consent(action: ConsentAction) -> Result<(), Failure> {
    match action {
        ConsentAction::Grant(args) => directive(args, "permit").await,
        ConsentAction::Deny(args) => directive(args, "deny").await,
        ConsentAction::Revoke { config, id } => {
            let c = client(&config).await?;
            ok_json(&c, Method::POST, &format!("/v1/consents/{id}/revoke"), None).await?;
            outln!("revoked {id}")?;
            Ok(())
        }
        ConsentAction::Show {
            config,
            patient,
            json,
        } => {
            let c = client(&config).await?;
            let q = query(&[("patient", Some(patient))]);
            let body = ok_json(&c, Method::GET, &format!("/v1/consents?{q}"), None).await?;
            if json {
                print_json(&body)?;
            } else {
                for d in body.as_array().cloned().unwrap_or_default() {
                    outln!(
                        "{}  {:<6} scope={} purposes={} categories={} until={} recorded_by={}{}",
                        d["id"].as_str().unwrap_or(""),
                        d["effect"].as_str().unwrap_or(&d["effect"].to_string()),
                        d["scope"],
                        d["purposes"],
                        d["categories"],
                        d["valid_until"],
                        d["recorded_by"].as_str().unwrap_or(""),
                        if d["revoked_at"].is_null() {
                            ""
                        } else {
                            "  REVOKED"
                        }
                    )?;
                }
            }
            Ok(())
        }
        ConsentAction::Import { config, path } => {
            let c = client(&config).await?;
            let bytes = std::fs::read(&path)
                .map_err(|e| Failure::new(EXIT_FAILURE, format!("{}: {e}", path.display())))?;
            let resp = c
                .call(
                    Method::POST,
                    "/v1/consents/import",
                    Body::from(bytes),
                    Some("application/fhir+json"),
                )
                .await
                .map_err(fail)?;
            let (status, body) = collect_json(resp).await.map_err(fail)?;
            if !status.is_success() {
                return Err(api_failure(status, &body));
            }
            for id in body["imported"].as_array().cloned().unwrap_or_default() {
                outln!("{}", id.as_str().unwrap_or_default())?;
            }
            Ok(())
        }
    }
}

async fn directive(args: DirectiveArgs, effect: &str) -> Result<(), Failure> {
    let valid_until = match &args.until {
        Some(day) => Some(
            end_of_day(day)
                .ok_or_else(|| Failure::new(EXIT_USAGE, "--until must be YYYY-MM-DD"))?,
        ),
        None => None,
    };
    let c = client(&args.config).await?;
    let body = json!({
        "patient": args.patient,
        "effect": effect,
        "facilities": args.facilities,
        "purposes": args.purposes,
        "categories": args.categories,
        "valid_until": valid_until,
        "recorded_by": args.recorded_by,
    });
    let body = ok_json(&c, Method::POST, "/v1/consents", Some(body)).await?;
    outln!("{}", body["directive_id"].as_str().unwrap_or_default())?;
    Ok(())
}

fn end_of_day(day: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(day, &format).ok()?;
    Some(
        date.with_hms(23, 59, 59)
            .ok()?
            .assume_utc()
            .unix_timestamp(),
    )
}
