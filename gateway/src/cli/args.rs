//! The command line's grammar (clap): every command, its arguments and their help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Secure record-exchange gateway between healthcare facilities"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct ConfigArg {
    /// The node's configuration file (node.toml).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a node until SIGTERM (drain) or SIGINT (fast exit).
    Run(ConfigArg),
    /// Validate a node's config, keys, directory, CRL and policies, then exit.
    Check(ConfigArg),
    /// Send a record to another facility; prints the transfer id.
    Send(SendArgs),
    /// List transfers this node sends (or one, with --id).
    Transfers {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a transfer that has not been delivered yet.
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        id: String,
    },
    /// Put a failed transfer back in the queue (audited), e.g. after an outage longer than
    /// delivery.max_age_secs or once a refusing peer's problem is fixed.
    Requeue {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        id: String,
    },
    /// Write a consistent backup of the node's store (online: a running node takes it) to
    /// FILE, encrypted to a passphrase (age); keys only with --include-keys
    /// (docs/operations.md, Backup and restore).
    Backup(BackupArgs),
    /// Restore a backup into the config's data_dir, which must be empty or absent; the node
    /// must be stopped. Checks every entry and verifies the audit log.
    Restore(RestoreArgs),
    /// Records received from other facilities.
    Inbox {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: InboxAction,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Disclosure evidence: export a transfer's evidence file, verify one offline
    /// (docs/evidence.md).
    Evidence {
        #[command(subcommand)]
        action: EvidenceAction,
    },
    /// Patient consent directives.
    Consent {
        #[command(subcommand)]
        action: ConsentAction,
    },
    /// Ask another facility for a patient's records.
    Request(RequestArgs),
    /// Requests this node has sent, with their state.
    Requests {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// The node at a glance: identity, certificate and trust-file deadlines, peers reachable,
    /// queue per peer, latest delivery errors.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// The records this node holds for pull requests (filled by the EMR).
    Records {
        #[command(subcommand)]
        action: RecordsAction,
    },
    /// Policy decisions, without side effects.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Local API tokens: create one with its roles (the config line to add is printed).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The accounting of disclosures of one patient's records (to whom, when, why, which
    /// data, the policy decision, break-glass), as a printable page, JSON or CSV.
    Disclosures(DisclosuresArgs),
    /// Run a local demo federation: CA, three facilities, three nodes, one real transfer.
    Demo {
        /// Where to create the federation (a temp dir by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Stop after the demo transfer; exit 0 only if it was delivered and its receipt verified.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub patient: String,
    #[arg(long)]
    pub purpose: String,
    #[arg(long)]
    pub file: PathBuf,
    /// fhir (default), ccda, pdf, dicom, or a MIME type.
    #[arg(long, default_value = "fhir")]
    pub content_type: String,
    /// Declared data categories (the gateway adds what it finds in FHIR bundles).
    #[arg(long = "category")]
    pub categories: Vec<String>,
    #[arg(long)]
    pub clinician: Option<String>,
    #[arg(long)]
    pub clinician_role: Option<String>,
    #[arg(long, requires = "reason")]
    pub break_glass: bool,
    #[arg(long, requires = "break_glass")]
    pub reason: Option<String>,
    /// Idempotency key (1-255 printable ASCII characters, opaque: no patient data): sending
    /// again with the same key and file within the node's window answers with the first
    /// transfer instead of making another; the same key with another file is refused.
    #[arg(long)]
    pub key: Option<String>,
    /// Wait for the outcome: print "delivered" (receipt verified, exit 0) or "failed" with
    /// the reason (exit 1). Needs a running node.
    #[arg(long)]
    pub wait: bool,
    /// No progress bar (it is shown only when stderr is a terminal).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The backup file to write (0600; replaced only once complete).
    #[arg(long)]
    pub out: PathBuf,
    /// A private (0600) file whose first line is the passphrase (at least 12 characters).
    #[arg(long)]
    pub passphrase_file: PathBuf,
    /// Also the store's patient index key and the keyring of encryption keys: the backup
    /// then restores on its own; without them, keep those files in a separate key backup.
    #[arg(long)]
    pub include_keys: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The backup file (`gateway backup --out`).
    #[arg(long)]
    pub from: PathBuf,
    /// The file holding the backup's passphrase (0600).
    #[arg(long)]
    pub passphrase_file: PathBuf,
}

#[derive(Subcommand)]
pub enum InboxAction {
    List {
        #[arg(long)]
        json: bool,
    },
    Get {
        id: String,
        #[arg(long)]
        out: PathBuf,
        /// No progress bar (it is shown only when stderr is a terminal).
        #[arg(long, short)]
        quiet: bool,
    },
    Ack {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum AuditAction {
    /// Exit 0 only if the whole chain, the tree and the witnesses' cosignatures verify (with
    /// --archive: archives and live log together); otherwise name what broke.
    Verify(AuditVerifyArgs),
    /// Move the entries written before DATE into a signed archive file and out of the live
    /// store (docs/evidence.md, Archives).
    Archive {
        #[command(flatten)]
        config: ConfigArg,
        /// RFC 3339 date or time, e.g. 2026-01-01 or 2026-01-01T00:00:00Z.
        #[arg(long)]
        before: String,
        /// The archive file to write (0600; replaced only once complete).
        #[arg(long)]
        out: PathBuf,
    },
    /// The signed checkpoint of the audit log (made now if the log grew), with cosignatures.
    Checkpoint(ConfigArg),
    /// The inclusion proof of entry SEQ in the tree of SIZE entries (default: the whole log).
    Proof {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        size: Option<u64>,
    },
    /// The consistency proof from the tree of FIRST entries to the tree of SECOND.
    Consistency {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        first: u64,
        #[arg(long)]
        second: Option<u64>,
    },
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        patient: Option<String>,
        #[arg(long)]
        transfer: Option<String>,
        /// Only break-glass entries, for review.
        #[arg(long)]
        break_glass: bool,
    },
    /// Write the audit log, or the entries the filters keep, to a file as FHIR R4 AuditEvent
    /// (IHE BALP; NDJSON, or one Bundle with --bundle), JSON lines or CSV
    /// (docs/audit-export.md).
    Export(AuditExportArgs),
}

#[derive(Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Archive files of this log (`gateway audit archive`), oldest first, verified with the
    /// live log as one history.
    #[arg(long, num_args = 1..)]
    pub archive: Vec<PathBuf>,
    /// Also ask each witness for the checkpoint of this log it holds, and compare.
    #[arg(long)]
    pub with_peers: bool,
}

#[derive(Subcommand)]
pub enum EvidenceAction {
    /// Write the evidence file of one transfer (header, receipt, audit entries with proofs,
    /// the cosigned checkpoint, the directory).
    Export {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        transfer: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an evidence file with only the federation's CA certificate; print what it
    /// proves in plain words.
    Verify {
        file: PathBuf,
        #[arg(long)]
        ca: PathBuf,
    },
}

#[derive(Args)]
pub struct AuditExportArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// fhir: FHIR R4 AuditEvent per IHE BALP; jsonl: the listing's entries, one JSON object a
    /// line; csv: RFC 4180 with a header row.
    #[arg(long, value_parser = ["fhir", "jsonl", "csv"])]
    pub format: String,
    /// With --format fhir: one Bundle (type collection) instead of one resource per line.
    #[arg(long)]
    pub bundle: bool,
    /// The file to write (mode 0600: it names patients); replaced only once complete.
    #[arg(long)]
    pub out: PathBuf,
    /// Only entries about this patient.
    #[arg(long)]
    pub patient: Option<String>,
    /// Only entries about this transfer (its id).
    #[arg(long)]
    pub transfer: Option<String>,
    /// Only break-glass entries.
    #[arg(long)]
    pub break_glass: bool,
    /// Only entries about this peer facility.
    #[arg(long)]
    pub peer: Option<String>,
    /// Only entries of this event (repeatable), e.g. received, policy-decision.
    #[arg(long = "event")]
    pub events: Vec<String>,
    /// Only entries with this outcome, e.g. deny, refused.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only entries at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long)]
    pub from: Option<String>,
    /// Only entries at or before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Args)]
pub struct DirectiveArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long)]
    pub patient: String,
    /// A facility id, or `all` for the whole federation (repeatable).
    #[arg(long = "facility", required = true)]
    pub facilities: Vec<String>,
    #[arg(long = "purpose", required = true)]
    pub purposes: Vec<String>,
    #[arg(long = "category")]
    pub categories: Vec<String>,
    /// Last day the directive applies (YYYY-MM-DD, inclusive).
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value = "cli")]
    pub recorded_by: String,
}

#[derive(Subcommand)]
pub enum ConsentAction {
    Grant(DirectiveArgs),
    Deny(DirectiveArgs),
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        id: String,
    },
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        json: bool,
    },
    /// Import a FHIR R4 Consent resource (JSON).
    Import {
        #[command(flatten)]
        config: ConfigArg,
        path: PathBuf,
    },
}

#[derive(Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub patient: String,
    #[arg(long)]
    pub purpose: String,
    #[arg(long)]
    pub clinician: String,
    #[arg(long)]
    pub clinician_role: Option<String>,
    #[arg(long = "category")]
    pub categories: Vec<String>,
    #[arg(long, requires = "reason")]
    pub break_glass: bool,
    #[arg(long, requires = "break_glass")]
    pub reason: Option<String>,
}

#[derive(Subcommand)]
pub enum RecordsAction {
    Put {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "fhir")]
        content_type: String,
    },
}

#[derive(Subcommand)]
pub enum PolicyAction {
    /// Print the decision and the determining policy ids; exit 0 on permit, 3 on deny.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        to: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        patient: String,
        #[arg(long)]
        purpose: String,
        #[arg(long = "category")]
        categories: Vec<String>,
        #[arg(long)]
        clinician_role: Option<String>,
        #[arg(long)]
        break_glass: bool,
    },
    /// Reload the policy set of a running node (like SIGHUP).
    Reload(ConfigArg),
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Write a new random token to a file (0600) and print its `local_api.tokens` line.
    Create {
        /// The token's name, as audit entries name who acted.
        #[arg(long)]
        name: String,
        /// emr, officer, consent-admin or operator; repeat for several.
        #[arg(long, required = true)]
        role: Vec<String>,
        /// Where to write the token (default: NAME.token); an existing file is not overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct DisclosuresArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The patient (as the EMR names them in submissions).
    #[arg(long)]
    pub patient: String,
    /// Only disclosures submitted at or after this time (RFC 3339, or YYYY-MM-DD in UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Only disclosures submitted before this time (RFC 3339, or YYYY-MM-DD in UTC).
    #[arg(long)]
    pub to: Option<String>,
    /// html (a page to print or hand to the patient), json or csv.
    #[arg(long, default_value = "html")]
    pub format: String,
}
