//! Audit-log benchmark: appends N entries in committed batches, then measures verification
//! throughput and query-by-patient latency. Prints one JSON object on stdout.
//!
//! Usage: cargo run --release -p gateway-store --example audit_bench -- <entries> <dir> [queries]
//! [cache_mib]
//! Entries are appended to whatever the store in <dir> already holds; `queries` (default
//! 1000) patient queries are timed, each both unbounded and with a limit of 100. `cache_mib`
//! sets sled's page cache (the node's `store_cache_mib`; default 1024). Verification
//! reports CPU seconds (all threads) besides wall time, for comparisons on a busy machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gateway_store::{AuditFilter, AuditRecord, Store};

/// Entries per commit, like a busy gateway's group commit.
const BATCH: u64 = 1_000;
/// How many entries are appended one by one before switching to batches.
const SINGLE_APPENDS: u64 = 20_000;
/// Entries per patient on average, so a 10 M log has 10 000 patients.
const ENTRIES_PER_PATIENT: u64 = 1_000;
const DEFAULT_QUERIES: usize = 1_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let queries = match args.get(3).map(|q| q.parse::<usize>()) {
        None => Some(DEFAULT_QUERIES),
        Some(Ok(q)) => Some(q),
        Some(Err(_)) => None,
    };
    let cache_mib = match args.get(4).map(|c| c.parse::<u64>()) {
        None => Some(gateway_store::DEFAULT_CACHE_BYTES / (1024 * 1024)),
        Some(Ok(c)) if c > 0 => Some(c),
        Some(_) => None,
    };
    let (Some(n), Some(dir), Some(queries), Some(cache_mib)) = (
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
        args.get(2).map(PathBuf::from),
        queries,
        cache_mib,
    ) else {
        eprintln!("usage: audit_bench <entries> <dir> [queries] [cache_mib]");
        return ExitCode::from(64);
    };
    match run(n, dir, queries, cache_mib) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("audit_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    n: u64,
    dir: PathBuf,
    queries: usize,
    cache_mib: u64,
) -> Result<String, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let store = Store::open_with_cache(&dir, cache_mib * 1024 * 1024)?;
    let existing = store.audit_len();
    let total = existing + n;
    let patients = (total / ENTRIES_PER_PATIENT).max(1);

    // The first entries go in one append at a time (the gateway's usual path), the rest in
    // batches (one transaction each); every batch of BATCH entries ends with a commit.
    let singles_end = existing + n.min(SINGLE_APPENDS);
    let started = Instant::now();
    let mut seq = existing;
    while seq < singles_end {
        let batch_end = (seq + BATCH).min(singles_end);
        while seq < batch_end {
            store.audit_append(record(seq, patients))?;
            seq += 1;
        }
        runtime.block_on(store.commit())?;
    }
    let singles = started.elapsed();
    let started = Instant::now();
    while seq < total {
        let batch_end = (seq + BATCH).min(total);
        store.audit_append_batch((seq..batch_end).map(|s| record(s, patients)))?;
        seq = batch_end;
        runtime.block_on(store.commit())?;
    }
    let batched = started.elapsed();
    let append = singles + batched;
    let batched_n = total - singles_end;

    let started = Instant::now();
    let cpu = cpu_secs();
    let verified = store.audit_verify()?;
    let verify = started.elapsed();
    let verify_cpu = cpu_secs() - cpu;
    // Again, now that sled's cache holds the pages the first pass loaded.
    let started = Instant::now();
    let cpu = cpu_secs();
    let _ = store.audit_verify()?;
    let verify_hot = started.elapsed();
    let verify_hot_cpu = cpu_secs() - cpu;

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut full = Vec::with_capacity(queries);
    let mut paged = Vec::with_capacity(queries);
    let mut returned = 0usize;
    for _ in 0..queries {
        let patient = format!("Patient/bench-{}", rng.next() % patients);
        let mut filter = AuditFilter {
            patient: Some(patient),
            ..AuditFilter::default()
        };
        let t = Instant::now();
        returned += store.audit_list(&filter)?.len();
        full.push(t.elapsed());
        filter.limit = Some(100);
        let t = Instant::now();
        let _ = store.audit_list(&filter)?;
        paged.push(t.elapsed());
    }
    let stats = store.commit_stats();
    Ok(format!(
        concat!(
            "{{\"entries\":{},\"appended\":{},\"patients\":{},\"cache_mib\":{},",
            "\"append_secs\":{:.3},\"single_append_per_sec\":{:.0},",
            "\"batch_append_per_sec\":{:.0},\"commits\":{},\"flushes\":{},",
            "\"verify_secs\":{:.3},\"verify_per_sec\":{:.0},\"verify_hot_per_sec\":{:.0},",
            "\"verify_cpu_secs\":{:.2},\"verify_hot_cpu_secs\":{:.2},",
            "\"queries\":{},\"query_patient_avg_results\":{:.1},",
            "\"query_patient_p50_ms\":{:.3},\"query_patient_p99_ms\":{:.3},",
            "\"query_patient_limit100_p50_ms\":{:.3},\"query_patient_limit100_p99_ms\":{:.3}}}"
        ),
        verified,
        n,
        patients,
        cache_mib,
        append.as_secs_f64(),
        (singles_end - existing) as f64 / singles.as_secs_f64().max(1e-9),
        batched_n as f64 / batched.as_secs_f64().max(1e-9),
        stats.commits,
        stats.flushes,
        verify.as_secs_f64(),
        verified as f64 / verify.as_secs_f64().max(1e-9),
        verified as f64 / verify_hot.as_secs_f64().max(1e-9),
        verify_cpu,
        verify_hot_cpu,
        queries,
        returned as f64 / queries.max(1) as f64,
        percentile_ms(&mut full, 50),
        percentile_ms(&mut full, 99),
        percentile_ms(&mut paged, 50),
        percentile_ms(&mut paged, 99),
    ))
}

/// A plausible record: every entry names a patient and a transfer (about five events per
/// transfer), one in a hundred is break-glass.
fn record(seq: u64, patients: u64) -> AuditRecord {
    let mut transfer = [0u8; 16];
    transfer[8..].copy_from_slice(&(seq / 5).to_be_bytes());
    let mixed = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17;
    AuditRecord {
        time_ms: 1_700_000_000_000 + seq,
        event: [
            "submitted",
            "sent",
            "delivered",
            "receipt-verified",
            "policy-decision",
        ][(seq % 5) as usize]
            .into(),
        transfer_id: Some(transfer),
        peer: Some("facility-b.example".into()),
        patient_ref: Some(format!("Patient/bench-{}", mixed % patients)),
        purpose: Some("treatment".into()),
        clinician: Some("Practitioner/bench".into()),
        outcome: "ok".into(),
        reason: None,
        policy_ids: vec!["consent-default".into()],
        break_glass: seq % 100 == 0,
    }
}

/// CPU time (user + system, all threads) the process has used so far, from /proc/self/stat;
/// 0 where that is unavailable. On a machine shared with other work, wall time says little
/// about cost: CPU time does.
fn cpu_secs() -> f64 {
    // Linux reports in USER_HZ ticks, 100 per second on every architecture it supports.
    const TICKS_PER_SEC: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) may contain spaces: count fields after its closing ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15, i.e. the 12th and 13th after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / TICKS_PER_SEC,
        _ => 0.0,
    }
}

fn percentile_ms(samples: &mut [Duration], pct: usize) -> f64 {
    samples.sort_unstable();
    let i = (samples.len() * pct / 100).min(samples.len().saturating_sub(1));
    samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Deterministic query mix without a rand dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
