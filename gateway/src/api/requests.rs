//! `/v1/requests`: send a pull request to a peer and list the requests sent.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::pull::requests::{self, NewRequest};
use crate::record::PatientRef;

use super::error::{error, parse_categories, parse_purpose};
use super::Shared;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    from: String,
    patient: String,
    purpose: String,
    clinician: String,
    clinician_role: Option<String>,
    #[serde(default)]
    categories: Vec<String>,
    break_glass_reason: Option<String>,
}

pub async fn post_request(
    State(state): State<Shared>,
    Json(input): Json<RequestInput>,
) -> Response {
    let patient = match PatientRef::parse(&input.patient) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let purpose = match parse_purpose(&input.purpose) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let categories = match parse_categories(Some(&input.categories.join(","))) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let req = NewRequest {
        from: input.from,
        patient,
        purpose,
        clinician: input.clinician,
        clinician_role: input.clinician_role,
        categories,
        break_glass_reason: input.break_glass_reason,
    };
    match requests::send(&state, req).await {
        Ok(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

pub async fn list_requests(State(state): State<Shared>) -> Response {
    match requests::list(&state) {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
