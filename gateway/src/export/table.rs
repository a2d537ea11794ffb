//! Export writers: FHIR `AuditEvent` as NDJSON or one Bundle, the listing's JSON objects one
//! per line, or RFC 4180 CSV. Each writes an entry as it comes, so an export of any length
//! holds one entry in memory (a Bundle is written as a stream too: its head, the entries, its
//! end).

use std::io::Write;

use serde_json::Value;

use super::{fhir, instant, ExportEntry};

/// The CSV header: the listing's fields in its order, with the time also as RFC 3339, the
/// policy ids joined by spaces (a policy id holds none).
pub const CSV_HEADER: [&str; 14] = [
    "seq",
    "time_ms",
    "time",
    "event",
    "transfer_id",
    "peer",
    "patient",
    "purpose",
    "clinician",
    "outcome",
    "reason",
    "policy_ids",
    "break_glass",
    "hash",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// FHIR R4 AuditEvent (BALP); NDJSON unless `bundle`.
    Fhir {
        bundle: bool,
    },
    /// The listing's entries as the API gives them, one JSON object per line.
    Jsonl,
    Csv,
}

impl Format {
    /// The format's name in the local API's `export` query (the audit-read entry's label).
    pub fn label(self) -> &'static str {
        match self {
            Format::Fhir { .. } => "fhir",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("local system: cannot write the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("local system: cannot write the export: {0}")]
    Csv(#[from] csv::Error),
    #[error("local system: cannot encode an entry: {0}")]
    Json(#[from] serde_json::Error),
}

enum Sink<W: Write> {
    Lines(W),
    Bundle { out: W, first: bool },
    Csv(Box<csv::Writer<W>>),
}

/// Writes one export, an entry at a time.
pub struct ExportWriter<W: Write> {
    facility: String,
    format: Format,
    sink: Sink<W>,
    written: u64,
}

impl<W: Write> ExportWriter<W> {
    /// Starts an export of `facility`'s log (for FHIR: the observer of every event) at
    /// `started_ms` (a Bundle's timestamp).
    pub fn new(
        out: W,
        format: Format,
        facility: &str,
        started_ms: u64,
    ) -> Result<Self, ExportError> {
        let sink = match format {
            Format::Fhir { bundle: true } => {
                let mut out = out;
                write!(
                    out,
                    "{{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"timestamp\":\"{}\",\"entry\":[",
                    instant(started_ms)
                )?;
                Sink::Bundle { out, first: true }
            }
            Format::Fhir { bundle: false } | Format::Jsonl => Sink::Lines(out),
            Format::Csv => {
                // RFC 4180: records end in CRLF (the crate's default is LF).
                let mut w = csv::WriterBuilder::new()
                    .terminator(csv::Terminator::CRLF)
                    .from_writer(out);
                w.write_record(CSV_HEADER)?;
                Sink::Csv(Box::new(w))
            }
        };
        Ok(ExportWriter {
            facility: facility.to_owned(),
            format,
            sink,
            written: 0,
        })
    }

    /// Writes one entry; `listed` is the entry exactly as the API listed it (JSON lines keep
    /// it as it came, fields the export does not know included).
    pub fn write(&mut self, listed: &Value, entry: &ExportEntry) -> Result<(), ExportError> {
        match (&mut self.sink, self.format) {
            (Sink::Lines(out), Format::Jsonl) => {
                serde_json::to_writer(&mut *out, listed)?;
                out.write_all(b"\n")?;
            }
            (Sink::Lines(out), _) => {
                serde_json::to_writer(&mut *out, &fhir::audit_event(&self.facility, entry))?;
                out.write_all(b"\n")?;
            }
            (Sink::Bundle { out, first }, _) => {
                if !*first {
                    out.write_all(b",")?;
                }
                *first = false;
                out.write_all(b"{\"resource\":")?;
                serde_json::to_writer(&mut *out, &fhir::audit_event(&self.facility, entry))?;
                out.write_all(b"}")?;
            }
            (Sink::Csv(w), _) => w.write_record(csv_row(entry))?,
        }
        self.written += 1;
        Ok(())
    }

    /// Ends the export (closes a Bundle, flushes); returns how many entries it holds.
    pub fn finish(self) -> Result<(u64, W), ExportError> {
        let out = match self.sink {
            Sink::Lines(mut out) => {
                out.flush()?;
                out
            }
            Sink::Bundle { mut out, .. } => {
                out.write_all(b"]}\n")?;
                out.flush()?;
                out
            }
            Sink::Csv(w) => w.into_inner().map_err(|e| e.into_error())?,
        };
        Ok((self.written, out))
    }
}

/// One CSV record, in [`CSV_HEADER`]'s order; an absent value is an empty field.
pub fn csv_row(e: &ExportEntry) -> [String; 14] {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        e.seq.to_string(),
        e.time_ms.to_string(),
        instant(e.time_ms),
        e.event.clone(),
        opt(&e.transfer_id),
        opt(&e.peer),
        opt(&e.patient),
        opt(&e.purpose),
        opt(&e.clinician),
        e.outcome.clone(),
        opt(&e.reason),
        e.policy_ids.join(" "),
        e.break_glass.to_string(),
        e.hash.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, reason: &str) -> ExportEntry {
        ExportEntry {
            seq,
            time_ms: 1000 * seq,
            event: "received".to_owned(),
            transfer_id: None,
            peer: Some("hosp-a".to_owned()),
            patient: Some("pat,\"1\"".to_owned()),
            purpose: None,
            clinician: None,
            outcome: "stored".to_owned(),
            reason: Some(reason.to_owned()),
            policy_ids: vec!["a".to_owned(), "b".to_owned()],
            break_glass: true,
            hash: "00".repeat(32),
        }
    }

    #[test]
    fn a_bundle_is_one_json_document_with_every_entry() {
        let mut w =
            ExportWriter::new(Vec::new(), Format::Fhir { bundle: true }, "hosp-b", 5000).unwrap();
        for seq in 1..=3 {
            let e = entry(seq, "r");
            w.write(&serde_json::to_value(&e).unwrap(), &e).unwrap();
        }
        let (n, out) = w.finish().unwrap();
        assert_eq!(n, 3);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["entry"].as_array().unwrap().len(), 3);
        assert_eq!(v["entry"][2]["resource"]["resourceType"], "AuditEvent");
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines() {
        let mut w = ExportWriter::new(Vec::new(), Format::Csv, "hosp-b", 0).unwrap();
        let e = entry(1, "line one\nline \"two\", end");
        w.write(&Value::Null, &e).unwrap();
        let (_, out) = w.finish().unwrap();
        assert!(out.starts_with(b"seq,time_ms,time,event,"));
        assert!(out.ends_with(b"\r\n"));
        assert_eq!(out.windows(2).filter(|w| w == b"\r\n").count(), 2);
        let mut r = csv::Reader::from_reader(out.as_slice());
        assert_eq!(r.headers().unwrap(), CSV_HEADER.as_slice());
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0][6], "pat,\"1\"");
        assert_eq!(&rows[0][10], "line one\nline \"two\", end");
        assert_eq!(&rows[0][11], "a b");
    }
}
