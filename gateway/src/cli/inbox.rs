//! `gateway inbox`: list, show, fetch (decrypted to a file) and acknowledge received transfers.

use std::path::Path;

use axum::body::Body;
use futures_util::TryStreamExt;
use http::Method;
use tokio::io::AsyncWriteExt;

use super::client::collect_json;

use super::args::{ConfigArg, InboxAction};
use super::call::{api_failure, client, fail, ok_json};
use super::output::{for_each_listed, print_listing_json};
use super::progress;
use super::{outln, Failure, EXIT_FAILURE};

pub async fn inbox(config: &ConfigArg, action: InboxAction) -> Result<(), Failure> {
    let c = client(config).await?;
    match action {
        InboxAction::List { json } => {
            if json {
                return print_listing_json(&c, "/v1/inbox", &[]).await;
            }
            let header = || {
                outln!(
                    "{:<32}  {:<14} {:>10}  ACKNOWLEDGED",
                    "TRANSFER",
                    "FROM",
                    "BYTES"
                )
            };
            for_each_listed(&c, "/v1/inbox", &[], header, |r| {
                let removed = if r["envelope_removed_ms"].is_u64() {
                    " (envelope removed by retention)"
                } else {
                    ""
                };
                outln!(
                    "{:<32}  {:<14} {:>10}  {}{removed}",
                    r["transfer_id"].as_str().unwrap_or(""),
                    r["from"].as_str().unwrap_or(""),
                    r["payload_bytes"],
                    r["acknowledged"]
                )
            })
            .await
        }
        InboxAction::Get { id, out, quiet } => {
            let resp = c
                .call(
                    Method::GET,
                    &format!("/v1/inbox/{id}/payload"),
                    Body::empty(),
                    None,
                )
                .await
                .map_err(fail)?;
            if !resp.status().is_success() {
                let (status, body) = collect_json(resp).await.map_err(fail)?;
                return Err(api_failure(status, &body));
            }
            let total = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let bar = progress::bytes(total, "receiving", quiet);
            let written = write_stream_to(resp.into_body(), &out, &bar).await;
            bar.finish_and_clear();
            written?;
            outln!("wrote {}", out.display())?;
            Ok(())
        }
        InboxAction::Ack { id } => {
            ok_json(&c, Method::POST, &format!("/v1/inbox/{id}/ack"), None).await?;
            outln!("acknowledged {id}")?;
            Ok(())
        }
    }
}

/// Streams a response body to a 0600 temp file beside `out`, then renames it into place, so a
/// failed decryption leaves nothing behind.
async fn write_stream_to(
    body: Body,
    out: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(), Failure> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("record")
    ));
    let io = |e: std::io::Error| Failure::new(EXIT_FAILURE, format!("{}: {e}", tmp.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .await
        .map_err(io)?;
    let mut stream = body.into_data_stream();
    loop {
        match stream.try_next().await {
            Ok(Some(chunk)) => {
                file.write_all(&chunk).await.map_err(io)?;
                bar.inc(chunk.len() as u64);
            }
            Ok(None) => break,
            Err(e) => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(Failure::new(
                    EXIT_FAILURE,
                    format!("record could not be decrypted: {e}"),
                ));
            }
        }
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(&tmp, out).await.map_err(io)
}
