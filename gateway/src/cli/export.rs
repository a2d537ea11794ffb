//! `gateway audit export`: the audit log, paged through `/v1/audit` like `audit list`, written
//! as FHIR R4 AuditEvent (BALP), JSON lines or CSV by `export`. One page is held at a time; the
//! file is written under a temporary name (0600) and renamed only when complete, so a failed
//! export leaves no partial file behind.

use std::io::BufWriter;

use serde_json::Value;

use super::args::AuditExportArgs;
use super::call::{client, fail, load_config};
use super::output::{for_each_listed, no_header};
use super::{outln, Failure, EXIT_FAILURE, EXIT_USAGE};
use crate::export::table::{ExportWriter, Format};
use crate::export::{EntryFilter, ExportEntry};

fn parse_time(flag: &str, value: Option<&str>) -> Result<Option<u64>, Failure> {
    let Some(value) = value else {
        return Ok(None);
    };
    let t = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| Failure::new(EXIT_USAGE, format!("{flag}: not an RFC 3339 time")))?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    Ok(Some(u64::try_from(ms).unwrap_or(0)))
}

pub async fn export(args: AuditExportArgs) -> Result<(), Failure> {
    let format = match (args.format.as_str(), args.bundle) {
        ("fhir", bundle) => Format::Fhir { bundle },
        ("jsonl", false) => Format::Jsonl,
        ("csv", false) => Format::Csv,
        _ => {
            return Err(Failure::new(
                EXIT_USAGE,
                "--bundle: only with --format fhir",
            ))
        }
    };
    let keep = EntryFilter {
        peer: args.peer.clone(),
        events: args.events.clone(),
        outcome: args.outcome.clone(),
        from_ms: parse_time("--from", args.from.as_deref())?,
        to_ms: parse_time("--to", args.to.as_deref())?,
    };
    let facility = load_config(&args.config)?.facility_id.to_string();
    let c = client(&args.config).await?;

    let dir = match args.out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    // NamedTempFile is created 0600: the export names patients.
    let tmp = tempfile::Builder::new()
        .prefix(".audit-export-")
        .tempfile_in(&dir)
        .map_err(|e| fail(format!("{}: cannot create the export: {e}", dir.display())))?;
    let file = tmp.as_file().try_clone().map_err(fail)?;
    let mut writer = ExportWriter::new(
        BufWriter::new(file),
        format,
        &facility,
        crate::trust::now_ms(),
    )
    .map_err(fail)?;
    let filter = [
        ("patient", args.patient.clone()),
        ("transfer", args.transfer.clone()),
        ("break_glass", args.break_glass.then(|| "true".to_owned())),
        ("export", Some(format.label().to_owned())),
    ];
    for_each_listed(&c, "/v1/audit", &filter, no_header, |listed: &Value| {
        let entry: ExportEntry = serde_json::from_value(listed.clone()).map_err(|e| {
            Failure::new(
                EXIT_FAILURE,
                format!("the node listed an audit entry this export cannot read: {e}"),
            )
        })?;
        if keep.keeps(&entry) {
            writer.write(listed, &entry).map_err(fail)?;
        }
        Ok(())
    })
    .await?;
    let (written, out) = writer.finish().map_err(fail)?;
    let file = out.into_inner().map_err(|e| fail(e.error()))?;
    file.sync_all().map_err(fail)?;
    tmp.persist(&args.out)
        .map_err(|e| fail(format!("{}: {}", args.out.display(), e.error)))?;
    outln!("{written} audit entries written to {}", args.out.display())
}
