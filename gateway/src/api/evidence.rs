//! `/v1/evidence`: a transfer's disclosure evidence file (`gateway::evidence::bundle`), for an
//! inspector who verifies it offline. The export is audited before anything is served.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::audit::event;
use crate::evidence::export::{export, ExportError};

use super::audit::record_read_durably;
use super::auth::{acting, TokenName};
use super::error::{error, parse_id};
use super::Shared;

/// `GET /v1/evidence/transfers/{id}`: the evidence file (`application/json`). 409 when the
/// transfer cannot be proven from this node (no receipt, header or live entry, or no kept
/// directory lists a key that signed a part).
pub async fn transfer_evidence(
    State(state): State<Shared>,
    Path(id): Path<String>,
    token: Option<axum::Extension<TokenName>>,
) -> Response {
    let transfer = match parse_id(&id) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let mut rec = crate::audit::record(event::AUDIT_READ, "read");
    rec.reason = Some(format!(
        "evidence exported for transfer {id} by {}",
        acting(token)
    ));
    if let Err(refused) = record_read_durably(&state, rec).await {
        return refused;
    }
    let id_hex = hex::encode(transfer.0);
    match export(&state, &id_hex, transfer.0).await {
        Ok(file) => ([(header::CONTENT_TYPE, "application/json")], file).into_response(),
        Err(e @ ExportError::Unknown(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ExportError::Local(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}
