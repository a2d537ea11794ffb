//! The bearer-token check in front of every `/v1` route (constant-time hash comparison).

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::error;
use super::Shared;

/// The name (from the config) of the token a request was authorized with, for audit entries
/// that record who acted. Never the token itself.
#[derive(Clone)]
pub struct TokenName(pub String);

pub async fn require_token(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| gateway_envelope::sha256(t.trim().as_bytes()));
    let matched = presented.and_then(|hash| {
        state
            .config
            .local_api
            .token_hashes
            .iter()
            .find(|t| ring_eq(&t.sha256, &hash))
    });
    let Some(token) = matched else {
        return error(StatusCode::UNAUTHORIZED, "missing or unknown API token");
    };
    req.extensions_mut().insert(TokenName(token.name.clone()));
    next.run(req).await
}

fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}
