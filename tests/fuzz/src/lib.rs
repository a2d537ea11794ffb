//! The bodies of the fuzz targets (tests/fuzz/fuzz_targets, docs/fuzzing.md): every verifier
//! that reads a file or a request from outside, called through its public entry point, over a
//! real federation's files (tests/fuzz/seeds, made by tests/tests/fuzz_corpus.rs).
//!
//! The fuzz binaries call these functions under libFuzzer; `tests/tests/fuzz_corpus.rs`
//! includes this file as a module and calls the same functions on stable, without the fuzzer:
//! it replays the committed corpus and crash regressions and runs a bounded deterministic
//! mutation over the seeds.
//!
//! Each target returns `Ok(account)` when its input verified (`account`: what the verifier
//! shows of it, in a stable form) and `Err(reason)` when it was refused. A panic is the bug a
//! fuzzer finds. The `*_resigned` / `*_parts` / `*_payload` targets are structure-aware: they
//! put the fuzzer's bytes into one part of a valid file and sign again what the test keys can
//! sign (the archive, a receipt, a checkpoint, a directory), so that the input reaches the
//! checks behind each signature instead of stopping at the first one.

use std::path::Path;

use base64::Engine as _;

use gateway::evidence::archive::{self, ArchiveFile, FrontierHead};
use gateway::evidence::bundle;
use gateway::evidence::{checkpoint, witness};
use gateway_envelope::{SignedReceipt, SigningKey, VerifyingKey};
use gateway_store::merkle::{self, Frontier, Hash};
use pki_tools::directory::verify_directory_file;

/// The signature domain of an archive (docs/evidence.md; `archive::SIGNATURE_DOMAIN`).
const ARCHIVE_DOMAIN: &str = "healthfed/audit-archive/1";
/// The signature domain of receipts (`gateway_envelope::receipt`).
const RECEIPT_DOMAIN: &[u8] = b"healthfed/receipt/1\0";
/// The facilities of the seed federation: the log the evidence and archives are of (the
/// sender), and the receiver (who signed the receipt and witnesses the sender's log).
pub const LOG: &str = "hosp-a";
pub const RECEIVER: &str = "clinic-b";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The seed federation: its CA, files and the test keys that signed them.
pub struct World {
    pub ca_der: Vec<u8>,
    /// The time the files are verified at (when they were made): verification is
    /// deterministic whatever the clock says.
    pub now: i64,
    pub evidence: Vec<u8>,
    /// Two archives of the log, the second continuing the first.
    pub archives: Vec<Vec<u8>>,
    /// The signed directory file.
    pub directory: Vec<u8>,
    pub log_key: SigningKey,
    pub receiver_key: SigningKey,
    /// The CA's PKCS#8 ECDSA P-256 key (signs directory payloads again).
    pub ca_key: Vec<u8>,
    /// What the witness holds of the log (the tree the first archive ends with), and an
    /// add-checkpoint request from it to the first archive's checkpoint.
    pub held: (u64, Hash),
    pub witness_request: Vec<u8>,
}

/// The files of a seed directory.
pub const SEED_FILES: &[&str] = &[
    "ca.der",
    "now",
    "evidence.json",
    "archive-1.json",
    "archive-2.json",
    "directory.json",
    "hosp-a.signing.der",
    "clinic-b.signing.der",
    "ca.key.der",
];

impl World {
    /// Reads a seed directory (tests/fuzz/seeds).
    pub fn load(dir: &Path) -> Result<World, String> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        let key =
            |name: &str| SigningKey::from_pkcs8(&read(name)?).map_err(|e| format!("{name}: {e}"));
        let now = String::from_utf8(read("now")?)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or("now: not unix seconds")?;
        let ca_der = read("ca.der")?;
        let archives = vec![read("archive-1.json")?, read("archive-2.json")?];
        let first = archive::verify_chain(&archives[..1], &ca_der, now)
            .map_err(|e| format!("archive-1.json does not verify: {e}"))?;
        let held_tree = Frontier::from_heads(first.last_seq, first.frontier.clone())
            .ok_or("archive-1.json: bad frontier")?;
        let held = (first.last_seq, held_tree.root());
        let parsed: ArchiveFile =
            serde_json::from_slice(&archives[0]).map_err(|e| e.to_string())?;
        let proof = parsed
            .consistency
            .iter()
            .map(|h| b64().decode(h).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(World {
            evidence: read("evidence.json")?,
            directory: read("directory.json")?,
            log_key: key("hosp-a.signing.der")?,
            receiver_key: key("clinic-b.signing.der")?,
            ca_key: read("ca.key.der")?,
            witness_request: add_checkpoint_body(held.0, &proof, own_note(&parsed.checkpoint)),
            held,
            ca_der,
            now,
            archives,
        })
    }

    /// The seed inputs of every target: `(target, name, bytes)`, as committed under
    /// tests/fuzz/corpus/<target>/<name>.
    pub fn seed_inputs(&self) -> Vec<(&'static str, String, Vec<u8>)> {
        let mut out = vec![
            (
                "evidence_file",
                "evidence".to_owned(),
                self.evidence.clone(),
            ),
            (
                "archive_file",
                "archive-1".to_owned(),
                self.archives[0].clone(),
            ),
            (
                "archive_file",
                "archive-2".to_owned(),
                self.archives[1].clone(),
            ),
            (
                "directory_file",
                "directory".to_owned(),
                self.directory.clone(),
            ),
            (
                "witness_request",
                "add-checkpoint".to_owned(),
                self.witness_request.clone(),
            ),
        ];
        for (selector, (_, bytes)) in evidence_sections(&self.evidence).into_iter().enumerate() {
            let mut input = vec![selector as u8];
            input.extend_from_slice(&bytes);
            out.push(("evidence_parts", format!("section-{selector}"), input));
        }
        if let Some(receipt) = evidence_field(&self.evidence, "receipt") {
            if let Ok(receipt) = b64().decode(receipt) {
                out.push(("receipt", "signed".to_owned(), receipt.clone()));
                // The receipt bytes alone: what `receipt` signs again in its second mode.
                if let Some(inner) = receipt_bytes(&receipt) {
                    let mut input = vec![1u8];
                    input.extend_from_slice(&inner);
                    out.push(("receipt", "resign".to_owned(), input));
                }
            }
        }
        let note = evidence_field(&self.evidence, "checkpoint").unwrap_or_default();
        let sigs = note.split_once("\n\n").map_or("", |(_, s)| s);
        let by_receiver = format!("\u{2014} {} ", witness::witness_name(RECEIVER));
        for line in sigs.lines().filter(|l| l.starts_with(&by_receiver)) {
            out.push((
                "cosignature_line",
                "line".to_owned(),
                line.as_bytes().to_vec(),
            ));
        }
        for (a, file) in self.archives.iter().enumerate() {
            let Ok(parsed) = serde_json::from_slice::<ArchiveFile>(file) else {
                continue;
            };
            for (selector, bytes) in archive_sections(&parsed).into_iter().enumerate() {
                let mut input = vec![((selector as u8) << 1) | a as u8];
                input.extend_from_slice(&bytes);
                out.push((
                    "archive_resigned",
                    format!("archive-{}-section-{selector}", a + 1),
                    input,
                ));
            }
        }
        if let Some(payload) = directory_payload_of(&self.directory) {
            out.push(("directory_payload", "payload".to_owned(), payload));
        }
        out
    }
}

/// The names of the targets, as the fuzz binaries and corpus folders are named.
pub const TARGETS: &[&str] = &[
    "evidence_file",
    "evidence_parts",
    "archive_file",
    "archive_resigned",
    "witness_request",
    "cosignature_line",
    "receipt",
    "directory_file",
    "directory_payload",
];

/// Runs target `name` on `data`.
pub fn run(name: &str, w: &World, data: &[u8]) -> Result<String, String> {
    match name {
        "evidence_file" => evidence_file(w, data),
        "evidence_parts" => evidence_parts(w, data),
        "archive_file" => archive_file(w, data),
        "archive_resigned" => archive_resigned(w, data),
        "witness_request" => witness_request(w, data),
        "cosignature_line" => cosignature_line(w, data),
        "receipt" => receipt(w, data),
        "directory_file" => directory_file(w, data),
        "directory_payload" => directory_payload(w, data),
        other => Err(format!("no target {other}")),
    }
}

// ---- evidence files (gateway::evidence::bundle::verify) -----------------------------------

/// `gateway evidence verify FILE`: the file's bytes as they are. What a verified file shows
/// is its printed account.
pub fn evidence_file(w: &World, data: &[u8]) -> Result<String, String> {
    bundle::verify(data, &w.ca_der, w.now)
        .map(|v| v.to_string())
        .map_err(|e| e.to_string())
}

/// A top-level string field of an evidence file's JSON.
fn evidence_field(file: &[u8], key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(file).ok()?;
    v.get(key)?.as_str().map(str::to_owned)
}

/// The parts the structure-aware evidence target replaces, in selector order: the JSON text
/// of the value as the file holds it (to find it there) and its decoded content (what the
/// fuzzer's bytes replace). Found by name in the JSON, so that the target follows the format
/// (version 1: `directory`; version 2: `directories`) without naming its struct.
fn evidence_sections(file: &[u8]) -> Vec<(String, Vec<u8>)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(file) else {
        return Vec::new();
    };
    let text =
        |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let dec = |t: &str| b64().decode(t).unwrap_or_default();
    let directories: Vec<String> = match v.get("directories").and_then(|d| d.as_array()) {
        Some(all) => all.iter().map(|d| text(Some(d))).collect(),
        None => vec![text(v.get("directory"))],
    };
    let first_dir = directories.first().cloned().unwrap_or_default();
    let last_dir = directories.last().cloned().unwrap_or_default();
    let entry = v.get("entries").and_then(|e| e.get(0));
    let body = text(entry.and_then(|e| e.get("body")));
    let proof = text(entry.and_then(|e| e.get("proof")).and_then(|p| p.get(0)));
    let seq = entry
        .and_then(|e| e.get("seq"))
        .and_then(|s| s.as_u64())
        .unwrap_or(0);
    let header = text(v.get("envelope_header"));
    let receipt = text(v.get("receipt"));
    let checkpoint = text(v.get("checkpoint"));
    let transfer = text(v.get("transfer_id"));
    let log = text(v.get("log"));
    vec![
        (json_string(&first_dir), dec(&first_dir)),
        (json_string(&last_dir), dec(&last_dir)),
        (json_string(&header), dec(&header)),
        (json_string(&receipt), dec(&receipt)),
        (json_string(&checkpoint), checkpoint.into_bytes()),
        (json_string(&body), dec(&body)),
        (json_string(&proof), dec(&proof)),
        (format!("\"seq\": {seq}"), seq.to_be_bytes().to_vec()),
        (json_string(&transfer), transfer.into_bytes()),
        (format!("\"log\": {}", json_string(&log)), log.into_bytes()),
    ]
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// A valid evidence file with one part replaced by the fuzzer's bytes (`data[0]` picks the
/// part, the rest is its new decoded content), written as the exporter writes it (the part's
/// JSON text replaced where the file holds it), so that the change reaches that part's parser:
/// the first or last directory, the envelope header, the receipt, the checkpoint and its
/// cosignature lines, the first entry's body, first proof hash or seq, the transfer id, the log.
pub fn evidence_parts(w: &World, data: &[u8]) -> Result<String, String> {
    let Some((&selector, bytes)) = data.split_first() else {
        return Err("empty".to_owned());
    };
    let sections = evidence_sections(&w.evidence);
    let index = usize::from(selector) % sections.len().max(1);
    let (found, _) = sections.get(index).ok_or("no sections")?;
    if found.ends_with("\"\"") {
        // The seed has no such part (an entry without a proof).
        return Err("no such part in the seed".to_owned());
    }
    let replacement = match index {
        4 => json_string(&String::from_utf8_lossy(bytes)),
        7 => format!("\"seq\": {}", u64_of(bytes)),
        8 => json_string(&String::from_utf8_lossy(bytes)),
        9 => format!("\"log\": {}", json_string(&String::from_utf8_lossy(bytes))),
        _ => json_string(&b64().encode(bytes)),
    };
    let file = String::from_utf8(w.evidence.clone()).map_err(|e| e.to_string())?;
    let changed = file.replacen(found.as_str(), &replacement, 1);
    bundle::verify(changed.as_bytes(), &w.ca_der, w.now)
        .map(|v| v.to_string())
        .map_err(|e| e.to_string())
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut be = [0u8; 8];
    for (slot, b) in be.iter_mut().rev().zip(bytes.iter().rev()) {
        *slot = *b;
    }
    u64::from_be_bytes(be)
}

// ---- audit archives (gateway::evidence::archive::verify_chain) ----------------------------

/// `gateway audit verify --archive FILE`: the bytes as one archive, and as the archive after
/// the first seed (so a continuation is checked too).
pub fn archive_file(w: &World, data: &[u8]) -> Result<String, String> {
    let alone = archive::verify_chain(&[data.to_vec()], &w.ca_der, w.now);
    let after = archive::verify_chain(&[w.archives[0].clone(), data.to_vec()], &w.ca_der, w.now);
    match (alone, after) {
        (Ok(a), Ok(b)) => Ok(format!("{a:?}\n{b:?}")),
        (Ok(a), Err(e)) => Ok(format!("{a:?}\nafter archive 1: {e}")),
        (Err(e), Ok(b)) => Ok(format!("alone: {e}\n{b:?}")),
        (Err(e), Err(_)) => Err(e.to_string()),
    }
}

/// The sections the structure-aware archive target replaces, in selector order.
fn archive_sections(file: &ArchiveFile) -> Vec<Vec<u8>> {
    let dec = |t: &str| b64().decode(t).unwrap_or_default();
    let mut frontier = Vec::new();
    for h in &file.frontier {
        frontier.push(h.level);
        frontier.extend(dec(&h.hash));
    }
    let mut range = file.first_seq.to_be_bytes().to_vec();
    range.extend_from_slice(&file.last_seq.to_be_bytes());
    let own = own_note(&file.checkpoint);
    let opened = checkpoint_fields(own);
    vec![
        file.log.as_bytes().to_vec(),
        range,
        dec(&file.prev_hash),
        frontier,
        file.entries.first().map(|e| dec(e)).unwrap_or_default(),
        file.entries.last().map(|e| dec(e)).unwrap_or_default(),
        file.consistency.iter().flat_map(|h| dec(h)).collect(),
        opened,
        file.checkpoint.as_bytes().to_vec(),
        dec(&file.directory),
        (file.entries.len() as u64).to_be_bytes().to_vec(),
    ]
}

/// `size (8 bytes) || root (32 bytes)` of a checkpoint note, read without verifying.
fn checkpoint_fields(note: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(note);
    let mut lines = text.lines().skip(1);
    let size: u64 = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    let root = lines
        .next()
        .and_then(|l| b64().decode(l).ok())
        .unwrap_or_default();
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(&root);
    out
}

/// A valid archive (`data[0]` bit 0: the first or second seed) with one section replaced by
/// the fuzzer's bytes (`data[0] >> 1` picks it), then signed again with the log's key, so the
/// change reaches the checks behind the archive's signature: the seq range, chain link,
/// frontier, entries, the checkpoint (signed again over a fuzzed size and root), consistency
/// proof, cosignatures and directory; and, for the second seed, the continuation.
pub fn archive_resigned(w: &World, data: &[u8]) -> Result<String, String> {
    let Some((&selector, bytes)) = data.split_first() else {
        return Err("empty".to_owned());
    };
    let second = selector & 1 == 1;
    let seed = &w.archives[usize::from(second)];
    let mut file: ArchiveFile = serde_json::from_slice(seed).map_err(|e| e.to_string())?;
    let enc = b64().encode(bytes);
    match (selector >> 1) % 11 {
        0 => file.log = String::from_utf8_lossy(bytes).into_owned(),
        1 => {
            file.first_seq = u64_of(bytes.get(..8.min(bytes.len())).unwrap_or_default());
            file.last_seq = u64_of(bytes.get(8..).unwrap_or_default());
        }
        2 => file.prev_hash = enc,
        3 => {
            file.frontier = bytes
                .chunks(33)
                .filter_map(|c| c.split_first())
                .map(|(level, hash)| FrontierHead {
                    level: *level,
                    hash: b64().encode(hash),
                })
                .collect()
        }
        4 => {
            if let Some(e) = file.entries.first_mut() {
                *e = enc;
            }
        }
        5 => {
            if let Some(e) = file.entries.last_mut() {
                *e = enc;
            }
        }
        6 => file.consistency = bytes.chunks(32).map(|c| b64().encode(c)).collect(),
        7 => {
            // A checkpoint signed by the log's key over a fuzzed size and root, with the
            // seed's cosignature lines (which then no longer verify, unless unchanged).
            let size = u64_of(bytes.get(..8.min(bytes.len())).unwrap_or_default());
            let mut root = [0u8; 32];
            for (slot, b) in root.iter_mut().zip(bytes.iter().skip(8)) {
                *slot = *b;
            }
            let origin = checkpoint::origin(&file.log);
            let note =
                checkpoint::sign(&origin, size, root, &w.log_key).map_err(|e| e.to_string())?;
            let mut text = String::from_utf8_lossy(&note).into_owned();
            let own = format!("\u{2014} {origin} ");
            let sigs = file.checkpoint.split_once("\n\n").map_or("", |(_, s)| s);
            for line in sigs.lines().filter(|l| !l.starts_with(&own)) {
                text.push_str(line);
                text.push('\n');
            }
            file.checkpoint = text;
        }
        8 => file.checkpoint = String::from_utf8_lossy(bytes).into_owned(),
        9 => file.directory = enc,
        _ => {
            // The entry count: fewer (truncated) or more (the last one repeated).
            let n = usize::try_from(u64_of(bytes) % 64).unwrap_or(0);
            let last = file.entries.last().cloned().unwrap_or_default();
            file.entries.resize(n, last);
        }
    }
    file.signature = String::new();
    let digest = gateway_envelope::sha256(&file.to_bytes());
    let signed = gateway_envelope::sign_message(&w.log_key, ARCHIVE_DOMAIN, &digest);
    file.signature = b64().encode(signed);
    let bytes = file.to_bytes();
    let files = if second {
        vec![w.archives[0].clone(), bytes]
    } else {
        vec![bytes]
    };
    archive::verify_chain(&files, &w.ca_der, w.now)
        .map(|end| format!("{end:?}"))
        .map_err(|e| e.to_string())
}

// ---- the witness route (gateway::evidence::witness, checkpoint) ---------------------------

/// The body of an add-checkpoint request (`witness::request_body`'s format).
fn add_checkpoint_body(old: u64, proof: &[Vec<u8>], note: &[u8]) -> Vec<u8> {
    let mut body = format!("old {old}\n").into_bytes();
    for hash in proof {
        body.extend_from_slice(b64().encode(hash).as_bytes());
        body.push(b'\n');
    }
    body.push(b'\n');
    body.extend_from_slice(note);
    body
}

/// A note with only its first signature line (the log's own), as a log submits it.
fn own_note(note: &str) -> &[u8] {
    let bytes = note.as_bytes();
    let Some(blank) = note.find("\n\n") else {
        return bytes;
    };
    let end = note
        .get(blank + 2..)
        .and_then(|rest| rest.find('\n'))
        .map_or(bytes.len(), |i| blank + 2 + i + 1);
    bytes.get(..end).unwrap_or(bytes)
}

/// `POST /v1/witness` on a witness that holds the first archive's tree of the log: the
/// route's steps in its order (parse, the note against the log's directory key, the note's
/// text, the size checks, the consistency proof against what is held), then the cosignature
/// it would give, which must verify.
pub fn witness_request(w: &World, data: &[u8]) -> Result<String, String> {
    let request = witness::parse_request(data).map_err(str::to_owned)?;
    let origin = checkpoint::origin(LOG);
    let keys = [w.log_key.verifying_key()];
    let (size, root) =
        checkpoint::open(request.note, &origin, &keys).map_err(|e| format!("403 {e}"))?;
    let text = witness::note_text(request.note).ok_or("400 malformed checkpoint note")?;
    let (held_size, held_root) = w.held;
    if request.old != held_size {
        return Err(format!("409 {held_size}"));
    }
    if size < held_size {
        return Err("422 a smaller tree".to_owned());
    }
    merkle::verify_consistency(held_size, size, &held_root, &root, &request.proof)
        .map_err(|e| format!("422 {e}"))?;
    let name = witness::witness_name(RECEIVER);
    let line = witness::cosign(&name, &w.receiver_key, 1_700_000_000, text);
    let time = witness::verify_cosignature(&line, &name, &w.receiver_key.verifying_key(), text)
        .map_err(|e| format!("our own cosignature does not verify: {e}"))?;
    if time != 1_700_000_000 {
        return Err("our own cosignature has another time".to_owned());
    }
    Ok(format!("cosigned {size} {}", b64().encode(root)))
}

/// A cosignature line (C2SP tlog-cosignature) by the receiver, as the evidence verifier and
/// the log side check it, over the evidence file's checkpoint text.
pub fn cosignature_line(w: &World, data: &[u8]) -> Result<String, String> {
    let note = evidence_field(&w.evidence, "checkpoint").ok_or("no checkpoint")?;
    let text = witness::note_text(note.as_bytes()).ok_or("no checkpoint text")?;
    let line = std::str::from_utf8(data).map_err(|_| "not UTF-8".to_owned())?;
    let name = witness::witness_name(RECEIVER);
    witness::verify_cosignature(line, &name, &w.receiver_key.verifying_key(), text)
        .map(|time| format!("cosigned at {time}"))
}

// ---- receipts (gateway_envelope::SignedReceipt) -------------------------------------------

/// The `receipt_bytes` of a signed receipt's wire form (postcard: a length-prefixed byte
/// string, then 64 signature bytes).
fn receipt_bytes(signed: &[u8]) -> Option<Vec<u8>> {
    let (inner, rest): (Vec<u8>, &[u8]) = postcard::take_from_bytes(signed).ok()?;
    (rest.len() == 64).then_some(inner)
}

/// A signed receipt as the sender reads it from the receiver (`data[0]` even: the bytes as
/// they are, verified with the receiver's key), or (`data[0]` odd) the rest as receipt bytes
/// signed with the receiver's key, so the decoder of both versions behind the signature is
/// reached; a receipt that decodes must encode back to one that decodes the same.
pub fn receipt(w: &World, data: &[u8]) -> Result<String, String> {
    let Some((&mode, rest)) = data.split_first() else {
        return Err("empty".to_owned());
    };
    let keys = [w.receiver_key.verifying_key()];
    let wire = if mode & 1 == 0 {
        data.to_vec()
    } else {
        let sig = w.receiver_key.sign(RECEIPT_DOMAIN, rest);
        let mut wire = postcard::to_allocvec(&rest.to_vec()).map_err(|e| e.to_string())?;
        wire.extend_from_slice(&sig);
        wire
    };
    let signed = SignedReceipt::from_bytes(&wire).map_err(|e| e.to_string())?;
    let receipt = signed.verify(&keys).map_err(|e| e.to_string())?;
    let version = signed.version().map_err(|e| e.to_string())?;
    let again = SignedReceipt::sign(&receipt, &w.receiver_key);
    let back = SignedReceipt::from_bytes(&again.to_bytes())
        .and_then(|s| s.verify(&keys))
        .map_err(|e| format!("a decoded receipt does not encode back: {e}"))?;
    if back != receipt {
        return Err("a decoded receipt encodes back to another".to_owned());
    }
    Ok(format!("version {version}: {receipt:?}"))
}

// ---- the signed directory file (pki_tools::directory) -------------------------------------

fn directory_account(v: &pki_tools::directory::VerifiedDirectory) -> String {
    format!("{} {:?}", hex_of(&v.digest), v.directory)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node reading `directory.json`: the bytes as they are, against the CA.
pub fn directory_file(w: &World, data: &[u8]) -> Result<String, String> {
    verify_directory_file(data, &w.ca_der, w.now, None)
        .map(|v| directory_account(&v))
        .map_err(|e| e.to_string())
}

fn directory_payload_of(file: &[u8]) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(file).ok()?;
    b64().decode(v.get("payload")?.as_str()?).ok()
}

/// The directory's payload (the JSON the CA signs) from the fuzzer, signed with the CA's key
/// and framed as a directory file: reaches the payload's parser and checks.
pub fn directory_payload(w: &World, data: &[u8]) -> Result<String, String> {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &w.ca_key, &rng)
        .map_err(|e| e.to_string())?;
    let sig = key.sign(&rng, data).map_err(|e| e.to_string())?;
    let file = serde_json::json!({
        "format": pki_tools::directory::DIRECTORY_FORMAT,
        "payload": b64().encode(data),
        "signature": b64().encode(sig.as_ref()),
    });
    directory_file(w, file.to_string().as_bytes())
}

/// Verifying keys of a facility in the seed directory (for the tests).
pub fn keys_of(w: &World, facility: &str) -> Vec<VerifyingKey> {
    verify_directory_file(&w.directory, &w.ca_der, w.now, None)
        .ok()
        .and_then(|v| {
            v.directory
                .facilities
                .iter()
                .find(|f| f.id.as_str() == facility)
                .map(|f| f.signing_keys.iter().map(|k| VerifyingKey(*k)).collect())
        })
        .unwrap_or_default()
}
