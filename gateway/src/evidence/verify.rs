//! What `audit verify` checks beyond the hash chain: the Merkle tree recomputed from the
//! entries (in the chain walk itself, `Store::audit_verify_with_tree`), every kept checkpoint
//! against that tree (opened with this facility's directory keys), and every cosignature a
//! witness gave against the checkpoint it is kept with. A
//! history rewritten offline with every hash recomputed and the checkpoint re-signed passes
//! the chain, but not the witnesses: the refusal names the witness whose cosignature no
//! longer matches.

use std::collections::{BTreeMap, BTreeSet};

use gateway_store::merkle::Hash;
use gateway_store::AuditTreeCheck;

use crate::evidence::{checkpoint, witness};
use crate::state::NodeState;

/// What the log check found, for the API's answer.
#[derive(Clone, Debug, Default)]
pub struct LogCheck {
    /// The archive floor: entries up to it are in archives.
    pub floor_seq: u64,
    pub floor_hash: Hash,
    /// The latest checkpoint's size, and the witnesses whose cosignature of it verified.
    pub checkpoint_size: Option<u64>,
    pub witnesses: Vec<String>,
}

/// The sizes of the kept checkpoints: read before the verification walk, so that each is
/// within the head it reads.
pub fn checkpoint_sizes(state: &NodeState) -> Result<BTreeSet<u64>, String> {
    Ok(state
        .store
        .checkpoint_sizes()
        .map_err(|e| format!("local system: {e}"))?
        .into_iter()
        .collect())
}

/// Checks the tree the walk recomputed (`tree`, with its heads at `sizes`), the checkpoints
/// and their cosignatures; `Err` names what broke.
pub fn check_log(
    state: &NodeState,
    sizes: &BTreeSet<u64>,
    tree: &AuditTreeCheck,
) -> Result<LogCheck, String> {
    let store = &state.store;
    let local = |e: gateway_store::StoreError| format!("local system: {e}");
    let (floor_seq, floor_hash) = tree.floor;
    let (size, root, roots) = (tree.entries, tree.root, &tree.roots);
    // Against the stored tree at the size walked: entries appended meanwhile are not judged.
    if root != store.audit_tree_root(size).map_err(local)? {
        return Err(format!(
            "the audit tree does not match its entries (tree of {size} entries)"
        ));
    }
    let me = state.me().to_string();
    let keys = state
        .trust()
        .peer(state.me())
        .map(|p| p.signing_keys)
        .unwrap_or_default();
    let origin = checkpoint::origin(&me);
    let trust = state.trust();
    let mut latest = None;
    for cp_size in sizes {
        let Some(note) = store.checkpoint_get(*cp_size).map_err(local)? else {
            continue;
        };
        let (opened_size, cp_root) = match checkpoint::open(&note, &origin, &keys) {
            Ok(opened) => opened,
            // Signed with a key the directory no longer lists (rotated out): nothing to check
            // it with. A rewrite is signed with a current key, so it is opened and judged.
            Err(_) if !signed_with_listed_key(&note, &origin, &keys) => continue,
            Err(e) => return Err(format!("checkpoint of size {cp_size}: {e}")),
        };
        // Below the floor the entries are archived: the stored tree answers for them (the
        // archive's own verification recomputes it). Above the walked head there are no
        // entries to recompute it from: the sizes were read before the walk, so a kept
        // checkpoint there claims entries the log does not hold.
        let expected = match roots.get(cp_size) {
            Some(r) => *r,
            None if *cp_size <= floor_seq => store.audit_tree_root(*cp_size).map_err(local)?,
            None => {
                return Err(format!(
                    "checkpoint of size {cp_size} is beyond the log's {size} entries"
                ))
            }
        };
        if opened_size != *cp_size || cp_root != expected {
            return Err(format!(
                "checkpoint of size {cp_size} does not match the log's entries"
            ));
        }
        let text = note_text(&note).ok_or("a kept checkpoint is malformed")?;
        let mut cosigned = Vec::new();
        for line in store.cosignatures(*cp_size).map_err(local)? {
            let line = String::from_utf8_lossy(&line).into_owned();
            let id = line
                .strip_prefix("\u{2014} healthfed/")
                .and_then(|r| r.split_once("/witness "))
                .map(|(id, _)| id.to_owned())
                .unwrap_or_else(|| "an unknown witness".to_owned());
            let name = witness::witness_name(&id);
            let witness_keys = trust
                .peer_by_str(&id)
                .map(|p| p.signing_keys)
                .unwrap_or_default();
            let results: Vec<_> = witness_keys
                .iter()
                .map(|k| witness::verify_cosignature(&line, &name, k, text))
                .collect();
            if results
                .iter()
                .all(|r| r.as_ref().err().map(String::as_str) == Some(KEY_ID_MISMATCH))
                && !results.is_empty()
            {
                // The witness's key was rotated out of the directory since it cosigned.
                continue;
            }
            if !results.iter().any(Result::is_ok) {
                return Err(format!(
                    "the cosignature of witness {id} no longer matches the checkpoint of \
                     size {cp_size}: the log was changed after {id} witnessed it"
                ));
            }
            cosigned.push(id);
        }
        latest = Some((*cp_size, cosigned));
    }
    let (checkpoint_size, witnesses) = match latest {
        Some((s, w)) => (Some(s), w),
        None => (None, Vec::new()),
    };
    Ok(LogCheck {
        floor_seq,
        floor_hash,
        checkpoint_size,
        witnesses,
    })
}

/// `audit verify --with-peers`: each witness's view of this log (`witness::views`) must be a
/// checkpoint of it, no larger than the log, whose root is the tree of the entries at its size.
/// `known` are the heads the verification walk recomputed (a witness holds a checkpoint this
/// node kept, so usually they answer); other sizes are recomputed from the entries.
/// Returns one line per witness; `Err` names the witness whose view contradicts the log. A
/// witness that cannot be reached is reported, not judged.
pub fn check_views(
    state: &NodeState,
    views: &[witness::WitnessView],
    known: &BTreeMap<u64, Hash>,
) -> Result<Vec<String>, String> {
    let store = &state.store;
    let local = |e: gateway_store::StoreError| format!("local system: {e}");
    let origin = checkpoint::origin(state.me().as_str());
    let keys = state
        .trust()
        .peer(state.me())
        .map(|p| p.signing_keys)
        .unwrap_or_default();
    let len = store.audit_len();
    let mut held = Vec::new();
    let mut lines = Vec::new();
    for (id, view) in views {
        match view {
            Err(e) => lines.push(format!("witness {id}: not reached ({e})")),
            Ok(None) => lines.push(format!("witness {id}: holds no checkpoint of this log")),
            Ok(Some(note)) => {
                let (size, root) = checkpoint::open(note, &origin, &keys).map_err(|e| {
                    format!("witness {id} holds a checkpoint of this log that does not open: {e}")
                })?;
                if size > len {
                    return Err(format!(
                        "witness {id} has witnessed {size} entries of this log, which holds {len}: \
                         entries were removed after {id} witnessed them"
                    ));
                }
                held.push((id, size, root));
            }
        }
    }
    let sizes: BTreeSet<u64> = held
        .iter()
        .map(|(_, size, _)| *size)
        .filter(|size| !known.contains_key(size))
        .collect();
    let roots = if sizes.is_empty() {
        BTreeMap::new()
    } else {
        store.audit_tree_recompute(&sizes).map_err(local)?.2
    };
    for (id, size, root) in held {
        let expected = match known.get(&size).or_else(|| roots.get(&size)) {
            Some(r) => *r,
            None => store.audit_tree_root(size).map_err(local)?,
        };
        if root != expected {
            return Err(format!(
                "witness {id}'s checkpoint of size {size} does not match this log: the log was \
                 changed after {id} witnessed it"
            ));
        }
        lines.push(format!(
            "witness {id}: its checkpoint of {size} entries matches this log"
        ));
    }
    Ok(lines)
}

/// What `witness::verify_cosignature` says of a cosignature made with another key.
const KEY_ID_MISMATCH: &str = "cosignature key id does not match";

/// Whether one of the note's signature lines for `origin` carries the key id of one of `keys`.
fn signed_with_listed_key(
    note: &[u8],
    origin: &str,
    keys: &[gateway_envelope::VerifyingKey],
) -> bool {
    use base64::Engine as _;
    let ids: Vec<[u8; 4]> = keys
        .iter()
        .map(|k| checkpoint::key_id(origin, k).to_be_bytes())
        .collect();
    let prefix = format!("\u{2014} {origin} ");
    String::from_utf8_lossy(note)
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|sig| base64::engine::general_purpose::STANDARD.decode(sig).ok())
        .any(|blob| blob.get(..4).is_some_and(|id| ids.iter().any(|k| k == id)))
}

/// The checkpoint text of a signed note: everything before the blank line.
fn note_text(note: &[u8]) -> Option<&[u8]> {
    let end = note.windows(2).position(|w| w == b"\n\n")?;
    note.get(..=end)
}
