//! The disclosure evidence file of one transfer (`healthfed-evidence/1`, docs/evidence.md)
//! and its offline verifier: no node, no store, only the federation's CA certificate.
//!
//! Every part is signed by someone the CA-signed directory names: the envelope header by the
//! sender, the receipt by the receiver, the checkpoint by the facility whose audit log the
//! entries come from, the cosignatures by its witnesses; the entries are bound to the
//! checkpoint by RFC 9162 inclusion proofs. The file must be exactly the canonical JSON the
//! exporter writes, so a byte changed anywhere is refused, and the refusal names the part.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use gateway_envelope::{EnvelopeReader, Limits, Receipt, SignedReceipt, VerifyingKey};
use gateway_store::merkle::{self, Hash};
use gateway_store::{entry_leaf_hash, entry_view, EntryView};
use pki_tools::directory::{verify_directory_file, Directory, DirectoryError, FacilityEntry};
use pki_tools::FacilityStatus;

use crate::evidence::{checkpoint, witness};

pub const FORMAT: &str = "healthfed-evidence/1";
/// The largest evidence file the verifier reads (a transfer has a handful of entries).
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// More entries than any transfer writes: a bound on the verifier's work.
const MAX_ENTRIES: usize = 10_000;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The file, field by field, in the order written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceFile {
    pub format: String,
    /// Hex.
    pub transfer_id: String,
    /// The facility whose audit log the entries and the checkpoint are.
    pub log: String,
    /// The signed directory file (`healthfed-directory/1`), base64.
    pub directory: String,
    /// `MAGIC || u32-be length || signed header` of the envelope, base64: the header only, no
    /// frame of metadata or payload.
    pub envelope_header: String,
    /// The receiver's signed receipt, base64.
    pub receipt: String,
    pub entries: Vec<EvidenceEntry>,
    /// The C2SP signed checkpoint of `log` that covers the entries, with its cosignatures.
    pub checkpoint: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceEntry {
    pub seq: u64,
    /// The entry's stored body (what its leaf hash covers), base64. The patient reference in
    /// it is sealed under the facility's store key.
    pub body: String,
    /// The RFC 9162 inclusion proof of leaf `seq - 1` in the checkpoint's tree, base64 hashes.
    pub proof: Vec<String>,
}

impl EvidenceFile {
    /// The canonical bytes of the file: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings and numbers cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Why an evidence file is refused: the part and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part}: {problem}")]
pub struct Refused {
    pub part: String,
    pub problem: String,
}

fn refuse(part: impl Into<String>, problem: impl fmt::Display) -> Refused {
    Refused {
        part: part.into(),
        problem: problem.to_string(),
    }
}

/// A facility as the directory names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub id: String,
    pub name: String,
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id, self.name)
    }
}

/// What a verified file shows.
#[derive(Clone, Debug)]
pub struct Verified {
    pub transfer_id: String,
    pub sender: Named,
    pub receiver: Named,
    pub payload_digest: [u8; 32],
    pub payload_len: u64,
    pub created_at_ms: u64,
    pub receipt: Receipt,
    pub receipt_version: u16,
    pub log: Named,
    pub entries: Vec<EntryView>,
    pub checkpoint_size: u64,
    pub checkpoint_root: Hash,
    /// `(witness, cosignature time)`.
    pub witnesses: Vec<(Named, u64)>,
    pub directory_version: u64,
    pub federation: String,
    pub directory_valid: (i64, i64),
    /// Whether the directory had expired when the file was verified (it is still the one
    /// whose keys signed; the window is reported).
    pub directory_expired: bool,
}

fn decode_b64(part: &str, text: &str) -> Result<Vec<u8>, Refused> {
    b64().decode(text).map_err(|_| refuse(part, "not base64"))
}

fn hash_of(part: &str, text: &str) -> Result<Hash, Refused> {
    <Hash>::try_from(decode_b64(part, text)?.as_slice())
        .map_err(|_| refuse(part, "a proof hash is not 32 bytes"))
}

fn keys_of(entry: &FacilityEntry) -> Vec<VerifyingKey> {
    entry
        .signing_keys
        .iter()
        .map(|k| VerifyingKey(*k))
        .collect()
}

fn named(dir: &Directory, id: &str, part: &str) -> Result<(Named, Vec<VerifyingKey>), Refused> {
    let entry = dir
        .facilities
        .iter()
        .find(|f| f.id.as_str() == id)
        .ok_or_else(|| refuse(part, format!("{id} is not in the directory")))?;
    Ok((
        Named {
            id: id.to_owned(),
            name: entry.name.clone(),
        },
        keys_of(entry),
    ))
}

/// Verifies an evidence file against the federation's CA certificate (DER), at `now_unix`.
pub fn verify(file: &[u8], ca_der: &[u8], now_unix: i64) -> Result<Verified, Refused> {
    if file.len() > MAX_FILE_BYTES {
        return Err(refuse("file", "larger than any evidence file"));
    }
    let parsed: EvidenceFile = serde_json::from_slice(file)
        .map_err(|e| refuse("file", format!("not an evidence file: {e}")))?;
    if parsed.format != FORMAT {
        return Err(refuse("file", format!("format is not {FORMAT}")));
    }
    // Only the exporter's exact bytes: nothing may change outside the signed parts either.
    if parsed.to_bytes() != file {
        return Err(refuse(
            "file",
            "not in the exporter's canonical form (changed outside its signed parts)",
        ));
    }

    // The directory, signed by the CA. An expired one still shows who held which key then:
    // it is checked at its last valid second, and reported.
    let dir_bytes = decode_b64("directory", &parsed.directory)?;
    let (verified_dir, directory_expired) =
        match verify_directory_file(&dir_bytes, ca_der, now_unix, None) {
            Ok(v) => (v, false),
            Err(DirectoryError::Expired { expires_at, .. }) => (
                verify_directory_file(&dir_bytes, ca_der, expires_at.saturating_sub(1), None)
                    .map_err(|e| refuse("directory", e))?,
                true,
            ),
            Err(e) => return Err(refuse("directory", e)),
        };
    let dir = verified_dir.directory;

    // The envelope header, signed by the sender.
    let header_bytes = decode_b64("envelope header", &parsed.envelope_header)?;
    let mut reader = EnvelopeReader::new(Limits {
        max_payload: u64::MAX,
        ..Limits::default()
    });
    reader.push(&header_bytes);
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
    let (sender, sender_keys) = named(&dir, unverified.sender(), "envelope header")?;
    let (receiver, receiver_keys) = named(&dir, unverified.recipient(), "envelope header")?;
    let header = unverified.verify(&sender_keys).map_err(|e| {
        refuse(
            "envelope header",
            format!("signature by {} does not verify: {e}", sender.id),
        )
    })?;
    let transfer_id = hex::encode(header.transfer_id().0);
    if parsed.transfer_id != transfer_id {
        return Err(refuse("transfer id", "differs from the envelope header's"));
    }

    // The receipt, signed by the receiver, bound to this exact header.
    let receipt_bytes = decode_b64("receipt", &parsed.receipt)?;
    let signed = SignedReceipt::from_bytes(&receipt_bytes).map_err(|e| refuse("receipt", e))?;
    let receipt = signed.verify(&receiver_keys).map_err(|e| {
        refuse(
            "receipt",
            format!("signature by {} does not verify: {e}", receiver.id),
        )
    })?;
    let receipt_version = signed.version().map_err(|e| refuse("receipt", e))?;
    if receipt.transfer_id != header.transfer_id()
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
    if parsed.log != sender.id && parsed.log != receiver.id {
        return Err(refuse("log", "neither the sender nor the receiver"));
    }
    let (log, log_keys) = named(&dir, &parsed.log, "log")?;
    let origin = checkpoint::origin(&log.id);
    let note = parsed.checkpoint.as_bytes();
    let (size, root) =
        checkpoint::open(note, &origin, &log_keys).map_err(|e| refuse("checkpoint", e))?;
    let witnesses = cosignatures(&dir, &log.id, note)?;

    // The entries, each proven in the checkpoint's tree.
    if parsed.entries.is_empty() || parsed.entries.len() > MAX_ENTRIES {
        return Err(refuse("audit entries", "none, or too many"));
    }
    let mut entries = Vec::new();
    let mut last = 0u64;
    for e in &parsed.entries {
        let part = format!("audit entry #{}", e.seq);
        // Seqs start at 1 (leaf seq - 1), strictly increasing.
        if e.seq <= last {
            return Err(refuse(part, "out of order"));
        }
        last = e.seq;
        let body = decode_b64(&part, &e.body)?;
        let proof = e
            .proof
            .iter()
            .map(|p| hash_of(&part, p))
            .collect::<Result<Vec<_>, _>>()?;
        merkle::verify_inclusion(e.seq - 1, size, &entry_leaf_hash(&body), &proof, &root).map_err(
            |err| {
                refuse(
                    &part,
                    format!("not in {}'s checkpoint of size {size}: {err}", log.id),
                )
            },
        )?;
        let view = entry_view(&body).map_err(|_| refuse(&part, "undecodable"))?;
        if view.seq != e.seq {
            return Err(refuse(part, "its body names another seq"));
        }
        if view.transfer_id != Some(header.transfer_id().0) {
            return Err(refuse(part, "about another transfer"));
        }
        entries.push(view);
    }

    Ok(Verified {
        transfer_id,
        sender,
        receiver,
        payload_digest: header.payload_digest(),
        payload_len: header.payload_len(),
        created_at_ms: header.created_at_ms(),
        receipt,
        receipt_version,
        log,
        entries,
        checkpoint_size: size,
        checkpoint_root: root,
        witnesses,
        directory_version: dir.version,
        federation: dir.federation.clone(),
        directory_valid: (dir.issued_at, dir.expires_at),
        directory_expired,
    })
}

/// Every signature line after the log's own must be a valid cosignature by an active member
/// (not the log itself).
fn cosignatures(dir: &Directory, log: &str, note: &[u8]) -> Result<Vec<(Named, u64)>, Refused> {
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
        let (witness, keys) = named(dir, id, part)?;
        let active = dir
            .facilities
            .iter()
            .any(|f| f.id.as_str() == id && f.status == FacilityStatus::Active);
        if id == log || !active {
            return Err(refuse(part, format!("{id} cannot witness this log")));
        }
        let name = witness::witness_name(id);
        let time = keys
            .iter()
            .find_map(|k| {
                witness::verify_cosignature(line, &name, k, checkpoint_text.as_bytes()).ok()
            })
            .ok_or_else(|| refuse(format!("checkpoint cosignature by {id}"), "does not verify"))?;
        out.push((witness, time));
    }
    Ok(out)
}

fn utc(ms: u64) -> String {
    i64::try_from(ms / 1000)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms after 1970"))
}

impl fmt::Display for Verified {
    /// The plain-words account an inspector reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Evidence for transfer {}: VERIFIED", self.transfer_id)?;
        writeln!(
            f,
            "- {} sent a record to {} on {} (envelope header signed by the sender).",
            self.sender,
            self.receiver,
            utc(self.created_at_ms)
        )?;
        writeln!(
            f,
            "- The record's payload has SHA-256 {} ({} bytes); the payload itself is not in \
             this file.",
            hex::encode(self.payload_digest),
            self.payload_len
        )?;
        writeln!(
            f,
            "- {} received it on {} and signed a receipt for exactly that envelope (receipt \
             version {}).",
            self.receiver.id,
            utc(self.receipt.received_at_ms),
            self.receipt_version
        )?;
        match &self.receipt.decision {
            Some(d) => {
                writeln!(f, "- Purpose of use: {}.", d.purpose)?;
                writeln!(
                    f,
                    "- {}'s policy decision: {}, under policies [{}]; consent basis evaluated: \
                     SHA-256 {}.",
                    self.receiver.id,
                    d.outcome,
                    d.policy_ids.join(", "),
                    hex::encode(d.consent_basis_digest)
                )?;
            }
            None => writeln!(
                f,
                "- The receipt is of version 1: it does not carry the receiver's decision."
            )?,
        }
        writeln!(
            f,
            "- {} audit entries of {}'s log for this transfer (patient reference sealed, not \
             revealed by this file):",
            self.entries.len(),
            self.log.id
        )?;
        for e in &self.entries {
            let mut line = format!(
                "    #{} {} {} {}",
                e.seq,
                utc(e.time_ms),
                e.event,
                e.outcome
            );
            if let Some(p) = &e.purpose {
                line.push_str(&format!(" purpose={p}"));
            }
            if let Some(p) = &e.peer {
                line.push_str(&format!(" peer={p}"));
            }
            if let Some(c) = &e.clinician {
                line.push_str(&format!(" clinician={c}"));
            }
            if !e.policy_ids.is_empty() {
                line.push_str(&format!(" policies=[{}]", e.policy_ids.join(", ")));
            }
            if e.break_glass {
                line.push_str(" BREAK-GLASS");
            }
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "- Every entry is in {}'s signed audit checkpoint of {} entries (root {}).",
            self.log.id,
            self.checkpoint_size,
            b64().encode(self.checkpoint_root)
        )?;
        if self.witnesses.is_empty() {
            writeln!(f, "- No witness cosigned that checkpoint.")?;
        }
        for (w, time) in &self.witnesses {
            writeln!(
                f,
                "- Witnessed by {} on {} (cosignature verified).",
                w,
                utc(time.saturating_mul(1000))
            )?;
        }
        writeln!(
            f,
            "- Keys from directory version {} of federation {}, signed by the CA, valid {} to \
             {}{}.",
            self.directory_version,
            self.federation,
            utc(u64::try_from(self.directory_valid.0).unwrap_or(0) * 1000),
            utc(u64::try_from(self.directory_valid.1).unwrap_or(0) * 1000),
            if self.directory_expired {
                " (expired since)"
            } else {
                ""
            }
        )
    }
}
