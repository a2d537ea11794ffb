//! Listings served a page at a time: `limit`, a cursor, and `Link: rel="next"`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use gateway_envelope::TransferId;

use super::error::{error, parse_id, BadRequest};

/// Entries a listing returns when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 1000;
/// The largest `limit` a listing accepts: a page is built in memory, and a node's outbox,
/// inbox and audit log grow without bound.
pub const MAX_PAGE: usize = 10_000;

pub(super) fn page_limit(limit: Option<usize>) -> Result<usize, BadRequest> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}

/// The transfer listings' query: `after` is the last transfer id of the previous page.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

impl PageQuery {
    fn parse(&self) -> Result<(Option<TransferId>, usize), BadRequest> {
        let after = self.after.as_deref().map(parse_id).transpose()?;
        Ok((after, page_limit(self.limit)?))
    }

    fn next(after: TransferId, limit: usize) -> PageQuery {
        PageQuery {
            after: Some(after.to_string()),
            limit: Some(limit),
        }
    }
}

/// One page of a transfer listing (outbox or inbox): `read` takes the cursor and the limit,
/// `id_of` gives an entry's id (the next page's cursor), `view` what is shown of it.
pub(super) fn transfer_page<E, V: Serialize>(
    path: &str,
    q: &PageQuery,
    read: impl FnOnce(Option<&[u8; 16]>, usize) -> Result<Vec<E>, gateway_store::StoreError>,
    id_of: fn(&E) -> [u8; 16],
    view: impl Fn(&E) -> V,
) -> Response {
    let (after, limit) = match q.parse() {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match read(after.map(|t| t.0).as_ref(), limit) {
        Ok(entries) => {
            let next = next_after(&entries, limit, |e| {
                PageQuery::next(TransferId(id_of(e)), limit)
            });
            paged(path, next, entries.iter().map(view).collect::<Vec<_>>())
        }
        Err(gateway_store::StoreError::NotFound { id, .. }) => error(
            StatusCode::NOT_FOUND,
            format!("after: no transfer {id} in this listing"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A full page may have a successor: the query of the next one, from the page's last entry.
pub(super) fn next_after<T, C>(
    entries: &[T],
    limit: usize,
    cursor: impl FnOnce(&T) -> C,
) -> Option<C> {
    if entries.len() < limit {
        return None;
    }
    entries.last().map(cursor)
}

/// A page as a JSON array, with an RFC 8288 `Link: <…>; rel="next"` header when there may be
/// more (the array stays the whole body, so clients that read one page are unchanged).
pub(super) fn paged<Q: Serialize, T: Serialize>(
    path: &str,
    next: Option<Q>,
    items: Vec<T>,
) -> Response {
    let mut response = Json(items).into_response();
    let link = next
        .and_then(|q| serde_urlencoded::to_string(q).ok())
        .and_then(|q| header::HeaderValue::from_str(&format!("<{path}?{q}>; rel=\"next\"")).ok());
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}
