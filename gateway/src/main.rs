//! Thin binary: parse arguments, install tracing, build the runtime, run. All logic is in the
//! library so tests drive it directly.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use tokio::sync::watch;

use gateway::cli::{self, Cli, Command, Failure, EXIT_FAILURE, EXIT_USAGE};
use gateway::config::{LogFormat, NodeConfig};
use gateway::node;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let demo = matches!(cli.command, Command::Demo { .. });
    // `run` logs in the format its config names, so its config is read before tracing starts
    // (a bad config is reported on stderr as any usage error is).
    let config = match &cli.command {
        Command::Run(arg) => match NodeConfig::load(&arg.config) {
            Ok(config) => Some(config),
            Err(e) => {
                return cli::finish(Err(Failure {
                    code: EXIT_USAGE,
                    message: e.to_string(),
                }))
            }
        },
        _ => None,
    };
    let format = config.as_ref().map(|c| c.log.format).unwrap_or_default();
    init_tracing(if demo { "warn" } else { "info" }, format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(_) => match config {
                Some(config) => run_node(config).await,
                None => Err(Failure {
                    code: EXIT_USAGE,
                    message: "internal: run without a config".to_owned(),
                }),
            },
            Command::Demo { dir, once } => gateway::demo::run(dir, once).await,
            other => cli::run_command(other).await,
        }
    });
    cli::finish(result)
}

/// Logs go to stderr, as text or one JSON object per line (`[log] format`). Colour codes only
/// on a terminal: in a file or a journal they are noise a log shipper has to strip.
fn init_tracing(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

async fn run_node(config: NodeConfig) -> Result<(), Failure> {
    let usage = |e: &dyn std::fmt::Display| Failure {
        code: EXIT_USAGE,
        message: e.to_string(),
    };
    let (stop, rx) = watch::channel(false);
    let state = node::load_state(config, rx).map_err(|e| usage(&e))?;
    let (peer, local) = node::bind(&state.config).await.map_err(|e| usage(&e))?;
    let ops = node::bind_ops(&state.config).await.map_err(|e| usage(&e))?;
    let reload_state = state.clone();
    tokio::spawn(async move { reload_on_sighup(reload_state).await });
    node::run(state, peer, local, ops, shutdown_signal(), stop).await;
    Ok(())
}

/// SIGTERM and SIGINT both stop the node; `node::run` drains within its grace period.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn reload_on_sighup(state: std::sync::Arc<gateway::state::NodeState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match state.policy.reload_now() {
            Ok(()) => tracing::info!("policy set reloaded on SIGHUP"),
            Err(e) => {
                tracing::warn!(error = %e, "policy reload refused; the previous set stays active")
            }
        }
        state.reload_keys_and_trust().await;
    }
}
