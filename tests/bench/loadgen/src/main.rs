//! `bench-loadgen run [--quick]`: the healthfed benchmark harness (driven by `tests/bench/run`).
//!
//! Builds a federation in a temp dir, starts two real gateway nodes and nginx as separate
//! processes on 127.0.0.1, drives both with the same closed-loop load generator, measures the
//! crypto floor in-process, runs the policy and audit benches, and writes
//! `<out>/results.json` and `<out>/results.md`. Every phase is bounded in time.

mod allocations;
mod audit_api;
mod durable;
mod evidence;
mod floor;
mod instructions;
mod load;
mod procfs;
mod procs;
mod report;
mod setup;
mod syscalls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// A bench binary is an edge: errors end up in one message on stderr.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(name = "bench-loadgen", about = "healthfed benchmark harness")]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start; RunArgs grew past the lint's size with --instructions"
)]
pub enum Cli {
    /// Run the benchmark (see BENCHMARKS.md).
    Run(RunArgs),
    /// Only the crypto floor, for the given payload sizes in bytes.
    Floor {
        #[arg(required = true)]
        sizes: Vec<usize>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Only the ~100 KB scenario at 8 and 32 concurrent senders, baseline included.
    #[arg(long)]
    pub quick: bool,
    /// Only the 1 GiB file (gateway and nginx), for working on the streaming path.
    #[arg(long, conflicts_with = "quick")]
    pub only_big_file: bool,
    /// Only these payloads (10k, 100k, 1m; repeatable) and, with --concurrency, only these
    /// sender counts: a partial rerun, without the 1 GiB file and the store/policy benches.
    #[arg(long = "payload", conflicts_with_all = ["quick", "only_big_file"])]
    pub payloads: Vec<String>,
    /// With --payload: only these concurrencies (repeatable).
    #[arg(long = "concurrency", requires = "payloads")]
    pub concurrencies: Vec<usize>,
    /// Only the instruction count (issue 17): both nodes under valgrind's callgrind, a few
    /// transfers of each payload (~100 KB, ~10 KB, ~1 MB) one after the other, user-space
    /// instructions per transfer per node and over the crypto floor. Rows are merged into an
    /// existing results.json.
    #[arg(long, conflicts_with_all = ["quick", "only_big_file", "payloads"])]
    pub instructions: bool,
    /// With --instructions or --allocations: transfers counted per ~10 KB and ~100 KB payload
    /// (after the warm-up).
    #[arg(long, default_value_t = 20)]
    pub instr_transfers: u32,
    /// With --instructions or --allocations: transfers counted for the ~1 MB payload.
    #[arg(long, default_value_t = 5)]
    pub instr_transfers_1m: u32,
    /// With --instructions, --allocations or --syscalls: transfers of each payload sent before
    /// counting starts.
    #[arg(long, default_value_t = 5)]
    pub instr_warmup: u32,
    /// With --instructions, --allocations or --syscalls: only these payloads (10k, 100k, 1m;
    /// repeatable; default all three).
    #[arg(long = "size")]
    pub sizes: Vec<String>,
    /// Only the allocation count (issue 17): both nodes under valgrind's DHAT, heap
    /// allocations and bytes per transfer per node (a run with transfers minus one without),
    /// and the top allocation sites. Rows are merged into an existing results.json.
    #[arg(long, conflicts_with_all = ["quick", "only_big_file", "payloads", "instructions", "evidence"])]
    pub allocations: bool,
    /// Only the kernel side (issue 17): syscalls per transfer by kind (strace), fsyncs, files
    /// created and renamed, user vs system CPU, context switches and page faults (perf stat
    /// software events), disk bytes written, per node. Rows are merged into results.json.
    #[arg(long, conflicts_with_all = ["quick", "only_big_file", "payloads", "instructions", "allocations", "evidence"])]
    pub syscalls: bool,
    /// With --syscalls: transfers per payload in each measured window.
    #[arg(long, default_value_t = 200)]
    pub sys_transfers: u32,
    /// The strace binary (--syscalls).
    #[arg(long, default_value = "strace")]
    pub strace: PathBuf,
    /// The perf binary (--syscalls: `perf stat` software events and syscall tracepoints).
    #[arg(long, default_value = "perf")]
    pub perf: PathBuf,
    /// Only issue 14's evidence costs: witnessing on vs off at ~100 KB x 32 (alternated pairs),
    /// checkpoint + cosign round trip, `gateway evidence verify`, `audit verify` through the
    /// API. Rows are merged into an existing results.json.
    #[arg(long, conflicts_with_all = ["quick", "only_big_file", "payloads", "instructions"])]
    pub evidence: bool,
    /// With --evidence: on/off pairs.
    #[arg(long, default_value_t = 5, requires = "evidence")]
    pub evidence_pairs: usize,
    /// With --evidence: seconds of ~100 KB x 32 load (checkpoints every second) that grow the
    /// log before the round trip, evidence and audit verify are timed.
    #[arg(long, default_value_t = 30, requires = "evidence")]
    pub evidence_fill_secs: u64,
    /// Only issue 14's audit verify rate: `GET /v1/audit/verify` through a real node on the
    /// cached `--audit-entries` store (grown first if needed), hot, against the store's chain
    /// walk alone on the same store. Rows are merged into an existing results.json.
    #[arg(long, conflicts_with_all = ["quick", "only_big_file", "payloads", "instructions", "evidence"])]
    pub audit_api: bool,
    /// The valgrind binary.
    #[arg(long, default_value = "valgrind")]
    pub valgrind: PathBuf,
    /// The gateway binary, as installed (`cargo build --profile release-lto -p gateway`).
    #[arg(long, default_value = "target/release-lto/gateway")]
    pub gateway: PathBuf,
    /// Directory holding the release examples audit_bench and decisions_bench.
    #[arg(long, default_value = "target/release/examples")]
    pub examples: PathBuf,
    /// The shared test data (tests/testdata).
    #[arg(long, default_value = "tests/testdata")]
    pub testdata: PathBuf,
    /// Where results.json and results.md go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// Size of the cached audit store that verify and query are measured on (the issue asks
    /// for 10 M). It lives in <out>/audit-store and grows across full runs.
    #[arg(long, default_value_t = 10_000_000)]
    pub audit_entries: u64,
    /// Seconds a full run may spend growing the cached audit store.
    #[arg(long, default_value_t = 420)]
    pub audit_budget_secs: u64,
    /// Seconds measured per load scenario (after the warm-up).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Keep the temp dir (stores, logs, configs) for inspection.
    #[arg(long)]
    pub keep: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli {
        Cli::Run(args) => rt.block_on(report::run(args)),
        Cli::Floor { sizes } => floor_only(&sizes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn floor_only(sizes: &[usize]) -> Result<(), BoxError> {
    for &n in sizes {
        let payload = vec![0x42u8; n];
        let f = floor::measure(&payload, std::time::Duration::from_secs(1))?;
        println!("{}", serde_json::to_string(&f)?);
    }
    Ok(())
}
