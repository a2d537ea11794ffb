//! The `gateway` command line. `run` starts a node; the other commands talk to a node's local
//! API (or open its state in-process when it is not running), so they go through the same
//! checks as the EMR.
//!
//! One file per command group; `args` is the grammar, `client` the HTTP client (over TCP to a
//! running node, or the API's router in-process), `call` and `output` are shared by the groups.
//! Invariant: a command never writes the store or decides policy itself; it asks the local API
//! (`check` only loads the node's state to report on it) and maps the answer to an exit code.

pub mod args;
mod audit;
mod backup;
mod call;
pub mod client;
mod consents;
mod disclosures;
mod evidence;
mod export;
mod inbox;
mod output;
mod policy;
mod progress;
mod records;
mod requests;
mod status;
mod token;
mod transfers;

pub use args::{Cli, Command};
pub use audit::print_audit_row;

use std::process::ExitCode;

use args::ConfigArg;
use audit::audit;
use call::load_config;
use consents::consent;
use evidence::evidence;
use inbox::inbox;
use policy::policy;
use records::records;
use requests::{list_requests, request};
use transfers::{cancel, requeue, send, transfers};

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

/// Runs a client command (everything but `run` and `demo`).
pub async fn run_command(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run(_) | Command::Demo { .. } => {
            Err(Failure::new(EXIT_USAGE, "internal: not a client command"))
        }
        Command::Check(arg) => check(&arg),
        Command::Send(args) => send(args).await,
        Command::Transfers { config, id, json } => transfers(&config, id.as_deref(), json).await,
        Command::Cancel { config, id } => cancel(&config, &id).await,
        Command::Requeue { config, id } => requeue(&config, &id).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::Inbox { config, action } => inbox(&config, action).await,
        Command::Audit { action } => audit(action).await,
        Command::Token { action } => token::token(action),
        Command::Disclosures(args) => disclosures::disclosures(args).await,
        Command::Evidence { action } => evidence(action).await,
        Command::Consent { action } => consent(action).await,
        Command::Request(args) => request(args).await,
        Command::Requests { config, json } => list_requests(&config, json).await,
        Command::Status { config, json } => status::status(&config, json).await,
        Command::Records { action } => records(action).await,
        Command::Policy { action } => policy(action).await,
    }
}

/// `gateway check`: loads the config, keys, trust and policy set as `run` would, and says
/// what it found.
fn check(arg: &ConfigArg) -> Result<(), Failure> {
    let config = load_config(arg)?;
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let state =
        crate::node::load_state(config, rx).map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))?;
    // The same deprecation warning the node logs at start, so a migration is checked here.
    crate::api::auth::warn_defaulted_roles(&state.config.local_api.token_hashes);
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
