//! Who may call what: the bearer-token check in front of every `/v1` route (constant-time hash
//! comparison with `subtle`, not a hand-written loop the optimizer may shortcut) and the route
//! table that names the role each route needs.
//!
//! Invariant: the role check is one `route_layer` over the whole `/v1` router, and it looks
//! the matched route up in [`ROUTES`]; a route that is not in the table is refused to every
//! token, so a new route cannot be served without a role. A refusal is 403 and audited.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::audit::event;
use crate::config::{Role, Roles, TokenHash};

use super::error::error;
use super::Shared;

/// Every `/v1` route (method, path as routed) and the role it needs. Add a route here when
/// you add it to `api::router`: until then every token is refused it (403).
pub const ROUTES: &[(&str, &str, Role)] = &[
    // emr: submit, transfers, inbox, pull requests, records.
    ("POST", "/v1/transfers", Role::Emr),
    ("GET", "/v1/transfers", Role::Emr),
    ("GET", "/v1/transfers/{id}", Role::Emr),
    ("POST", "/v1/transfers/{id}/cancel", Role::Emr),
    ("POST", "/v1/transfers/{id}/requeue", Role::Emr),
    ("GET", "/v1/inbox", Role::Emr),
    ("GET", "/v1/inbox/{id}", Role::Emr),
    ("GET", "/v1/inbox/{id}/payload", Role::Emr),
    ("POST", "/v1/inbox/{id}/ack", Role::Emr),
    ("POST", "/v1/requests", Role::Emr),
    ("GET", "/v1/requests", Role::Emr),
    ("PUT", "/v1/records/{patient}", Role::Emr),
    // officer: the audit log and its evidence, reviews, exports, disclosures, consent read.
    ("GET", "/v1/audit", Role::Officer),
    ("GET", "/v1/audit/verify", Role::Officer),
    ("GET", "/v1/audit/tree", Role::Officer),
    ("GET", "/v1/audit/tree/inclusion", Role::Officer),
    ("GET", "/v1/audit/tree/consistency", Role::Officer),
    ("GET", "/v1/audit/checkpoint", Role::Officer),
    ("POST", "/v1/audit/checkpoint", Role::Officer),
    ("POST", "/v1/audit/archive", Role::Officer),
    ("GET", "/v1/evidence/transfers/{id}", Role::Officer),
    ("GET", "/v1/witness", Role::Officer),
    ("POST", "/v1/disclosures", Role::Officer),
    ("GET", "/v1/consents", Role::Officer),
    // consent-admin: consent write.
    ("POST", "/v1/consents", Role::ConsentAdmin),
    ("POST", "/v1/consents/import", Role::ConsentAdmin),
    ("POST", "/v1/consents/{id}/revoke", Role::ConsentAdmin),
    // operator: the policy set, status, backup.
    ("POST", "/v1/policy/check", Role::Operator),
    ("POST", "/v1/policy/reload", Role::Operator),
    ("GET", "/v1/status", Role::Operator),
    ("POST", "/v1/backup", Role::Operator),
];

/// The role a route needs, or `None` for a route missing from [`ROUTES`]. `HEAD` is routed
/// as `GET` by axum and needs what `GET` needs.
pub fn role_for(method: &Method, path: &str) -> Option<Role> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, role)| *role)
}

/// The name (from the config) of the token a request was authorized with, for audit entries
/// that record who acted. Never the token itself.
#[derive(Clone)]
pub struct TokenName(pub String);

/// Who a request acted as, for its audit entry: the token's name, or `local-api`.
pub fn acting(token: Option<axum::Extension<TokenName>>) -> String {
    token.map_or_else(|| "local-api".to_owned(), |t| t.0 .0)
}

/// The configured token a presented secret is, if any. Every configured hash is compared, in
/// constant time, whichever matches: neither the time nor the order of the comparisons tells
/// a caller how close a guess was.
pub fn authenticate<'a>(tokens: &'a [TokenHash], presented: &str) -> Option<&'a TokenHash> {
    let hash = gateway_envelope::sha256(presented.trim().as_bytes());
    let mut found = None;
    for t in tokens {
        if bool::from(t.sha256.ct_eq(&hash)) && found.is_none() {
            found = Some(t);
        }
    }
    found
}

/// At start: one warning per token whose config names no roles, with the default it gets.
pub fn warn_defaulted_roles(tokens: &[TokenHash]) {
    for t in tokens.iter().filter(|t| t.roles_defaulted) {
        tracing::warn!(
            token = %t.name,
            "local_api.tokens: token {:?} names no roles and gets the deprecated default \
             roles = [{}] (every route); give it only the roles it needs, e.g. \
             roles = [\"emr\"] (README, Roles on the local API)",
            t.name,
            Roles::LEGACY_DEFAULT
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

pub async fn require_token(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = presented.and_then(|p| authenticate(&state.config.local_api.token_hashes, p))
    else {
        return error(StatusCode::UNAUTHORIZED, "missing or unknown API token");
    };
    // The route as routed (`/v1/records/{patient}`), never the request's path: that can carry
    // a patient id, and the refusal is logged and audited.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    match role_for(req.method(), &route) {
        Some(role) if token.roles.contains(role) => {}
        needed => {
            return refuse(&state, token, req.method(), &route, needed).await;
        }
    }
    req.extensions_mut().insert(TokenName(token.name.clone()));
    next.run(req).await
}

/// 403 for a token without the route's role, after its audit entry is durable (if the log
/// cannot take it the request is refused all the same).
async fn refuse(
    state: &Shared,
    token: &TokenHash,
    method: &Method,
    route: &str,
    needed: Option<Role>,
) -> Response {
    let why = match needed {
        Some(role) => format!(
            "{method} {route} needs role {role}; token {} has {}",
            token.name, token.roles
        ),
        None => {
            tracing::error!(%method, route, "local api route has no role in api::auth::ROUTES; refused");
            format!("{method} {route} has no role assigned; refused to every token")
        }
    };
    let mut rec = crate::audit::record(event::ACCESS_REFUSED, "refused");
    rec.reason = Some(why.clone());
    if let Err(e) = crate::audit::append_durable(&state.store, rec).await {
        tracing::error!(error = %e, "audit write of a role refusal failed");
    }
    tracing::info!(token = %token.name, %method, route, "local api request refused: role");
    error(StatusCode::FORBIDDEN, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_has_one_role_and_head_is_get() {
        for (i, (m, p, _)) in ROUTES.iter().enumerate() {
            let dup = ROUTES
                .iter()
                .skip(i + 1)
                .any(|(m2, p2, _)| m == m2 && p == p2);
            assert!(!dup, "{m} {p} is listed twice");
        }
        assert_eq!(role_for(&Method::GET, "/v1/audit"), Some(Role::Officer));
        assert_eq!(role_for(&Method::HEAD, "/v1/audit"), Some(Role::Officer));
        assert_eq!(role_for(&Method::POST, "/v1/audit"), None);
        assert_eq!(role_for(&Method::GET, "/v1/nowhere"), None);
    }
}
