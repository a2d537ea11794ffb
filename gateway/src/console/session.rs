//! Console sessions: sign-in with an officer's API token, a random session id in an
//! `HttpOnly; SameSite=Strict` cookie (`Secure` when `console.secure_cookie`), an idle
//! timeout, and a CSRF token per session that every POST must carry.
//!
//! Sessions live in memory only: a restart signs everyone out. The table is bounded; the
//! sign-in form has its own CSRF token (a cookie and a hidden field that must match), so a
//! page elsewhere cannot sign a browser in to a session of its choosing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::audit::event;
use crate::config::Role;

use super::page::{html_response, layout, problem, see_other, Chrome};
use super::Console;

const SESSION_COOKIE: &str = "hf_console";
const SIGN_IN_COOKIE: &str = "hf_signin";
/// Signed-in sessions held at once; the least recently used goes first past this.
const MAX_SESSIONS: usize = 256;

struct Session {
    officer: String,
    csrf: String,
    last_seen: Instant,
}

pub struct Sessions {
    /// Keyed by the SHA-256 of the cookie's value, so the table holds no usable secret.
    table: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    secure: bool,
}

/// A signed-in officer, as a handler sees it (the extractor has checked the session).
pub struct Officer {
    pub name: String,
    pub csrf: String,
    facility: String,
}

impl Officer {
    pub fn chrome(&self) -> Chrome<'_> {
        Chrome {
            officer: &self.name,
            csrf: &self.csrf,
            facility: &self.facility,
        }
    }

    /// A POST's CSRF field must be this session's token (constant-time comparison): the
    /// refusal page when it is not.
    pub fn csrf_refusal(&self, presented: &str) -> Option<Response> {
        if bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            None
        } else {
            Some(problem(
                Some(&self.chrome()),
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from the console. Reload the page and try again.",
            ))
        }
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // SystemRandom reads the OS generator; if it fails, the all-zero value is refused below
    // rather than handed out.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return String::new();
    }
    hex::encode(bytes)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl Sessions {
    pub fn new(idle: Duration, secure: bool) -> Sessions {
        Sessions {
            table: Mutex::new(HashMap::new()),
            idle,
            secure,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_cookie(&self, name: &str, value: &str, clear: bool) -> Option<HeaderValue> {
        let mut c = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
        if self.secure {
            c.push_str("; Secure");
        }
        if clear {
            c.push_str("; Max-Age=0");
        }
        HeaderValue::from_str(&c).ok()
    }

    /// A new session for `officer`; returns the cookie value.
    fn open(&self, officer: &str) -> Option<String> {
        let id = random_token();
        let csrf = random_token();
        if id.is_empty() || csrf.is_empty() {
            return None;
        }
        let mut table = self.lock();
        let idle = self.idle;
        table.retain(|_, s| s.last_seen.elapsed() < idle);
        if table.len() >= MAX_SESSIONS {
            let oldest = table
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                table.remove(&k);
            }
        }
        table.insert(
            gateway_envelope::sha256(id.as_bytes()),
            Session {
                officer: officer.to_owned(),
                csrf,
                last_seen: Instant::now(),
            },
        );
        Some(id)
    }

    /// The session a request's cookie names, touched; `Err(true)` when it expired.
    fn resume(&self, headers: &HeaderMap) -> Result<(String, String), bool> {
        let id = cookie(headers, SESSION_COOKIE).ok_or(false)?;
        let key = gateway_envelope::sha256(id.as_bytes());
        let mut table = self.lock();
        let Some(session) = table.get_mut(&key) else {
            return Err(false);
        };
        if session.last_seen.elapsed() >= self.idle {
            table.remove(&key);
            return Err(true);
        }
        session.last_seen = Instant::now();
        Ok((session.officer.clone(), session.csrf.clone()))
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.lock().remove(&gateway_envelope::sha256(id.as_bytes()));
        }
    }
}

impl FromRequestParts<Console> for Officer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        match console.sessions.resume(&parts.headers) {
            Ok((name, csrf)) => Ok(Officer {
                name,
                csrf,
                facility: console.node.me().to_string(),
            }),
            Err(true) => Err(see_other("/console/sign-in?expired=1")),
            Err(false) => Err(see_other("/console/sign-in")),
        }
    }
}

#[derive(Deserialize)]
pub struct SignInQuery {
    expired: Option<u8>,
}

pub async fn sign_in_form(
    State(console): State<Console>,
    axum::extract::Query(q): axum::extract::Query<SignInQuery>,
) -> Response {
    sign_in_page(&console, StatusCode::OK, q.expired.is_some(), None)
}

fn sign_in_page(
    console: &Console,
    status: StatusCode,
    expired: bool,
    error: Option<&str>,
) -> Response {
    let csrf = random_token();
    let body = layout(
        None,
        "Security officers' console",
        html! {
            p { "Facility " strong { (console.node.me()) } ". Sign in with your officer API token." }
            @if expired {
                p class="notice" { "Your session expired after a period without activity. Please sign in again." }
            }
            @if let Some(e) = error {
                p class="problem" { (e) }
            }
            form method="post" action="/console/sign-in" class="signin" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "Officer token" }
                input type="password" id="token" name="token" autocomplete="off" required;
                button type="submit" id="sign-in" { "Sign in" }
            }
        },
    );
    let mut response = html_response(status, body);
    if let Some(c) = console.sessions.set_cookie(SIGN_IN_COOKIE, &csrf, false) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
    csrf: String,
}

pub async fn sign_in(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<SignInForm>(&body) else {
        return sign_in_page(
            &console,
            StatusCode::BAD_REQUEST,
            false,
            Some("Enter your token."),
        );
    };
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return sign_in_page(
            &console,
            StatusCode::FORBIDDEN,
            false,
            Some("The sign-in form expired. Please try again."),
        );
    }
    let token =
        crate::api::auth::authenticate(&console.node.config.local_api.token_hashes, &form.token);
    let officer = match token {
        Some(t) if t.roles.contains(Role::Officer) => t.name.clone(),
        other => {
            // Who tried is unknown (or not an officer); the audit entry names which.
            let why = match other {
                Some(t) => format!(
                    "console sign-in refused: token {} has no officer role",
                    t.name
                ),
                None => "console sign-in refused: unknown token".to_owned(),
            };
            let mut rec = crate::audit::record(event::CONSOLE_SIGN_IN, "refused");
            rec.reason = Some(why);
            if let Err(e) = crate::audit::append_durable(&console.node.store, rec).await {
                tracing::error!(error = %e, "audit write of a console sign-in refusal failed");
            }
            tracing::info!("console sign-in refused");
            return sign_in_page(
                &console,
                StatusCode::UNAUTHORIZED,
                false,
                Some("That token is not an officer token of this node."),
            );
        }
    };
    let mut rec = crate::audit::record(event::CONSOLE_SIGN_IN, "ok");
    rec.reason = Some(format!("console sign-in by {officer}"));
    if let Err(e) = crate::audit::append_durable(&console.node.store, rec).await {
        tracing::error!(error = %e, "audit write of a console sign-in failed; refused");
        return sign_in_page(
            &console,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
            Some("The audit log could not record this sign-in; you were not signed in."),
        );
    }
    let Some(id) = console.sessions.open(&officer) else {
        return sign_in_page(
            &console,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
            Some("No session could be made (random source unavailable)."),
        );
    };
    tracing::info!(officer = %officer, "console sign-in");
    let mut response = see_other("/console/");
    let h = response.headers_mut();
    if let Some(c) = console.sessions.set_cookie(SESSION_COOKIE, &id, false) {
        h.append(header::SET_COOKIE, c);
    }
    if let Some(c) = console.sessions.set_cookie(SIGN_IN_COOKIE, "", true) {
        h.append(header::SET_COOKIE, c);
    }
    response
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

pub async fn sign_out(
    State(console): State<Console>,
    officer: Officer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let csrf = serde_urlencoded::from_bytes::<CsrfForm>(&body)
        .map(|f| f.csrf)
        .unwrap_or_default();
    if let Some(refused) = officer.csrf_refusal(&csrf) {
        return refused;
    }
    console.sessions.close(&headers);
    let mut rec = crate::audit::record(event::CONSOLE_SIGN_OUT, "ok");
    rec.reason = Some(format!("console sign-out by {}", officer.name));
    if let Err(e) = crate::audit::append_durable(&console.node.store, rec).await {
        tracing::error!(error = %e, "audit write of a console sign-out failed");
    }
    let mut response = see_other("/console/sign-in");
    if let Some(c) = console.sessions.set_cookie(SESSION_COOKIE, "", true) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_idles_out() {
        let sessions = Sessions::new(Duration::from_millis(50), false);
        let id = sessions.open("officer-1").unwrap_or_default();
        assert_eq!(id.len(), 64);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {SESSION_COOKIE}={id}"))
                .unwrap_or(HeaderValue::from_static("")),
        );
        let resumed = sessions.resume(&headers);
        assert!(matches!(&resumed, Ok((name, _)) if name == "officer-1"));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(sessions.resume(&headers).err(), Some(true));
        assert_eq!(sessions.resume(&headers).err(), Some(false));
        let flags = sessions.set_cookie(SESSION_COOKIE, "x", false);
        assert_eq!(
            flags.as_ref().and_then(|v| v.to_str().ok()),
            Some("hf_console=x; Path=/console; HttpOnly; SameSite=Strict")
        );
        let secure = Sessions::new(Duration::from_secs(1), true);
        assert!(secure
            .set_cookie(SESSION_COOKIE, "x", false)
            .and_then(|v| v.to_str().ok().map(|s| s.ends_with("; Secure")))
            .unwrap_or(false));
    }
}
