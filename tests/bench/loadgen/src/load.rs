//! The load generator: N concurrent senders, each on its own keep-alive HTTP/1.1 connection,
//! against either the gateway's local API (plain HTTP on loopback, bearer token, wait=receipt)
//! or nginx (mutual TLS 1.3). Bounded by a warm-up, a measured window and a hard timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::BoxError;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Where the requests go.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Path and query of every request.
    pub path: String,
    /// Bearer token (gateway local API).
    pub token: Option<String>,
    /// Mutual TLS (nginx).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The status that means success.
    pub ok: StatusCode,
}

/// The client side of mutual TLS 1.3: trusts the federation CA, presents a facility identity.
pub fn mtls_client(
    ca_cert: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(ca_cert)?)) {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert)?))
            .collect::<Result<_, _>>()?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key)?))?
            .ok_or("no private key in facility tls.key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

async fn connect(target: &Target) -> Result<SendRequest<Body>, BoxError> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    match &target.tls {
        None => {
            let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            Ok(sender)
        }
        Some(cfg) => {
            let name = ServerName::IpAddress(target.addr.ip().into());
            let tls = TlsConnector::from(cfg.clone()).connect(name, tcp).await?;
            let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            Ok(sender)
        }
    }
}

/// Sends one request and reads the whole answer.
async fn send(
    sender: &mut SendRequest<Body>,
    target: &Target,
    body: Body,
    len: u64,
    content_type: &str,
    content_digest: Option<&str>,
) -> Result<(), BoxError> {
    sender.ready().await?;
    let mut req = Request::post(target.path.as_str())
        .header(HOST, target.addr.to_string())
        .header(CONTENT_LENGTH, len)
        .header(CONTENT_TYPE, content_type);
    if let Some(d) = content_digest {
        req = req.header("content-digest", d);
    }
    if let Some(t) = &target.token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = sender.send_request(req.body(body)?).await?;
    let status = resp.status();
    let answer = resp.into_body().collect().await?.to_bytes();
    if status != target.ok {
        // The gateway's answers carry ids and states, never payloads.
        let text = String::from_utf8_lossy(&answer);
        return Err(format!(
            "status {status}: {}",
            text.chars().take(300).collect::<String>()
        )
        .into());
    }
    Ok(())
}

/// A keep-alive connection to `target` (for [`call`]).
pub async fn open(target: &Target) -> Result<SendRequest<Body>, BoxError> {
    connect(target).await
}

/// One request of any method on an open connection; the status and the whole answer, for the
/// caller to judge (`--evidence`: checkpoints and their cosignatures, transfer ids, verify).
pub async fn call(
    sender: &mut SendRequest<Body>,
    target: &Target,
    method: http::Method,
    path: &str,
    body: &Bytes,
    content_type: &str,
) -> Result<(StatusCode, Bytes), BoxError> {
    sender.ready().await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, target.addr.to_string())
        .header(CONTENT_LENGTH, body.len())
        .header(CONTENT_TYPE, content_type);
    if let Some(t) = &target.token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = sender.send_request(req.body(full(body))?).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

fn full(bytes: &Bytes) -> Body {
    Full::new(bytes.clone())
        .map_err(|never| match never {})
        .boxed()
}

#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub concurrency: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Extra time allowed after the window for in-flight requests; then they are abandoned.
    pub grace: Duration,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// Requests that succeeded and completed inside the measured window.
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies: Vec<Duration>,
    pub window: Duration,
    pub timed_out: bool,
}

impl LoadResult {
    pub fn per_s(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64()
    }

    /// Nearest-rank percentile, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v.get(rank - 1).map(|d| d.as_secs_f64() * 1e3)
    }
}

#[derive(Default)]
struct Shared {
    completed: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
}

/// Runs the closed-loop load: each sender sends, waits for the answer, sends again.
/// `on_window` is called at the start and at the end of the measured window (for CPU samples).
pub async fn run(
    target: &Target,
    payload: &Bytes,
    content_type: &str,
    spec: LoadSpec,
    mut on_window: impl FnMut(bool),
) -> LoadResult {
    let started = Instant::now();
    let t0 = started + spec.warmup;
    let t1 = t0 + spec.measure;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut set = JoinSet::new();
    for _ in 0..spec.concurrency {
        let target = target.clone();
        let payload = payload.clone();
        let content_type = content_type.to_owned();
        let shared = shared.clone();
        set.spawn(async move {
            let mut conn: Option<SendRequest<Body>> = None;
            while Instant::now() < t1 {
                let sender = match conn.as_mut() {
                    Some(s) => s,
                    None => match connect(&target).await {
                        Ok(s) => conn.insert(s),
                        Err(e) => {
                            let mut g = shared.lock().await;
                            g.errors += 1;
                            g.first_error.get_or_insert_with(|| format!("connect: {e}"));
                            drop(g);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let begin = Instant::now();
                let res = send(
                    sender,
                    &target,
                    full(&payload),
                    payload.len() as u64,
                    &content_type,
                    None,
                )
                .await;
                let end = Instant::now();
                let mut g = shared.lock().await;
                match res {
                    Ok(()) if end >= t0 && end <= t1 => {
                        g.completed += 1;
                        g.latencies.push(end - begin);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if end >= t0 && end <= t1 {
                            g.errors += 1;
                        }
                        g.first_error.get_or_insert_with(|| e.to_string());
                        conn = None;
                    }
                }
            }
        });
    }
    tokio::time::sleep_until(t0.into()).await;
    on_window(true);
    tokio::time::sleep_until(t1.into()).await;
    on_window(false);
    let drained = tokio::time::timeout(spec.grace, async {
        while set.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    set.abort_all();
    let g = std::mem::take(&mut *shared.lock().await);
    LoadResult {
        completed: g.completed,
        errors: g.errors,
        first_error: g.first_error,
        latencies: g.latencies,
        window: spec.measure,
        timed_out: !drained,
    }
}

/// One request, body streamed from a file (the 1 GiB transfer). Returns the elapsed time.
/// `content_digest` (an RFC 9530 header value) is sent when given, as an EMR that knows its
/// document's hash would.
pub async fn send_file(
    target: &Target,
    file: &Path,
    content_type: &str,
    content_digest: Option<&str>,
    timeout: Duration,
) -> Result<Duration, BoxError> {
    let len = tokio::fs::metadata(file).await?.len();
    let f = tokio::fs::File::open(file).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    let body = StreamBody::new(futures_util::StreamExt::map(stream, |r| {
        r.map(hyper::body::Frame::data)
    }))
    .boxed();
    let begin = Instant::now();
    tokio::time::timeout(timeout, async {
        let mut sender = connect(target).await?;
        send(&mut sender, target, body, len, content_type, content_digest).await
    })
    .await
    .map_err(|_| format!("no answer within {}s", timeout.as_secs()))??;
    Ok(begin.elapsed())
}

/// One request with an in-memory body (sanity checks before the measured runs).
pub async fn send_once(
    target: &Target,
    payload: &Bytes,
    content_type: &str,
) -> Result<Duration, BoxError> {
    let begin = Instant::now();
    let mut sender = connect(target).await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        send(
            &mut sender,
            target,
            full(payload),
            payload.len() as u64,
            content_type,
            None,
        ),
    )
    .await
    .map_err(|_| "no answer within 60s")??;
    Ok(begin.elapsed())
}

/// `n` requests one after the other on one keep-alive connection (the instruction count: a
/// steady-state sender, as each closed-loop sender of [`run`] is). Returns the elapsed time.
pub async fn send_sequential(
    target: &Target,
    payload: &Bytes,
    content_type: &str,
    n: u32,
    timeout_each: Duration,
) -> Result<Duration, BoxError> {
    let begin = Instant::now();
    let mut sender = connect(target).await?;
    for i in 0..n {
        tokio::time::timeout(
            timeout_each,
            send(
                &mut sender,
                target,
                full(payload),
                payload.len() as u64,
                content_type,
                None,
            ),
        )
        .await
        .map_err(|_| format!("request {i}: no answer within {}s", timeout_each.as_secs()))??;
    }
    Ok(begin.elapsed())
}
