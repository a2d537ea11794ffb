//! `pki`: the offline federation PKI tool. A thin CLI over the `pki_tools` library.
//!
//! Exit status: 0 success, 1 error (`pki: <error>` on stderr), 2 usage error (from clap).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use pki_tools::{
    cert_fingerprint, layout, Endpoint, FacilityId, FacilityKind, Federation, PkiError,
};

#[derive(Parser)]
#[command(
    name = "pki",
    version,
    about = "healthfed federation PKI: root CA, facility identities, CRL and signed directory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the federation root CA in DIR.
    Init {
        #[arg(long, value_name = "FED")]
        dir: PathBuf,
        /// Federation name (goes into the CA certificate and the directory).
        #[arg(long)]
        name: String,
        /// Replace an existing federation (its CA key, state, CRL and directory).
        #[arg(long)]
        force: bool,
    },
    /// Register a facility and write its node material into OUT.
    AddFacility {
        #[arg(long, value_name = "FED")]
        dir: PathBuf,
        /// Facility id: 2-63 characters of a-z, 0-9 and '-'.
        #[arg(long)]
        id: String,
        /// Human-readable facility name.
        #[arg(long)]
        name: String,
        /// Gateway endpoint, https://HOST:PORT.
        #[arg(long)]
        endpoint: String,
        /// hospital, clinic, lab or payer.
        #[arg(long, default_value = "hospital")]
        kind: String,
        /// Node directory to create.
        #[arg(long, value_name = "NODEDIR")]
        out: PathBuf,
    },
    /// Revoke a facility's certificates.
    Revoke {
        #[arg(long, value_name = "FED")]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        /// RFC 5280 reason, e.g. key-compromise, cessation-of-operation, superseded.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Issue new TLS certificate and keys for a facility, keeping the old ones for an overlap.
    Rotate {
        #[arg(long, value_name = "FED")]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        /// The facility's node directory.
        #[arg(long, value_name = "NODEDIR")]
        out: PathBuf,
    },
    /// Write the CRL and the signed federation directory.
    Publish {
        #[arg(long, value_name = "FED")]
        dir: PathBuf,
        /// Directory validity in days.
        #[arg(long, default_value_t = 7)]
        valid_days: u32,
        /// Days until the CRL's nextUpdate. Nodes stop accepting handshakes once it and their
        /// grace (`federation.crl_grace_secs`, default 7 days) have passed.
        #[arg(long, default_value_t = 7)]
        crl_valid_days: u32,
    },
    /// Summarise a certificate, CRL, private key (public part only) or signed directory.
    Inspect {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(summary) => print_summary(&summary),
        Err(e) => {
            eprintln!("pki: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<String, PkiError> {
    match command {
        Command::Init { dir, name, force } => {
            let fed = Federation::init(&dir, &name, force)?;
            Ok(format!(
                "initialised federation {:?} in {}: CA certificate {} (sha256 {})",
                fed.name(),
                dir.display(),
                dir.join(layout::CA_CERT).display(),
                hex::encode(cert_fingerprint(fed.ca_cert_der()))
            ))
        }
        Command::AddFacility {
            dir,
            id,
            name,
            endpoint,
            kind,
            out,
        } => {
            let id: FacilityId = id.parse()?;
            let endpoint: Endpoint = endpoint.parse()?;
            let kind: FacilityKind = kind.parse()?;
            let mut fed = Federation::open(&dir)?;
            fed.add_facility(&id, &name, &endpoint, kind, &out)?;
            Ok(format!(
                "added {kind} facility {id} ({}) to {}: certificate sha256 {}; node material in {}",
                endpoint.url(),
                dir.display(),
                fingerprint(&fed, &id),
                out.display()
            ))
        }
        Command::Revoke { dir, id, reason } => {
            let id: FacilityId = id.parse()?;
            let mut fed = Federation::open(&dir)?;
            fed.revoke(&id, reason.as_deref())?;
            Ok(format!(
                "revoked facility {id} in {}; run `pki publish --dir {}` to distribute the CRL",
                dir.display(),
                dir.display()
            ))
        }
        Command::Rotate { dir, id, out } => {
            let id: FacilityId = id.parse()?;
            let mut fed = Federation::open(&dir)?;
            fed.rotate(&id, &out)?;
            Ok(format!(
                "rotated facility {id}: new certificate sha256 {}; previous material kept as *-previous in {}; run `pki publish --dir {}` so peers learn the new keys",
                fingerprint(&fed, &id),
                out.display(),
                dir.display()
            ))
        }
        Command::Publish {
            dir,
            valid_days,
            crl_valid_days,
        } => {
            let mut fed = Federation::open(&dir)?;
            let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
            let published = fed.publish_with(days(valid_days), days(crl_valid_days))?;
            Ok(format!(
                "published directory version {} (valid {valid_days} days) to {} and CRL number {} (next update in {crl_valid_days} days) to {}",
                published.version,
                published.directory_path.display(),
                published.crl_number,
                published.crl_path.display()
            ))
        }
        Command::Inspect { file } => pki_tools::inspect(&file),
    }
}

fn fingerprint(fed: &Federation, id: &FacilityId) -> String {
    fed.current_tls_cert_sha256(id)
        .map_or_else(|| "unknown".to_owned(), hex::encode)
}

/// Prints the summary. `print!` would panic when the reader has gone (`pki inspect … | head`):
/// that ends quietly with 141, the status of a tool killed by SIGPIPE; other write errors
/// are reported.
fn print_summary(summary: &str) -> ExitCode {
    use std::io::Write as _;
    let newline = if summary.ends_with('\n') { "" } else { "\n" };
    let mut stdout = std::io::stdout().lock();
    match write!(stdout, "{summary}{newline}").and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(141),
        Err(e) => {
            eprintln!("pki: cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}
