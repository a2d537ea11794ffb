//! `/v1/records`: store a record in the node's own record source, for peers' pull requests.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::pull::records::{RecordSource, SourceRecord, StoreRecordSource};
use crate::record::{ContentType, PatientRef};

use super::error::error;
use super::Shared;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordQuery {
    content_type: Option<String>,
}

pub async fn put_record(
    State(state): State<Shared>,
    Path(patient): Path<String>,
    Query(q): Query<RecordQuery>,
    token: Option<axum::Extension<super::auth::TokenName>>,
    body: Bytes,
) -> Response {
    let patient_ref = match PatientRef::parse(&patient) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let content_type = match ContentType::parse(q.content_type.as_deref().unwrap_or("fhir")) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // What is held for pull requests is checked like a submission: the label must fit the
    // bytes, and a record about a patient must be about this one.
    if let Err(e) = crate::record::inspect(
        &content_type,
        &patient_ref,
        &BTreeSet::new(),
        None,
        None,
        crate::record::Content::Whole(&body),
    ) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let source = StoreRecordSource::new(state.clone());
    let record = SourceRecord {
        content_type,
        payload: body,
    };
    // Audited with who stored it, in the record's own transaction, durable before the answer.
    let mut rec = crate::audit::record(crate::audit::event::RECORD_STORED, "stored");
    rec.patient_ref = Some(patient_ref.reveal().to_owned());
    rec.reason = Some(format!(
        "{} held for pull requests, stored by {}",
        record.content_type.mime(),
        super::auth::acting(token)
    ));
    let stored = tokio::task::block_in_place(|| source.put(patient_ref.reveal(), &record, rec));
    match stored {
        Ok(()) => match state.store.commit().await {
            Ok(()) => (StatusCode::CREATED, Json(json!({ "stored": true }))).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "record store commit failed");
                error(StatusCode::INTERNAL_SERVER_ERROR, "local system error")
            }
        },
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
