//! Spool benchmark (issue 17): the cost of writing an envelope durably, with a file per
//! envelope (`spool_segment_kib = 0`) against spool segments (the default), in one run.
//! Prints one JSON line per (size, mode, round) and a summary line per size with the
//! same-run ratios.
//!
//! Usage: cargo run --release -p gateway-store --example spool_bench -- <dir> [envelopes]
//! [writers] [rounds]
//! Each round opens a fresh store under `<dir>` and has `writers` (default 32) tasks write
//! `envelopes` (default 2000) envelopes of each size between them, each one written through a
//! `SpoolWriter` on the blocking pool and then committed (the group commit makes it durable),
//! as a node does for every envelope it accepts. Modes alternate within a round, so drift on a
//! shared machine falls on both. CPU is the process's user + system time (/proc/self/stat).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gateway_store::{SpoolKind, Store, DEFAULT_CACHE_BYTES, DEFAULT_SEGMENT_ENVELOPE_BYTES};

const SIZES: [usize; 2] = [10_000, 100_000];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1).map(PathBuf::from) else {
        eprintln!("usage: spool_bench <dir> [envelopes] [writers] [rounds]");
        return ExitCode::from(64);
    };
    let arg = |i: usize, default: u32| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (envelopes, writers, rounds) = (arg(2, 2000), arg(3, 32), arg(4, 3));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    for size in SIZES {
        let mut cpu = [Vec::new(), Vec::new()];
        let mut rate = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Alternate which mode goes first.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for mode in order {
                let (name, segment) = match mode {
                    0 => ("files", 0),
                    _ => ("segments", DEFAULT_SEGMENT_ENVELOPE_BYTES),
                };
                let store_dir = dir.join(format!("{size}-{name}-{round}"));
                let r = rt.block_on(one(&store_dir, segment, size, envelopes, writers));
                let _ = std::fs::remove_dir_all(&store_dir);
                let (secs, cpu_s) = match r {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("{name} {size}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let per_us = cpu_s * 1e6 / f64::from(envelopes);
                let per_s = f64::from(envelopes) / secs;
                cpu[mode].push(per_us);
                rate[mode].push(per_s);
                println!(
                    "{{\"size\":{size},\"mode\":\"{name}\",\"round\":{round},\"envelopes\":{envelopes},\"writers\":{writers},\"cpu_us_per_envelope\":{per_us:.1},\"envelopes_per_s\":{per_s:.0}}}"
                );
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let (cf, cs) = (median(&mut cpu[0]), median(&mut cpu[1]));
        let (rf, rs) = (median(&mut rate[0]), median(&mut rate[1]));
        println!(
            "{{\"size\":{size},\"summary\":true,\"files_cpu_us\":{cf:.1},\"segments_cpu_us\":{cs:.1},\"cpu_ratio_segments_over_files\":{:.3},\"files_per_s\":{rf:.0},\"segments_per_s\":{rs:.0},\"rate_ratio_segments_over_files\":{:.3}}}",
            cs / cf,
            rs / rf
        );
    }
    ExitCode::SUCCESS
}

/// One store, `envelopes` envelopes of `size` bytes by `writers` tasks; (wall s, CPU s).
async fn one(
    dir: &Path,
    segment: usize,
    size: usize,
    envelopes: u32,
    writers: u32,
) -> Result<(f64, f64), Box<dyn std::error::Error + Send + Sync>> {
    let store = Store::open_with(dir, DEFAULT_CACHE_BYTES, segment)?;
    let payload: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i % 251) as u8).collect());
    let next = Arc::new(AtomicU32::new(0));
    let cpu0 = cpu_seconds()?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, payload, next) = (store.clone(), payload.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= envelopes {
                    return Ok::<(), gateway_store::StoreError>(());
                }
                let mut id = [0u8; 16];
                id[12..].copy_from_slice(&n.to_be_bytes());
                let (s, p) = (store.clone(), payload.clone());
                tokio::task::spawn_blocking(move || {
                    let mut w = s.spool_writer(&id, SpoolKind::Outbox)?;
                    w.write_chunk(&p)?;
                    w.finish().map(|_| ())
                })
                .await
                .map_err(|_| gateway_store::StoreError::CommitterStopped)??;
                store.commit().await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu0;
    drop(store);
    Ok((secs, cpu))
}

/// utime + stime of this process, from /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
        Ok(fields.get(i).ok_or("short stat")?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name and state.
    Ok((tick(11)? + tick(12)?) / 100.0)
}
