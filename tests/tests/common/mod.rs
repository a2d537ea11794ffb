//! Helpers shared by the transport, envelope and reliability tests (each test binary uses a
//! different subset, hence the dead-code allowance).

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use gateway::record::{DeclarationWire, RecordMetadata, METADATA_VERSION};
use gateway_envelope::{
    seal_to_vec, EncryptionPublicKey, SealParams, SigningKey, Suite, TransferId, DEFAULT_CHUNK_SIZE,
};
use pki_tools::FacilityFile;
use tests::{Fed, Node};

/// The federation CA certificate as PEM (what a raw client trusts for the server).
pub fn ca_pem(fed: &Fed) -> Vec<u8> {
    let any = fed.nodes.values().next().unwrap();
    std::fs::read(any.dir.join("ca.crt")).unwrap()
}

/// A facility's Ed25519 signing key, loaded from its node directory.
pub fn signing_key(dir: &Path) -> SigningKey {
    let der = pki_tools::keys::load_ed25519_pkcs8(&dir.join("signing.key")).unwrap();
    SigningKey::from_pkcs8(&der).unwrap()
}

/// A facility's HPKE public key, from its `facility.json`.
pub fn encryption_key(dir: &Path) -> EncryptionPublicKey {
    EncryptionPublicKey(
        FacilityFile::load(&dir.join("facility.json"))
            .unwrap()
            .encryption_public_key,
    )
}

pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Metadata for a general-category record sent for treatment (allowed by the default policies):
/// opaque bytes, declared general by a named clinician (the gateway cannot classify them).
pub fn general_metadata() -> Vec<u8> {
    metadata(
        "application/octet-stream",
        "pat-raw-1",
        &["general"],
        Some(("dr-raw", "physician")),
    )
}

/// Metadata as a sender writes it: `categories` as signed, derived = categories, and a
/// clinician's declaration of them when `declared_by` is given.
pub fn metadata(
    content_type: &str,
    patient: &str,
    categories: &[&str],
    declared_by: Option<(&str, &str)>,
) -> Vec<u8> {
    let categories: Vec<String> = categories.iter().map(|c| (*c).to_owned()).collect();
    RecordMetadata {
        version: METADATA_VERSION,
        content_type: content_type.to_owned(),
        patient: patient.to_owned(),
        purpose: "treatment".to_owned(),
        categories: categories.clone(),
        clinician: declared_by.map(|(c, _)| c.to_owned()),
        clinician_role: declared_by.map(|(_, r)| r.to_owned()),
        break_glass_reason: None,
        break_glass_until_ms: None,
        request_id: None,
        consent_basis: None,
        derived_categories: categories.clone(),
        declaration: declared_by.map(|(c, r)| DeclarationWire {
            clinician: c.to_owned(),
            clinician_role: r.to_owned(),
            categories,
        }),
    }
    .encode()
}

/// Seals `payload` with the given metadata frame (for senders whose metadata lies).
pub fn seal_with_metadata(
    id: TransferId,
    sender: &str,
    recipient: &str,
    signer: &SigningKey,
    to_key: &EncryptionPublicKey,
    metadata: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let params = SealParams {
        transfer_id: id,
        sender,
        recipient,
        created_at_ms: now_ms(),
        payload_len: payload.len() as u64,
        payload_digest: gateway_envelope::sha256(payload),
        suite: Suite::default(),
        chunk_size: DEFAULT_CHUNK_SIZE.min(4096),
    };
    seal_to_vec(&params, metadata, payload, to_key, signer).unwrap()
}

/// Seals `payload` as a real envelope: header names `sender` → `recipient`, signed by `signer`,
/// encrypted to `to_key`. Small chunks so that even a small payload spans several frames.
pub fn seal(
    id: TransferId,
    sender: &str,
    recipient: &str,
    signer: &SigningKey,
    to_key: &EncryptionPublicKey,
    payload: &[u8],
) -> Vec<u8> {
    seal_at(id, sender, recipient, signer, to_key, payload, now_ms())
}

/// Like [`seal`], with the header's creation time given (for replay-window tests).
pub fn seal_at(
    id: TransferId,
    sender: &str,
    recipient: &str,
    signer: &SigningKey,
    to_key: &EncryptionPublicKey,
    payload: &[u8],
    created_at_ms: u64,
) -> Vec<u8> {
    let digest = gateway_envelope::sha256(payload);
    seal_claiming(
        id,
        sender,
        recipient,
        signer,
        to_key,
        payload,
        created_at_ms,
        digest,
    )
}

/// Like [`seal_at`], with the signed payload digest given (a sender that lies about it).
#[allow(clippy::too_many_arguments)]
pub fn seal_claiming(
    id: TransferId,
    sender: &str,
    recipient: &str,
    signer: &SigningKey,
    to_key: &EncryptionPublicKey,
    payload: &[u8],
    created_at_ms: u64,
    payload_digest: [u8; 32],
) -> Vec<u8> {
    let params = SealParams {
        transfer_id: id,
        sender,
        recipient,
        created_at_ms,
        payload_len: payload.len() as u64,
        payload_digest,
        suite: Suite::default(),
        chunk_size: DEFAULT_CHUNK_SIZE.min(4096),
    };
    seal_to_vec(&params, &general_metadata(), payload, to_key, signer).unwrap()
}

/// Audit entries of the `rejected` event.
pub async fn rejections(node: &Node) -> Vec<Value> {
    node.audit()
        .await
        .into_iter()
        .filter(|e| e["event"] == "rejected")
        .collect()
}

/// Waits (bounded) for a `rejected` audit entry matching `pred`; returns it.
pub async fn wait_rejection(
    node: &Node,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let all = rejections(node).await;
        if let Some(found) = all.iter().find(|e| pred(e)) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no matching rejected audit entry; rejected entries: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rewrites a key in a node's config section (the line right after `[section]`).
pub fn add_config_line(fed: &Fed, id: &str, section: &str, line: &str) {
    let path = &fed.nodes[id].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    let header = format!("[{section}]\n");
    assert!(
        text.contains(&header),
        "no [{section}] in {}",
        path.display()
    );
    let text = text.replacen(&header, &format!("{header}{line}\n"), 1);
    std::fs::write(path, text).unwrap();
}

/// `gateway evidence verify evidence.json --ca ca.crt`, run inside `dir` (which holds only
/// `ca.crt`), with an empty environment.
pub fn verify_evidence_in(dir: &Path, file: &[u8]) -> (i32, String, String) {
    std::fs::write(dir.join("evidence.json"), file).unwrap();
    let out = std::process::Command::new(tests::gateway_bin())
        .current_dir(dir)
        .args(["evidence", "verify", "evidence.json", "--ca", "ca.crt"])
        .env_clear()
        .output()
        .unwrap();
    std::fs::remove_file(dir.join("evidence.json")).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gateway evidence export --transfer id --out out` on `node`: the file's bytes (written 0600).
pub fn export_evidence(node: &Node, id: &str, out: &Path) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt as _;
    let out_s = out.display().to_string();
    let (code, stdout, stderr) =
        node.cli(&["evidence", "export", "--transfer", id, "--out", &out_s]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let bytes = std::fs::read(out).unwrap();
    assert_eq!(
        std::fs::metadata(out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    bytes
}
