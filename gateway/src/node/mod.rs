//! A running node: loads config, keys, trust and store into a `NodeState`, binds both
//! listeners and runs the peer server, the local API, the delivery scheduler, the retention
//! sweep and the reload loop until shutdown, then drains.
//!
//! Invariant: the node refuses to start on any problem in its config, keys, trust or store; on
//! shutdown in-flight work gets a grace period and whatever is unfinished stays queued on disk.
//! This is the one module that starts every flow and surface; only `cli`, `demo` and `main`
//! call it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

use gateway_store::Store;

use crate::config::{NodeConfig, SyslogTransport};
use crate::receive::peer_api;
use crate::send::delivery;
use crate::state::outcomes::OutcomeWaiters;
use crate::state::policy::PolicyHandle;
use crate::state::NodeState;
use crate::trust::identity::{IdentityHandle, NodeIdentity};
use crate::trust::transport::PeerClients;
use crate::trust::{Trust, TrustHandle};
use crate::{api, ops, retention};

mod trust_watch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Identity(#[from] crate::trust::identity::IdentityError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("store {path}: {source}")]
    Store {
        path: String,
        source: gateway_store::StoreError,
    },
    #[error("policy: {0}")]
    Policy(String),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Collector(#[from] crate::trust::collector::CollectorTlsError),
}

/// Loads everything a node needs, refusing to start on any problem.
pub fn load_state(
    config: NodeConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<NodeState>, StartError> {
    let config = Arc::new(config);
    let identity = NodeIdentity::load(&config)?;
    // A stream whose collector CA cannot be read would leave the SIEM without entries unseen.
    if let Some(syslog) = &config.audit.syslog {
        if let (SyslogTransport::Tls, Some(ca)) = (syslog.transport, &syslog.ca_file) {
            crate::trust::collector::connector(ca)?;
        }
    }
    // The store first: it holds the highest directory this node has accepted, and an older one
    // (or one of that version with other content) refuses the start.
    let store = Store::open_with(
        &config.data_dir,
        config.store_cache_bytes,
        config.spool_segment_bytes,
    )
    .map_err(|source| StartError::Store {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let trust = TrustHandle::open(config.clone(), &identity, store.clone())?;
    warn_if_unlisted(&trust.current(), &identity, &config);
    let identity = IdentityHandle::new(identity, config.clone());
    let policy = PolicyHandle::load(config.policy.dir.clone()).map_err(StartError::Policy)?;
    let clients = PeerClients::new(
        trust.clone(),
        Duration::from_millis(config.delivery.connect_timeout_ms),
    );
    let delivery_permits = Arc::new(Semaphore::new(config.delivery.workers));
    Ok(Arc::new(NodeState {
        config,
        identity,
        trust,
        store,
        policy,
        clients,
        wake: Notify::new(),
        inflight: Mutex::new(HashSet::new()),
        delivery_permits,
        shutdown,
        waiters: OutcomeWaiters::default(),
        circuits: Default::default(),
        metrics: Default::default(),
    }))
}

/// Binds both listeners from the config.
pub async fn bind(config: &NodeConfig) -> Result<(TcpListener, TcpListener), StartError> {
    let bind = |addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: addr.to_string(),
                source,
            })
    };
    Ok((
        bind(config.peer.listen).await?,
        bind(config.local_api.listen).await?,
    ))
}

/// Binds the ops listener (`ops.listen`: health endpoints), refusing to start when it is taken.
pub async fn bind_ops(config: &NodeConfig) -> Result<TcpListener, StartError> {
    crate::ops::bind(config)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.ops.listen.to_string(),
            source,
        })
}

/// Runs the node on already-bound listeners until `shutdown` resolves, then drains.
pub async fn run(
    state: Arc<NodeState>,
    peer_listener: TcpListener,
    local_listener: TcpListener,
    ops_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    stop: watch::Sender<bool>,
) {
    crate::send::recovery::recover_after_restart(&state);
    remove_leftover_uploads(&state.config.data_dir);
    let peer = tokio::spawn(peer_api::serve(state.clone(), peer_listener));
    let console = Some(crate::console::router(state.clone()));
    let local = tokio::spawn(api::serve(state.clone(), local_listener, console));
    let scheduler = tokio::spawn(delivery::run_scheduler(state.clone()));
    let reload = tokio::spawn(reload_loop(state.clone()));
    let sweeper = tokio::spawn(retention::run_sweeper(state.clone()));
    let checkpointer = tokio::spawn(crate::evidence::run_checkpointer(state.clone()));
    let trust_watch = tokio::spawn(trust_watch::run(state.clone()));
    // The audit stream to a SIEM runs apart from every flow: a collector that is down blocks
    // nothing (see export::syslog).
    let syslog = state.config.audit.syslog.clone().map(|cfg| {
        tokio::spawn(crate::export::syslog::run(
            state.store.clone(),
            state.me().to_string(),
            cfg,
            state.shutdown.clone(),
        ))
    });
    let ops_task = tokio::spawn(ops::serve(
        state.clone(),
        ops_listener,
        ops::watch(&peer, &local),
    ));
    tracing::info!(
        facility = %state.me(),
        envelope_suite = state.config.delivery.envelope_suite.name(),
        "node started"
    );

    shutdown.await;
    tracing::info!(facility = %state.me(), "node stopping");
    let _ = stop.send(true);
    state.wake.notify_waiters();
    // Give in-flight transfers a grace period; anything unfinished stays queued on disk.
    let grace = Duration::from_secs(10);
    let _ = tokio::time::timeout(grace, async {
        let _ = scheduler.await;
        let _ = peer.await;
        let _ = local.await;
    })
    .await;
    reload.abort();
    // A sweep stopped midway is finished by the next start's sweep.
    sweeper.abort();
    checkpointer.abort();
    trust_watch.abort();
    if let Some(mut syslog) = syslog {
        // It confirms what it sent (at most a second); anything else goes at the next start,
        // from its cursor, which the commit below makes durable.
        if tokio::time::timeout(Duration::from_secs(2), &mut syslog)
            .await
            .is_err()
        {
            syslog.abort();
        }
    }
    ops_task.abort();
    if let Err(e) = state.store.commit().await {
        tracing::error!(error = %e, "final commit failed");
    }
}

/// Plaintext uploads are spilled to `data/uploads` only while they are sealed; a crash can leave
/// one behind, so they are removed before the node accepts work.
fn remove_leftover_uploads(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("uploads")) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
}

/// Picks up a new directory, CRL, key set (certificate, TLS key, signing and encryption keys)
/// or policy set without a restart. A bad new version is refused and the current one stays in
/// force. SIGHUP runs the same reload at once (`main`).
async fn reload_loop(state: Arc<NodeState>) {
    let period = Duration::from_secs(state.config.federation.reload_interval_secs);
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        state.reload_keys_and_trust().await;
        state.policy.reload_if_changed();
    }
}

/// A node started with keys the directory does not list signs what its peers refuse: say so at
/// start (it still starts, as before: the directory may be on its way).
fn warn_if_unlisted(trust: &Trust, identity: &NodeIdentity, config: &NodeConfig) {
    let Some(me) = trust.directory.facility(&config.facility_id) else {
        return;
    };
    if !me.signing_keys.contains(&identity.verifying_key().0)
        || !me.tls_cert_sha256.contains(&identity.tls_fingerprint())
    {
        tracing::warn!(
            "this node's signing key or certificate is not listed in the federation directory: peers will refuse it until `pki publish` lists them"
        );
    }
}
