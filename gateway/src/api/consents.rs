//! `/v1/consents`: record, list, revoke and import (FHIR Consent) patient consent directives.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use gateway_envelope::TransferId;
use policies::consent::{import_fhir_consent, ConsentDirective};
use policies::{Category, Purpose};

use crate::access::consent_directives;
use crate::audit::{self, event};
use crate::record::PatientRef;
use crate::state::NodeState;
use crate::trust::now_unix;

use super::auth::{acting, TokenName};
use super::error::error;
use super::Shared;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    pub patient: String,
    /// "permit" or "deny"
    pub effect: String,
    /// Facility ids, or ["all"].
    pub facilities: Vec<String>,
    pub purposes: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    pub valid_until: Option<i64>,
    pub recorded_by: String,
}

pub async fn post_consent(
    State(state): State<Shared>,
    token: Option<axum::Extension<TokenName>>,
    Json(input): Json<ConsentInput>,
) -> Response {
    let directive = match directive_from_input(&input) {
        Ok(d) => d,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    match store_directive(&state, &directive, "recorded", &acting(token)).await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({ "directive_id": directive.id })),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn directive_from_input(input: &ConsentInput) -> Result<ConsentDirective, String> {
    use policies::consent::{Effect, Scope};
    PatientRef::parse(&input.patient).map_err(|e| e.to_string())?;
    let effect = match input.effect.as_str() {
        "permit" | "grant" => Effect::Permit,
        "deny" => Effect::Deny,
        _ => return Err("effect must be permit or deny".to_owned()),
    };
    let scope = if input.facilities.iter().any(|f| f == "all") {
        Scope::AllFederation
    } else if input.facilities.is_empty() {
        return Err("name at least one facility, or all".to_owned());
    } else {
        for f in &input.facilities {
            f.parse::<pki_tools::FacilityId>()
                .map_err(|_| format!("{f:?} is not a facility id"))?;
        }
        Scope::Facilities(input.facilities.clone())
    };
    let purposes = input
        .purposes
        .iter()
        .map(|p| {
            p.parse::<Purpose>()
                .map_err(|_| format!("unknown purpose {p:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let categories = input
        .categories
        .iter()
        .map(|c| {
            c.parse::<Category>()
                .map_err(|_| format!("unknown data category {c:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ConsentDirective {
        id: format!(
            "cd-{}",
            TransferId::new_random().map_err(|e| e.to_string())?
        ),
        patient: input.patient.clone(),
        effect,
        scope,
        purposes,
        categories,
        valid_from: Some(now_unix()),
        valid_until: input.valid_until,
        recorded_by: input.recorded_by.clone(),
        recorded_at: now_unix(),
        revoked_at: None,
        source: None,
        emergency_only: false,
    })
}

/// Stores the directive and its `consent-changed` audit entry in one transaction, durable
/// before the caller answers.
async fn store_directive(
    state: &NodeState,
    d: &ConsentDirective,
    what: &str,
    by: &str,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(d).map_err(|e| e.to_string())?;
    let mut rec = audit::record(event::CONSENT, what);
    rec.patient_ref = Some(d.patient.clone());
    rec.clinician = Some(d.recorded_by.clone());
    rec.reason = Some(format!("directive {}, {what} by {by}", d.id));
    state
        .store
        .consent_put_audited(&d.patient, &d.id, &bytes, vec![rec])
        .map_err(|e| e.to_string())?;
    state.store.commit().await.map_err(|e| e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientQuery {
    patient: String,
}

pub async fn list_consents(State(state): State<Shared>, Query(q): Query<PatientQuery>) -> Response {
    match consent_directives(&state, &q.patient) {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeInput {
    recorded_by: Option<String>,
}

pub async fn revoke_consent(
    State(state): State<Shared>,
    Path(id): Path<String>,
    token: Option<axum::Extension<TokenName>>,
    body: Option<Json<RevokeInput>>,
) -> Response {
    let found = match state.store.consent_get(&id) {
        Ok(Some((_, bytes))) => bytes,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no consent directive {id}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Ok(mut directive) = serde_json::from_slice::<ConsentDirective>(&found) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored directive unreadable",
        );
    };
    if directive.revoked_at.is_some() {
        return error(
            StatusCode::CONFLICT,
            format!("directive {id} is already revoked"),
        );
    }
    directive.revoked_at = Some(now_unix());
    if let Some(Json(RevokeInput {
        recorded_by: Some(by),
    })) = body
    {
        directive.recorded_by = by;
    }
    match store_directive(&state, &directive, "revoked", &acting(token)).await {
        Ok(()) => Json(json!({ "directive_id": id, "revoked": true })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub async fn import_consent(
    State(state): State<Shared>,
    token: Option<axum::Extension<TokenName>>,
    body: Bytes,
) -> Response {
    let by = acting(token);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    match import_fhir_consent(&value, "fhir-import", now_unix()) {
        Ok(directives) => {
            let mut ids = Vec::new();
            for d in &directives {
                if let Err(e) = store_directive(&state, d, "imported", &by).await {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, e);
                }
                ids.push(d.id.clone());
            }
            (StatusCode::CREATED, Json(json!({ "imported": ids }))).into_response()
        }
        Err(refusal) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("consent not imported: {}", refusal.reason),
        ),
    }
}
