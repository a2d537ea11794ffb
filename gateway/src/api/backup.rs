//! `POST /v1/backup` (role operator): a consistent backup of the running node's store as a
//! tar stream (`application/x-tar`, see `backup`). The CLI encrypts it to the operator's
//! passphrase as it arrives, so the passphrase never reaches the node. The backup is audited
//! (who, with or without keys) before anything is served, and the copy is taken before the
//! answer starts, so a failure to take it is a plain error status, not a cut stream.

use std::io::{self, Write};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::auth::{acting, TokenName};
use super::error::error;
use super::Shared;
use crate::audit::event;
use crate::backup::create;

/// Bytes per chunk of the answer.
const CHUNK: usize = 256 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupQuery {
    /// Also the patient index key and the keyring (the CLI's `--include-keys`).
    #[serde(default)]
    include_keys: bool,
}

pub async fn post_backup(
    State(state): State<Shared>,
    query: Result<Query<BackupQuery>, QueryRejection>,
    token: Option<axum::Extension<TokenName>>,
) -> Response {
    let include_keys = match query {
        Ok(Query(q)) => q.include_keys,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let mut rec = crate::audit::record(event::BACKUP_TAKEN, "ok");
    rec.reason = Some(format!(
        "{} by {}",
        if include_keys {
            "with keys"
        } else {
            "without keys"
        },
        acting(token)
    ));
    if let Err(refused) = super::audit::record_read_durably(&state, rec).await {
        return refused;
    }
    let (store, data_dir) = (state.store.clone(), state.config.data_dir.clone());
    let prepared = tokio::task::spawn_blocking(move || {
        create::Prepared::take(&store, &data_dir, include_keys)
    })
    .await;
    let prepared = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "backup: the store copy failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    };
    let counts = prepared.counts();
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
    let facility = state.me().to_string();
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        match prepared.write_tar(&facility, out) {
            Ok(m) => tracing::info!(
                files = m.files.len(),
                audit_size = m.store.audit_size,
                keys = m.keys_included,
                "backup taken"
            ),
            Err(e) => {
                tracing::error!(error = %e, "backup: writing the archive failed");
                // Ends the answer with an error, so the client never takes it for complete.
                let _ = tx.blocking_send(Err(io::Error::other("backup failed on the node")));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                header::HeaderName::from_static("x-backup-audit-size"),
                counts.audit_size.to_string(),
            ),
            (
                header::HeaderName::from_static("x-backup-envelopes"),
                counts.envelopes.to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The tar writer's end of the answer: chunks go to the body stream; a client that went away
/// makes the next write fail, which stops the backup and removes its staging directory.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
