//! Thin binary: parse arguments, install tracing, build the runtime, run. All logic is in the
//! library so tests drive it directly.

use std::process::ExitCode;

use clap::Parser;
use tokio::sync::watch;

use gateway::cli::{self, Cli, Command, Failure, EXIT_FAILURE, EXIT_USAGE};
use gateway::config::NodeConfig;
use gateway::node;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let demo = matches!(cli.command, Command::Demo { .. });
    init_tracing(if demo { "warn" } else { "info" });
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
            Command::Run(arg) => run_node(&arg.config).await,
            Command::Demo { dir, once } => gateway::demo::run(dir, once).await,
            other => cli::run_command(other).await,
        }
    });
    cli::finish(result)
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run_node(path: &std::path::Path) -> Result<(), Failure> {
    let usage = |e: &dyn std::fmt::Display| Failure {
        code: EXIT_USAGE,
        message: e.to_string(),
    };
    let config = NodeConfig::load(path).map_err(|e| usage(&e))?;
    let (stop, rx) = watch::channel(false);
    let state = node::load_state(config, rx).map_err(|e| usage(&e))?;
    let (peer, local) = node::bind(&state.config).await.map_err(|e| usage(&e))?;
    let reload_state = state.clone();
    tokio::spawn(async move { reload_on_sighup(reload_state).await });
    node::run(state, peer, local, shutdown_signal(), stop).await;
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
        if let Err(e) = state.trust.reload_if_changed(&state.identity) {
            tracing::warn!(error = %e, "trust reload refused");
        }
    }
}
