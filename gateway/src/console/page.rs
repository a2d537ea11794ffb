//! The page shell every console page shares (navigation, the sign-out form, the stylesheet),
//! the response headers that make pages safe to render (CSP and friends), and the small
//! formatting helpers the pages use.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

/// No script may run and nothing may load from elsewhere: the console is plain HTML and one
/// stylesheet of its own; forms post only back to the console; no page can be framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub const STYLESHEET: &str = include_str!("console.css");

/// Headers on every console response, signed in or not.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Pages show audit data: not kept by the browser's or a proxy's cache.
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

/// Who is signed in and the session's CSRF token, for the navigation's sign-out form.
pub struct Chrome<'a> {
    pub officer: &'a str,
    pub csrf: &'a str,
    pub facility: &'a str,
}

/// A full page: navigation (when signed in), a title and the content.
pub fn layout(chrome: Option<&Chrome<'_>>, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · healthfed console" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                @if let Some(c) = chrome {
                    header class="nav" {
                        span class="brand" { "healthfed · " (c.facility) }
                        nav {
                            a href="/console/" { "Overview" }
                            a href="/console/audit" { "Audit search" }
                            a href="/console/break-glass" { "Break-glass reviews" }
                            a href="/console/disclosures" { "Disclosures" }
                        }
                        form method="post" action="/console/sign-out" class="signout" {
                            input type="hidden" name="csrf" value=(c.csrf);
                            span { "Signed in as " strong { (c.officer) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page that only says what went wrong (no detail that could carry patient data).
pub fn problem(chrome: Option<&Chrome<'_>>, status: StatusCode, message: &str) -> Response {
    html_response(
        status,
        layout(
            chrome,
            "Not possible",
            html! { p class="problem" { (message) } },
        ),
    )
}

/// A 303 to another console page (after a POST, or to the sign-in page).
pub fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `2026-12-03 06:40:12 UTC` (the console shows UTC: audit times are compared across
/// facilities).
pub fn time(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => ms.to_string(),
    }
}

/// A `datetime-local` or date form value (`2026-12-03T06:40`, `2026-12-03`), read as UTC.
pub fn parse_form_time(value: &str) -> Option<u64> {
    use time::macros::format_description;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let t = time::PrimitiveDateTime::parse(
        value,
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    )
    .or_else(|_| {
        time::PrimitiveDateTime::parse(
            value,
            format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        )
    })
    .or_else(|_| {
        time::Date::parse(value, format_description!("[year]-[month]-[day]")).map(|d| d.midnight())
    })
    .ok()?;
    u64::try_from(t.assume_utc().unix_timestamp())
        .ok()?
        .checked_mul(1000)
}

/// Bytes for people: `12.3 KiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
    }
}

/// An outcome with the class the stylesheet colours by (refusals stand out).
pub fn outcome(o: &str) -> Markup {
    let class = if is_refusal(o) { "bad" } else { "ok" };
    html! { span class=(class) { (o) } }
}

/// Outcomes that mean "refused": the overview counts refusals by these.
pub fn is_refusal(outcome: &str) -> bool {
    matches!(
        outcome,
        "deny" | "refused" | "connection-refused" | "rejected" | "duplicate"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times_read_as_utc_and_sizes_read_as_people_write_them() {
        assert_eq!(parse_form_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_form_time("1970-01-01T00:01"), Some(60_000));
        assert_eq!(parse_form_time(""), None);
        assert_eq!(parse_form_time("yesterday"), None);
        assert_eq!(time(86_400_000), "1970-01-02 00:00:00 UTC");
        assert_eq!(size(100), "100 B");
        assert_eq!(size(1536), "1.5 KiB");
    }
}
