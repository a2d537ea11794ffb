//! The node's configuration file (`node.toml`): one typed tree, `version = 1`, unknown keys refused.
//!
//! Relative paths are resolved against the directory that holds the config file, so a node
//! directory can be moved as a whole. Errors are collected and reported together, and never
//! echo a value from the file (a misplaced secret must not end up in a log).
//!
//! Longer than ~600 lines on purpose: the whole tree, its defaults and the one validator that
//! collects every problem are read together, and about 120 lines are its tests.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use gateway_envelope::Suite;
use pki_tools::FacilityId;

mod console;
mod roles;
pub use console::ConsoleConfig;
pub use roles::{Role, Roles, UnknownRole};

pub const CONFIG_VERSION: u32 = 1;

/// Bounds of `node.store_cache_mib`: below 64 MiB sled thrashes; the top is a typo guard.
const MIN_STORE_CACHE_MIB: u64 = 64;
const MAX_STORE_CACHE_MIB: u64 = 1024 * 1024;

/// Upper bound of `delivery.workers`: each may hold a connection stream and a 2 MiB envelope.
const MAX_DELIVERY_WORKERS: usize = 4096;

/// Upper bound of `retention.envelope_hours` (a typo guard; the arithmetic stays in range).
const MAX_RETENTION_HOURS: u64 = 10 * 366 * 24;

/// Upper bound of `delivery.max_age_secs` (a year: a typo guard, the arithmetic stays in range).
const MAX_DELIVERY_AGE_SECS: u64 = 366 * 24 * 3600;

/// Upper bound of `delivery.danger_time_scale`: 3600 runs an hour of delivery timings in a second.
const MAX_TIME_SCALE: u32 = 3600;

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The config file itself (for messages) and its directory (for relative paths).
    pub path: PathBuf,
    pub facility_id: FacilityId,
    pub data_dir: PathBuf,
    /// sled's page cache, in bytes (`node.store_cache_mib`).
    pub store_cache_bytes: u64,
    /// Envelopes up to this size are appended to spool segments (`node.spool_segment_kib`).
    pub spool_segment_bytes: usize,
    pub peer: PeerListenerConfig,
    pub local_api: LocalApiConfig,
    pub keys: KeyPaths,
    pub federation: FederationPaths,
    pub delivery: DeliveryConfig,
    pub policy: PolicyConfig,
    pub retention: RetentionConfig,
    pub log: LogConfig,
    pub ops: OpsConfig,
    pub audit: AuditConfig,
    pub console: ConsoleConfig,
}

/// The audit log's signed checkpoints (see `gateway::evidence`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// A checkpoint of the log's Merkle tree is signed this often, when the log has grown
    /// (`audit.checkpoint_interval_secs`, 60 s to a day; default 5 minutes: what a facility
    /// could rewrite unseen is at most that window).
    pub checkpoint_interval_secs: u64,
    /// Entries older than this many days are moved to signed archives in
    /// `<data_dir>/audit-archives` (`audit.keep_days`; default: none, keep all).
    pub keep_days: Option<u64>,
    /// The members that witness this node's log (`audit.witnesses`; empty, the default: every
    /// active member), the first `audit.max_witnesses` (default 4) of them by id.
    pub witnesses: Vec<String>,
    pub max_witnesses: usize,
    /// Streaming of every audit entry to a SIEM (`[audit.syslog]`; none when absent).
    pub syslog: Option<SyslogConfig>,
}

/// `[audit.syslog]`: RFC 5424 messages to a collector over TCP with octet counting (RFC 6587)
/// or TLS (RFC 5425). See docs/audit-export.md.
#[derive(Debug, Clone)]
pub struct SyslogConfig {
    /// `host:port` of the collector; the host is also the TLS server name.
    pub host: String,
    pub port: u16,
    pub transport: SyslogTransport,
    /// The CA that signs the collector's certificate (required for tls).
    pub ca_file: Option<PathBuf>,
    /// RFC 5424 APP-NAME (1 to 48 printable ASCII characters).
    pub app_name: String,
    /// RFC 5424 facility code (0 to 23).
    pub facility: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    Tcp,
    Tls,
}

#[derive(Debug, Clone)]
pub struct PeerListenerConfig {
    pub listen: SocketAddr,
    /// Largest envelope accepted from a peer (bytes).
    pub max_envelope_bytes: u64,
    /// Concurrent peer requests before new ones are shed with 503.
    pub max_concurrent: usize,
    /// How far a sender's clock may differ from ours before an envelope is a replay suspect.
    pub replay_window_secs: u64,
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone)]
pub struct LocalApiConfig {
    pub listen: SocketAddr,
    /// SHA-256 (hex) of each accepted API token. Tokens themselves are never stored here.
    pub token_hashes: Vec<TokenHash>,
    /// Where the CLI reads its token from (mode 0600).
    pub token_file: PathBuf,
    pub max_body_bytes: u64,
    pub max_concurrent: usize,
    /// How long an `Idempotency-Key` of a submission is remembered (seconds).
    pub idempotency_window_secs: u64,
}

#[derive(Clone)]
pub struct TokenHash {
    pub name: String,
    pub sha256: [u8; 32],
    /// What the token may do (`roles`); every route names the role it needs.
    pub roles: Roles,
    /// The config gave no `roles`: the token has [`Roles::LEGACY_DEFAULT`], and the node warns
    /// at start that this default is deprecated.
    pub roles_defaulted: bool,
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHash")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct KeyPaths {
    pub ca_cert: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub signing_key: PathBuf,
    pub encryption_key: PathBuf,
    /// Kept during a rotation overlap so envelopes sealed to the old key still open.
    pub previous_encryption_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct FederationPaths {
    pub directory: PathBuf,
    pub crl: PathBuf,
    /// How often the node looks for a newer directory, CRL or policy set.
    pub reload_interval_secs: u64,
    /// How long past its nextUpdate the CRL is still used (then handshakes fail closed).
    pub crl_grace_secs: u64,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub workers: usize,
    /// A hard cap on attempts per transfer; `None` (the default): bounded by age only, so an
    /// outage fails nothing before `max_age_secs`.
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub max_age_secs: u64,
    pub connect_timeout_ms: u64,
    /// How outgoing envelopes are encrypted; receivers open every suite.
    pub envelope_suite: Suite,
    /// Divides the backoff delays and the age bound (`delivery.danger_time_scale`), so tests
    /// run days of outage timings in seconds with the shipped defaults. 1 in production.
    pub danger_time_scale: u32,
}

impl DeliveryConfig {
    /// The age after which an undelivered transfer fails, in (scaled) milliseconds.
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_secs.saturating_mul(1000) / u64::from(self.danger_time_scale.max(1))
    }

    /// The first retry delay, in (scaled) milliseconds, at least 1.
    pub fn initial_backoff(&self) -> u64 {
        (self.initial_backoff_ms / u64::from(self.danger_time_scale.max(1))).max(1)
    }

    /// The longest retry delay, in (scaled) milliseconds, at least 1.
    pub fn max_backoff(&self) -> u64 {
        (self.max_backoff_ms / u64::from(self.danger_time_scale.max(1))).max(1)
    }
}

/// The ops listener (`gateway::ops`): health endpoints for monitoring and orchestrators.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// Loopback unless `allow_remote`; port 0 takes any free port (logged at start).
    pub listen: SocketAddr,
    /// The operator's explicit choice to serve the ops endpoints beyond loopback (a container
    /// whose probes come from the kubelet, a monitoring host).
    pub allow_remote: bool,
}

/// How the node writes its log (to stderr).
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, span), for log shippers.
    Json,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// A directory with `schema.cedarschema` and `*.cedar`; `None` uses the embedded defaults.
    pub dir: Option<PathBuf>,
}

/// How long sealed envelopes are kept once no longer needed (see `gateway::retention`).
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Kept this long after the transfer settled (outbox) or was acknowledged (inbox).
    pub envelope_hours: u64,
    pub sweep_interval_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {problems}")]
    Invalid { path: String, problems: String },
}

// ---- the file format ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    node: RawNode,
    peer: RawPeer,
    local_api: RawLocalApi,
    keys: RawKeys,
    federation: RawFederation,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    ops: RawOps,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    console: console::RawConsole,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "defaults::checkpoint_interval_secs")]
    checkpoint_interval_secs: u64,
    keep_days: Option<u64>,
    #[serde(default)]
    witnesses: Vec<String>,
    #[serde(default = "defaults::max_witnesses")]
    max_witnesses: usize,
    syslog: Option<RawSyslog>,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            checkpoint_interval_secs: defaults::checkpoint_interval_secs(),
            keep_days: None,
            witnesses: Vec::new(),
            max_witnesses: defaults::max_witnesses(),
            syslog: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyslog {
    address: String,
    #[serde(default = "defaults::syslog_transport")]
    transport: String,
    ca_file: Option<PathBuf>,
    #[serde(default = "defaults::syslog_app_name")]
    app_name: String,
    #[serde(default = "defaults::syslog_facility")]
    facility: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    facility_id: String,
    data_dir: PathBuf,
    #[serde(default = "defaults::store_cache_mib")]
    store_cache_mib: u64,
    #[serde(default = "defaults::spool_segment_kib")]
    spool_segment_kib: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    listen: String,
    #[serde(default = "defaults::max_envelope_bytes")]
    max_envelope_bytes: u64,
    #[serde(default = "defaults::max_concurrent")]
    max_concurrent: usize,
    #[serde(default = "defaults::replay_window_secs")]
    replay_window_secs: u64,
    #[serde(default = "defaults::request_timeout_secs")]
    request_timeout_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalApi {
    #[serde(default = "defaults::local_listen")]
    listen: String,
    tokens: Vec<RawToken>,
    token_file: PathBuf,
    #[serde(default = "defaults::max_envelope_bytes")]
    max_body_bytes: u64,
    #[serde(default = "defaults::max_concurrent")]
    max_concurrent: usize,
    #[serde(default = "defaults::idempotency_window_secs")]
    idempotency_window_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    roles: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    ca_cert: PathBuf,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    signing_key: PathBuf,
    encryption_key: PathBuf,
    previous_encryption_key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    directory: PathBuf,
    crl: PathBuf,
    #[serde(default = "defaults::reload_interval_secs")]
    reload_interval_secs: u64,
    #[serde(default = "defaults::crl_grace_secs")]
    crl_grace_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    #[serde(default = "defaults::workers")]
    workers: usize,
    /// Absent or 0: no cap (bounded by age). Older configs that set it keep their cap.
    #[serde(default)]
    max_attempts: u32,
    #[serde(default = "defaults::initial_backoff_ms")]
    initial_backoff_ms: u64,
    #[serde(default = "defaults::max_backoff_ms")]
    max_backoff_ms: u64,
    #[serde(default = "defaults::max_age_secs")]
    max_age_secs: u64,
    #[serde(default = "defaults::connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "defaults::envelope_suite")]
    envelope_suite: String,
    #[serde(default = "defaults::time_scale")]
    danger_time_scale: u32,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            workers: defaults::workers(),
            max_attempts: 0,
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            max_age_secs: defaults::max_age_secs(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            envelope_suite: defaults::envelope_suite(),
            danger_time_scale: defaults::time_scale(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    #[serde(default = "defaults::ops_listen")]
    listen: String,
    #[serde(default)]
    allow_remote: bool,
}

impl Default for RawOps {
    fn default() -> Self {
        RawOps {
            listen: defaults::ops_listen(),
            allow_remote: false,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default = "defaults::envelope_hours")]
    envelope_hours: u64,
    #[serde(default = "defaults::sweep_interval_secs")]
    sweep_interval_secs: u64,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            envelope_hours: defaults::envelope_hours(),
            sweep_interval_secs: defaults::sweep_interval_secs(),
        }
    }
}

/// A token's `roles`: each one known, at least one; none given is the legacy default.
fn token_roles(i: usize, token: &RawToken, problems: &mut Vec<String>) -> (Roles, bool) {
    let Some(names) = &token.roles else {
        return (Roles::LEGACY_DEFAULT, true);
    };
    let mut roles = Vec::new();
    for name in names {
        match name.parse::<Role>() {
            Ok(role) => roles.push(role),
            Err(e) => problems.push(format!("local_api.tokens[{i}].roles: {e}")),
        }
    }
    if names.is_empty() {
        problems.push(format!(
            "local_api.tokens[{i}].roles: name at least one role"
        ));
    }
    (Roles::of(&roles), false)
}

mod defaults {
    pub fn checkpoint_interval_secs() -> u64 {
        300
    }
    /// Four witnesses: a rewrite must then deceive all of them; more costs a round each.
    pub fn max_witnesses() -> usize {
        4
    }
    pub fn syslog_transport() -> String {
        "tls".to_owned()
    }
    pub fn syslog_app_name() -> String {
        "healthfed-gateway".to_owned()
    }
    /// RFC 5424 facility 13, "log audit".
    pub fn syslog_facility() -> String {
        "audit".to_owned()
    }
    pub fn store_cache_mib() -> u64 {
        1024
    }
    pub fn spool_segment_kib() -> usize {
        gateway_store::DEFAULT_SEGMENT_ENVELOPE_BYTES / 1024
    }
    pub fn max_envelope_bytes() -> u64 {
        4 * 1024 * 1024 * 1024
    }
    pub fn max_concurrent() -> usize {
        256
    }
    /// Longer than `delivery.max_age_secs`, so a transfer delayed by an outage still lands.
    pub fn replay_window_secs() -> u64 {
        6 * 24 * 3600
    }
    pub fn request_timeout_secs() -> u64 {
        3600
    }
    /// A day: an EMR's retries of one submission (after a timeout, a crash, a night's outage
    /// of its interface engine) come within hours; a key kept longer only costs space.
    pub fn idempotency_window_secs() -> u64 {
        24 * 3600
    }
    pub fn local_listen() -> String {
        "127.0.0.1:7080".to_owned()
    }
    /// The port Prometheus exporters of OpenTelemetry use; loopback only.
    pub fn ops_listen() -> String {
        "127.0.0.1:9464".to_owned()
    }
    pub fn reload_interval_secs() -> u64 {
        10
    }
    /// 7 days: one `pki publish` cycle (see `deploy/node.example.toml`).
    pub fn crl_grace_secs() -> u64 {
        7 * 24 * 3600
    }
    pub fn workers() -> usize {
        32
    }
    pub fn initial_backoff_ms() -> u64 {
        500
    }
    pub fn max_backoff_ms() -> u64 {
        60_000
    }
    /// Five days: a rural clinic's link can be down over a long weekend, and a transfer must
    /// still arrive when it returns (`peer.replay_window_secs` is longer on purpose).
    pub fn max_age_secs() -> u64 {
        5 * 24 * 3600
    }
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn time_scale() -> u32 {
        1
    }
    pub fn envelope_suite() -> String {
        super::Suite::default().name().to_owned()
    }
    /// A week: long enough to investigate a disputed transfer with the sealed bytes at hand.
    pub fn envelope_hours() -> u64 {
        7 * 24
    }
    pub fn sweep_interval_secs() -> u64 {
        300
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let invalid = |problems: String| ConfigError::Invalid {
            path: path.display().to_string(),
            problems,
        };
        // toml's messages quote the offending line; keep only the location and the kind of problem.
        let raw: RawConfig = toml::from_str(text).map_err(|e| invalid(describe_toml_error(&e)))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let mut problems = Vec::new();
        let console = raw.console.parse(&mut problems);
        if !(60..=86_400).contains(&raw.audit.checkpoint_interval_secs) {
            problems
                .push("audit.checkpoint_interval_secs: must be between 60 and 86400".to_owned());
        }
        if raw
            .audit
            .keep_days
            .is_some_and(|d| !(1..=36_600).contains(&d))
        {
            problems.push("audit.keep_days: must be between 1 and 36600".to_owned());
        }
        if !(1..=32).contains(&raw.audit.max_witnesses) {
            problems.push("audit.max_witnesses: must be between 1 and 32".to_owned());
        }
        if raw
            .audit
            .witnesses
            .iter()
            .any(|w| w.parse::<FacilityId>().is_err())
        {
            problems.push("audit.witnesses: each must be a facility id".to_owned());
        }
        let syslog = raw
            .audit
            .syslog
            .as_ref()
            .and_then(|s| parse_syslog(s, &resolve, &mut problems));
        if raw.version != CONFIG_VERSION {
            problems.push(format!(
                "version: unsupported version {} (this gateway reads version {CONFIG_VERSION})",
                raw.version
            ));
        }
        let facility_id = match raw.node.facility_id.parse::<FacilityId>() {
            Ok(id) => Some(id),
            Err(_) => {
                problems.push("node.facility_id: not a valid facility id".to_owned());
                None
            }
        };
        let peer_listen = parse_addr("peer.listen", &raw.peer.listen, &mut problems);
        let local_listen = parse_addr("local_api.listen", &raw.local_api.listen, &mut problems);
        if let Some(addr) = local_listen {
            if !addr.ip().is_loopback() {
                problems.push(
                    "local_api.listen: must be a loopback address (the local API is never served to peers)"
                        .to_owned(),
                );
            }
        }
        let ops_listen = parse_addr("ops.listen", &raw.ops.listen, &mut problems);
        if let Some(addr) = ops_listen {
            if !addr.ip().is_loopback() && !raw.ops.allow_remote {
                problems.push(
                    "ops.listen: must be a loopback address unless ops.allow_remote = true (the health and metrics endpoints have no authentication)"
                        .to_owned(),
                );
            }
            let taken = [
                ("peer.listen", peer_listen),
                ("local_api.listen", local_listen),
            ];
            for (key, other) in taken {
                if addr.port() != 0 && Some(addr) == other {
                    problems.push(format!("ops.listen: must differ from {key}"));
                }
            }
        }
        let mut token_hashes = Vec::new();
        for (i, token) in raw.local_api.tokens.iter().enumerate() {
            match hex::decode(&token.sha256)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                Some(sha256) => {
                    let (roles, roles_defaulted) = token_roles(i, token, &mut problems);
                    token_hashes.push(TokenHash {
                        name: token.name.clone(),
                        sha256,
                        roles,
                        roles_defaulted,
                    })
                }
                None => problems.push(format!(
                    "local_api.tokens[{i}].sha256: not 64 hex characters"
                )),
            }
        }
        if token_hashes.is_empty() && raw.local_api.tokens.is_empty() {
            problems.push("local_api.tokens: at least one token is required".to_owned());
        }
        if raw.local_api.idempotency_window_secs == 0 {
            problems.push("local_api.idempotency_window_secs: must be at least 1".to_owned());
        }
        for (name, value) in [
            ("peer.max_concurrent", raw.peer.max_concurrent),
            ("local_api.max_concurrent", raw.local_api.max_concurrent),
            ("delivery.workers", raw.delivery.workers),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        if raw.delivery.workers > MAX_DELIVERY_WORKERS {
            problems.push(format!(
                "delivery.workers: must be at most {MAX_DELIVERY_WORKERS}"
            ));
        }
        if !(MIN_STORE_CACHE_MIB..=MAX_STORE_CACHE_MIB).contains(&raw.node.store_cache_mib) {
            problems.push(format!(
                "node.store_cache_mib: must be between {MIN_STORE_CACHE_MIB} and {MAX_STORE_CACHE_MIB}"
            ));
        }
        let max_segment_kib = gateway_store::DEFAULT_SEGMENT_ENVELOPE_BYTES / 1024;
        if raw.node.spool_segment_kib > max_segment_kib {
            problems.push(format!(
                "node.spool_segment_kib: must be between 0 and {max_segment_kib}"
            ));
        }
        let envelope_suite = Suite::from_name(&raw.delivery.envelope_suite);
        if envelope_suite.is_none() {
            let names: Vec<&str> = Suite::ALL.iter().map(|s| s.name()).collect();
            problems.push(format!(
                "delivery.envelope_suite: must be one of {}",
                names.join(", ")
            ));
        }
        if raw.delivery.max_age_secs == 0 || raw.delivery.max_age_secs > MAX_DELIVERY_AGE_SECS {
            problems.push(format!(
                "delivery.max_age_secs: must be between 1 and {MAX_DELIVERY_AGE_SECS} (a year)"
            ));
        }
        if raw.delivery.initial_backoff_ms == 0 {
            problems.push("delivery.initial_backoff_ms: must be at least 1".to_owned());
        }
        if !(1..=MAX_TIME_SCALE).contains(&raw.delivery.danger_time_scale) {
            problems.push(format!(
                "delivery.danger_time_scale: must be between 1 and {MAX_TIME_SCALE} (1 outside tests)"
            ));
        }
        let log_format = match raw.log.format.as_deref() {
            None | Some("text") => Some(LogFormat::Text),
            Some("json") => Some(LogFormat::Json),
            Some(_) => {
                problems.push("log.format: must be text or json".to_owned());
                None
            }
        };
        if raw.delivery.initial_backoff_ms > raw.delivery.max_backoff_ms {
            problems.push(
                "delivery.initial_backoff_ms: must not exceed delivery.max_backoff_ms".to_owned(),
            );
        }
        if raw.retention.sweep_interval_secs == 0 {
            problems.push("retention.sweep_interval_secs: must be at least 1".to_owned());
        }
        if raw.retention.envelope_hours > MAX_RETENTION_HOURS {
            problems.push(format!(
                "retention.envelope_hours: must be at most {MAX_RETENTION_HOURS} (ten years)"
            ));
        }
        if raw.federation.reload_interval_secs == 0 {
            problems.push("federation.reload_interval_secs: must be at least 1".to_owned());
        }

        if !problems.is_empty() {
            return Err(invalid(problems.join("; ")));
        }
        let (Some(facility_id), Some(peer_listen), Some(local_listen), Some(ops_listen)) =
            (facility_id, peer_listen, local_listen, ops_listen)
        else {
            return Err(invalid("incomplete configuration".to_owned()));
        };

        Ok(NodeConfig {
            path: path.to_path_buf(),
            facility_id,
            data_dir: resolve(&raw.node.data_dir),
            store_cache_bytes: raw.node.store_cache_mib * 1024 * 1024,
            spool_segment_bytes: raw.node.spool_segment_kib * 1024,
            peer: PeerListenerConfig {
                listen: peer_listen,
                max_envelope_bytes: raw.peer.max_envelope_bytes,
                max_concurrent: raw.peer.max_concurrent,
                replay_window_secs: raw.peer.replay_window_secs,
                request_timeout_secs: raw.peer.request_timeout_secs,
            },
            local_api: LocalApiConfig {
                listen: local_listen,
                token_hashes,
                token_file: resolve(&raw.local_api.token_file),
                max_body_bytes: raw.local_api.max_body_bytes,
                max_concurrent: raw.local_api.max_concurrent,
                idempotency_window_secs: raw.local_api.idempotency_window_secs,
            },
            keys: KeyPaths {
                ca_cert: resolve(&raw.keys.ca_cert),
                tls_cert: resolve(&raw.keys.tls_cert),
                tls_key: resolve(&raw.keys.tls_key),
                signing_key: resolve(&raw.keys.signing_key),
                encryption_key: resolve(&raw.keys.encryption_key),
                previous_encryption_key: raw.keys.previous_encryption_key.as_deref().map(resolve),
            },
            federation: FederationPaths {
                directory: resolve(&raw.federation.directory),
                crl: resolve(&raw.federation.crl),
                reload_interval_secs: raw.federation.reload_interval_secs,
                crl_grace_secs: raw.federation.crl_grace_secs,
            },
            delivery: DeliveryConfig {
                workers: raw.delivery.workers,
                max_attempts: (raw.delivery.max_attempts > 0).then_some(raw.delivery.max_attempts),
                initial_backoff_ms: raw.delivery.initial_backoff_ms,
                max_backoff_ms: raw.delivery.max_backoff_ms,
                max_age_secs: raw.delivery.max_age_secs,
                connect_timeout_ms: raw.delivery.connect_timeout_ms,
                envelope_suite: envelope_suite.unwrap_or_default(),
                danger_time_scale: raw.delivery.danger_time_scale,
            },
            policy: PolicyConfig {
                dir: raw.policy.dir.as_deref().map(resolve),
            },
            retention: RetentionConfig {
                envelope_hours: raw.retention.envelope_hours,
                sweep_interval_secs: raw.retention.sweep_interval_secs,
            },
            log: LogConfig {
                format: log_format.unwrap_or_default(),
            },
            audit: AuditConfig {
                checkpoint_interval_secs: raw.audit.checkpoint_interval_secs,
                keep_days: raw.audit.keep_days,
                witnesses: raw.audit.witnesses.clone(),
                max_witnesses: raw.audit.max_witnesses,
                syslog,
            },
            ops: OpsConfig {
                listen: ops_listen,
                allow_remote: raw.ops.allow_remote,
            },
            console,
        })
    }
}

/// RFC 5424 facility names (section 6.2.1), by code.
const SYSLOG_FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// `[audit.syslog]`, every problem collected; values are never echoed.
fn parse_syslog(
    raw: &RawSyslog,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Vec<String>,
) -> Option<SyslogConfig> {
    let before = problems.len();
    let hostport = raw
        .address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?)))
        .filter(|(host, port)| !host.is_empty() && *port != 0);
    if hostport.is_none() {
        problems.push("audit.syslog.address: must be host:port".to_owned());
    }
    let transport = match raw.transport.as_str() {
        "tcp" => Some(SyslogTransport::Tcp),
        "tls" => Some(SyslogTransport::Tls),
        _ => {
            problems.push("audit.syslog.transport: must be tcp or tls".to_owned());
            None
        }
    };
    if transport == Some(SyslogTransport::Tls) && raw.ca_file.is_none() {
        problems.push("audit.syslog.ca_file: required when transport = \"tls\"".to_owned());
    }
    let app_ok = (1..=48).contains(&raw.app_name.len())
        && raw.app_name.bytes().all(|b| (33..=126).contains(&b));
    if !app_ok {
        problems.push(
            "audit.syslog.app_name: must be 1 to 48 printable ASCII characters without spaces"
                .to_owned(),
        );
    }
    let facility = SYSLOG_FACILITIES
        .iter()
        .position(|f| *f == raw.facility)
        .and_then(|i| u8::try_from(i).ok());
    if facility.is_none() {
        problems.push(format!(
            "audit.syslog.facility: must be one of {}",
            SYSLOG_FACILITIES.join(", ")
        ));
    }
    if problems.len() > before {
        return None;
    }
    let ((host, port), transport, facility) = (hostport?, transport?, facility?);
    Some(SyslogConfig {
        host: host.to_owned(),
        port,
        transport,
        ca_file: raw.ca_file.as_deref().map(resolve),
        app_name: raw.app_name.clone(),
        facility,
    })
}

fn parse_addr(key: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(format!("{key}: not an IP:port socket address"));
            None
        }
    }
}

/// toml's Display includes the source line, which could hold a secret; keep the message and span.
fn describe_toml_error(e: &toml::de::Error) -> String {
    let message = e.message();
    match e.span() {
        Some(span) => format!("{message} (at byte {})", span.start),
        None => message.to_owned(),
    }
}

/// Renders a node.toml for a facility laid out by `pki add-facility` (used by `gateway demo`
/// and documented in deploy/node.example.toml).
pub struct ConfigTemplate<'a> {
    pub facility_id: &'a str,
    pub peer_listen: SocketAddr,
    pub local_listen: SocketAddr,
    pub token_sha256_hex: &'a str,
    pub directory: &'a Path,
    pub crl: &'a Path,
}

impl ConfigTemplate<'_> {
    /// The config text, with the ops listener on the local API's loopback address and any free
    /// port (the node logs it): nodes rendered from this template share one host (the demo,
    /// the benchmark, tests), so the shipped default port would be taken by the first.
    pub fn render(&self) -> Result<String, String> {
        self.render_with_ops(SocketAddr::new(self.local_listen.ip(), 0))
    }

    /// The config text with the ops listener on `ops_listen`. Every value is written as a TOML
    /// string by the toml crate's own serializer, so a path with quotes, backslashes or control
    /// characters reads back as the same path; a path that is not UTF-8 cannot be written in
    /// TOML and is refused.
    pub fn render_with_ops(&self, ops_listen: SocketAddr) -> Result<String, String> {
        let path = |p: &Path| {
            p.to_str()
                .map(toml_string)
                .ok_or_else(|| format!("{}: the path is not UTF-8", p.display()))
        };
        Ok(format!(
            r#"# healthfed gateway node configuration. See deploy/node.example.toml for every key.
version = 1

[node]
facility_id = {id}
data_dir = "data"

[peer]
listen = {peer}

[local_api]
listen = {local}
token_file = "api.token"
tokens = [{{ name = "cli", sha256 = {token}, roles = ["emr", "officer", "consent-admin", "operator"] }}]

[keys]
ca_cert = "ca.crt"
tls_cert = "tls.crt"
tls_key = "tls.key"
signing_key = "signing.key"
encryption_key = "encryption.key"

[federation]
directory = {directory}
crl = {crl}

[ops]
listen = {ops}
"#,
            id = toml_string(self.facility_id),
            peer = toml_string(&self.peer_listen.to_string()),
            local = toml_string(&self.local_listen.to_string()),
            token = toml_string(self.token_sha256_hex),
            directory = path(self.directory)?,
            crl = path(self.crl)?,
            ops = toml_string(&ops_listen.to_string()),
        ))
    }
}

/// `s` as a TOML string value, quoted and escaped by the toml crate.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        ConfigTemplate {
            facility_id: "hosp-a",
            peer_listen: "127.0.0.1:7443".parse().unwrap(),
            local_listen: "127.0.0.1:7080".parse().unwrap(),
            token_sha256_hex: &"ab".repeat(32),
            directory: Path::new("../directory.json"),
            crl: Path::new("../crl.pem"),
        }
        .render()
        .unwrap()
    }

    #[test]
    fn rendered_paths_with_quotes_backslashes_and_newlines_read_back_unchanged() {
        let odd = [
            r#"/srv/fed "main"/directory.json"#,
            r"/srv/C:\federation\directory.json",
            "/srv/it's here/directory.json",
            "/srv/two\nlines\t/directory.json",
            "/srv/'''/directory.json",
        ];
        for dir in odd {
            let crl = format!("{dir}.crl");
            let text = ConfigTemplate {
                facility_id: "hosp-a",
                peer_listen: "127.0.0.1:7443".parse().unwrap(),
                local_listen: "127.0.0.1:7080".parse().unwrap(),
                token_sha256_hex: &"ab".repeat(32),
                directory: Path::new(dir),
                crl: Path::new(&crl),
            }
            .render()
            .unwrap();
            let cfg = NodeConfig::parse(&text, Path::new("/srv/node/node.toml")).unwrap();
            assert_eq!(cfg.federation.directory, Path::new(dir), "{text}");
            assert_eq!(cfg.federation.crl, Path::new(&crl), "{text}");
        }
    }

    #[test]
    fn rendered_template_parses_and_resolves_relative_paths() {
        let cfg = NodeConfig::parse(&sample(), Path::new("/srv/node/node.toml")).unwrap();
        assert_eq!(cfg.facility_id.as_str(), "hosp-a");
        assert_eq!(cfg.data_dir, Path::new("/srv/node/data"));
        assert_eq!(cfg.keys.tls_key, Path::new("/srv/node/tls.key"));
        assert_eq!(
            cfg.federation.directory,
            Path::new("/srv/node/../directory.json")
        );
        assert_eq!(cfg.delivery.max_attempts, None);
        assert_eq!(cfg.delivery.max_age_secs, 5 * 24 * 3600);
        assert_eq!(cfg.delivery.danger_time_scale, 1);
        assert_eq!(cfg.log.format, LogFormat::Text);
        assert!(cfg.policy.dir.is_none());
        assert_eq!(cfg.store_cache_bytes, 1024 * 1024 * 1024);
        assert_eq!(cfg.spool_segment_bytes, 256 * 1024);
    }

    #[test]
    fn spool_segments_are_configurable_within_bounds() {
        let with = |kib: &str| {
            sample().replace(
                "data_dir = \"data\"\n",
                &format!("data_dir = \"data\"\nspool_segment_kib = {kib}\n"),
            )
        };
        let cfg = NodeConfig::parse(&with("0"), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.spool_segment_bytes, 0);
        let cfg = NodeConfig::parse(&with("64"), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.spool_segment_bytes, 64 * 1024);
        let err = NodeConfig::parse(&with("257"), Path::new("node.toml")).unwrap_err();
        assert!(err.to_string().contains("node.spool_segment_kib"), "{err}");
    }

    #[test]
    fn store_cache_is_configurable_within_bounds() {
        let with = |mib: &str| {
            sample().replace(
                "data_dir = \"data\"\n",
                &format!("data_dir = \"data\"\nstore_cache_mib = {mib}\n"),
            )
        };
        let cfg = NodeConfig::parse(&with("6000"), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.store_cache_bytes, 6000 * 1024 * 1024);
        for bad in ["0", "63", "2000000"] {
            let err = NodeConfig::parse(&with(bad), Path::new("node.toml")).unwrap_err();
            assert!(
                err.to_string().contains("node.store_cache_mib"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn retention_defaults_and_bounds() {
        let cfg = NodeConfig::parse(&sample(), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.retention.envelope_hours, 168);
        assert_eq!(cfg.retention.sweep_interval_secs, 300);
        let with = |body: &str| format!("{}\n[retention]\n{body}\n", sample());
        let cfg = NodeConfig::parse(
            &with("envelope_hours = 0\nsweep_interval_secs = 1"),
            Path::new("node.toml"),
        )
        .unwrap();
        assert_eq!(cfg.retention.envelope_hours, 0);
        assert_eq!(cfg.retention.sweep_interval_secs, 1);
        for (bad, key) in [
            ("sweep_interval_secs = 0", "retention.sweep_interval_secs"),
            ("envelope_hours = 100000", "retention.envelope_hours"),
            ("keep = 1", "keep"),
        ] {
            let err = NodeConfig::parse(&with(bad), Path::new("node.toml")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn envelope_suite_defaults_to_the_exported_suite_and_names_the_choices() {
        let cfg = NodeConfig::parse(&sample(), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.delivery.envelope_suite, Suite::ExportedAes256Gcm);
        let with = |name: &str| format!("{}\n[delivery]\nenvelope_suite = \"{name}\"\n", sample());
        for suite in Suite::ALL {
            let cfg = NodeConfig::parse(&with(suite.name()), Path::new("node.toml")).unwrap();
            assert_eq!(cfg.delivery.envelope_suite, suite);
        }
        let err = NodeConfig::parse(&with("aes-128-gcm"), Path::new("node.toml")).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("delivery.envelope_suite: must be one of hpke-aes-256-gcm, hpke-chacha20-poly1305, exported-aes-256-gcm"), "{err}");
    }

    /// Every key of the documented example parses (the example is what operators copy).
    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../deploy/node.example.toml");
        if let Err(e) = NodeConfig::parse(text, Path::new("/etc/healthfed/node.toml")) {
            panic!("deploy/node.example.toml: {e}");
        }
    }

    #[test]
    fn delivery_is_bounded_by_age_and_older_attempt_caps_still_load() {
        let with = |body: &str| format!("{}\n[delivery]\n{body}\n", sample());
        // A config written for the old defaults keeps its explicit cap.
        let cfg = NodeConfig::parse(&with("max_attempts = 12"), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.delivery.max_attempts, Some(12));
        let cfg = NodeConfig::parse(&with("max_attempts = 0"), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.delivery.max_attempts, None);
        let cfg =
            NodeConfig::parse(&with("danger_time_scale = 60"), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.delivery.max_age_ms(), 5 * 24 * 3600 * 1000 / 60);
        assert_eq!(cfg.delivery.max_backoff(), 1000);
        assert_eq!(cfg.delivery.initial_backoff(), 8);
        for (bad, key) in [
            ("danger_time_scale = 0", "delivery.danger_time_scale"),
            ("danger_time_scale = 100000", "delivery.danger_time_scale"),
            ("max_age_secs = 0", "delivery.max_age_secs"),
            ("initial_backoff_ms = 0", "delivery.initial_backoff_ms"),
        ] {
            let err = NodeConfig::parse(&with(bad), Path::new("node.toml")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn log_format_is_text_or_json() {
        let with = |body: &str| format!("{}\n[log]\n{body}\n", sample());
        let cfg = NodeConfig::parse(&with("format = \"json\""), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        let cfg = NodeConfig::parse(&with("format = \"text\""), Path::new("node.toml")).unwrap();
        assert_eq!(cfg.log.format, LogFormat::Text);
        let err = NodeConfig::parse(&with("format = \"xml\""), Path::new("node.toml")).unwrap_err();
        assert!(err.to_string().contains("log.format"), "{err}");
        assert!(!err.to_string().contains("xml"), "{err}");
    }

    #[test]
    fn ops_listener_is_loopback_unless_remote_is_allowed() {
        let plain = sample().replace("\n[ops]\nlisten = \"127.0.0.1:0\"\n", "\n");
        assert!(!plain.contains("[ops]"), "{plain}");
        let cfg = NodeConfig::parse(&plain, Path::new("node.toml")).unwrap();
        assert_eq!(cfg.ops.listen, "127.0.0.1:9464".parse().unwrap());
        assert!(!cfg.ops.allow_remote);
        let with = |body: &str| format!("{plain}\n[ops]\n{body}\n");
        let err = NodeConfig::parse(&with("listen = \"0.0.0.0:9464\""), Path::new("node.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ops.listen: must be a loopback address unless ops.allow_remote = true"),
            "{err}"
        );
        assert!(!err.contains("0.0.0.0"), "{err}");
        let cfg = NodeConfig::parse(
            &with("listen = \"0.0.0.0:9464\"\nallow_remote = true"),
            Path::new("node.toml"),
        )
        .unwrap();
        assert!(cfg.ops.allow_remote);
        let cfg =
            NodeConfig::parse(&with("listen = \"[::1]:9464\""), Path::new("node.toml")).unwrap();
        assert!(cfg.ops.listen.ip().is_loopback());
        for (bad, key) in [
            (
                "listen = \"127.0.0.1:7080\"",
                "ops.listen: must differ from local_api.listen",
            ),
            ("listen = \"localhost:9464\"", "ops.listen: not an IP:port"),
            ("metrics = true", "metrics"),
        ] {
            let err = NodeConfig::parse(&with(bad), Path::new("node.toml")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn audit_syslog_section_is_optional_and_checked() {
        let cfg = NodeConfig::parse(&sample(), Path::new("/srv/node/node.toml")).unwrap();
        assert!(cfg.audit.syslog.is_none());
        let with = |body: &str| format!("{}\n[audit.syslog]\n{body}\n", sample());
        let cfg = NodeConfig::parse(
            &with("address = \"siem.example.org:6514\"\nca_file = \"siem-ca.pem\""),
            Path::new("/srv/node/node.toml"),
        )
        .unwrap();
        let s = cfg.audit.syslog.unwrap();
        assert_eq!((s.host.as_str(), s.port), ("siem.example.org", 6514));
        assert_eq!(s.transport, SyslogTransport::Tls);
        assert_eq!(
            s.ca_file.as_deref(),
            Some(Path::new("/srv/node/siem-ca.pem"))
        );
        assert_eq!((s.app_name.as_str(), s.facility), ("healthfed-gateway", 13));
        let cfg = NodeConfig::parse(
            &with("address = \"[::1]:514\"\ntransport = \"tcp\"\nfacility = \"local4\""),
            Path::new("node.toml"),
        )
        .unwrap();
        let s = cfg.audit.syslog.unwrap();
        assert_eq!((s.host.as_str(), s.port, s.facility), ("::1", 514, 20));
        for (bad, key) in [
            (
                "address = \"siem\"\ntransport = \"tcp\"",
                "audit.syslog.address",
            ),
            (
                "address = \"a:1\"\ntransport = \"udp\"",
                "audit.syslog.transport",
            ),
            ("address = \"a:1\"", "audit.syslog.ca_file"),
            (
                "address = \"a:1\"\ntransport = \"tcp\"\nfacility = \"x\"",
                "audit.syslog.facility",
            ),
            (
                "address = \"a:1\"\ntransport = \"tcp\"\napp_name = \"a b\"",
                "audit.syslog.app_name",
            ),
            ("address = \"a:1\"\ntransport = \"tcp\"\nport = 1", "port"),
        ] {
            let err = NodeConfig::parse(&with(bad), Path::new("node.toml")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_refused() {
        let text = sample().replace("[peer]\n", "[peer]\nlisten_typo = 1\n");
        let err = NodeConfig::parse(&text, Path::new("node.toml")).unwrap_err();
        assert!(err.to_string().contains("listen_typo"), "{err}");
    }

    #[test]
    fn all_problems_reported_at_once_without_echoing_values() {
        let text = sample()
            .replace(
                "facility_id = \"hosp-a\"",
                "facility_id = \"Secret Value!\"",
            )
            .replace("listen = \"127.0.0.1:7080\"", "listen = \"10.1.2.3:80\"")
            .replace("version = 1", "version = 7");
        let err = NodeConfig::parse(&text, Path::new("node.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("node.facility_id"), "{err}");
        assert!(err.contains("local_api.listen"), "{err}");
        assert!(err.contains("version"), "{err}");
        assert!(!err.contains("Secret Value"), "{err}");
    }
}
