//! The durability floor: what the store's durable commits alone cost per transfer, measured
//! in-process on the gateway's own store (`gateway_store::Store`, default settings, a fresh
//! store in the run's work directory, on the same disk as the nodes' stores).
//!
//! A transfer one at a time makes three durable commits, each acknowledged only after a real
//! fdatasync: the sender's "queued" (envelope and outbox entry), the receiver's "stored"
//! (envelope and inbox entry, before its receipt) and the sender's "delivered". So one floor
//! transfer here is: write the envelope (the payload's size) to the outbox spool with a small
//! sled write, commit; the same for the inbox; a small sled write, commit. Nothing else: no
//! crypto, no audit chain, no network. Together with the crypto floor it is the least a
//! transfer can cost on this design, in CPU and, the commits being in series, in latency.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_store::{SpoolKind, Store};
use serde::Serialize;

use crate::procfs;
use crate::BoxError;

/// Commits per transfer one at a time (sender queued, receiver stored, sender delivered).
pub const COMMITS_PER_TRANSFER: u32 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct DurableFloor {
    pub payload_bytes: usize,
    pub transfers: u32,
    pub commits_per_transfer: u32,
    /// CPU (user + system, every thread of this process) per floor transfer.
    pub cpu_ms_per_transfer: f64,
    /// Wall time per floor transfer: the three commits in series.
    pub wall_ms_per_transfer: f64,
    /// Median wall time of one commit (of all three kinds).
    pub commit_p50_ms: f64,
    /// Commits the store counted, warm-up included (3 per floor transfer).
    pub store_commits: u64,
}

/// Runs floor transfers for at least `min_time` (and at least 20) on a fresh store in `dir`,
/// which it removes afterwards.
pub async fn measure(
    dir: &Path,
    payload_bytes: usize,
    min_time: Duration,
) -> Result<DurableFloor, BoxError> {
    let store = Store::open(dir)?;
    // Shared with the blocking pool, not copied per write: a copy would be CPU the nodes don't spend.
    let envelope: Arc<[u8]> = vec![0x5a_u8; payload_bytes].into();
    let ticks = procfs::clock_ticks();
    let pid = std::process::id();
    // A few transfers first, so sled's files and the segments exist before the clock starts.
    for n in 0..5 {
        one(&store, n, &envelope, &mut Vec::new()).await?;
    }
    let mut commits = Vec::new();
    let cpu0 = procfs::cpu_seconds(pid, ticks)?;
    let started = Instant::now();
    let mut n = 5;
    while n < 25 || started.elapsed() < min_time {
        one(&store, n, &envelope, &mut commits).await?;
        n += 1;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds(pid, ticks)? - cpu0;
    let store_commits = store.commit_stats().commits;
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    let transfers = n - 5;
    commits.sort_by(f64::total_cmp);
    Ok(DurableFloor {
        payload_bytes,
        transfers,
        commits_per_transfer: COMMITS_PER_TRANSFER,
        cpu_ms_per_transfer: cpu * 1e3 / f64::from(transfers),
        wall_ms_per_transfer: wall * 1e3 / f64::from(transfers),
        commit_p50_ms: commits.get(commits.len() / 2).copied().unwrap_or(f64::NAN),
        store_commits,
    })
}

/// One floor transfer: its three durable commits, each timed into `commits`.
async fn one(
    store: &Store,
    n: u32,
    envelope: &Arc<[u8]>,
    commits: &mut Vec<f64>,
) -> Result<(), BoxError> {
    let mut id = [0u8; 16];
    id[12..].copy_from_slice(&n.to_be_bytes());
    for (kind, step) in [
        (Some(SpoolKind::Outbox), "queued"),
        (Some(SpoolKind::Inbox), "stored"),
        (None, "delivered"),
    ] {
        if let Some(kind) = kind {
            // As the nodes do: the spool write on the blocking pool.
            let (s, bytes) = (store.clone(), Arc::clone(envelope));
            tokio::task::spawn_blocking(move || {
                let mut w = s.spool_writer(&id, kind)?;
                w.write_chunk(&bytes)?;
                w.finish().map(|_| ())
            })
            .await??;
        }
        store.request_put(&format!("floor-{n}"), step.as_bytes())?;
        let t = Instant::now();
        store.commit().await?;
        commits.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_floor_transfer_is_three_durable_commits_and_the_store_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_dir = dir.path().join("floor");
        let floor = super::measure(&store_dir, 10_000, Duration::ZERO)
            .await
            .expect("measure");
        assert_eq!(floor.transfers, 20, "{floor:?}");
        // The 5 warm-up transfers commit too.
        assert_eq!(floor.store_commits, 3 * 25, "{floor:?}");
        assert!(floor.wall_ms_per_transfer > 0.0 && floor.commit_p50_ms > 0.0);
        assert!(
            floor.commit_p50_ms < floor.wall_ms_per_transfer,
            "{floor:?}"
        );
        assert!(floor.cpu_ms_per_transfer.is_finite() && floor.cpu_ms_per_transfer >= 0.0);
        assert!(!store_dir.exists());
    }
}
