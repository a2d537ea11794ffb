//! The peer listener: TLS 1.3 with a required client certificate, HTTP/2, and the routes peers
//! may call. Every connection is identified from its certificate before any request is read;
//! refusals that reach the node are audited.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};
use tracing::Instrument;

use crate::audit::{self, event};
use crate::pull::requests::REQUEST_PATH;
use crate::receive::inbox;
use crate::send::delivery::ENVELOPE_PATH;
use crate::state::NodeState;
use crate::trust::transport::{
    identify, still_trusted, PeerIdentity, CONNECTION_WINDOW, STREAM_WINDOW,
};
use crate::trust::transport::{text_response, PeerResponse};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(state: Arc<NodeState>, listener: TcpListener) {
    // One semaphore for the whole listener, so the limit holds across connections.
    let limit = Arc::new(Semaphore::new(state.config.peer.max_concurrent));
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(state.clone(), tcp, limit.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(state: Arc<NodeState>, tcp: TcpStream, limit: Arc<Semaphore>) {
    let trust = state.trust();
    let acceptor = TlsAcceptor::from(trust.server.clone());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            audit_refused_connection(&state, None, format!("tls handshake refused: {e}")).await;
            return;
        }
        Err(_) => return,
    };
    let identity = match identify(tls.get_ref().1.peer_certificates(), &trust) {
        Ok(identity) => identity,
        Err(rejection) => {
            audit_refused_connection(
                &state,
                rejection.claimed_facility().map(str::to_owned),
                format!("peer identity refused: {rejection}"),
            )
            .await;
            return;
        }
    };
    drop(trust);
    tracing::debug!(peer = %identity.facility, fingerprint = %hex::encode(identity.fingerprint), "peer connected");

    let timeout = Duration::from_secs(state.config.peer.request_timeout_secs);
    let identity_for_span = identity.facility.clone();
    let svc_state = state.clone();
    // Layer order, outermost first: errors from the inner layers become HTTP responses; shed
    // load instead of queueing when the listener-wide limit is reached; bound each request in time.
    let service = ServiceBuilder::new()
        .map_result(overload_to_response)
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(limit))
        .timeout(timeout)
        .service_fn(move |req: Request<Incoming>| {
            let state = svc_state.clone();
            let identity = identity.clone();
            async move { Ok::<_, Infallible>(route(&state, &identity, req).await) }
        });
    let span = tracing::info_span!("peer", facility = %identity_for_span);
    let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(256 * 1024)
        .max_concurrent_streams(1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
        .instrument(span)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "peer connection ended with an error");
    }
}

/// The error type stays `BoxError` because tower's `MapResult` also maps `poll_ready` errors;
/// every value it returns is `Ok`.
fn overload_to_response(result: Result<PeerResponse, BoxError>) -> Result<PeerResponse, BoxError> {
    Ok(match result {
        Ok(resp) => resp,
        Err(e) if e.is::<tower::load_shed::error::Overloaded>() => text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "receiver overloaded; retry later",
        ),
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => {
            text_response(StatusCode::REQUEST_TIMEOUT, "request took too long")
        }
        Err(_) => text_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    })
}

async fn route(
    state: &Arc<NodeState>,
    peer: &PeerIdentity,
    req: Request<Incoming>,
) -> PeerResponse {
    // This node judges peers on a current view only: while its directory is expired or its CRL
    // stale it answers 503 (the sender keeps the transfer and retries) until fresh files load.
    if let Err(stale) = state.trust.usable() {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("receiver cannot accept now: {stale}"),
        );
    }
    // The connection was identified at its handshake; the peer may have been revoked since.
    if let Err(rejection) = still_trusted(peer, &state.trust()) {
        audit_refused_connection(
            state,
            Some(peer.facility.to_string()),
            format!("peer identity refused: {rejection}"),
        )
        .await;
        return text_response(
            StatusCode::FORBIDDEN,
            "peer identity refused: not a current federation member",
        );
    }
    match (req.method().as_str(), req.uri().path()) {
        ("POST", ENVELOPE_PATH) => inbox::receive(state, peer, req).await,
        ("POST", REQUEST_PATH) => crate::pull::requests::incoming(state, peer, req).await,
        ("POST", crate::evidence::witness::WITNESS_PATH) => {
            crate::evidence::witness::incoming(state, peer, req).await
        }
        ("POST", crate::evidence::witness::VIEW_PATH) => {
            crate::evidence::witness::view(state, peer).await
        }
        _ => text_response(StatusCode::NOT_FOUND, "no such peer route"),
    }
}

/// Refused connections are audited, but anyone who can reach the port can cause them, so one
/// by one only within a rate (`governor`'s GCRA: bursts of `REFUSALS_AUDITED_BURST`, refilled
/// one a second, so at most 120 in any minute); the rest are counted and summarised in one
/// entry at most once a minute, so a scanner can flood neither the log nor the disk.
const REFUSALS_AUDITED_BURST: u32 = 60;
const REFUSAL_SUMMARY_EVERY_MS: u64 = 60_000;

type DirectLimiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    governor::clock::DefaultClock,
>;

/// Refusals not audited one by one since the last summary, and when that summary was written.
struct RefusalAudit {
    limiter: DirectLimiter,
    suppressed: std::sync::atomic::AtomicU64,
    last_summary_ms: std::sync::atomic::AtomicU64,
}

fn refusal_audit() -> &'static RefusalAudit {
    static CELL: std::sync::OnceLock<RefusalAudit> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let burst =
            std::num::NonZeroU32::new(REFUSALS_AUDITED_BURST).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::per_second(std::num::NonZeroU32::MIN).allow_burst(burst);
        RefusalAudit {
            limiter: governor::RateLimiter::direct(quota),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            last_summary_ms: std::sync::atomic::AtomicU64::new(0),
        }
    })
}

async fn audit_refused_connection(state: &NodeState, claimed: Option<String>, reason: String) {
    use std::sync::atomic::Ordering::Relaxed;
    tracing::warn!(reason = %reason, "peer connection refused");
    let limits = refusal_audit();
    let audit_this = limits.limiter.check().is_ok();
    if !audit_this {
        limits.suppressed.fetch_add(1, Relaxed);
    }
    let now = crate::trust::now_ms();
    let last = limits.last_summary_ms.load(Relaxed);
    let summary_due = now.saturating_sub(last) >= REFUSAL_SUMMARY_EVERY_MS
        && limits
            .last_summary_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok();
    let suppressed = if summary_due {
        limits.suppressed.swap(0, Relaxed)
    } else {
        0
    };
    if suppressed > 0 {
        let mut rec = audit::record(event::REJECTED, "connection-refused");
        rec.reason = Some(format!(
            "{suppressed} further refused connections were not audited one by one (rate limit)"
        ));
        let _ = audit::append(&state.store, rec);
    }
    if audit_this {
        let mut rec = audit::record(event::REJECTED, "connection-refused");
        rec.peer = claimed;
        rec.reason = Some(reason);
        let _ = audit::append(&state.store, rec);
    }
    // Nothing is acknowledged to the refused peer, so the entry rides on the next group commit
    // instead of forcing one per refusal.
}
