//! Harness for multi-process integration tests: a real federation made with `pki_tools`, real
//! `gateway run` processes on 127.0.0.x loopback addresses, real mutual TLS and real sled stores
//! in temp dirs. Every wait is bounded; every process is killed when its `Node` is dropped.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tempfile::TempDir;

use gateway::cli::client::{collect_json, ApiClient};
use gateway::config::{ConfigTemplate, NodeConfig};
use pki_tools::{Endpoint, FacilityId, FacilityKind, Federation};

/// The largest page a listing serves (`gateway::api::MAX_PAGE`).
const MAX_PAGE: usize = gateway::api::MAX_PAGE;

/// Loopback addresses handed out to nodes (127.0.0.2, .3, …), shared by all tests in a process.
static NEXT_HOST: AtomicU8 = AtomicU8::new(2);

/// Path to a file in the repository's test data (copied from the shared FHIR data set).
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

/// Every FHIR bundle in the test data, with its bytes.
pub fn bundles() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(testdata("fhir/bundles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn bundle(name: &str) -> Vec<u8> {
    std::fs::read(testdata(&format!("fhir/bundles/{name}"))).unwrap()
}

/// What `--patient` must be for a FHIR record about one patient: its Patient resource's id, or
/// the id of the one patient it references (`Patient/<id>`). None for a record about no patient
/// or several (the gateway refuses the latter).
pub fn patient_id(bundle: &[u8]) -> Option<String> {
    let facts = policies::classify::classify_content(bundle).ok()?;
    let [aliases] = facts.patients.alias_sets() else {
        return None;
    };
    let v: Value = serde_json::from_slice(bundle).ok()?;
    let resource_id = v["entry"].as_array().and_then(|entries| {
        entries.iter().find_map(|e| {
            let r = &e["resource"];
            (r["resourceType"] == "Patient")
                .then(|| r["id"].as_str().map(str::to_owned))
                .flatten()
        })
    });
    resource_id.filter(|id| aliases.contains(id)).or_else(|| {
        aliases
            .iter()
            .find_map(|a| a.strip_prefix("Patient/").map(str::to_owned))
    })
}

/// Patient family and given names in a bundle (to look for plaintext at rest).
pub fn patient_names(bundle: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(bundle).unwrap_or(Value::Null);
    let mut names = Vec::new();
    for e in v["entry"].as_array().cloned().unwrap_or_default() {
        let r = &e["resource"];
        if r["resourceType"] != "Patient" {
            continue;
        }
        for n in r["name"].as_array().cloned().unwrap_or_default() {
            if let Some(f) = n["family"].as_str() {
                names.push(f.to_owned());
            }
            for g in n["given"].as_array().cloned().unwrap_or_default() {
                if let Some(g) = g.as_str() {
                    names.push(g.to_owned());
                }
            }
        }
    }
    names.retain(|n| n.len() >= 4);
    names
}

/// The `gateway` binary of this workspace. `cargo test --workspace` builds it (the gateway
/// package has integration tests of its own); when it is missing it is built here.
pub fn gateway_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/tests-xxxx → target/<profile>/gateway
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let bin = profile_dir.join("gateway");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let status = Command::new(cargo)
                .args(["build", "-p", "gateway", "--bin", "gateway"])
                .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
                .status()
                .unwrap();
            assert!(status.success(), "building the gateway binary failed");
        }
        bin
    })
    .clone()
}

/// `N` distinct free ports on `ip`: every listener is held until all are chosen, so the kernel
/// cannot hand one port out twice (two of a node's listeners on one port: a refused start).
fn free_addrs<const N: usize>(ip: Ipv4Addr) -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((ip, 0)).unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

/// A free port on `local`'s IP (an IPv4 loopback address in these tests) that is neither of
/// the node's other two: those may be free again, and so handed out, until the node binds them.
fn free_addr_besides(local: SocketAddr, peer: SocketAddr) -> SocketAddr {
    loop {
        let l = TcpListener::bind((local.ip(), 0)).unwrap();
        let addr = l.local_addr().unwrap();
        if addr != local && addr != peer {
            return addr;
        }
    }
}

/// One facility's directory and addresses.
#[derive(Clone)]
pub struct NodeDir {
    pub id: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The ops listener (`/livez`, `/readyz`), on the local API's loopback address.
    pub ops: SocketAddr,
}

/// A test federation: CA, facilities, published directory and CRL, one node.toml each.
pub struct Fed {
    pub dir: TempDir,
    pub pki: Federation,
    pub nodes: BTreeMap<String, NodeDir>,
    /// TOML appended to every node.toml (e.g. faster retries).
    pub extra_toml: String,
}

/// Retries fast enough for tests.
pub const FAST_RETRIES: &str =
    "\n[delivery]\ninitial_backoff_ms = 100\nmax_backoff_ms = 800\nmax_attempts = 200\n";

impl Fed {
    pub fn new(specs: &[(&str, FacilityKind)]) -> Fed {
        Fed::with_extra(specs, FAST_RETRIES)
    }

    pub fn with_extra(specs: &[(&str, FacilityKind)], extra_toml: &str) -> Fed {
        let dir = tempfile::Builder::new()
            .prefix("healthfed-it-")
            .tempdir()
            .unwrap();
        let pki =
            Federation::init(&dir.path().join("federation"), "Test Federation", false).unwrap();
        let mut fed = Fed {
            dir,
            pki,
            nodes: BTreeMap::new(),
            extra_toml: extra_toml.to_owned(),
        };
        for (id, kind) in specs {
            fed.add(id, *kind);
        }
        fed.publish();
        for id in fed.nodes.keys().cloned().collect::<Vec<_>>() {
            fed.write_config(&id);
        }
        fed
    }

    /// Adds a facility (not yet published) on a fresh loopback address.
    pub fn add(&mut self, id: &str, kind: FacilityKind) -> NodeDir {
        let host = NEXT_HOST.fetch_add(1, Ordering::SeqCst);
        let ip = Ipv4Addr::new(127, 0, 0, host);
        let [peer, local] = free_addrs(ip);
        self.add_at(id, kind, peer, local)
    }

    /// Adds a facility whose directory endpoint is `peer` (tests use this to point one facility
    /// at another's address).
    pub fn add_at(
        &mut self,
        id: &str,
        kind: FacilityKind,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> NodeDir {
        let fid: FacilityId = id.parse().unwrap();
        let endpoint: Endpoint = format!("https://{}:{}", peer.ip(), peer.port())
            .parse()
            .unwrap();
        let node_dir = self.dir.path().join(id);
        self.pki
            .add_facility(&fid, &format!("Facility {id}"), &endpoint, kind, &node_dir)
            .unwrap();
        let nd = NodeDir {
            id: id.to_owned(),
            dir: node_dir.clone(),
            config_path: node_dir.join("node.toml"),
            peer,
            local,
            ops: free_addr_besides(local, peer),
        };
        self.nodes.insert(id.to_owned(), nd.clone());
        nd
    }

    pub fn publish(&mut self) {
        self.pki
            .publish(Duration::from_secs(7 * 24 * 3600))
            .unwrap();
    }

    pub fn write_config(&self, id: &str) {
        let nd = &self.nodes[id];
        let token = format!("test-token-{id}");
        pki_tools::files::write_atomic(&nd.dir.join("api.token"), token.as_bytes(), true).unwrap();
        let fed = self.dir.path().join("federation");
        let mut text = ConfigTemplate {
            facility_id: id,
            peer_listen: nd.peer,
            local_listen: nd.local,
            token_sha256_hex: &hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                token.as_bytes(),
            )),
            directory: &fed.join("directory.json"),
            crl: &fed.join("crl.pem"),
        }
        .render_with_ops(nd.ops)
        .unwrap();
        text.push_str(&self.extra_toml);
        std::fs::write(&nd.config_path, text).unwrap();
    }

    pub fn federation_dir(&self) -> PathBuf {
        self.dir.path().join("federation")
    }

    pub fn config(&self, id: &str) -> NodeConfig {
        NodeConfig::load(&self.nodes[id].config_path).unwrap()
    }

    /// Starts `gateway run` for a facility and waits (≤ 30 s) until its local API answers.
    pub fn start(&self, id: &str) -> Node {
        let node = self.spawn(id);
        node.wait_ready();
        node
    }

    /// Spawns without waiting (for tests that expect the node to refuse to start).
    pub fn spawn(&self, id: &str) -> Node {
        let nd = &self.nodes[id];
        let log = nd.dir.join("node.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(gateway_bin())
            .args(["run", "--config"])
            .arg(&nd.config_path)
            .env("GATEWAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Node {
            child: Some(child),
            dir: nd.clone(),
            config: self.config(id),
            log,
        }
    }
}

/// A running `gateway run` process. Killed on drop.
pub struct Node {
    child: Option<Child>,
    pub dir: NodeDir,
    pub config: NodeConfig,
    pub log: PathBuf,
}

/// Outcome of a submit through the local API.
#[derive(Debug)]
pub struct Submitted {
    pub status: StatusCode,
    pub body: Value,
}

impl Submitted {
    pub fn transfer_id(&self) -> String {
        assert!(
            self.status == StatusCode::ACCEPTED || self.status == StatusCode::OK,
            "submit was refused: {} {}",
            self.status,
            self.body
        );
        self.body["transfer_id"].as_str().unwrap().to_owned()
    }
}

impl Node {
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(self.dir.local).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start:\n{}",
                self.dir.id,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_child_exit(self.child.as_mut()?, timeout)
    }

    /// Where this node keeps the sealed envelope of transfer `id` in a file of its own
    /// (`kind`: "outbox" or "inbox"): envelopes over `node.spool_segment_kib` (256 KiB by
    /// default), or every one with `spool_segment_kib = 0`. Smaller ones are in segments: see
    /// [`Node::envelope_on_disk`].
    pub fn spool_path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.dir.join("data/spool").join(kind).join(id)
    }

    /// The sealed envelope of transfer `id` as this node holds it on disk: its spool file, or
    /// else its last record in the spool segments.
    pub fn envelope_on_disk(&self, kind: &str, id: &str) -> Option<Vec<u8>> {
        let data = self.dir.dir.join("data");
        if let Ok(bytes) = std::fs::read(self.spool_path(kind, id)) {
            return Some(bytes);
        }
        segment_records(&data, kind)
            .into_iter()
            .rev()
            .find(|(rid, _)| rid == id)
            .map(|(_, bytes)| bytes)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to flush or drain.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (≤ 20 s) for the drain.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn api(&self) -> ApiClient {
        ApiClient::remote(&self.config).unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.api().json(Method::GET, path, None).await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.api()
            .json(Method::POST, path, Some(body))
            .await
            .unwrap()
    }

    /// Submits a record; `extra` adds query parameters (categories, clinician_role, …).
    pub async fn send(
        &self,
        to: &str,
        patient: &str,
        purpose: &str,
        content_type: &str,
        payload: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Submitted {
        let mut q = vec![
            ("to", to),
            ("patient", patient),
            ("purpose", purpose),
            ("content_type", content_type),
        ];
        q.extend_from_slice(extra);
        self.post_transfer(&q, payload, &[]).await.0
    }

    /// Sends a FHIR bundle for its own patient, for treatment, with an `Idempotency-Key` of
    /// each raw header value in `keys` (none, one or several); also says whether the answer
    /// carried `Idempotent-Replayed: true`.
    pub async fn send_keyed(
        &self,
        to: &str,
        bundle: &[u8],
        purpose: &str,
        keys: &[&str],
    ) -> (Submitted, bool) {
        let patient = patient_id(bundle).unwrap_or_else(|| "no-patient".to_owned());
        let q = [
            ("to", to),
            ("patient", patient.as_str()),
            ("purpose", purpose),
            ("content_type", "fhir"),
        ];
        let headers: Vec<(&str, &str)> = keys.iter().map(|k| ("idempotency-key", *k)).collect();
        self.post_transfer(&q, bundle.to_vec(), &headers).await
    }

    async fn post_transfer(
        &self,
        query: &[(&str, &str)],
        payload: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (Submitted, bool) {
        let query = serde_urlencoded::to_string(query).unwrap();
        let resp = self
            .api()
            .call_with_headers(
                Method::POST,
                &format!("/v1/transfers?{query}"),
                Body::from(payload),
                Some("application/octet-stream"),
                headers,
            )
            .await
            .unwrap();
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let (status, body) = collect_json(resp).await.unwrap();
        (Submitted { status, body }, replayed)
    }

    /// Sends a FHIR bundle for its own patient, for treatment.
    pub async fn send_bundle(&self, to: &str, bundle: &[u8]) -> Submitted {
        let patient = patient_id(bundle).unwrap_or_else(|| "no-patient".to_owned());
        self.send(to, &patient, "treatment", "fhir", bundle.to_vec(), &[])
            .await
    }

    pub async fn transfer(&self, id: &str) -> Value {
        self.get(&format!("/v1/transfers/{id}")).await.1
    }

    /// Polls until the transfer reaches `state` (bounded); returns its view.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.transfer(id).await;
            if v["state"] == state {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "transfer {id} did not reach {state}: {v}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole inbox, newest first, read a page at a time.
    pub async fn inbox(&self) -> Vec<Value> {
        self.all_pages("/v1/inbox").await
    }

    /// Fetches and decrypts a received record.
    pub async fn fetch(&self, id: &str) -> Vec<u8> {
        self.fetch_body(id)
            .await
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    /// The decrypted payload of a received record as a stream (asserts 200).
    pub async fn fetch_body(&self, id: &str) -> Body {
        let resp = self
            .api()
            .call(
                Method::GET,
                &format!("/v1/inbox/{id}/payload"),
                Body::empty(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body()
    }

    /// The whole audit log, read a page at a time.
    pub async fn audit(&self) -> Vec<Value> {
        self.all_pages("/v1/audit").await
    }

    /// Every entry of a paged listing: pages of `MAX_PAGE`, following the node's
    /// `Link: rel="next"` headers as any client would.
    async fn all_pages(&self, path: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        let mut next = Some(format!("{path}?limit={MAX_PAGE}"));
        while let Some(page_path) = next.take() {
            let page = self.api().page(&page_path).await.unwrap();
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            all.extend(page.body.as_array().cloned().unwrap_or_default());
            next = page.next;
        }
        all
    }

    /// The audit log without its `audit-read` entries, which every read of the log adds
    /// (this one's included): for tests that check what else was recorded.
    pub async fn audit_without_reads(&self) -> Vec<Value> {
        let mut all = self.audit().await;
        all.retain(|e| e["event"] != "audit-read");
        all
    }

    pub async fn audit_verifies(&self) -> bool {
        let (status, v) = self.get("/v1/audit/verify").await;
        status == StatusCode::OK && v["ok"] == true
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a `gateway` CLI command; returns (exit code, stdout, stderr).
pub fn gateway_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(gateway_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (bounded) for a child process to exit by itself; returns its exit code, or None if
/// it is still running at the deadline (it is left running; the caller decides).
pub fn wait_child_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls an async condition until true (bounded).
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            assert!(std::time::Instant::now() < deadline, $($msg)+);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}

// ---- raw peer connections (for attacks the real client never makes) ----------------------------

/// Client identity for a raw mutual-TLS connection to a node's peer listener.
pub struct RawIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl RawIdentity {
    pub fn from_node_dir(dir: &Path) -> RawIdentity {
        RawIdentity {
            cert_pem: std::fs::read(dir.join("tls.crt")).unwrap(),
            key_pem: std::fs::read(dir.join("tls.key")).unwrap(),
        }
    }
}

/// POSTs `body` to `path` on a node's peer listener over HTTP/2 + mutual TLS with the given
/// identity, trusting `ca_pem` for the server. Err is a connection/handshake failure.
pub async fn raw_peer_post(
    addr: SocketAddr,
    ca_pem: &[u8],
    identity: &RawIdentity,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &identity.cert_pem[..])
        .map(|c| c.unwrap())
        .collect();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &identity.key_pem[..])
        .unwrap()
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(match addr.ip() {
        IpAddr::V4(v4) => v4.into(),
        IpAddr::V6(v6) => v6.into(),
    });
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::post(format!("https://{}{path}", addr.ip()))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok((status, bytes))
}

// ---- consent, policy and request helpers -------------------------------------------------------

/// The bundle whose file name starts with `prefix` (e.g. "Eliseo_Cummings"), with its bytes.
pub fn bundle_by_prefix(prefix: &str) -> Vec<u8> {
    bundles()
        .into_iter()
        .find(|(name, _)| name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no bundle named {prefix}*"))
        .1
}

/// Data categories the gateway finds in a FHIR bundle (the policies crate's classifier).
pub fn bundle_categories(bytes: &[u8]) -> Vec<String> {
    policies::classify::classify_fhir_bundle(bytes)
        .unwrap()
        .categories
        .iter()
        .map(ToString::to_string)
        .collect()
}

impl Node {
    /// Runs `gateway <args…> --config <this node's node.toml>` (the flag goes last, so it
    /// lands in the leaf subcommand); returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.dir.config_path.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--config", &config]);
        gateway_cli(&all)
    }

    /// Records the patient's explicit consent to records going to `facility` for treatment, as
    /// the default policies require for sensitive categories; asserts it was stored.
    pub async fn consent_for_treatment(&self, patient: &str, facility: &str) {
        let (status, body) = self
            .post_json(
                "/v1/consents",
                serde_json::json!({"patient": patient, "effect": "permit",
                    "facilities": [facility], "purposes": ["treatment"], "recorded_by": "test"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Stores a record for pull requests (`PUT /v1/records/{patient}`, as the CLI does); returns
    /// the status.
    pub async fn put_record(&self, patient: &str, bytes: &[u8]) -> StatusCode {
        self.api()
            .call(
                Method::PUT,
                &format!("/v1/records/{patient}"),
                Body::from(bytes.to_vec()),
                None,
            )
            .await
            .unwrap()
            .status()
    }

    /// `POST /v1/audit/checkpoint`: the latest signed checkpoint of the audit log, as the
    /// C2SP note with its cosignatures.
    pub async fn checkpoint_now(&self) -> String {
        let response = self
            .api()
            .call(Method::POST, "/v1/audit/checkpoint", Body::empty(), None)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Audit entries of one event kind (e.g. "policy-decision").
    pub async fn audit_events(&self, event: &str) -> Vec<Value> {
        self.audit()
            .await
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }
}

/// A copy of the shipped policy set (policies/cedar) in `dir`/policies, for tests that run a
/// node with an operator policy directory.
pub fn copy_policies(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/cedar");
    let dst = dir.join("policies");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["federation.cedar", "schema.cedarschema"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

impl Fed {
    /// Points a node's config at `policy_dir` (`[policy] dir`) and makes it look for changed
    /// policy files every second. Call before starting the node.
    pub fn use_policy_dir(&self, id: &str, policy_dir: &Path) {
        let path = &self.nodes[id].config_path;
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("[federation]\n"), "config template changed");
        let text = text.replace("[federation]\n", "[federation]\nreload_interval_secs = 1\n")
            + &format!("\n[policy]\ndir = \"{}\"\n", policy_dir.display());
        std::fs::write(path, text).unwrap();
    }
}

/// The `policy_ids` of an API answer or audit entry (empty when absent).
pub fn policy_ids(v: &Value) -> Vec<String> {
    v["policy_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// ---- outages and logs ----------------------------------------------------------------------------

/// The delivery timings of the shipped defaults, run 60 times faster: every `[delivery]` key
/// keeps its default, and `danger_time_scale` divides the backoff and the age bound, so one
/// second of a test is one minute of a real outage. Tests that use it say so.
pub const SHIPPED_DEFAULTS_TIMES_60: &str = "\n[delivery]\ndanger_time_scale = 60\n";

impl Node {
    /// Every transfer this node sends, read a page at a time.
    pub async fn transfers(&self) -> Vec<Value> {
        self.all_pages("/v1/transfers").await
    }
}

/// What the data directory `data` holds for `kind` ("outbox" or "inbox"): the names of its
/// spool files (transfer ids in hex, and `*.partial` files being written) and the transfer
/// ids of the records in its spool segments, sorted, once each.
pub fn spooled(data: &Path, kind: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("spool").join(kind))
        .map(|l| {
            l.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.extend(segment_records(data, kind).into_iter().map(|(id, _)| id));
    names.sort();
    names.dedup();
    names
}

/// The records of the spool segments of `kind` in `data`, in order: (transfer id hex, bytes).
/// A reader of the format written by gateway_store's `segment` module
/// (`u32_be len | u32_be crc32 | transfer id (16) | bytes`), stopping at a file's first
/// incomplete record; records whose envelope was removed since stay until their segment goes.
pub fn segment_records(data: &Path, kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = data.join("spool").join(format!("{kind}-segments"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|l| l.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let mut rest = &bytes[..];
        while rest.len() >= 24 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            if rest.len() < 24 + len {
                break;
            }
            out.push((hex::encode(&rest[8..24]), rest[24..24 + len].to_vec()));
            rest = &rest[24 + len..];
        }
    }
    out
}
