//! Times `Store::snapshot` (the pause a backup costs a running node: store operations wait
//! while it runs) and `snapshot::restore` on an existing store, e.g. one filled by
//! `fill_outbox`.
//!
//! Usage: cargo run --release -p gateway-store --example snapshot_bench -- <store dir> <scratch dir>
//! `<scratch dir>` must be on the store's filesystem (spool files are hard-linked) and is
//! emptied first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use gateway_store::Store;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(store_dir), Some(scratch)) = (
        args.get(1).map(PathBuf::from),
        args.get(2).map(PathBuf::from),
    ) else {
        eprintln!("usage: snapshot_bench <store dir> <scratch dir>");
        return ExitCode::from(2);
    };
    match run(&store_dir, &scratch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapshot_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    store_dir: &std::path::Path,
    scratch: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(scratch);
    let (snap_dir, restored) = (scratch.join("snap"), scratch.join("restored"));
    std::fs::create_dir_all(&snap_dir)?;
    let store = Store::open(store_dir)?;
    let audit = store.audit_len();
    let started = Instant::now();
    let snap = store.snapshot(&snap_dir, true)?;
    let copied = started.elapsed();
    let bytes = std::fs::metadata(snap_dir.join(gateway_store::snapshot::STORE_FILE))?.len();
    drop(store);
    let started = Instant::now();
    gateway_store::snapshot::restore(&snap_dir, &restored)?;
    let restore_took = started.elapsed();
    let started = Instant::now();
    let verified = Store::open(&restored)?.audit_verify()?;
    println!(
        "audit {audit} entries; snapshot: {} trees, {} entries, {:.1} MB, {} spool files in {:.2} s; restore {:.2} s; reopen + verify {verified} entries {:.2} s",
        snap.trees,
        snap.entries,
        bytes as f64 / 1e6,
        snap.spool_files.len(),
        copied.as_secs_f64(),
        restore_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
