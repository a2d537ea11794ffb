//! `Idempotency-Key` on `POST /v1/transfers` (draft-ietf-httpapi-idempotency-key-header): a
//! caller that retries a submission whose answer it did not get (a timeout, a crash of either
//! side) sends the same key, and gets the transfer its first attempt created instead of a
//! second one.
//!
//! The key is scoped to the API token the request was authorized with and stored with a
//! digest of the request (the body's SHA-256 and every parameter that defines the transfer)
//! in the transaction that queues the transfer (`gateway_store::Store::outbox_insert_keyed`).
//! The same key and request answer with the original transfer; the same key with another
//! request is 409; a key whose first request is still being processed is 409 with
//! `Retry-After` (not a wait: the first request may take minutes for a large upload, and the
//! caller's retry policy knows better than the node how long to keep a connection open).
//! Only accepted submissions are remembered: a refused one (400, 403) is decided afresh on its
//! retry, e.g. once the patient's consent is recorded.
//!
//! The key is caller-chosen text and might name a patient despite the documentation's advice
//! to use opaque keys, so it is never logged, stored (only a keyed hash is) or echoed.

use std::fmt;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use gateway_envelope::TransferId;
use gateway_store::{KeyLookup, KeyReservation};

use crate::send::outbox::SubmitRequest;
use crate::state::NodeState;
use crate::trust::now_ms;

use super::error::error;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer header that marks a replayed answer (as several payment APIs name it).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key accepted, in characters (printable ASCII, so also bytes).
pub const MAX_KEY_LEN: usize = 255;

/// A caller's key, checked: 1 to [`MAX_KEY_LEN`] printable ASCII characters. Its text is
/// never shown (`Debug` redacts).
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses the header's value: an RFC 8941 string (`"…"`, the draft's form) or, for callers
    /// that send it bare, the key itself as a token of visible ASCII (no spaces, no leading
    /// quote); both forms of the same text are the same key.
    pub fn parse(value: &HeaderValue) -> Result<IdempotencyKey, &'static str> {
        let bytes = value.as_bytes();
        let text = if bytes.first() == Some(&b'"') {
            match sfv::Parser::new(bytes).parse::<sfv::Item>() {
                Ok(sfv::Item {
                    bare_item: sfv::BareItem::String(s),
                    params,
                }) if params.is_empty() => s.as_str().to_owned(),
                _ => {
                    return Err("Idempotency-Key must be a structured-field string (\"…\", printable ASCII, no parameters) or a bare key of visible ASCII")
                }
            }
        } else if bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
            // Checked: every byte is visible ASCII, so this is UTF-8.
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            return Err("Idempotency-Key must be printable ASCII without control characters");
        };
        if text.is_empty() {
            return Err("Idempotency-Key must not be empty");
        }
        if text.len() > MAX_KEY_LEN {
            return Err("Idempotency-Key longer than 255 characters");
        }
        Ok(IdempotencyKey(text))
    }

    /// The key from the request headers, if one was sent; more than one is refused.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, &'static str> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err("more than one Idempotency-Key header");
        }
        IdempotencyKey::parse(value).map(Some)
    }
}

/// The header value a client sends for `key`: an RFC 8941 string, serialized by `sfv` (quotes
/// and backslashes escaped); the key is checked as the node checks it.
pub fn header_value(key: &str) -> Result<String, &'static str> {
    let not_string = "the key must be 1 to 255 printable ASCII characters";
    let string = sfv::StringRef::from_str(key).map_err(|_| not_string)?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(not_string);
    }
    Ok(sfv::ItemSerializer::new().bare_item(string).finish())
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdempotencyKey(<redacted>)")
    }
}

/// SHA-256 of everything that defines the transfer a submission asks for: recipient, patient,
/// purpose, content type, declared categories, clinician and role, break-glass reason, and the
/// body's SHA-256. Each field is length-prefixed (and an absent one is not an empty one), so
/// no two requests share an encoding. `wait` is not part of it: it changes when the caller is
/// answered, not what is sent.
pub fn request_digest(req: &SubmitRequest, body_sha256: &[u8; 32]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"healthfed/idempotency-request/1\0");
    let mut field = |value: Option<&str>| match value {
        None => ctx.update(&[0]),
        Some(v) => {
            ctx.update(&[1]);
            ctx.update(&(v.len() as u64).to_be_bytes());
            ctx.update(v.as_bytes());
        }
    };
    let purpose = req.purpose.to_string();
    field(Some(&req.to));
    field(Some(req.patient.reveal()));
    field(Some(&purpose));
    field(Some(req.content_type.mime()));
    let categories: Vec<String> = req.categories.iter().map(ToString::to_string).collect();
    field(Some(&categories.len().to_string()));
    for c in &categories {
        field(Some(c));
    }
    field(req.clinician.as_deref());
    field(req.clinician_role.as_deref());
    field(req.break_glass_reason.as_deref());
    ctx.update(body_sha256);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What a keyed submission does next.
pub enum Begin {
    /// Submit; record the key with the transfer (held until the submission returns).
    Submit(KeyReservation),
    /// Answer with this transfer, created by the key's first request.
    Replay(TransferId),
    /// Refuse with this answer (409, or 500 when the store could not be read).
    Refused(Response),
}

/// Looks the key up for this caller (`scope`: its token name) and request, reserving it when
/// it is new.
pub fn begin(
    state: &NodeState,
    scope: &str,
    key: &IdempotencyKey,
    request_digest: [u8; 32],
) -> Begin {
    let window_ms = state
        .config
        .local_api
        .idempotency_window_secs
        .saturating_mul(1000);
    match state
        .store
        .idempotency_begin(scope, &key.0, request_digest, now_ms(), window_ms)
    {
        Ok(KeyLookup::New(reservation)) => Begin::Submit(reservation),
        Ok(KeyLookup::Replay(record)) => Begin::Replay(TransferId(record.transfer_id)),
        Ok(KeyLookup::Mismatch(record)) => Begin::Refused(
            (
                StatusCode::CONFLICT,
                Json(json!({
                    "error": "Idempotency-Key was already used for a different request (other body or parameters); use a new key for a new record",
                    "transfer_id": TransferId(record.transfer_id).to_string(),
                })),
            )
                .into_response(),
        ),
        Ok(KeyLookup::InProgress) => {
            let mut answer = error(
                StatusCode::CONFLICT,
                "a request with this Idempotency-Key is still being processed; retry later",
            );
            answer
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            Begin::Refused(answer)
        }
        Err(e) => {
            tracing::error!(error = %e, "idempotency key lookup failed");
            Begin::Refused(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "local system error; nothing was queued",
            ))
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8]) -> Result<String, &'static str> {
        IdempotencyKey::parse(&HeaderValue::from_bytes(raw).unwrap()).map(|k| k.0)
    }

    #[test]
    fn structured_string_and_bare_forms_are_the_same_key() {
        assert_eq!(parsed(b"\"order-17\""), Ok("order-17".to_owned()));
        assert_eq!(parsed(b"order-17"), Ok("order-17".to_owned()));
        assert_eq!(
            parsed(b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
            Ok("8e03978e-40d5-43e8-bc93-6894a57f9324".to_owned())
        );
        // An sf-string may hold spaces and escaped quotes; a bare key may not hold spaces.
        assert_eq!(parsed(br#""a \"b\" c""#), Ok(r#"a "b" c"#.to_owned()));
        assert!(parsed(b"a b").is_err());
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(parsed(longest.as_bytes()), Ok(longest.clone()));
        assert_eq!(parsed(format!("\"{longest}\"").as_bytes()), Ok(longest));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            &b""[..],
            b"\"\"",
            b"\"unterminated",
            b"\"a\";p=1",
            b"\"a\", \"b\"",
            b"a\tb",
            b"\"a\tb\"",
            "caf\u{e9}".as_bytes(),
            b"\"caf\xc3\xa9\"",
        ] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
        assert!(parsed("k".repeat(MAX_KEY_LEN + 1).as_bytes()).is_err());
        assert!(parsed(format!("\"{}\"", "k".repeat(MAX_KEY_LEN + 1)).as_bytes()).is_err());
    }

    #[test]
    fn a_client_header_value_reads_back_as_its_key() {
        for key in ["order-17", r#"a "quoted" \ key"#, &"k".repeat(MAX_KEY_LEN)] {
            let value = header_value(key).unwrap();
            assert_eq!(parsed(value.as_bytes()), Ok(key.to_owned()), "{value}");
        }
        for bad in ["", "tab\there", "caf\u{e9}", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert!(header_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_is_not_shown() {
        let key = IdempotencyKey::parse(&HeaderValue::from_static("Patient-12345")).unwrap();
        assert!(!format!("{key:?}").contains("12345"));
    }
}
