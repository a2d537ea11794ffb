//! Which directory of an evidence file verifies which signature: the directories checked
//! against the CA (increasing versions, one federation), then the envelope header and the
//! receipt against the first directory, from the oldest, that lists the signer's key and was
//! valid at their time, the checkpoint and each cosignature against the first, from the
//! newest, that lists the key. The exporter runs the same search over the node's kept
//! directories to choose the ones a file carries, so the verifier finds what it found.

use std::collections::BTreeSet;

use gateway_envelope::{
    EnvelopeReader, Limits, Receipt, SignedReceipt, UnverifiedHeader, VerifiedHeader, VerifyingKey,
};
use gateway_store::merkle::Hash;
use pki_tools::directory::{verify_directory_file, Directory, DirectoryError, FacilityEntry};
use pki_tools::FacilityStatus;

use super::{refuse, Named, Refused};
use crate::evidence::{checkpoint, witness};

/// More directories than a file needs (one per signature at most): a bound on the work.
const MAX_DIRECTORIES: usize = 64;
/// How far before a directory's `issued_at` a signature may be dated and still be in its
/// window (the clocks of the CA operator and the members differ; pki-tools allows the same).
const CLOCK_SKEW_SECS: i64 = 300;

fn keys_of(entry: &FacilityEntry) -> Vec<VerifyingKey> {
    entry
        .signing_keys
        .iter()
        .map(|k| VerifyingKey(*k))
        .collect()
}

fn entry<'d>(dir: &'d Directory, id: &str) -> Option<&'d FacilityEntry> {
    dir.facilities.iter().find(|f| f.id.as_str() == id)
}

/// Whether a signature dated `at_ms` falls in `dir`'s window: the CA vouched for the keys it
/// lists then (from its issue, less the clock skew allowed, until it expired).
fn in_window(dir: &Directory, at_ms: u64) -> bool {
    let at = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
    dir.issued_at.saturating_sub(CLOCK_SKEW_SECS) <= at && at < dir.expires_at
}

/// The first directory, in `order`, that lists `id` and whose entry passes `check`: its
/// index, the facility as named there, and what `check` returned. `part` names the refusal.
fn signed_by<T>(
    dirs: &[Directory],
    order: &[usize],
    id: &str,
    part: &str,
    mut check: impl FnMut(&Directory, &FacilityEntry) -> Option<T>,
) -> Result<(usize, Named, T), Refused> {
    let mut listed = false;
    for &i in order {
        let Some(dir) = dirs.get(i) else { continue };
        let Some(e) = entry(dir, id) else { continue };
        listed = true;
        if let Some(t) = check(dir, e) {
            let named = Named {
                id: id.to_owned(),
                name: e.name.clone(),
            };
            return Ok((i, named, t));
        }
    }
    Err(if listed {
        refuse(
            part,
            format!(
                "the signature by {id} does not verify with any key a directory of the file lists \
                 for {id}"
            ),
        )
    } else {
        refuse(part, format!("{id} is not in any directory of the file"))
    })
}

/// Verifies the signed directory files (`files`, base64) against the CA: each signed by it (an
/// expired one is checked at its last valid second and flagged), all of one federation, by
/// strictly increasing version. `label(i)` names the part of file `i`.
pub(super) fn open_directories(
    files: &[&[u8]],
    ca_der: &[u8],
    now_unix: i64,
    label: &dyn Fn(usize) -> String,
) -> Result<Vec<(Directory, bool)>, Refused> {
    if files.is_empty() || files.len() > MAX_DIRECTORIES {
        return Err(refuse("directories", "none, or too many"));
    }
    let mut out: Vec<(Directory, bool)> = Vec::with_capacity(files.len());
    for (i, bytes) in files.iter().enumerate() {
        let part = label(i);
        let (verified, expired) = match verify_directory_file(bytes, ca_der, now_unix, None) {
            Ok(v) => (v, false),
            Err(DirectoryError::Expired { expires_at, .. }) => (
                verify_directory_file(bytes, ca_der, expires_at.saturating_sub(1), None)
                    .map_err(|e| refuse(&part, e))?,
                true,
            ),
            Err(e) => return Err(refuse(part, e)),
        };
        let dir = verified.directory;
        if let Some((prev, _)) = out.last() {
            if dir.version <= prev.version {
                return Err(refuse(
                    part,
                    format!(
                        "version {} after version {}: the directories are not in increasing order",
                        dir.version, prev.version
                    ),
                ));
            }
            if dir.federation != prev.federation {
                return Err(refuse(part, "of another federation than the one before"));
            }
        }
        out.push((dir, expired));
    }
    Ok(out)
}

fn unverified_header(bytes: &[u8]) -> Result<UnverifiedHeader, Refused> {
    let mut reader = EnvelopeReader::new(Limits {
        max_payload: u64::MAX,
        ..Limits::default()
    });
    reader.push(bytes);
    let unverified = reader
        .header()
        .map_err(|e| refuse("envelope header", e))?
        .ok_or_else(|| refuse("envelope header", "truncated"))?;
    if !reader.is_drained() {
        return Err(refuse(
            "envelope header",
            "bytes after the header (the file holds the header only)",
        ));
    }
    Ok(unverified)
}

/// The time the envelope header says it was made (not verified): the exporter picks the
/// directory in force then.
pub fn header_time_ms(header: &[u8]) -> Result<u64, Refused> {
    unverified_header(header).map(|h| h.created_at_ms())
}

/// The signed parts of a file, decoded.
pub(super) struct Signed<'a> {
    pub(super) header: &'a [u8],
    pub(super) receipt: &'a [u8],
    pub(super) log: &'a str,
    pub(super) note: &'a [u8],
}

/// What the signatures showed, and which directory verified each (`(index, part)`).
pub(super) struct Checked {
    pub(super) header: VerifiedHeader,
    pub(super) sender: Named,
    pub(super) receiver: Named,
    pub(super) receipt: Receipt,
    pub(super) receipt_version: u16,
    pub(super) log: Named,
    pub(super) size: u64,
    pub(super) root: Hash,
    pub(super) witnesses: Vec<(Named, u64)>,
    pub(super) used: Vec<(usize, String)>,
}

/// Checks every signature of `s` against `dirs` (increasing versions): the header and the
/// receipt against the first directory that lists the signer's key and was valid at their
/// time, from the oldest (the one in force at the transfer) on; the checkpoint and each
/// cosignature against the first that lists the key, from the newest (current at export) back.
pub(super) fn check_signatures(dirs: &[Directory], s: &Signed<'_>) -> Result<Checked, Refused> {
    let oldest_first: Vec<usize> = (0..dirs.len()).collect();
    let newest_first: Vec<usize> = (0..dirs.len()).rev().collect();
    let mut used = Vec::new();

    // The envelope header, signed by the sender.
    let unverified = unverified_header(s.header)?;
    let created = unverified.created_at_ms();
    let (i, sender, header) = signed_by(
        dirs,
        &oldest_first,
        unverified.sender(),
        "envelope header",
        |dir, e| {
            in_window(dir, created)
                .then(|| unverified.clone().verify(&keys_of(e)).ok())
                .flatten()
        },
    )?;
    used.push((i, "the envelope header".to_owned()));
    let transfer_id = header.transfer_id();

    // The receipt, signed by the receiver, bound to this exact header.
    let signed = SignedReceipt::from_bytes(s.receipt).map_err(|e| refuse("receipt", e))?;
    let receipt_version = signed.version().map_err(|e| refuse("receipt", e))?;
    let (i, receiver, receipt) = signed_by(
        dirs,
        &oldest_first,
        header.recipient(),
        "receipt",
        |dir, e| {
            signed
                .verify(&keys_of(e))
                .ok()
                .filter(|r| in_window(dir, r.received_at_ms))
        },
    )?;
    used.push((i, "the receipt".to_owned()));
    if receipt.transfer_id != transfer_id
        || receipt.sender != sender.id
        || receipt.receiver != receiver.id
        || receipt.payload_digest != header.payload_digest()
        || receipt.header_digest != header.header_digest()
    {
        return Err(refuse(
            "receipt",
            "does not match the envelope header (transfer, parties or digests)",
        ));
    }

    // The checkpoint of the log the entries are from, and its witnesses.
    if s.log != sender.id && s.log != receiver.id {
        return Err(refuse("log", "neither the sender nor the receiver"));
    }
    let origin = checkpoint::origin(s.log);
    // A checkpoint that opens with no directory's keys is refused with the reason the newest
    // gives (a forged size, another origin, a bad signature).
    let mut last_error = None;
    let found = signed_by(
        dirs,
        &newest_first,
        s.log,
        "log",
        |_, e| match checkpoint::open(s.note, &origin, &keys_of(e)) {
            Ok(opened) => Some(opened),
            Err(err) => {
                last_error.get_or_insert(err);
                None
            }
        },
    );
    let (i, log, (size, root)) = match (found, last_error) {
        (Ok(found), _) => found,
        (Err(_), Some(err)) => return Err(refuse("checkpoint", err)),
        (Err(refused), None) => return Err(refused),
    };
    used.push((i, "the checkpoint".to_owned()));
    let witnesses = cosignatures(dirs, &newest_first, &log.id, s.note, &mut used)?;
    Ok(Checked {
        header,
        sender,
        receiver,
        receipt,
        receipt_version,
        log,
        size,
        root,
        witnesses,
        used,
    })
}

/// For the exporter: of `candidates` (signed directory files by increasing version, the first
/// the one in force at the transfer, the last the current one), the indexes a file must carry
/// so that every signature of the other parts checks: the first, the last and each one a
/// signature needs. Refused as the verifier would refuse the file when none does.
pub fn directories_needed(
    candidates: &[&[u8]],
    ca_der: &[u8],
    now_unix: i64,
    (header, receipt): (&[u8], &[u8]),
    log: &str,
    note: &[u8],
) -> Result<Vec<usize>, Refused> {
    let opened = open_directories(candidates, ca_der, now_unix, &|i| {
        format!("kept directory #{}", i + 1)
    })?;
    let dirs: Vec<Directory> = opened.into_iter().map(|(d, _)| d).collect();
    let checked = check_signatures(
        &dirs,
        &Signed {
            header,
            receipt,
            log,
            note,
        },
    )?;
    let mut needed: BTreeSet<usize> = checked.used.iter().map(|(i, _)| *i).collect();
    needed.insert(0);
    needed.insert(dirs.len().saturating_sub(1));
    Ok(needed.into_iter().collect())
}

/// Every signature line after the log's own must be a valid cosignature by an active member
/// (not the log itself), checked against the first directory in `order` that lists a key of
/// that member verifying it; records that directory in `used`.
fn cosignatures(
    dirs: &[Directory],
    order: &[usize],
    log: &str,
    note: &[u8],
    used: &mut Vec<(usize, String)>,
) -> Result<Vec<(Named, u64)>, Refused> {
    let text = std::str::from_utf8(note).map_err(|_| refuse("checkpoint", "not UTF-8"))?;
    let (body, sigs) = text
        .split_once("\n\n")
        .ok_or_else(|| refuse("checkpoint", "no signature lines"))?;
    let checkpoint_text = format!("{body}\n");
    let own = format!("\u{2014} {} ", checkpoint::origin(log));
    let mut out = Vec::new();
    for line in sigs.lines() {
        if line.starts_with(&own) {
            continue;
        }
        let part = "checkpoint cosignature";
        let id = line
            .strip_prefix("\u{2014} healthfed/")
            .and_then(|r| r.split_once("/witness "))
            .map(|(id, _)| id)
            .ok_or_else(|| refuse(part, "a signature line of an unknown signer"))?;
        if id == log {
            return Err(refuse(part, format!("{id} cannot witness this log")));
        }
        let name = witness::witness_name(id);
        let by = format!("checkpoint cosignature by {id}");
        let (i, witness, time) = signed_by(dirs, order, id, &by, |_, e| {
            if e.status != FacilityStatus::Active {
                return None;
            }
            keys_of(e).iter().find_map(|k| {
                witness::verify_cosignature(line, &name, k, checkpoint_text.as_bytes()).ok()
            })
        })?;
        used.push((i, format!("the cosignature by {id}")));
        out.push((witness, time));
    }
    Ok(out)
}
