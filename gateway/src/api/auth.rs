//! The bearer-token check in front of every `/v1` route (constant-time hash comparison with
//! `subtle`, not a hand-written loop the optimizer may shortcut).

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::error;
use super::Shared;

/// The name (from the config) of the token a request was authorized with, for audit entries
/// that record who acted. Never the token itself.
#[derive(Clone)]
pub struct TokenName(pub String);

/// Who a request acted as, for its audit entry: the token's name, or `local-api`.
pub fn acting(token: Option<axum::Extension<TokenName>>) -> String {
    token.map_or_else(|| "local-api".to_owned(), |t| t.0 .0)
}

pub async fn require_token(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| gateway_envelope::sha256(t.trim().as_bytes()));
    // Every configured hash is compared, in constant time, whichever matches: neither the
    // time nor the order of the comparisons tells a caller how close a guess was.
    let matched = presented.and_then(|hash| {
        let mut found = None;
        for t in &state.config.local_api.token_hashes {
            if bool::from(t.sha256.ct_eq(&hash)) && found.is_none() {
                found = Some(t);
            }
        }
        found
    });
    let Some(token) = matched else {
        return error(StatusCode::UNAUTHORIZED, "missing or unknown API token");
    };
    req.extensions_mut().insert(TokenName(token.name.clone()));
    next.run(req).await
}
