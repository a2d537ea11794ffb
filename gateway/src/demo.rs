//! `gateway demo`: a whole federation on one machine, from nothing. It creates a CA and three
//! facilities with the `pki` library, writes each node's `node.toml`, starts three real nodes on
//! loopback (mutual TLS, sled stores), sends a real Synthea FHIR bundle through the local API,
//! shows a policy refusal, and prints what happened in plain language.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Method;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use pki_tools::{Endpoint, FacilityId, FacilityKind, Federation};

use crate::cli::client::{collect_json, ApiClient};
use crate::cli::{outln, print_audit_row, Failure, EXIT_FAILURE};
use crate::config::{ConfigTemplate, NodeConfig};
use crate::node;
use crate::state::NodeState;

/// A real Synthea R4 bundle (Apache-2.0, see tests/testdata/fhir/MANIFEST.md): general data,
/// which the default policies let flow for treatment.
const GENERAL_BUNDLE: &[u8] = include_bytes!(
    "../../tests/testdata/fhir/bundles/Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
);
/// A Synthea bundle with mental-health and substance-use codes: sensitive.
const SENSITIVE_BUNDLE: &[u8] = include_bytes!(
    "../../tests/testdata/fhir/bundles/Eliseo_Cummings_55c373ad-af55-46ed-8f69-9c7a40a89d46.json"
);

struct DemoFacility {
    id: &'static str,
    name: &'static str,
    kind: FacilityKind,
}

const FACILITIES: [DemoFacility; 3] = [
    DemoFacility {
        id: "hosp-central",
        name: "Central Hospital",
        kind: FacilityKind::Hospital,
    },
    DemoFacility {
        id: "clinic-north",
        name: "North Clinic",
        kind: FacilityKind::Clinic,
    },
    DemoFacility {
        id: "payer-province",
        name: "Provincial Insurance",
        kind: FacilityKind::Payer,
    },
];

struct RunningNode {
    config: NodeConfig,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _state: Arc<NodeState>,
}

pub async fn run(dir: Option<PathBuf>, once: bool) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure {
        code: EXIT_FAILURE,
        message: e.to_string(),
    };
    let dir = match dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("healthfed-demo-")
            .tempdir()
            .map_err(|e| fail(&e))?
            .keep(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail(&format!("{}: {e}", dir.display())))?;
    outln!("== healthfed demo federation in {}", dir.display())?;

    let configs = prepare(&dir).await?;
    let mut nodes = BTreeMap::new();
    for (id, (config, peer_l, local_l)) in configs {
        let (stop, rx) = watch::channel(false);
        let state =
            node::load_state(config.clone(), rx).map_err(|e| fail(&format!("{id}: {e}")))?;
        let ops_l = node::bind_ops(&config)
            .await
            .map_err(|e| fail(&format!("{id}: {e}")))?;
        let mut stop_rx = stop.subscribe();
        let task = tokio::spawn(node::run(
            state.clone(),
            peer_l,
            local_l,
            ops_l,
            async move {
                let _ = stop_rx.changed().await;
            },
            stop.clone(),
        ));
        outln!(
            "   started node {id}: peers connect to {} (mutual TLS 1.3), local API on {}",
            config.peer.listen,
            config.local_api.listen
        )?;
        nodes.insert(
            id,
            RunningNode {
                config,
                stop,
                task,
                _state: state,
            },
        );
    }

    let ok = exchange(&nodes).await;

    if !once && ok.is_ok() {
        outln!("\nThe three nodes keep running. Try, in another terminal:")?;
        if let Some(n) = nodes.get("clinic-north") {
            outln!("   gateway inbox --config {} list", n.config.path.display())?;
            outln!("   gateway audit list --config {}", n.config.path.display())?;
        }
        outln!("Press Ctrl-C to stop.")?;
        let _ = tokio::signal::ctrl_c().await;
    }
    for node in nodes.values() {
        let _ = node.stop.send(true);
    }
    for (_, node) in nodes {
        let _ = node.task.await;
    }
    outln!("\nNodes stopped. Check any node's audit chain with:")?;
    for f in &FACILITIES {
        outln!(
            "   gateway audit verify --config {}",
            dir.join(f.id).join("node.toml").display()
        )?;
    }
    ok
}

/// Creates (or reopens) the federation and binds every node's listeners.
async fn prepare(
    dir: &Path,
) -> Result<BTreeMap<&'static str, (NodeConfig, TcpListener, TcpListener)>, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure {
        code: EXIT_FAILURE,
        message: e.to_string(),
    };
    let fed_dir = dir.join("federation");
    let fresh = !fed_dir.join(pki_tools::layout::STATE).exists();
    let mut out = BTreeMap::new();
    if !fresh {
        outln!("   reusing the federation created earlier in this directory")?;
        for f in &FACILITIES {
            let config =
                NodeConfig::load(&dir.join(f.id).join("node.toml")).map_err(|e| fail(&e))?;
            let (peer, local) = node::bind(&config).await.map_err(|e| fail(&e))?;
            out.insert(f.id, (config, peer, local));
        }
        return Ok(out);
    }

    let mut fed = Federation::init(&fed_dir, "Demo Provincial Health Federation", false)
        .map_err(|e| fail(&e))?;
    outln!(
        "   created the federation CA (ECDSA P-256) in {}",
        fed_dir.display()
    )?;
    let mut bound = Vec::new();
    for f in &FACILITIES {
        let peer = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| fail(&e))?;
        let local = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| fail(&e))?;
        let peer_addr: SocketAddr = peer.local_addr().map_err(|e| fail(&e))?;
        let local_addr: SocketAddr = local.local_addr().map_err(|e| fail(&e))?;
        let id: FacilityId = f.id.parse().map_err(|e| fail(&e))?;
        let endpoint: Endpoint = format!("https://127.0.0.1:{}", peer_addr.port())
            .parse()
            .map_err(|e| fail(&e))?;
        let node_dir = dir.join(f.id);
        fed.add_facility(&id, f.name, &endpoint, f.kind, &node_dir)
            .map_err(|e| fail(&e))?;
        outln!("   issued identity for {} ({}, {}): TLS certificate, Ed25519 signing key, X25519 encryption key", f.id, f.name, f.kind)?;
        bound.push((f, node_dir, peer, local, peer_addr, local_addr));
    }
    let published = fed
        .publish(Duration::from_secs(30 * 24 * 3600))
        .map_err(|e| fail(&e))?;
    outln!(
        "   published the signed federation directory (version {}) and the CRL",
        published.version
    )?;

    for (f, node_dir, peer, local, peer_addr, local_addr) in bound {
        let token = random_token();
        pki_tools::files::write_atomic(&node_dir.join("api.token"), token.as_bytes(), true)
            .map_err(|e| fail(&e))?;
        let rendered = ConfigTemplate {
            facility_id: f.id,
            peer_listen: peer_addr,
            local_listen: local_addr,
            token_sha256_hex: &hex::encode(gateway_envelope::sha256(token.as_bytes())),
            directory: &Path::new("..")
                .join("federation")
                .join(pki_tools::layout::DIRECTORY),
            crl: &Path::new("..")
                .join("federation")
                .join(pki_tools::layout::CRL),
        }
        .render()
        .map_err(|e| fail(&e))?;
        let path = node_dir.join("node.toml");
        pki_tools::files::write_atomic(&path, rendered.as_bytes(), false).map_err(|e| fail(&e))?;
        let config = NodeConfig::load(&path).map_err(|e| fail(&e))?;
        out.insert(f.id, (config, peer, local));
    }
    Ok(out)
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    hex::encode(bytes)
}

fn patient_id(bundle: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bundle).ok()?;
    v["entry"].as_array()?.iter().find_map(|e| {
        let r = &e["resource"];
        (r["resourceType"] == "Patient")
            .then(|| r["id"].as_str().map(str::to_owned))
            .flatten()
    })
}

async fn exchange(nodes: &BTreeMap<&'static str, RunningNode>) -> Result<(), Failure> {
    let fail = |m: String| Failure {
        code: EXIT_FAILURE,
        message: m,
    };
    let (Some(sender), Some(receiver)) = (nodes.get("hosp-central"), nodes.get("clinic-north"))
    else {
        return Err(fail("demo nodes missing".to_owned()));
    };
    let api = ApiClient::connect(&sender.config)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let patient =
        patient_id(GENERAL_BUNDLE).ok_or_else(|| fail("demo bundle has no Patient".to_owned()))?;

    outln!("\n== 1. Central Hospital refers a patient to North Clinic (purpose: treatment)")?;
    outln!(
        "   record: Synthea FHIR R4 transaction bundle, {} bytes",
        GENERAL_BUNDLE.len()
    )?;
    let q = serde_urlencoded::to_string([
        ("to", "clinic-north"),
        ("patient", patient.as_str()),
        ("purpose", "treatment"),
        ("content_type", "fhir"),
        ("clinician", "dr-demo"),
        ("clinician_role", "physician"),
    ])
    .unwrap_or_default();
    let resp = api
        .call(
            Method::POST,
            &format!("/v1/transfers?{q}"),
            Body::from(GENERAL_BUNDLE),
            None,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (status, body) = collect_json(resp).await.map_err(|e| fail(e.to_string()))?;
    let Some(transfer) = body["transfer_id"].as_str().map(str::to_owned) else {
        return Err(fail(format!("submit refused ({status}): {body}")));
    };
    outln!("   the gateway read the bundle itself, checked policy, signed (Ed25519) and sealed it (HPKE X25519 + AES-256-GCM)")?;
    outln!(
        "   queued durably: transfer {transfer} (local API answered {})",
        status.as_u16()
    )?;

    let view = wait_for_final(&api, &transfer).await?;
    let state = view["state"].as_str().unwrap_or("");
    outln!(
        "   state: {state}; attempts: {}; receipt held: {}",
        view["attempts"],
        view["receipt_held"]
    )?;
    let delivered = state == "delivered" && view["receipt_held"].as_bool() == Some(true);
    if delivered {
        outln!("   North Clinic stored the sealed envelope and returned a signed receipt; Central Hospital verified it")?;
    }

    let inbox_api = ApiClient::connect(&receiver.config)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (_, inbox) = inbox_api
        .json(Method::GET, "/v1/inbox", None)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let count = inbox.as_array().map(Vec::len).unwrap_or(0);
    outln!("   North Clinic's inbox holds {count} record(s), encrypted at rest until fetched")?;
    if delivered {
        let resp = inbox_api
            .call(
                Method::GET,
                &format!("/v1/inbox/{transfer}/payload"),
                Body::empty(),
                None,
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        outln!(
            "   fetched and decrypted at North Clinic: {} bytes, byte-identical to what was sent: {}",
            bytes.len(),
            bytes.as_ref() == GENERAL_BUNDLE
        )?;
    }

    outln!("\n== 2. Central Hospital tries to send a record with mental-health and substance-use data to the insurer")?;
    let sensitive_patient = patient_id(SENSITIVE_BUNDLE).unwrap_or_default();
    let q = serde_urlencoded::to_string([
        ("to", "payer-province"),
        ("patient", sensitive_patient.as_str()),
        ("purpose", "payment"),
        ("content_type", "fhir"),
        ("clinician", "billing-clerk"),
    ])
    .unwrap_or_default();
    let resp = api
        .call(
            Method::POST,
            &format!("/v1/transfers?{q}"),
            Body::from(SENSITIVE_BUNDLE),
            None,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (status, body) = collect_json(resp).await.map_err(|e| fail(e.to_string()))?;
    outln!(
        "   refused before anything left the hospital ({}): {}",
        status.as_u16(),
        body["error"].as_str().unwrap_or("")
    )?;
    if let Some(ids) = body["policy_ids"].as_array() {
        outln!("   determining policies: {}", Value::Array(ids.clone()))?;
    }

    for (title, node) in [("Central Hospital", sender), ("North Clinic", receiver)] {
        outln!("\n== audit log of {title} ({})", node.config.facility_id)?;
        let c = ApiClient::connect(&node.config)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (_, rows) = c
            .json(Method::GET, "/v1/audit", None)
            .await
            .map_err(|e| fail(e.to_string()))?;
        for r in rows.as_array().cloned().unwrap_or_default() {
            print_audit_row(&r)?;
        }
        let (_, verified) = c
            .json(Method::GET, "/v1/audit/verify", None)
            .await
            .map_err(|e| fail(e.to_string()))?;
        outln!(
            "   hash chain verifies: {} ({} entries)",
            verified["ok"],
            verified["entries"]
        )?;
    }

    if delivered {
        outln!("\nRESULT: delivered, receipt verified.")?;
        Ok(())
    } else {
        Err(fail(format!(
            "demo transfer ended in state {state}: {}",
            view["last_error"]
        )))
    }
}

async fn wait_for_final(api: &ApiClient, transfer: &str) -> Result<Value, Failure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = api
            .json(Method::GET, &format!("/v1/transfers/{transfer}"), None)
            .await
            .map_err(|e| Failure {
                code: EXIT_FAILURE,
                message: e.to_string(),
            })?;
        let state = view["state"].as_str().unwrap_or("");
        if matches!(state, "delivered" | "failed" | "cancelled")
            || tokio::time::Instant::now() > deadline
        {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
