//! JSON error responses and the parsing of path and query parameters shared by the resources.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use gateway_envelope::TransferId;
use policies::{Category, Purpose};

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A request problem found while parsing; small, unlike a `Response`, so helpers can return it.
pub struct BadRequest(pub String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

pub fn parse_id(id: &str) -> Result<TransferId, BadRequest> {
    id.parse::<TransferId>()
        .map_err(|_| BadRequest("transfer id must be 32 hex characters".to_owned()))
}

pub fn parse_categories(list: Option<&str>) -> Result<BTreeSet<Category>, BadRequest> {
    let mut out = BTreeSet::new();
    for c in list
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        out.insert(c.parse::<Category>().map_err(|_| {
            BadRequest(format!("unknown data category {c:?}; use hiv-sti, mental-health, substance-use, reproductive-health, genetic or general"))
        })?);
    }
    Ok(out)
}

pub fn parse_purpose(p: &str) -> Result<Purpose, BadRequest> {
    p.parse::<Purpose>().map_err(|_| {
        BadRequest(
            "unknown purpose; use treatment, payment, operations, research or public-health"
                .to_owned(),
        )
    })
}
