//! Builds the benchmark federation (CA, two gateway facilities and the nginx server identity)
//! and the payloads, all from the shared test data.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use pki_tools::{Endpoint, FacilityId, FacilityKind, Federation};

use crate::BoxError;

pub const SENDER: &str = "hosp-central";
pub const RECEIVER: &str = "clinic-north";
/// The identity nginx presents: a facility certificate issued by the same federation CA, so
/// the load generator verifies nginx exactly as one gateway verifies another.
pub const SINK: &str = "bench-nginx";
/// `--evidence`: a third member that only witnesses (two witnesses per log, as the issue's
/// three-node federation has), sending and receiving nothing.
pub const WITNESS: &str = "lab-south";

/// Everything the harness needs to run one gateway node.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub id: &'static str,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub token: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// The federation on disk.
#[derive(Debug, Clone)]
pub struct BenchFederation {
    pub ca_cert: PathBuf,
    pub sender: NodeFiles,
    pub receiver: NodeFiles,
    /// Directory holding the nginx server certificate and key (tls.crt, tls.key).
    pub sink_dir: PathBuf,
    /// Port nginx terminates mutual TLS on.
    pub sink_tls: SocketAddr,
    /// Port of the plain-HTTP sink behind nginx.
    pub sink_plain: SocketAddr,
}

/// A free loopback port: bound and released again. The harness starts its servers right after,
/// so a clash with another process is unlikely and shows up as a start-up failure.
pub fn free_port() -> Result<SocketAddr, BoxError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?)
}

pub fn create_federation(dir: &Path) -> Result<BenchFederation, BoxError> {
    create_federation_with(dir, &[]).map(|(fed, _)| fed)
}

/// The federation plus the members `extra` names (id, display name), as further gateway
/// nodes with their own files.
pub fn create_federation_with(
    dir: &Path,
    extra: &[(&'static str, &'static str)],
) -> Result<(BenchFederation, Vec<NodeFiles>), BoxError> {
    let fed_dir = dir.join("federation");
    let mut fed = Federation::init(&fed_dir, "Benchmark Federation", false)?;
    let mut nodes = Vec::new();
    let members = [
        (SENDER, "Central Hospital", FacilityKind::Hospital),
        (RECEIVER, "North Clinic", FacilityKind::Clinic),
    ]
    .into_iter()
    .chain(
        extra
            .iter()
            .map(|&(id, name)| (id, name, FacilityKind::Clinic)),
    );
    for (id, name, kind) in members {
        let peer = free_port()?;
        let local = free_port()?;
        let fid: FacilityId = id.parse()?;
        let endpoint: Endpoint = format!("https://127.0.0.1:{}", peer.port()).parse()?;
        let node_dir = dir.join(id);
        fed.add_facility(&fid, name, &endpoint, kind, &node_dir)?;
        nodes.push((id, node_dir, peer, local));
    }
    let sink_tls = free_port()?;
    let sink_plain = free_port()?;
    let sink_dir = dir.join(SINK);
    fed.add_facility(
        &SINK.parse()?,
        "Benchmark nginx",
        &format!("https://127.0.0.1:{}", sink_tls.port()).parse()?,
        FacilityKind::Clinic,
        &sink_dir,
    )?;
    fed.publish(Duration::from_secs(7 * 24 * 3600))?;

    let mut files = Vec::new();
    for (id, node_dir, peer, local) in nodes {
        let token = random_token()?;
        pki_tools::files::write_atomic(&node_dir.join("api.token"), token.as_bytes(), true)?;
        let token_sha256 = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let rendered = node_toml(id, peer, local, &hex::encode(token_sha256.as_ref()))?;
        let config = node_dir.join("node.toml");
        pki_tools::files::write_atomic(&config, rendered.as_bytes(), false)?;
        files.push(NodeFiles {
            id,
            dir: node_dir,
            config,
            token,
            local,
            peer,
        });
    }
    let mut files = files.into_iter();
    let (Some(sender), Some(receiver)) = (files.next(), files.next()) else {
        return Err("federation setup lost a node".into());
    };
    Ok((
        BenchFederation {
            ca_cert: fed_dir.join(pki_tools::layout::CA_CERT),
            sender,
            receiver,
            sink_dir,
            sink_tls,
            sink_plain,
        },
        files.collect(),
    ))
}

/// The node configuration, rendered by the same template `gateway demo` uses, so the
/// benchmark runs nodes configured exactly as a demo node is.
fn node_toml(
    id: &str,
    peer: SocketAddr,
    local: SocketAddr,
    token_sha256_hex: &str,
) -> Result<String, BoxError> {
    let federation = Path::new("..").join("federation");
    gateway::config::ConfigTemplate {
        facility_id: id,
        peer_listen: peer,
        local_listen: local,
        token_sha256_hex,
        directory: &federation.join(pki_tools::layout::DIRECTORY),
        crl: &federation.join(pki_tools::layout::CRL),
    }
    .render()
    .map_err(BoxError::from)
}

fn random_token() -> Result<String, BoxError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "system rng failed")?;
    Ok(hex::encode(bytes))
}

/// One payload used in the transfer scenarios.
#[derive(Clone)]
pub struct Payload {
    /// "10k", "100k", "1m".
    pub label: &'static str,
    pub bytes: Bytes,
    pub patient: String,
    /// How it was made from the shared test data (file names and sizes).
    pub source: String,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads are (synthetic) patient records: never print them.
        f.debug_struct("Payload")
            .field("label", &self.label)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

const CLEMENTE: &str = "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json";

fn load_bundle(bundles: &Path, name: &str) -> Result<(Value, u64), BoxError> {
    let path = bundles.join(name);
    let raw = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((serde_json::from_slice(&raw)?, raw.len() as u64))
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

fn is_patient(entry: &Value) -> bool {
    entry["resource"]["resourceType"] == "Patient"
}

pub fn patient_id(bundle: &Value) -> Option<String> {
    entries(bundle)
        .iter()
        .find(|e| is_patient(e))
        .and_then(|e| e["resource"]["id"].as_str().map(str::to_owned))
}

/// A valid FHIR bundle: `base` with its entries replaced by its Patient entry followed by as
/// many of `pool` (in order) as needed to reach `target` bytes (compact JSON).
fn trimmed(base: &Value, pool: &[Value], target: usize) -> Result<(Vec<u8>, usize), BoxError> {
    let mut chosen: Vec<Value> = entries(base).into_iter().filter(is_patient).collect();
    let mut bundle = base.clone();
    bundle["entry"] = Value::Array(chosen.clone());
    let mut size = serde_json::to_vec(&bundle)?.len();
    for e in pool.iter().filter(|e| !is_patient(e)) {
        if size >= target {
            break;
        }
        size += serde_json::to_vec(e)?.len() + 1;
        chosen.push(e.clone());
    }
    let n = chosen.len();
    bundle["entry"] = Value::Array(chosen);
    Ok((serde_json::to_vec(&bundle)?, n))
}

/// Clemente Kreiger's Synthea bundle is the only Synthea bundle in the shared data with
/// general data only (the others carry sensitive codes and are refused without consent), and
/// no shared bundle is within 2x of the target sizes. So: ~10 KB and ~100 KB are Clemente's
/// bundle cut to its Patient plus the first entries that reach the size; ~1 MB is Clemente's
/// Patient plus its other entries repeated (copies get an id suffix "-rN" so that resource ids
/// stay unique). Cutting and repeating whole entries keeps a bundle the gateway parses and
/// classifies like any other.
pub fn payloads(testdata: &Path) -> Result<Vec<Payload>, BoxError> {
    let bundles = testdata.join("fhir").join("bundles");
    let (clemente, clemente_len) = load_bundle(&bundles, CLEMENTE)?;
    let patient = patient_id(&clemente).ok_or("Clemente bundle has no Patient")?;
    let originals = entries(&clemente);

    let mut out = Vec::new();
    for (label, target) in [("10k", 10_000usize), ("100k", 100_000)] {
        let (bytes, n) = trimmed(&clemente, &originals, target)?;
        out.push(Payload {
            label,
            source: format!(
                "{CLEMENTE} ({clemente_len} B) cut to Patient + {} entries, compact JSON",
                n.saturating_sub(1)
            ),
            bytes: Bytes::from(bytes),
            patient: patient.clone(),
        });
    }
    let mut pool = Vec::new();
    for round in 0..16 {
        for e in originals.iter().filter(|e| !is_patient(e)) {
            let mut e = e.clone();
            if round > 0 {
                if let Some(id) = e["resource"]["id"]
                    .as_str()
                    .map(|s| format!("{s}-r{round}"))
                {
                    e["resource"]["id"] = Value::String(id);
                }
                if let Some(url) = e["fullUrl"].as_str().map(|s| format!("{s}-r{round}")) {
                    e["fullUrl"] = Value::String(url);
                }
            }
            pool.push(e);
        }
    }
    let (bytes, n) = trimmed(&clemente, &pool, 1_000_000)?;
    out.push(Payload {
        label: "1m",
        source: format!(
            "{CLEMENTE} ({clemente_len} B): Patient + {} entries (its entries repeated, ids suffixed), compact JSON",
            n.saturating_sub(1)
        ),
        bytes: Bytes::from(bytes),
        patient,
    });
    Ok(out)
}

/// The raw bytes of Clemente's bundle, repeated to build the generated 1 GiB file.
pub fn clemente_raw(testdata: &Path) -> Result<(Vec<u8>, String), BoxError> {
    let path = testdata.join("fhir").join("bundles").join(CLEMENTE);
    let raw = std::fs::read(&path)?;
    let v: Value = serde_json::from_slice(&raw)?;
    Ok((raw, patient_id(&v).ok_or("Clemente bundle has no Patient")?))
}
