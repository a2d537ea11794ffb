//! The disclosure evidence file of one transfer (`healthfed-evidence/2`, docs/evidence.md)
//! and its offline verifier: no node, no store, only the federation's CA certificate.
//!
//! Every part is signed by someone a CA-signed directory of the file names: the envelope
//! header by the sender, the receipt by the receiver, the checkpoint by the facility whose audit
//! log the entries come from, the cosignatures by its witnesses; the entries are bound to the
//! checkpoint by RFC 9162 inclusion proofs. Keys rotate, so the file carries the directories
//! its signatures need, by increasing version: the first is the one in force when the transfer
//! was signed (the header and the receipt are checked against it, or a later one valid at their
//! time), the last the one current at export (the checkpoint and cosignatures, made at export,
//! are checked against it, or an earlier one). Version 1 files (one directory) still verify.
//! The file must be exactly the canonical JSON the exporter writes, so a byte changed anywhere
//! is refused, and the refusal names the part.

mod signatures;

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use gateway_envelope::Receipt;
use gateway_store::merkle::{self, Hash};
use gateway_store::{entry_leaf_hash, entry_view, EntryView};
use pki_tools::directory::Directory;

use signatures::{check_signatures, open_directories, Signed};
pub use signatures::{directories_needed, header_time_ms};

pub const FORMAT: &str = "healthfed-evidence/2";
/// The format of files with one directory (the one in force at export), still verified.
pub const FORMAT_V1: &str = "healthfed-evidence/1";
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
    /// Signed directory files (`healthfed-directory/1`), base64, by strictly increasing
    /// version: first the one in force at the envelope header's time on the exporting node,
    /// last the one current at export, between them any a signature needs.
    pub directories: Vec<String>,
    /// `MAGIC || u32-be length || signed header` of the envelope, base64: the header only, no
    /// frame of metadata or payload.
    pub envelope_header: String,
    /// The receiver's signed receipt, base64.
    pub receipt: String,
    pub entries: Vec<EvidenceEntry>,
    /// The C2SP signed checkpoint of `log` that covers the entries, with its cosignatures.
    pub checkpoint: String,
}

/// A `healthfed-evidence/1` file: the same, with the one directory in force at export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceFileV1 {
    pub format: String,
    pub transfer_id: String,
    pub log: String,
    pub directory: String,
    pub envelope_header: String,
    pub receipt: String,
    pub entries: Vec<EvidenceEntry>,
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

/// The canonical bytes of a file: pretty JSON and a final newline.
fn canonical(file: &impl Serialize) -> Vec<u8> {
    // Serializing a struct of strings and numbers cannot fail.
    let mut out = serde_json::to_vec_pretty(file).unwrap_or_default();
    out.push(b'\n');
    out
}

impl EvidenceFile {
    /// The canonical bytes of the file: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        canonical(self)
    }
}

impl EvidenceFileV1 {
    /// The canonical bytes of the file: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        canonical(self)
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

/// A directory of the file, and which signatures it verified.
#[derive(Clone, Debug)]
pub struct DirectoryUsed {
    pub version: u64,
    pub federation: String,
    /// `(issued_at, expires_at)`, Unix seconds.
    pub valid: (i64, i64),
    /// Whether it had expired when the file was verified (it is still the one whose keys
    /// signed; the window is reported).
    pub expired: bool,
    /// The parts whose signature its keys verified, in plain words.
    pub verified: Vec<String>,
}

/// What a verified file shows.
#[derive(Clone, Debug)]
pub struct Verified {
    pub format: &'static str,
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
    /// The file's directories, by version: the first in force at the transfer, the last
    /// current at export.
    pub directories: Vec<DirectoryUsed>,
}

fn decode_b64(part: &str, text: &str) -> Result<Vec<u8>, Refused> {
    b64().decode(text).map_err(|_| refuse(part, "not base64"))
}

fn hash_of(part: &str, text: &str) -> Result<Hash, Refused> {
    <Hash>::try_from(decode_b64(part, text)?.as_slice())
        .map_err(|_| refuse(part, "a proof hash is not 32 bytes"))
}

/// The format of a file, read before the rest so that each version parses strictly.
#[derive(Deserialize)]
struct Format {
    format: String,
}

/// Verifies an evidence file against the federation's CA certificate (DER), at `now_unix`.
pub fn verify(file: &[u8], ca_der: &[u8], now_unix: i64) -> Result<Verified, Refused> {
    if file.len() > MAX_FILE_BYTES {
        return Err(refuse("file", "larger than any evidence file"));
    }
    let not_evidence = |e: serde_json::Error| refuse("file", format!("not an evidence file: {e}"));
    let format: Format = serde_json::from_slice(file).map_err(not_evidence)?;
    let (parsed, format, canonical_bytes) = match format.format.as_str() {
        FORMAT => {
            let parsed: EvidenceFile = serde_json::from_slice(file).map_err(not_evidence)?;
            let bytes = parsed.to_bytes();
            (parsed, FORMAT, bytes)
        }
        FORMAT_V1 => {
            let v1: EvidenceFileV1 = serde_json::from_slice(file).map_err(not_evidence)?;
            let bytes = v1.to_bytes();
            let parsed = EvidenceFile {
                format: v1.format,
                transfer_id: v1.transfer_id,
                log: v1.log,
                directories: vec![v1.directory],
                envelope_header: v1.envelope_header,
                receipt: v1.receipt,
                entries: v1.entries,
                checkpoint: v1.checkpoint,
            };
            (parsed, FORMAT_V1, bytes)
        }
        _ => {
            return Err(refuse(
                "file",
                format!("format is neither {FORMAT} nor {FORMAT_V1}"),
            ))
        }
    };
    // Only the exporter's exact bytes: nothing may change outside the signed parts either.
    if canonical_bytes != file {
        return Err(refuse(
            "file",
            "not in the exporter's canonical form (changed outside its signed parts)",
        ));
    }

    // The directories, signed by the CA. An expired one still shows who held which key then:
    // it is checked at its last valid second, and reported.
    let label = |i: usize| {
        if format == FORMAT_V1 {
            "directory".to_owned()
        } else {
            format!("directory #{}", i + 1)
        }
    };
    let mut files = Vec::with_capacity(parsed.directories.len());
    for (i, text) in parsed.directories.iter().enumerate() {
        files.push(decode_b64(&label(i), text)?);
    }
    let files: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let opened = open_directories(&files, ca_der, now_unix, &label)?;
    let dirs: Vec<Directory> = opened.iter().map(|(d, _)| d.clone()).collect();

    let header_bytes = decode_b64("envelope header", &parsed.envelope_header)?;
    let receipt_bytes = decode_b64("receipt", &parsed.receipt)?;
    let checked = check_signatures(
        &dirs,
        &Signed {
            header: &header_bytes,
            receipt: &receipt_bytes,
            log: &parsed.log,
            note: parsed.checkpoint.as_bytes(),
        },
    )?;
    let header = &checked.header;
    let transfer_id = hex::encode(header.transfer_id().0);
    if parsed.transfer_id != transfer_id {
        return Err(refuse("transfer id", "differs from the envelope header's"));
    }
    let (size, root, log) = (checked.size, checked.root, &checked.log);

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

    let directories = opened
        .into_iter()
        .enumerate()
        .map(|(i, (d, expired))| DirectoryUsed {
            version: d.version,
            federation: d.federation,
            valid: (d.issued_at, d.expires_at),
            expired,
            verified: checked
                .used
                .iter()
                .filter(|(at, _)| *at == i)
                .map(|(_, what)| what.clone())
                .collect(),
        })
        .collect();
    Ok(Verified {
        format,
        transfer_id,
        payload_digest: header.payload_digest(),
        payload_len: header.payload_len(),
        created_at_ms: header.created_at_ms(),
        sender: checked.sender,
        receiver: checked.receiver,
        receipt: checked.receipt,
        receipt_version: checked.receipt_version,
        log: checked.log,
        entries,
        checkpoint_size: size,
        checkpoint_root: root,
        witnesses: checked.witnesses,
        directories,
    })
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
        let last = self.directories.len().saturating_sub(1);
        for (i, d) in self.directories.iter().enumerate() {
            let role = match (i == 0, i == last) {
                (true, true) => " (in force at the transfer and current at export)",
                (true, false) => " (in force at the transfer)",
                (false, true) => " (current at export)",
                (false, false) => "",
            };
            let verified = if d.verified.is_empty() {
                "no signature of this file needed it".to_owned()
            } else {
                format!("verified {}", d.verified.join(", "))
            };
            writeln!(
                f,
                "- Directory version {}{role} of federation {}, signed by the CA, valid {} to \
                 {}{}: {verified}.",
                d.version,
                d.federation,
                utc(u64::try_from(d.valid.0).unwrap_or(0).saturating_mul(1000)),
                utc(u64::try_from(d.valid.1).unwrap_or(0).saturating_mul(1000)),
                if d.expired { " (expired since)" } else { "" },
            )?;
        }
        writeln!(f, "- File format {}.", self.format)
    }
}
