//! The `gateway` command line. `run` starts a node; the other commands talk to a node's local
//! API (or open its state in-process when it is not running), so they go through the same
//! checks as the EMR.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axum::body::Body;
use clap::{Args, Parser, Subcommand};
use futures_util::TryStreamExt;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

pub mod client;

use crate::config::NodeConfig;
use client::{collect_json, ApiClient};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_DENIED: u8 = 3;
pub const EXIT_USAGE: u8 = 64;
/// The reader of our output went away (`gateway audit list | head`): the status a tool killed
/// by SIGPIPE reports, without a message.
pub const EXIT_OUTPUT_CLOSED: u8 = 141;

/// `println!` for commands: a write error is returned instead of panicking, so a closed pipe
/// ends the command quietly and a full disk is reported. stdout is line-buffered, so each
/// line reaches the reader (and any error surfaces) without an explicit flush.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

pub(crate) fn write_out(text: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(text).map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Failure::new(EXIT_OUTPUT_CLOSED, ""),
        _ => Failure::new(EXIT_FAILURE, format!("cannot write the output: {e}")),
    })
}

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Secure record-exchange gateway between healthcare facilities"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct ConfigArg {
    /// The node's configuration file (node.toml).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a node until SIGTERM (drain) or SIGINT (fast exit).
    Run(ConfigArg),
    /// Validate a node's config, keys, directory, CRL and policies, then exit.
    Check(ConfigArg),
    /// Send a record to another facility; prints the transfer id.
    Send(SendArgs),
    /// List transfers this node sends (or one, with --id).
    Transfers {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a transfer that has not been delivered yet.
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        id: String,
    },
    /// Records received from other facilities.
    Inbox {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: InboxAction,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Patient consent directives.
    Consent {
        #[command(subcommand)]
        action: ConsentAction,
    },
    /// Ask another facility for a patient's records.
    Request(RequestArgs),
    /// Requests this node has sent, with their state.
    Requests {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// The records this node holds for pull requests (filled by the EMR).
    Records {
        #[command(subcommand)]
        action: RecordsAction,
    },
    /// Policy decisions, without side effects.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Run a local demo federation: CA, three facilities, three nodes, one real transfer.
    Demo {
        /// Where to create the federation (a temp dir by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Stop after the demo transfer; exit 0 only if it was delivered and its receipt verified.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub patient: String,
    #[arg(long)]
    pub purpose: String,
    #[arg(long)]
    pub file: PathBuf,
    /// fhir (default), ccda, pdf, dicom, or a MIME type.
    #[arg(long, default_value = "fhir")]
    pub content_type: String,
    /// Declared data categories (the gateway adds what it finds in FHIR bundles).
    #[arg(long = "category")]
    pub categories: Vec<String>,
    #[arg(long)]
    pub clinician: Option<String>,
    #[arg(long)]
    pub clinician_role: Option<String>,
    #[arg(long, requires = "reason")]
    pub break_glass: bool,
    #[arg(long, requires = "break_glass")]
    pub reason: Option<String>,
}

#[derive(Subcommand)]
pub enum InboxAction {
    List {
        #[arg(long)]
        json: bool,
    },
    Get {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
    Ack {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum AuditAction {
    /// Exit 0 only if the whole chain verifies; otherwise name the first bad entry.
    Verify(ConfigArg),
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        patient: Option<String>,
        #[arg(long)]
        transfer: Option<String>,
        /// Only break-glass entries, for review.
        #[arg(long)]
        break_glass: bool,
    },
}

#[derive(Args)]
pub struct DirectiveArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long)]
    pub patient: String,
    /// A facility id, or `all` for the whole federation (repeatable).
    #[arg(long = "facility", required = true)]
    pub facilities: Vec<String>,
    #[arg(long = "purpose", required = true)]
    pub purposes: Vec<String>,
    #[arg(long = "category")]
    pub categories: Vec<String>,
    /// Last day the directive applies (YYYY-MM-DD, inclusive).
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value = "cli")]
    pub recorded_by: String,
}

#[derive(Subcommand)]
pub enum ConsentAction {
    Grant(DirectiveArgs),
    Deny(DirectiveArgs),
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        id: String,
    },
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        json: bool,
    },
    /// Import a FHIR R4 Consent resource (JSON).
    Import {
        #[command(flatten)]
        config: ConfigArg,
        path: PathBuf,
    },
}

#[derive(Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub patient: String,
    #[arg(long)]
    pub purpose: String,
    #[arg(long)]
    pub clinician: String,
    #[arg(long)]
    pub clinician_role: Option<String>,
    #[arg(long = "category")]
    pub categories: Vec<String>,
    #[arg(long, requires = "reason")]
    pub break_glass: bool,
    #[arg(long, requires = "break_glass")]
    pub reason: Option<String>,
}

#[derive(Subcommand)]
pub enum RecordsAction {
    Put {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "fhir")]
        content_type: String,
    },
}

#[derive(Subcommand)]
pub enum PolicyAction {
    /// Print the decision and the determining policy ids; exit 0 on permit, 3 on deny.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        to: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        purpose: String,
        #[arg(long = "category")]
        categories: Vec<String>,
        #[arg(long)]
        clinician_role: Option<String>,
        #[arg(long)]
        break_glass: bool,
    },
    /// Reload the policy set of a running node (like SIGHUP).
    Reload(ConfigArg),
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

fn load_config(arg: &ConfigArg) -> Result<NodeConfig, Failure> {
    NodeConfig::load(&arg.config).map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))
}

async fn client(arg: &ConfigArg) -> Result<ApiClient, Failure> {
    let config = load_config(arg)?;
    ApiClient::connect(&config)
        .await
        .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))
}

fn api_failure(status: StatusCode, body: &Value) -> Failure {
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    Failure::new(EXIT_FAILURE, format!("{} ({})", message, status.as_u16()))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<(&str, String)> = pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect();
    serde_urlencoded::to_string(present).unwrap_or_default()
}

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

fn print_json(v: &Value) -> Result<(), Failure> {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
}

/// Prints a JSON array an element at a time, exactly as `print_json` prints the whole array,
/// so that a listing of any length is never held in memory.
#[derive(Default)]
struct JsonArrayOut {
    started: bool,
}

impl JsonArrayOut {
    fn item(&mut self, v: &Value) -> Result<(), Failure> {
        let piece = json_array_item(v, !self.started);
        self.started = true;
        write_out(format_args!("{piece}"))
    }

    fn finish(self) -> Result<(), Failure> {
        write_out(format_args!("{}", json_array_end(self.started)))
    }
}

/// One element of a pretty-printed array, with what precedes it (the opening bracket or the
/// comma after the previous element).
fn json_array_item(v: &Value, first: bool) -> String {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut piece = String::from(if first { "[" } else { "," });
    // Pretty JSON escapes newlines inside strings, so every line break is structural.
    for line in pretty.lines() {
        piece.push_str("\n  ");
        piece.push_str(line);
    }
    piece
}

fn json_array_end(any_item: bool) -> &'static str {
    if any_item {
        "\n]\n"
    } else {
        "[]\n"
    }
}

/// Reads the listing at `path` a page at a time, following the node's `Link: rel="next"`
/// headers, and hands each entry to `each`, so memory on both ends stays at one page.
/// `filter` narrows the listing; `header` is printed before the first entry.
async fn for_each_listed(
    c: &ApiClient,
    path: &str,
    filter: &[(&str, Option<String>)],
    header: fn() -> Result<(), Failure>,
    mut each: impl FnMut(&Value) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let q = query(filter);
    let mut next = Some(if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    });
    let mut header = Some(header);
    while let Some(page_path) = next.take() {
        let page = c.page(&page_path).await.map_err(fail)?;
        if !page.status.is_success() {
            return Err(api_failure(page.status, &page.body));
        }
        let Value::Array(items) = page.body else {
            return Err(Failure::new(
                EXIT_FAILURE,
                format!("{path}: the node did not answer with a list"),
            ));
        };
        // Printed once the node has answered, so a refusal leaves stdout empty.
        if let Some(header) = header.take() {
            header()?;
        }
        for item in &items {
            each(item)?;
        }
        next = page.next;
    }
    Ok(())
}

/// A whole listing as one JSON array, printed a page at a time.
async fn print_listing_json(
    c: &ApiClient,
    path: &str,
    filter: &[(&str, Option<String>)],
) -> Result<(), Failure> {
    let mut out = JsonArrayOut::default();
    for_each_listed(c, path, filter, no_header, |r| out.item(r)).await?;
    out.finish()
}

fn no_header() -> Result<(), Failure> {
    Ok(())
}

/// Runs a client command (everything but `run` and `demo`).
pub async fn run_command(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run(_) | Command::Demo { .. } => {
            Err(Failure::new(EXIT_USAGE, "internal: not a client command"))
        }
        Command::Check(arg) => {
            let config = load_config(&arg)?;
            let (_stop, rx) = tokio::sync::watch::channel(false);
            let state = crate::node::load_state(config, rx)
                .map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))?;
            let trust = state.trust();
            outln!(
                "ok: facility {} ; directory version {} lists {} facilities ; {} policies ; sends {}",
                state.me(),
                trust.directory.version,
                trust.directory.facilities.len(),
                state.policy.engine().policy_ids().len(),
                state.config.delivery.envelope_suite.name()
            )?;
            Ok(())
        }
        Command::Send(args) => send(args).await,
        Command::Transfers { config, id, json } => {
            let c = client(&config).await?;
            if let Some(id) = &id {
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
        Command::Cancel { config, id } => {
            let c = client(&config).await?;
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
        Command::Inbox { config, action } => inbox(&config, action).await,
        Command::Audit { action } => audit(action).await,
        Command::Consent { action } => consent(action).await,
        Command::Request(args) => request(args).await,
        Command::Requests { config, json } => {
            let c = client(&config).await?;
            let body = ok_json(&c, Method::GET, "/v1/requests", None).await?;
            if json {
                print_json(&body)?;
            } else {
                outln!(
                    "{:<32}  {:<14} {:<10} {:<32}  REASON",
                    "REQUEST",
                    "FROM",
                    "STATE",
                    "TRANSFER"
                )?;
                for r in body.as_array().cloned().unwrap_or_default() {
                    outln!(
                        "{:<32}  {:<14} {:<10} {:<32}  {}",
                        r["id"].as_str().unwrap_or(""),
                        r["from"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or(""),
                        r["transfer_id"].as_str().unwrap_or("-"),
                        r["reason"].as_str().unwrap_or("")
                    )?;
                }
            }
            Ok(())
        }
        Command::Records { action } => match action {
            RecordsAction::Put {
                config,
                patient,
                file,
                content_type,
            } => {
                let c = client(&config).await?;
                let bytes = std::fs::read(&file)
                    .map_err(|e| Failure::new(EXIT_FAILURE, format!("{}: {e}", file.display())))?;
                let path = format!(
                    "/v1/records/{}?{}",
                    encode_segment(&patient),
                    query(&[("content_type", Some(content_type))])
                );
                let resp = c
                    .call(Method::PUT, &path, Body::from(bytes), None)
                    .await
                    .map_err(fail)?;
                let (status, body) = collect_json(resp).await.map_err(fail)?;
                if !status.is_success() {
                    return Err(api_failure(status, &body));
                }
                outln!("stored the record for this patient")?;
                Ok(())
            }
        },
        Command::Policy { action } => policy(action).await,
    }
}

/// Calls the API and insists on a 2xx answer, turning anything else into a failure that
/// carries the API's error text.
async fn ok_json(
    c: &ApiClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let (status, body) = c.json(method, path, body).await.map_err(fail)?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(api_failure(status, &body))
    }
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(EXIT_FAILURE, e.to_string())
}

fn encode_segment(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_owned())
        .unwrap_or_default()
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

async fn send(args: SendArgs) -> Result<(), Failure> {
    let c = client(&args.config).await?;
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
    let body = Body::from_stream(ReaderStream::with_capacity(file, 256 * 1024));
    let content_digest = {
        use base64::Engine as _;
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
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
    ]);
    let resp = c
        .call_with_headers(
            Method::POST,
            &format!("/v1/transfers?{q}"),
            body,
            Some("application/octet-stream"),
            &[
                ("content-length", &content_length),
                ("content-digest", &content_digest),
            ],
        )
        .await
        .map_err(fail)?;
    let (status, body) = collect_json(resp).await.map_err(fail)?;
    if status == StatusCode::FORBIDDEN {
        return Err(Failure::new(
            EXIT_DENIED,
            body["error"]
                .as_str()
                .unwrap_or("denied by policy")
                .to_owned(),
        ));
    }
    if !status.is_success() {
        return Err(api_failure(status, &body));
    }
    outln!("{}", body["transfer_id"].as_str().unwrap_or_default())?;
    if c.is_offline() {
        eprintln!("note: the node is not running; the transfer is queued and will be delivered when it starts");
    }
    Ok(())
}

async fn inbox(config: &ConfigArg, action: InboxAction) -> Result<(), Failure> {
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
        InboxAction::Get { id, out } => {
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
            write_stream_to(resp.into_body(), &out).await?;
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
async fn write_stream_to(body: Body, out: &Path) -> Result<(), Failure> {
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
            Ok(Some(chunk)) => file.write_all(&chunk).await.map_err(io)?,
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

async fn audit(action: AuditAction) -> Result<(), Failure> {
    match action {
        AuditAction::Verify(config) => {
            let c = client(&config).await?;
            let (status, body) = c
                .json(Method::GET, "/v1/audit/verify", None)
                .await
                .map_err(fail)?;
            if status.is_success() && body["ok"].as_bool() == Some(true) {
                outln!("audit chain verified: {} entries", body["entries"])?;
                Ok(())
            } else {
                Err(Failure::new(
                    EXIT_FAILURE,
                    format!(
                        "audit chain does NOT verify: {}",
                        body["error"].as_str().unwrap_or("unknown error")
                    ),
                ))
            }
        }
        AuditAction::List {
            config,
            json,
            patient,
            transfer,
            break_glass,
        } => {
            let c = client(&config).await?;
            let filter = [
                ("patient", patient),
                ("transfer", transfer),
                ("break_glass", break_glass.then(|| "true".to_owned())),
            ];
            if json {
                return print_listing_json(&c, "/v1/audit", &filter).await;
            }
            for_each_listed(&c, "/v1/audit", &filter, no_header, print_audit_row).await
        }
    }
}

pub fn print_audit_row(r: &Value) -> Result<(), Failure> {
    let time = r["time_ms"]
        .as_u64()
        .and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let policies = r["policy_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    outln!(
        "#{:<5} {} {:<18} {:<18} peer={:<12} transfer={} outcome={}{}{}{}",
        r["seq"],
        time,
        r["event"].as_str().unwrap_or(""),
        r["purpose"].as_str().unwrap_or("-"),
        r["peer"].as_str().unwrap_or("-"),
        r["transfer_id"]
            .as_str()
            .map(|t| t.get(..12).unwrap_or(t))
            .unwrap_or("-"),
        r["outcome"].as_str().unwrap_or(""),
        if r["break_glass"].as_bool() == Some(true) {
            " BREAK-GLASS"
        } else {
            ""
        },
        if policies.is_empty() {
            String::new()
        } else {
            format!(" policies=[{policies}]")
        },
        r["reason"]
            .as_str()
            .map(|s| format!(" reason=\"{s}\""))
            .unwrap_or_default(),
    )
}

async fn consent(action: ConsentAction) -> Result<(), Failure> {
    match action {
        ConsentAction::Grant(args) => directive(args, "permit").await,
        ConsentAction::Deny(args) => directive(args, "deny").await,
        ConsentAction::Revoke { config, id } => {
            let c = client(&config).await?;
            ok_json(&c, Method::POST, &format!("/v1/consents/{id}/revoke"), None).await?;
            outln!("revoked {id}")?;
            Ok(())
        }
        ConsentAction::Show {
            config,
            patient,
            json,
        } => {
            let c = client(&config).await?;
            let q = query(&[("patient", Some(patient))]);
            let body = ok_json(&c, Method::GET, &format!("/v1/consents?{q}"), None).await?;
            if json {
                print_json(&body)?;
            } else {
                for d in body.as_array().cloned().unwrap_or_default() {
                    outln!(
                        "{}  {:<6} scope={} purposes={} categories={} until={} recorded_by={}{}",
                        d["id"].as_str().unwrap_or(""),
                        d["effect"].as_str().unwrap_or(&d["effect"].to_string()),
                        d["scope"],
                        d["purposes"],
                        d["categories"],
                        d["valid_until"],
                        d["recorded_by"].as_str().unwrap_or(""),
                        if d["revoked_at"].is_null() {
                            ""
                        } else {
                            "  REVOKED"
                        }
                    )?;
                }
            }
            Ok(())
        }
        ConsentAction::Import { config, path } => {
            let c = client(&config).await?;
            let bytes = std::fs::read(&path)
                .map_err(|e| Failure::new(EXIT_FAILURE, format!("{}: {e}", path.display())))?;
            let resp = c
                .call(
                    Method::POST,
                    "/v1/consents/import",
                    Body::from(bytes),
                    Some("application/fhir+json"),
                )
                .await
                .map_err(fail)?;
            let (status, body) = collect_json(resp).await.map_err(fail)?;
            if !status.is_success() {
                return Err(api_failure(status, &body));
            }
            for id in body["imported"].as_array().cloned().unwrap_or_default() {
                outln!("{}", id.as_str().unwrap_or_default())?;
            }
            Ok(())
        }
    }
}

async fn directive(args: DirectiveArgs, effect: &str) -> Result<(), Failure> {
    let valid_until = match &args.until {
        Some(day) => Some(
            end_of_day(day)
                .ok_or_else(|| Failure::new(EXIT_USAGE, "--until must be YYYY-MM-DD"))?,
        ),
        None => None,
    };
    let c = client(&args.config).await?;
    let body = json!({
        "patient": args.patient,
        "effect": effect,
        "facilities": args.facilities,
        "purposes": args.purposes,
        "categories": args.categories,
        "valid_until": valid_until,
        "recorded_by": args.recorded_by,
    });
    let body = ok_json(&c, Method::POST, "/v1/consents", Some(body)).await?;
    outln!("{}", body["directive_id"].as_str().unwrap_or_default())?;
    Ok(())
}

fn end_of_day(day: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(day, &format).ok()?;
    Some(
        date.with_hms(23, 59, 59)
            .ok()?
            .assume_utc()
            .unix_timestamp(),
    )
}

async fn request(args: RequestArgs) -> Result<(), Failure> {
    let c = client(&args.config).await?;
    let body = json!({
        "from": args.from,
        "patient": args.patient,
        "purpose": args.purpose,
        "clinician": args.clinician,
        "clinician_role": args.clinician_role,
        "categories": args.categories,
        "break_glass_reason": if args.break_glass { args.reason } else { None },
    });
    let body = ok_json(&c, Method::POST, "/v1/requests", Some(body)).await?;
    let state = body["state"].as_str().unwrap_or("");
    outln!(
        "request {} {}{}{}",
        body["id"].as_str().unwrap_or(""),
        state,
        body["transfer_id"]
            .as_str()
            .map(|t| format!(" transfer {t}"))
            .unwrap_or_default(),
        body["reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    )?;
    if state == "denied" {
        return Err(Failure::new(
            EXIT_DENIED,
            format!("request denied: {}", body["reason"].as_str().unwrap_or("")),
        ));
    }
    if state == "failed" {
        return Err(Failure::new(EXIT_FAILURE, "request failed"));
    }
    Ok(())
}

async fn policy(action: PolicyAction) -> Result<(), Failure> {
    match action {
        PolicyAction::Check {
            config,
            to,
            from,
            patient,
            purpose,
            categories,
            clinician_role,
            break_glass,
        } => {
            let c = client(&config).await?;
            let (direction, facility) = match (to, from) {
                (Some(to), None) => ("send", to),
                (None, Some(from)) => ("receive", from),
                _ => {
                    return Err(Failure::new(
                        EXIT_USAGE,
                        "give exactly one of --to or --from",
                    ))
                }
            };
            let body = json!({
                "direction": direction,
                "facility": facility,
                "patient": patient,
                "purpose": purpose,
                "categories": categories,
                "clinician_role": clinician_role,
                "break_glass": break_glass,
            });
            let body = ok_json(&c, Method::POST, "/v1/policy/check", Some(body)).await?;
            let policies = body["policy_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            outln!("decision: {}", body["decision"].as_str().unwrap_or(""))?;
            outln!(
                "determining policies: {}",
                if policies.is_empty() {
                    "(none: default deny)"
                } else {
                    &policies
                }
            )?;
            outln!("reason: {}", body["reason"].as_str().unwrap_or(""))?;
            if let Some(errors) = body["errors"].as_array().filter(|e| !e.is_empty()) {
                outln!("evaluation errors: {}", Value::Array(errors.clone()))?;
            }
            if body["allowed"].as_bool() == Some(true) {
                Ok(())
            } else {
                Err(Failure::new(EXIT_DENIED, String::new()))
            }
        }
        PolicyAction::Reload(config) => {
            let c = client(&config).await?;
            ok_json(&c, Method::POST, "/v1/policy/reload", None).await?;
            outln!("policy set reloaded")?;
            Ok(())
        }
    }
}

/// Exit code for a result, printing the failure.
pub fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("gateway: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::{json_array_end, json_array_item};

    /// A listing streamed a page at a time prints what `print_json` printed for the whole
    /// array, so scripts reading `--json` see no difference.
    #[test]
    fn a_streamed_json_array_is_the_pretty_printed_array() {
        let items = [
            json!({"seq": 1, "event": "submitted", "reason": "line\nbreak", "ids": ["a", "b"]}),
            json!({"seq": 2, "nested": {"empty": [], "obj": {}}}),
            json!("text"),
        ];
        for n in 0..=items.len() {
            let some = &items[..n];
            let mut streamed: String = some
                .iter()
                .enumerate()
                .map(|(i, v)| json_array_item(v, i == 0))
                .collect();
            streamed.push_str(json_array_end(n > 0));
            let whole =
                serde_json::to_string_pretty(&Value::Array(some.to_vec())).expect("encode") + "\n";
            assert_eq!(streamed, whole, "{n} items");
        }
    }
}
