//! `GET /metrics`: the Prometheus text format (0.0.4), encoded by `prometheus-client`.
//!
//! Two kinds of figures: the event counters the flows keep (`state::metrics::Recorder`,
//! `state::policy`'s reload counter), registered here once; and gauges computed at each scrape
//! from the node's state and store (queue per peer, certificate and trust-file deadlines,
//! audit log and checkpoint figures, store size, readiness), so they cannot drift from what
//! the node holds and need no hook in the flows.
//!
//! Invariant: labels are fixed classes and facility ids of the directory; nothing from a
//! record or a request (patients, transfer ids, free text) reaches a metric.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::evidence::witness;
use crate::state::metrics::PeerLabels;
use crate::state::overview::Overview;
use crate::state::NodeState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    facility: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabels {
    part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WitnessLabels {
    witness: String,
}

/// The gauges set at each scrape.
#[derive(Default)]
struct Gauges {
    build_info: Family<BuildLabels, Gauge>,
    start_time: Gauge,
    ready: Gauge,
    queue: Family<PeerLabels, Gauge>,
    queue_oldest_age: Family<PeerLabels, Gauge>,
    peer_reachable: Family<PeerLabels, Gauge>,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    crl_next_update: Gauge,
    directory_version: Gauge,
    directory_age: Gauge,
    directory_expiry: Gauge,
    audit_entries: Gauge,
    checkpoint_entries: Gauge,
    checkpoint_age: Gauge,
    uncheckpointed: Gauge,
    witness_lag: Family<WitnessLabels, Gauge>,
    store_size: Family<PartLabels, Gauge>,
}

/// Why a scrape failed (the node's side: its store or the encoder).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("local system: store: {0}")]
    Store(#[from] gateway_store::StoreError),
    #[error("local system: scrape task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("encode: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// The node's registry and the scrape-time gauges it holds.
pub struct Metrics {
    state: Arc<NodeState>,
    /// Held while the gauges are set and encoded, so two scrapes do not interleave.
    scrape: Mutex<(Registry, Gauges)>,
}

/// What the scrape reads from the store, off the async workers.
struct StoreFigures {
    overview: Overview,
    audit_entries: u64,
    checkpoint_size: u64,
    witness_lag: Vec<(String, u64)>,
    database_bytes: u64,
    spool_bytes: u64,
}

impl Metrics {
    pub fn new(state: Arc<NodeState>) -> Metrics {
        let gauges = Gauges::default();
        let mut reg = Registry::with_prefix("healthfed");
        let rec = &state.metrics;

        reg.register(
            "build_info",
            "Build of this node: version and facility id (always 1)",
            gauges.build_info.clone(),
        );
        reg.register(
            "start_time_seconds",
            "Unix time this node process started",
            gauges.start_time.clone(),
        );
        reg.register(
            "ready",
            "1 when /readyz answers ready, else 0",
            gauges.ready.clone(),
        );
        reg.register(
            "transfers",
            "Transfers by direction and outcome (outbound: submitted, delivered, failed, cancelled, requeued; inbound: received, duplicate)",
            rec.transfers.clone(),
        );
        reg.register(
            "transfer_receipt_latency_seconds",
            "Time from an outbound transfer's submission to its verified receipt",
            rec.latency.clone(),
        );
        reg.register(
            "delivery_attempts",
            "Delivery attempts by peer and outcome (delivered, refused, retry, unreachable, local_error)",
            rec.attempts.clone(),
        );
        reg.register(
            "delivery_retries",
            "Transfers put back in the queue for another attempt, by peer",
            rec.retries.clone(),
        );
        reg.register(
            "refusals",
            "Refused submissions (outbound) and envelopes (inbound), by reason class",
            rec.refusals.clone(),
        );
        reg.register(
            "policy_decisions",
            "Policy decisions by action and outcome (permit, deny, error)",
            rec.decisions.clone(),
        );
        reg.register(
            "policy_reloads",
            "Policy set reloads by result (success, failure: the previous set stays active)",
            state.policy.reloads.clone(),
        );
        reg.register(
            "queue_transfers",
            "Outbound transfers queued or being delivered, by peer",
            gauges.queue.clone(),
        );
        reg.register(
            "queue_oldest_age_seconds",
            "Age of the oldest outbound transfer still pending, by peer",
            gauges.queue_oldest_age.clone(),
        );
        reg.register(
            "peer_reachable",
            "0 while a peer's delivery circuit is open (unreachable), else 1",
            gauges.peer_reachable.clone(),
        );
        reg.register(
            "certificate_expiry_seconds",
            "Seconds until notAfter of the node's TLS certificate (node) and the federation CA (ca)",
            gauges.certificate_expiry.clone(),
        );
        reg.register(
            "crl_next_update_seconds",
            "Seconds until the CRL's nextUpdate (negative once past; the node refuses peers after the grace)",
            gauges.crl_next_update.clone(),
        );
        reg.register(
            "directory_version",
            "Version of the federation directory in force",
            gauges.directory_version.clone(),
        );
        reg.register(
            "directory_age_seconds",
            "Seconds since the directory in force was issued",
            gauges.directory_age.clone(),
        );
        reg.register(
            "directory_expiry_seconds",
            "Seconds until the directory in force expires",
            gauges.directory_expiry.clone(),
        );
        reg.register(
            "audit_entries",
            "Entries in the audit log",
            gauges.audit_entries.clone(),
        );
        reg.register(
            "audit_verify_ok",
            "Result of the last audit chain verification: 1 passed, 0 failed, -1 not run yet",
            rec.audit_verify_ok.clone(),
        );
        reg.register(
            "audit_verify_timestamp_seconds",
            "Unix time of the last audit chain verification",
            rec.audit_verified_at.clone(),
        );
        reg.register(
            "audit_checkpoint_entries",
            "Size of the latest signed audit checkpoint",
            gauges.checkpoint_entries.clone(),
        );
        reg.register(
            "audit_checkpoint_age_seconds",
            "Seconds since this process last signed a checkpoint (or started)",
            gauges.checkpoint_age.clone(),
        );
        reg.register(
            "audit_uncheckpointed_entries",
            "Audit entries not covered by the latest signed checkpoint",
            gauges.uncheckpointed.clone(),
        );
        reg.register(
            "witness_lag_entries",
            "Entries of the latest checkpoint a witness has not cosigned yet, by witness",
            gauges.witness_lag.clone(),
        );
        reg.register(
            "store_size_bytes",
            "Bytes on disk of the store: the database and the envelope spool",
            gauges.store_size.clone(),
        );
        Metrics {
            state,
            scrape: Mutex::new((reg, gauges)),
        }
    }

    /// The text of one scrape. `ready` is the readiness check's answer, made by the caller.
    pub async fn render(&self, ready: bool) -> Result<String, MetricsError> {
        let state = self.state.clone();
        let figures = tokio::task::spawn_blocking(move || store_figures(&state)).await??;
        let guard = self.scrape.lock();
        let mut guard = guard.unwrap_or_else(std::sync::PoisonError::into_inner);
        let (reg, gauges) = &mut *guard;
        set_gauges(gauges, &self.state, &figures, ready);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, reg)?;
        Ok(out)
    }
}

fn store_figures(state: &NodeState) -> Result<StoreFigures, MetricsError> {
    let overview = Overview::collect(state)?;
    let store = &state.store;
    let checkpoint_size = store.checkpoint_latest()?.map_or(0, |(size, _)| size);
    let mut witness_lag = Vec::new();
    for peer in witness::witnesses(state) {
        let id = peer.id.to_string();
        let cosigned = store.cosigned_size(&id)?;
        witness_lag.push((id, checkpoint_size.saturating_sub(cosigned)));
    }
    let data = &state.config.data_dir;
    let spool_bytes = dir_bytes(&data.join("spool"));
    Ok(StoreFigures {
        overview,
        audit_entries: store.audit_len(),
        checkpoint_size,
        witness_lag,
        database_bytes: dir_bytes(data).saturating_sub(spool_bytes),
        spool_bytes,
    })
}

fn set_gauges(g: &Gauges, state: &NodeState, f: &StoreFigures, ready: bool) {
    let o = &f.overview;
    let now = o.now;
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    g.build_info.clear();
    g.build_info
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            facility: o.facility.clone(),
        })
        .set(1);
    g.start_time.set(state.metrics.started_at);
    g.ready.set(i64::from(ready));

    // Families are rebuilt from the overview, so a peer that left the directory and whose
    // queue drained disappears instead of showing its last value forever.
    g.queue.clear();
    g.queue_oldest_age.clear();
    g.peer_reachable.clear();
    let now_ms = o.now_ms;
    for p in &o.peers {
        let labels = PeerLabels { peer: p.id.clone() };
        g.queue.get_or_create(&labels).set(int(p.pending));
        let age_ms = p.oldest_pending_ms.map_or(0, |t| now_ms.saturating_sub(t));
        g.queue_oldest_age
            .get_or_create(&labels)
            .set(int(age_ms / 1000));
        g.peer_reachable
            .get_or_create(&labels)
            .set(i64::from(p.circuit.is_none()));
    }

    g.certificate_expiry.clear();
    for (certificate, not_after) in [("node", o.cert_not_after), ("ca", o.ca_not_after)] {
        if let Some(t) = not_after {
            g.certificate_expiry
                .get_or_create(&CertificateLabels { certificate })
                .set(t - now);
        }
    }
    g.crl_next_update.set(o.crl_next_update - now);
    g.directory_version.set(int(o.directory_version));
    g.directory_age.set(now - o.directory_issued_at);
    g.directory_expiry.set(o.directory_expires_at - now);

    g.audit_entries.set(int(f.audit_entries));
    g.checkpoint_entries.set(int(f.checkpoint_size));
    g.uncheckpointed
        .set(int(f.audit_entries.saturating_sub(f.checkpoint_size)));
    g.checkpoint_age
        .set(now - state.metrics.checkpoint_signed_at());
    g.witness_lag.clear();
    for (witness, lag) in &f.witness_lag {
        g.witness_lag
            .get_or_create(&WitnessLabels {
                witness: witness.clone(),
            })
            .set(int(*lag));
    }
    g.store_size
        .get_or_create(&PartLabels { part: "database" })
        .set(int(f.database_bytes));
    g.store_size
        .get_or_create(&PartLabels { part: "spool" })
        .set(int(f.spool_bytes));
}

/// Bytes of the regular files under `dir` (symlinks not followed; unreadable entries skipped:
/// a file removed mid-walk is not an error).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

/// `GET /metrics`.
pub(super) async fn metrics(State(ops): State<super::Ops>) -> Response {
    let ready = ops.readiness.check().await.is_ok();
    match ops.metrics.render(ready).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}
