//! Streams every audit entry to a SIEM as RFC 5424 syslog, over TCP with octet counting
//! (RFC 6587 3.4.1) or TLS (RFC 5425, the same framing), from a cursor kept in the store.
//!
//! Delivery is at least once: an entry is sent only once it is durable (the task commits the
//! store before sending what it read), and the cursor moves past it only once the connection
//! has stayed open for [`CONFIRM_AFTER`] after it was written (TCP carries no application
//! acknowledgement; a collector that goes away closes the connection, and what was written
//! shortly before is sent again on the next connection). Every message carries the entry's seq
//! for dedupe. The task is separate from every flow and bounded (one batch in memory, write
//! and connect timeouts, backoff), so a collector that is down blocks nothing else.
//!
//! Messages carry the audit entry's fields except the patient reference, which is replaced by
//! the store's keyed pseudonym of it (`patient_tag`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use gateway_store::{AuditFilter, Store, StoreError};

use super::ExportEntry;
use crate::audit::event;
use crate::config::{SyslogConfig, SyslogTransport};
use crate::trust::collector;

/// The store cursor of this stream (`audit-cursor:syslog`).
pub const CURSOR: &str = crate::audit::STREAM_CURSOR;

/// The SD-ID of the gateway's structured data. 32473 is the private enterprise number IANA
/// reserves for documentation (RFC 5612) until the project registers its own.
pub const SD_ID: &str = "healthfed@32473";

/// How long a connection must stay open after a write before its entries count as delivered.
pub const CONFIRM_AFTER: Duration = Duration::from_secs(1);

/// Entries read (and held) at a time.
const BATCH: usize = 256;
/// How often the log is looked at for new entries when the stream has caught up.
const POLL: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// RFC 5424 severities used.
pub mod severity {
    pub const ALERT: u8 = 1;
    pub const WARNING: u8 = 4;
    pub const NOTICE: u8 = 5;
    pub const INFO: u8 = 6;
}

/// A witnessed log that forked is an alert; break-glass and refused peer identities are
/// warnings; other refusals and failures notices; the rest informational.
pub fn severity_of(e: &ExportEntry) -> u8 {
    if e.event == event::WITNESS_CONFLICT {
        severity::ALERT
    } else if e.break_glass || (e.event == event::REJECTED && e.outcome == "connection-refused") {
        severity::WARNING
    } else if matches!(
        e.outcome.as_str(),
        "deny" | "refused" | "rejected" | "failed" | "duplicate"
    ) {
        severity::NOTICE
    } else {
        severity::INFO
    }
}

/// RFC 5424 PARAM-VALUE escaping: `"`, `\` and `]` are escaped with a backslash.
fn param_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field (HOSTNAME, APP-NAME, MSGID): printable ASCII without spaces, at most `max`
/// characters, `-` when empty.
fn header_field(v: &str, max: usize) -> String {
    let s: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

/// The RFC 5424 message for entry `e` of `facility`'s log (without framing). `patient_tag` is
/// the pseudonym of its patient, if it has one.
pub fn message(
    cfg: &SyslogConfig,
    facility: &str,
    e: &ExportEntry,
    patient_tag: Option<&str>,
) -> String {
    let pri = u16::from(cfg.facility) * 8 + u16::from(severity_of(e));
    let mut sd = format!("[{SD_ID} seq=\"{}\"", e.seq);
    let mut param = |name: &str, value: &str| {
        sd.push_str(&format!(" {name}=\"{}\"", param_value(value)));
    };
    param("event", &e.event);
    param("outcome", &e.outcome);
    for (name, value) in [
        ("transfer", &e.transfer_id),
        ("peer", &e.peer),
        ("purpose", &e.purpose),
        ("clinician", &e.clinician),
    ] {
        if let Some(v) = value {
            param(name, v);
        }
    }
    if let Some(tag) = patient_tag {
        param("patient_tag", tag);
    }
    param("break_glass", if e.break_glass { "true" } else { "false" });
    for p in &e.policy_ids {
        param("policy", p);
    }
    param("hash", &e.hash);
    sd.push(']');
    let text = match &e.reason {
        Some(reason) => format!("{} {}: {reason}", e.event, e.outcome),
        None => format!("{} {}", e.event, e.outcome),
    };
    // RFC 5424 6.4: UTF-8 text is marked with a BOM; ASCII needs none.
    let bom = if text.is_ascii() { "" } else { "\u{feff}" };
    format!(
        "<{pri}>1 {} {} {} - {} {sd} {bom}{text}",
        super::instant(e.time_ms),
        header_field(facility, 255),
        header_field(&cfg.app_name, 48),
        header_field(&e.event, 32),
    )
}

/// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message.as_bytes());
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("collector: connect: {0}")]
    Connect(std::io::Error),
    #[error("collector: connect: timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Tls(#[from] collector::CollectorTlsError),
    #[error("collector: write: {0}")]
    Write(std::io::Error),
    #[error("collector: write timed out")]
    WriteTimeout,
    #[error("collector closed the connection")]
    Closed,
    #[error("local system: audit log: {0}")]
    Store(#[from] StoreError),
    #[error("shutting down")]
    Shutdown,
    #[error("local system: the audit log reader stopped")]
    Reader,
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Runs the stream until shutdown. Started by `node` when `[audit.syslog]` is configured.
pub async fn run(
    store: Store,
    facility: String,
    cfg: SyslogConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = match (cfg.transport, &cfg.ca_file) {
        (SyslogTransport::Tls, Some(ca)) => match collector::connector(ca) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "audit syslog stream not started");
                return;
            }
        },
        _ => None,
    };
    let mut backoff = BACKOFF_MIN;
    let mut was_up = true;
    loop {
        // Connecting is bounded by its timeouts; `node` ends the task at shutdown.
        let err = match connect(&cfg, tls.as_ref()).await {
            Ok(conn) => {
                tracing::info!(transport = ?cfg.transport, "audit syslog collector connected");
                was_up = true;
                backoff = BACKOFF_MIN;
                match stream(&store, &facility, &cfg, conn, &mut shutdown).await {
                    Err(StreamError::Shutdown) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        // One line per outage, not per retry: the node's log must not fill while it lasts.
        if was_up {
            tracing::warn!(error = %err, "audit syslog collector unavailable; entries are kept and sent when it is back");
            was_up = false;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(
    cfg: &SyslogConfig,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Box<dyn Conn>, StreamError> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    .map_err(|_| StreamError::ConnectTimeout)?
    .map_err(StreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(connector) => {
            let tls = tokio::time::timeout(
                CONNECT_TIMEOUT,
                collector::connect(connector, &cfg.host, tcp),
            )
            .await
            .map_err(|_| StreamError::ConnectTimeout)??;
            Ok(Box::new(tls))
        }
        None => Ok(Box::new(tcp)),
    }
}

/// The entries after `after`, at most a batch, read off the async threads.
async fn read_batch(store: &Store, after: u64) -> Result<Vec<ExportEntry>, StreamError> {
    let store = store.clone();
    let batch = tokio::task::spawn_blocking(move || {
        let filter = AuditFilter {
            since_seq: Some(after),
            limit: Some(BATCH),
            ..AuditFilter::default()
        };
        store.audit_list(&filter).map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let tag = e
                        .record
                        .patient_ref
                        .as_deref()
                        .map(|p| store.patient_pseudonym(p));
                    (ExportEntry::from(e), tag)
                })
                .collect::<Vec<_>>()
        })
    })
    .await
    .map_err(|_| StreamError::Reader)??;
    // The pseudonym rides in `patient`; the reference itself never leaves this function.
    Ok(batch
        .into_iter()
        .map(|(mut e, tag)| {
            e.patient = tag;
            e
        })
        .collect())
}

/// Sends from the store's cursor on one connection until it fails or the node stops.
async fn stream(
    store: &Store,
    facility: &str,
    cfg: &SyslogConfig,
    conn: Box<dyn Conn>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<std::convert::Infallible, StreamError> {
    let (mut rd, mut wr) = tokio::io::split(conn);
    // The collector never sends; end of stream or an error here means it went away.
    let (closed_tx, mut closed) = watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        let _ = closed_tx.send(true);
    });
    let _abort_reader = AbortOnDrop(reader);

    let mut confirmed = store.audit_cursor(CURSOR)?;
    let mut sent = confirmed;
    let mut inflight: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut cursor_dirty = false;
    let mut buf = Vec::new();
    loop {
        if *closed.borrow() {
            return Err(StreamError::Closed);
        }
        if *shutdown.borrow() {
            confirm_at_shutdown(store, &inflight, &mut closed).await?;
            return Err(StreamError::Shutdown);
        }
        // Entries written long enough ago on a connection still open count as delivered.
        while let Some(&(at, seq)) = inflight.front() {
            if at.elapsed() < CONFIRM_AFTER {
                break;
            }
            inflight.pop_front();
            confirmed = seq;
            store.set_audit_cursor(CURSOR, confirmed)?;
            cursor_dirty = true;
        }
        let batch = read_batch(store, sent).await?;
        // Seqs are contiguous; a gap means entries were archived and removed from the store
        // before they were sent (audit.keep_days with a collector down for longer). Said once
        // per gap, loudly: the SIEM will not see them.
        if let Some(first) = batch.first().map(|e| e.seq) {
            if first > sent.saturating_add(1) {
                tracing::error!(
                    from = sent + 1,
                    to = first - 1,
                    alert = "audit_stream_gap",
                    "audit entries were archived before the syslog stream sent them; they are only in the audit archive"
                );
            }
        }
        if batch.is_empty() {
            if cursor_dirty {
                store.commit().await?;
                cursor_dirty = false;
            }
            let wait = inflight.front().map_or(POLL, |(at, _)| {
                (CONFIRM_AFTER.saturating_sub(at.elapsed())).min(POLL)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = closed.changed() => return Err(StreamError::Closed),
                // A dropped sender is a shutdown too (no spinning on a closed channel).
                changed = shutdown.changed() => if changed.is_err() {
                    return Err(StreamError::Shutdown);
                },
            }
            continue;
        }
        // Nothing is sent before it is durable: this commit covers every entry read above
        // (and the cursor moved above).
        store.commit().await?;
        cursor_dirty = false;
        buf.clear();
        for e in &batch {
            frame(&message(cfg, facility, e, e.patient.as_deref()), &mut buf);
        }
        tokio::time::timeout(WRITE_TIMEOUT, async {
            wr.write_all(&buf).await?;
            wr.flush().await
        })
        .await
        .map_err(|_| StreamError::WriteTimeout)?
        .map_err(StreamError::Write)?;
        if let Some(last) = batch.last() {
            sent = last.seq;
            inflight.push_back((Instant::now(), sent));
        }
    }
}

/// At shutdown, what was written counts as delivered once the connection has stayed open
/// for [`CONFIRM_AFTER`] after the last write (at most that long a wait), so a node that stops
/// does not send it again at its next start. The node's final commit makes the cursor durable.
async fn confirm_at_shutdown(
    store: &Store,
    inflight: &VecDeque<(Instant, u64)>,
    closed: &mut watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let Some(&(at, last)) = inflight.back() else {
        return Ok(());
    };
    let wait = CONFIRM_AFTER.saturating_sub(at.elapsed());
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = closed.changed() => return Ok(()),
    }
    if *closed.borrow() {
        return Ok(());
    }
    store.set_audit_cursor(CURSOR, last)?;
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SyslogConfig {
        SyslogConfig {
            host: "127.0.0.1".to_owned(),
            port: 6514,
            transport: SyslogTransport::Tcp,
            ca_file: None,
            app_name: "healthfed-gateway".to_owned(),
            facility: 13,
        }
    }

    fn entry() -> ExportEntry {
        ExportEntry {
            seq: 42,
            time_ms: 1_796_278_778_123,
            event: "sent".to_owned(),
            transfer_id: Some("00ff".to_owned()),
            peer: Some("clinic-b".to_owned()),
            patient: Some("pat-secret".to_owned()),
            purpose: Some("treatment".to_owned()),
            clinician: Some("dr \"q\"]".to_owned()),
            outcome: "attempt".to_owned(),
            reason: None,
            policy_ids: vec!["p1".to_owned(), "p2".to_owned()],
            break_glass: true,
            hash: "ab".repeat(32),
        }
    }

    #[test]
    fn a_message_is_rfc5424_with_the_seq_in_structured_data() {
        let m = message(&cfg(), "hosp-a", &entry(), Some("tag"));
        // facility 13 (audit) * 8 + warning (break-glass).
        assert!(m.starts_with("<108>1 2026-12-03T06:19:38.123Z hosp-a healthfed-gateway - sent [healthfed@32473 seq=\"42\" event=\"sent\""), "{m}");
        assert!(m.contains(r#"clinician="dr \"q\"\]""#), "{m}");
        assert!(m.contains(r#"patient_tag="tag""#), "{m}");
        assert!(m.contains(r#"policy="p1" policy="p2""#), "{m}");
        assert!(!m.contains("pat-secret"), "{m}");
        assert!(m.ends_with("] sent attempt"), "{m}");
    }

    #[test]
    fn frames_count_octets_not_characters() {
        let mut e = entry();
        e.reason = Some("é".to_owned());
        let m = message(&cfg(), "hosp-a", &e, None);
        let mut out = Vec::new();
        frame(&m, &mut out);
        let (len, rest) = std::str::from_utf8(&out).unwrap().split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        assert!(rest.contains("\u{feff}sent attempt: é"));
    }

    #[test]
    fn severities_follow_the_documented_table() {
        let mut e = entry();
        assert_eq!(severity_of(&e), severity::WARNING);
        e.break_glass = false;
        assert_eq!(severity_of(&e), severity::INFO);
        e.event = event::REJECTED.to_owned();
        e.outcome = "connection-refused".to_owned();
        assert_eq!(severity_of(&e), severity::WARNING);
        e.outcome = "refused".to_owned();
        assert_eq!(severity_of(&e), severity::NOTICE);
        e.event = event::WITNESS_CONFLICT.to_owned();
        assert_eq!(severity_of(&e), severity::ALERT);
    }
}
