//! `/v1/policy`: ask the policy engine a question (dry run) and reload the policy set.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use policies::{Action, Category};

use crate::access::{decide, Question};

use super::error::{error, parse_categories, parse_purpose};
use super::Shared;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCheckInput {
    /// "send" (to the facility) or "receive"/"request" (from it).
    pub direction: String,
    pub facility: String,
    pub patient: String,
    pub purpose: String,
    #[serde(default)]
    pub categories: Vec<String>,
    pub clinician_role: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    pub content_type: Option<String>,
}

pub async fn policy_check(
    State(state): State<Shared>,
    Json(input): Json<PolicyCheckInput>,
) -> Response {
    let trust = state.trust();
    let Some(peer) = trust.peer_by_str(&input.facility) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "facility {} is not in the federation directory",
                input.facility
            ),
        );
    };
    let purpose = match parse_purpose(&input.purpose) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let mut categories = match parse_categories(Some(&input.categories.join(","))) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if categories.is_empty() {
        categories.insert(Category::General);
    }
    // Ask exactly what the transfer paths ask: an inbound break-glass record is a receive with
    // the flag (this node is the recipient); only outbound break-glass is the breakGlass action.
    let action = match (input.direction.as_str(), input.break_glass) {
        ("receive", _) => Action::Receive,
        ("send" | "request", true) => Action::BreakGlass,
        ("send", false) => Action::Send,
        ("request", false) => Action::Request,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "direction must be send, receive or request",
            )
        }
    };
    let content_type = input
        .content_type
        .unwrap_or_else(|| "application/fhir+json".to_owned());
    let (decision, _) = decide(
        &state,
        &Question {
            action,
            counterparty: &peer,
            patient: &input.patient,
            categories: &categories,
            content_type: &content_type,
            purpose,
            clinician_role: input.clinician_role.as_deref(),
            break_glass: input.break_glass,
            asserted: None,
        },
    );
    Json(json!({
        "allowed": decision.allowed,
        "decision": if decision.allowed { "permit" } else { "deny" },
        "policy_ids": decision.policy_ids,
        "reason": decision.reason,
        "errors": decision.errors,
        "categories": categories.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }))
    .into_response()
}

pub async fn policy_reload(State(state): State<Shared>) -> Response {
    match state.policy.reload_now() {
        Ok(()) => {
            Json(json!({ "reloaded": true, "policy_ids": state.policy.engine().policy_ids() }))
                .into_response()
        }
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("policy set refused, previous set stays active: {e}"),
        ),
    }
}
