//! Audit archives (`healthfed-audit-archive/1`, docs/evidence.md): the entries written before
//! a date leave the live store for a file signed by the node, which carries with them what
//! makes them checkable on their own: the chain link and the tree's right edge before them,
//! the checkpoint that covers them with its cosignatures and a consistency proof to it, and
//! the directory that lists the keys. `archive_before` is the only path that removes audit
//! entries (the CLI's `audit archive` and `audit.keep_days` both take it); `verify_chain`
//! checks archives offline, oldest first, and returns where the live log must continue.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use gateway_envelope::{sign_message, verify_message, VerifyingKey};
use gateway_store::merkle::{self, Frontier, Hash};
use gateway_store::{check_stored_entry, entry_leaf_hash};
use pki_tools::directory::{verify_directory_file, DirectoryError};

use crate::evidence::bundle::{Named, Refused};
use crate::evidence::{checkpoint, cosigned_checkpoint_covering, witness};
use crate::state::NodeState;

pub const FORMAT: &str = "healthfed-audit-archive/1";
/// The signature domain of an archive (inside a `sign_message` message).
const SIGNATURE_DOMAIN: &str = "healthfed/audit-archive/1";
/// The audit event of an archive written and its entries removed.
pub const ARCHIVED_EVENT: &str = "audit-archived";
/// The most entries one archive takes (its file is built in memory, about 400 bytes an
/// entry): a longer range is archived over several calls (retention: several rounds).
pub const MAX_ARCHIVE_ENTRIES: u64 = 250_000;
/// The largest archive the verifier reads.
pub const MAX_FILE_BYTES: usize = 1024 * 1024 * 1024;

/// One archive at a time in this process: two would race for the same floor.
static ARCHIVING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveFile {
    pub format: String,
    /// The facility whose audit log this is.
    pub log: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The chain hash of entry `first_seq - 1` (zeros for the first), base64.
    pub prev_hash: String,
    /// The tree's right edge over entries `1 ..= first_seq - 1`, largest subtree first.
    pub frontier: Vec<FrontierHead>,
    /// The entries as stored (chain links, hash, body with the patient reference sealed).
    pub entries: Vec<String>,
    /// The signed checkpoint of `log` covering `last_seq`, with its cosignatures.
    pub checkpoint: String,
    /// RFC 9162 consistency proof from the tree of `last_seq` entries to the checkpoint's.
    pub consistency: Vec<String>,
    /// The signed directory file listing the keys, base64.
    pub directory: String,
    /// `sign_message(node key, "healthfed/audit-archive/1", SHA-256(this file with an empty
    /// signature))`, base64.
    pub signature: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontierHead {
    pub level: u8,
    pub hash: String,
}

impl ArchiveFile {
    /// Canonical bytes: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn signed_digest(&self) -> [u8; 32] {
        let unsigned = ArchiveFile {
            signature: String::new(),
            ..self.clone()
        };
        gateway_envelope::sha256(&unsigned.to_bytes())
    }
}

/// Where an archive (or a run of them) ends: what the next archive or the live log must
/// continue from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEnd {
    pub log: String,
    pub first_seq: u64,
    /// The chain hash the first entry links to (zeros for a history from seq 1).
    pub first_prev: Hash,
    /// The tree's right edge before the first entry.
    pub first_frontier: Vec<(u8, Hash)>,
    pub last_seq: u64,
    pub last_hash: Hash,
    pub frontier: Vec<(u8, Hash)>,
    /// Per archive: `(first, last, checkpoint size, witnesses)`.
    pub archives: Vec<(u64, u64, u64, Vec<Named>)>,
}

fn refuse(part: impl Into<String>, problem: impl std::fmt::Display) -> Refused {
    Refused {
        part: part.into(),
        problem: problem.to_string(),
    }
}

fn hash_of(part: &str, text: &str) -> Result<Hash, Refused> {
    let bytes = b64().decode(text).map_err(|_| refuse(part, "not base64"))?;
    <Hash>::try_from(bytes.as_slice()).map_err(|_| refuse(part, "a hash is not 32 bytes"))
}

/// Verifies archives of one log, oldest first, each continuing the one before.
pub fn verify_chain(
    files: &[Vec<u8>],
    ca_der: &[u8],
    now_unix: i64,
) -> Result<ArchiveEnd, Refused> {
    let mut end: Option<ArchiveEnd> = None;
    for (i, file) in files.iter().enumerate() {
        let part = format!("archive {}", i + 1);
        let one = verify_one(file, ca_der, now_unix).map_err(|r| Refused {
            part: format!("{part}: {}", r.part),
            problem: r.problem,
        })?;
        end = Some(match end {
            None => one,
            Some(before) => {
                if one.log != before.log {
                    return Err(refuse(part, "is of another log"));
                }
                if before.last_seq.checked_add(1) != Some(one.first_seq)
                    || one.first_frontier != before.frontier
                    || one.first_prev != before.last_hash
                {
                    return Err(refuse(
                        part,
                        format!(
                            "does not continue the archive before it (which ends at seq {})",
                            before.last_seq
                        ),
                    ));
                }
                let mut archives = before.archives;
                archives.extend(one.archives);
                ArchiveEnd {
                    first_seq: before.first_seq,
                    first_prev: before.first_prev,
                    first_frontier: before.first_frontier,
                    archives,
                    ..one
                }
            }
        });
    }
    end.ok_or_else(|| refuse("archives", "none given"))
}

/// Verifies one archive on its own.
fn verify_one(file: &[u8], ca_der: &[u8], now_unix: i64) -> Result<ArchiveEnd, Refused> {
    let parsed: ArchiveFile = serde_json::from_slice(file)
        .map_err(|e| refuse("file", format!("not an audit archive: {e}")))?;
    if parsed.format != FORMAT {
        return Err(refuse("file", format!("format is not {FORMAT}")));
    }
    if parsed.to_bytes() != file {
        return Err(refuse("file", "not in the archiver's canonical form"));
    }
    let dir_bytes = b64()
        .decode(&parsed.directory)
        .map_err(|_| refuse("directory", "not base64"))?;
    let dir = match verify_directory_file(&dir_bytes, ca_der, now_unix, None) {
        Ok(v) => v.directory,
        Err(DirectoryError::Expired { expires_at, .. }) => {
            verify_directory_file(&dir_bytes, ca_der, expires_at.saturating_sub(1), None)
                .map_err(|e| refuse("directory", e))?
                .directory
        }
        Err(e) => return Err(refuse("directory", e)),
    };
    let entry = dir
        .facilities
        .iter()
        .find(|f| f.id.as_str() == parsed.log)
        .ok_or_else(|| refuse("log", format!("{} is not in the directory", parsed.log)))?;
    let keys: Vec<VerifyingKey> = entry
        .signing_keys
        .iter()
        .map(|k| VerifyingKey(*k))
        .collect();
    let signature = b64()
        .decode(&parsed.signature)
        .map_err(|_| refuse("signature", "not base64"))?;
    let signed = verify_message(&signature, SIGNATURE_DOMAIN, &keys).map_err(|e| {
        refuse(
            "signature",
            format!("by {} does not verify: {e}", parsed.log),
        )
    })?;
    if signed != parsed.signed_digest() {
        return Err(refuse("signature", "signs other contents"));
    }

    // The entries: linked from `prev_hash`, each extending the tree from `frontier`.
    let first = parsed.first_seq;
    if first == 0 || parsed.last_seq < first {
        return Err(refuse("file", "no entries"));
    }
    let count = parsed.last_seq - first + 1;
    if u64::try_from(parsed.entries.len()).ok() != Some(count) {
        return Err(refuse("file", "the entry count differs from the seq range"));
    }
    let prev0 = hash_of("prev_hash", &parsed.prev_hash)?;
    let heads = parsed
        .frontier
        .iter()
        .map(|h| Ok((h.level, hash_of("frontier", &h.hash)?)))
        .collect::<Result<Vec<_>, Refused>>()?;
    let mut frontier = Frontier::from_heads(first - 1, heads.clone())
        .ok_or_else(|| refuse("frontier", "not the right edge of a tree of that size"))?;
    let mut prev = prev0;
    for (i, text) in parsed.entries.iter().enumerate() {
        let seq = first + i as u64;
        let part = format!("entry #{seq}");
        let stored = b64()
            .decode(text)
            .map_err(|_| refuse(&part, "not base64"))?;
        let (hash, body) = check_stored_entry(seq, &prev, &stored).map_err(|e| refuse(&part, e))?;
        frontier.push(seq - 1, entry_leaf_hash(body));
        prev = hash;
    }
    let root = frontier.root();

    // The checkpoint covering them, and the proof that it extends this tree.
    let origin = checkpoint::origin(&parsed.log);
    let (size, cp_root) = checkpoint::open(parsed.checkpoint.as_bytes(), &origin, &keys)
        .map_err(|e| refuse("checkpoint", e))?;
    let proof = parsed
        .consistency
        .iter()
        .map(|h| hash_of("consistency proof", h))
        .collect::<Result<Vec<_>, _>>()?;
    merkle::verify_consistency(parsed.last_seq, size, &root, &cp_root, &proof).map_err(|e| {
        refuse(
            "checkpoint",
            format!(
                "the entries are not the first {} of its tree: {e}",
                parsed.last_seq
            ),
        )
    })?;
    let witnesses = cosigners(&dir, &parsed.log, &parsed.checkpoint)?;
    Ok(ArchiveEnd {
        log: parsed.log,
        first_seq: first,
        first_prev: prev0,
        first_frontier: heads,
        last_seq: parsed.last_seq,
        last_hash: prev,
        frontier: frontier.heads().to_vec(),
        archives: vec![(first, parsed.last_seq, size, witnesses)],
    })
}

/// The cosignatures on an archive's checkpoint: each must verify.
fn cosigners(
    dir: &pki_tools::directory::Directory,
    log: &str,
    note: &str,
) -> Result<Vec<Named>, Refused> {
    let (body, sigs) = note
        .split_once("\n\n")
        .ok_or_else(|| refuse("checkpoint", "no signature lines"))?;
    let text = format!("{body}\n");
    let own = format!("\u{2014} {} ", checkpoint::origin(log));
    let mut out = Vec::new();
    for line in sigs.lines().filter(|l| !l.starts_with(&own)) {
        let id = line
            .strip_prefix("\u{2014} healthfed/")
            .and_then(|r| r.split_once("/witness "))
            .map(|(id, _)| id)
            .ok_or_else(|| refuse("checkpoint cosignature", "an unknown signer"))?;
        let entry = dir
            .facilities
            .iter()
            .find(|f| f.id.as_str() == id && id != log)
            .ok_or_else(|| refuse("checkpoint cosignature", format!("{id} is no witness")))?;
        let name = witness::witness_name(id);
        let ok = entry.signing_keys.iter().any(|k| {
            witness::verify_cosignature(line, &name, &VerifyingKey(*k), text.as_bytes()).is_ok()
        });
        if !ok {
            return Err(refuse(
                format!("checkpoint cosignature by {id}"),
                "does not verify",
            ));
        }
        out.push(Named {
            id: id.to_owned(),
            name: entry.name.clone(),
        });
    }
    Ok(out)
}

/// Why an archive was not made.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("no live audit entry was written before that date")]
    Nothing,
    /// `[audit.syslog]` is on and has not yet handed on the entries that would be archived.
    #[error(
        "the SIEM stream has sent the audit log only through seq {sent}; entries it has not \
         sent stay live until it catches up"
    )]
    Unsent { sent: u64 },
    #[error("local system: {0}")]
    Local(String),
}

fn local(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Local(e.to_string())
}

/// An archive written and its entries removed.
#[derive(Clone, Debug)]
pub struct Archived {
    pub first_seq: u64,
    pub last_seq: u64,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// The directory archives are kept in: `audit.archive_dir`, default `<data_dir>/audit-archives`.
pub fn archive_dir(state: &NodeState) -> PathBuf {
    state.config.data_dir.join("audit-archives")
}

/// Archives the live entries written before `cutoff_ms`: builds and signs the archive, writes
/// it durably into the archive directory, then removes the entries from the store and
/// records an `audit-archived` entry. The one path that removes audit entries.
pub async fn archive_before(
    state: &Arc<NodeState>,
    cutoff_ms: u64,
) -> Result<Archived, ArchiveError> {
    let _one = ARCHIVING.lock().await;
    let store = &state.store;
    let (floor, prev_hash) = store.audit_floor().map_err(local)?;
    let through = store
        .audit_seq_before(cutoff_ms)
        .map_err(local)?
        .min(floor + MAX_ARCHIVE_ENTRIES);
    if through <= floor {
        return Err(ArchiveError::Nothing);
    }
    // The SIEM stream reads the live log: an entry archived before it was sent would be a gap.
    let through = match state.config.audit.syslog {
        Some(_) => {
            let sent = store
                .audit_cursor(crate::audit::STREAM_CURSOR)
                .map_err(local)?;
            if sent <= floor {
                return Err(ArchiveError::Unsent { sent });
            }
            through.min(sent)
        }
        None => through,
    };
    let (size, note) = cosigned_checkpoint_covering(state, through)
        .await
        .map_err(local)?;
    let (entries, frontier, consistency) = tokio::task::block_in_place(|| {
        Ok::<_, gateway_store::StoreError>((
            store.audit_stored_range(floor + 1, through)?,
            store.audit_frontier(floor)?,
            store.audit_consistency_proof(through, size)?,
        ))
    })
    .map_err(local)?;
    let directory = std::fs::read(&state.config.federation.directory).map_err(local)?;
    let mut file = ArchiveFile {
        format: FORMAT.to_owned(),
        log: state.me().to_string(),
        first_seq: floor + 1,
        last_seq: through,
        prev_hash: b64().encode(prev_hash),
        frontier: frontier
            .iter()
            .map(|(level, hash)| FrontierHead {
                level: *level,
                hash: b64().encode(hash),
            })
            .collect(),
        entries: entries.iter().map(|e| b64().encode(e)).collect(),
        checkpoint: String::from_utf8(note).map_err(local)?,
        consistency: consistency.iter().map(|h| b64().encode(h)).collect(),
        directory: b64().encode(directory),
        signature: String::new(),
    };
    let signed = sign_message(
        &state.identity().signing,
        SIGNATURE_DOMAIN,
        &file.signed_digest(),
    );
    file.signature = b64().encode(signed);
    let bytes = file.to_bytes();
    let dir = archive_dir(state);
    let path = dir.join(format!(
        "{}-audit-{:012}-{:012}.json",
        state.me(),
        floor + 1,
        through
    ));
    tokio::task::block_in_place(|| write_durably(&dir, &path, &bytes)).map_err(local)?;
    // Only now, with the archive durable, do the entries leave the store.
    let removed =
        tokio::task::block_in_place(|| store.audit_archive_remove(through)).map_err(local)?;
    let mut rec = crate::audit::record(ARCHIVED_EVENT, "archived");
    rec.reason = Some(format!(
        "entries {} to {through} ({removed} removed) archived to {}",
        floor + 1,
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("archive")
    ));
    crate::audit::append_durable(store, rec)
        .await
        .map_err(local)?;
    tracing::info!(first = floor + 1, last = through, "audit entries archived");
    Ok(Archived {
        first_seq: floor + 1,
        last_seq: through,
        path,
        bytes,
    })
}

/// Writes `bytes` to `path` (0600) through a synced temp file and a synced directory.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
