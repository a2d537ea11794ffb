//! `gateway send`, `gateway transfers`, `gateway cancel` and `gateway requeue`: outbound
//! transfers.

use axum::body::Body;
use futures_util::TryStreamExt as _;
use http::{Method, StatusCode};
use serde_json::Value;
use tokio_util::io::ReaderStream;

use super::client::collect_json;

use super::args::{ConfigArg, SendArgs};
use super::call::{api_failure, client, fail, ok_json, query};
use super::output::{for_each_listed, print_json, print_listing_json};
use super::progress;
use super::{outln, Failure, EXIT_DENIED, EXIT_FAILURE, EXIT_USAGE};

/// The NOTE column of `gateway transfers`: the receipt, or the last error; and whether
/// retention removed the sealed envelope.
fn transfer_note(r: &Value) -> String {
    let mut note = if r["receipt_held"].as_bool() == Some(true) {
        "receipt verified".to_owned()
    } else {
        r["last_error"].as_str().unwrap_or("").to_owned()
    };
    if r["envelope_removed_ms"].is_u64() {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str("envelope removed by retention");
    }
    note
}

fn print_transfer_header() -> Result<(), Failure> {
    outln!(
        "{:<32}  {:<14} {:<10} {:>10} {:>8}  NOTE",
        "TRANSFER",
        "TO",
        "STATE",
        "BYTES",
        "ATTEMPTS"
    )
}

fn print_transfer_row(r: &Value) -> Result<(), Failure> {
    outln!(
        "{:<32}  {:<14} {:<10} {:>10} {:>8}  {}",
        r["transfer_id"].as_str().unwrap_or(""),
        r["to"].as_str().unwrap_or(""),
        r["state"].as_str().unwrap_or(""),
        r["payload_bytes"],
        r["attempts"],
        transfer_note(r)
    )
}

/// A file's length and SHA-256, read once.
fn file_len_and_digest(path: &std::path::Path) -> std::io::Result<(u64, [u8; 32])> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut digest = gateway_envelope::Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
    }
    Ok((len, digest.finish()))
}

pub async fn transfers(config: &ConfigArg, id: Option<&str>, json: bool) -> Result<(), Failure> {
    let c = client(config).await?;
    if let Some(id) = id {
        let body = ok_json(&c, Method::GET, &format!("/v1/transfers/{id}"), None).await?;
        if json {
            return print_json(&body);
        }
        print_transfer_header()?;
        return print_transfer_row(&body);
    }
    if json {
        return print_listing_json(&c, "/v1/transfers", &[]).await;
    }
    for_each_listed(
        &c,
        "/v1/transfers",
        &[],
        print_transfer_header,
        print_transfer_row,
    )
    .await
}

pub async fn cancel(config: &ConfigArg, id: &str) -> Result<(), Failure> {
    let c = client(config).await?;
    ok_json(
        &c,
        Method::POST,
        &format!("/v1/transfers/{id}/cancel"),
        None,
    )
    .await?;
    outln!("cancelled {id}")?;
    Ok(())
}

/// `gateway requeue --id ID`: a failed transfer goes back to the queue; prints its new state.
pub async fn requeue(config: &ConfigArg, id: &str) -> Result<(), Failure> {
    let c = client(config).await?;
    let body = ok_json(
        &c,
        Method::POST,
        &format!("/v1/transfers/{id}/requeue"),
        None,
    )
    .await?;
    outln!(
        "requeued {id}: {}",
        body["state"].as_str().unwrap_or("queued")
    )?;
    if c.is_offline() {
        eprintln!("note: the node is not running; the transfer will be delivered when it starts");
    }
    Ok(())
}

pub async fn send(args: SendArgs) -> Result<(), Failure> {
    let key = args
        .key
        .as_deref()
        .map(crate::api::idempotency::header_value)
        .transpose()
        .map_err(|problem| Failure::new(EXIT_USAGE, format!("--key: {problem}")))?;
    let c = client(&args.config).await?;
    if args.wait && c.is_offline() {
        return Err(Failure::new(
            EXIT_USAGE,
            "--wait needs a running node: nothing is delivered while it is stopped",
        ));
    }
    let file_err =
        |e: std::io::Error| Failure::new(EXIT_FAILURE, format!("{}: {e}", args.file.display()));
    // Length and SHA-256 go with the upload (Content-Length, Content-Digest): the node refuses
    // a file that changed while it was read, and can seal a large one as it arrives instead
    // of spooling it first.
    let (len, digest) = {
        let path = args.file.clone();
        tokio::task::spawn_blocking(move || file_len_and_digest(&path))
            .await
            .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?
            .map_err(file_err)?
    };
    let file = tokio::fs::File::open(&args.file).await.map_err(file_err)?;
    let bar = progress::bytes(Some(len), "sending", args.quiet);
    let counted = bar.clone();
    let waits = args.wait;
    let stream = ReaderStream::with_capacity(file, 256 * 1024).inspect_ok(move |chunk| {
        counted.inc(chunk.len() as u64);
        // With --wait the answer comes only with the outcome: say what the full bar waits for.
        if waits && counted.position() >= len {
            counted.set_message("sent; waiting for the receipt");
        }
    });
    let body = Body::from_stream(stream);
    let content_digest = crate::api::upload::content_digest_value(&digest);
    let content_length = len.to_string();
    let q = query(&[
        ("to", Some(args.to)),
        ("patient", Some(args.patient)),
        ("purpose", Some(args.purpose)),
        ("content_type", Some(args.content_type)),
        (
            "categories",
            (!args.categories.is_empty()).then(|| args.categories.join(",")),
        ),
        ("clinician", args.clinician),
        ("clinician_role", args.clinician_role),
        (
            "break_glass_reason",
            if args.break_glass { args.reason } else { None },
        ),
        ("wait", args.wait.then(|| "receipt".to_owned())),
    ]);
    let mut headers = vec![
        ("content-length", content_length.as_str()),
        ("content-digest", content_digest.as_str()),
    ];
    if let Some(key) = &key {
        headers.push((crate::api::idempotency::HEADER, key.as_str()));
    }
    let path = format!("/v1/transfers?{q}");
    let resp = c
        .call_with_headers(
            Method::POST,
            &path,
            body,
            Some("application/octet-stream"),
            &headers,
        )
        .await
        .map_err(fail);
    bar.finish_and_clear();
    let (status, body) = collect_json(resp?).await.map_err(fail)?;
    if status == StatusCode::FORBIDDEN {
        return Err(Failure::new(
            EXIT_DENIED,
            body["error"]
                .as_str()
                .unwrap_or("denied by policy")
                .to_owned(),
        ));
    }
    // With --wait a failed transfer is answered 502 with its id; anything else is an error.
    let failed = args.wait && status == StatusCode::BAD_GATEWAY && body["transfer_id"].is_string();
    if !status.is_success() && !failed {
        return Err(api_failure(status, &body));
    }
    let id = body["transfer_id"].as_str().unwrap_or_default().to_owned();
    outln!("{id}")?;
    if body["replayed"].as_bool() == Some(true) {
        eprintln!("note: a transfer with this key was already accepted; this is its id (nothing new was sent)");
    }
    if c.is_offline() {
        eprintln!("note: the node is not running; the transfer is queued and will be delivered when it starts");
    }
    if !args.wait {
        return Ok(());
    }
    let view = if status == StatusCode::ACCEPTED {
        // The node answers after WAIT_FOR_RECEIPT with the transfer still pending: keep
        // asking until it settles.
        let waiting = progress::spinner("waiting for the receipt", args.quiet);
        let settled = poll_until_settled(&c, &id).await;
        waiting.finish_and_clear();
        settled?
    } else {
        ok_json(&c, Method::GET, &format!("/v1/transfers/{id}"), None).await?
    };
    report_outcome(&id, &view)
}

/// Polls a transfer until it is delivered, failed or cancelled.
async fn poll_until_settled(c: &super::client::ApiClient, id: &str) -> Result<Value, Failure> {
    loop {
        let view = ok_json(c, Method::GET, &format!("/v1/transfers/{id}"), None).await?;
        if matches!(
            view["state"].as_str(),
            Some("delivered" | "failed" | "cancelled")
        ) {
            return Ok(view);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `send --wait`'s last line: delivered with its receipt (exit 0), or failed with the reason
/// (exit 1).
fn report_outcome(id: &str, view: &Value) -> Result<(), Failure> {
    let state = view["state"].as_str().unwrap_or("unknown");
    if state == "delivered" && view["receipt_held"].as_bool() == Some(true) {
        outln!("delivered: receipt verified")?;
        return Ok(());
    }
    let reason = view["last_error"]
        .as_str()
        .filter(|r| !r.is_empty())
        .unwrap_or(if state == "cancelled" {
            "cancelled"
        } else {
            "no reason recorded"
        });
    outln!("{state}: {reason}")?;
    Err(Failure::new(
        EXIT_FAILURE,
        format!("transfer {id} was not delivered ({state}): {reason}"),
    ))
}
