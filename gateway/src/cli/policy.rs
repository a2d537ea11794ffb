//! `gateway policy`: ask the policy engine a question and reload the policy set.

use http::Method;
use serde_json::{json, Value};

use super::args::PolicyAction;
use super::call::{client, ok_json};
use super::{outln, Failure, EXIT_DENIED, EXIT_USAGE};

pub async fn policy(action: PolicyAction) -> Result<(), Failure> {
    match action {
        PolicyAction::Check {
            config,
            to,
            from,
            patient,
            purpose,
            categories,
            clinician_role,
            break_glass,
        } => {
            let c = client(&config).await?;
            let (direction, facility) = match (to, from) {
                (Some(to), None) => ("send", to),
                (None, Some(from)) => ("receive", from),
                _ => {
                    return Err(Failure::new(
                        EXIT_USAGE,
                        "give exactly one of --to or --from",
                    ))
                }
            };
            let body = json!({
                "direction": direction,
                "facility": facility,
                "patient": patient,
                "purpose": purpose,
                "categories": categories,
                "clinician_role": clinician_role,
                "break_glass": break_glass,
            });
            let body = ok_json(&c, Method::POST, "/v1/policy/check", Some(body)).await?;
            let policies = body["policy_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            outln!("decision: {}", body["decision"].as_str().unwrap_or(""))?;
            outln!(
                "determining policies: {}",
                if policies.is_empty() {
                    "(none: default deny)"
                } else {
                    &policies
                }
            )?;
            outln!("reason: {}", body["reason"].as_str().unwrap_or(""))?;
            if let Some(errors) = body["errors"].as_array().filter(|e| !e.is_empty()) {
                outln!("evaluation errors: {}", Value::Array(errors.clone()))?;
            }
            if body["allowed"].as_bool() == Some(true) {
                Ok(())
            } else {
                Err(Failure::new(EXIT_DENIED, String::new()))
            }
        }
        PolicyAction::Reload(config) => {
            let c = client(&config).await?;
            ok_json(&c, Method::POST, "/v1/policy/reload", None).await?;
            outln!("policy set reloaded")?;
            Ok(())
        }
    }
}
