//! `bench-loadgen run --audit-api`: `GET /v1/audit/verify` (what `gateway audit verify` asks)
//! through a real gateway node on the cached 10 M-entry audit store, hot, against the store's
//! chain walk alone on the same store right after (issue 14: ">= 1 M entries/s hot on 10 M").
//!
//! 1. The cached store `<out>/audit-store` (the full run's, `audit_bench`) is grown to
//!    `--audit-entries` first if it holds fewer: once, ~30 min for 10 M on this machine.
//! 2. One gateway node (the sender's identity of a federation kept next to the store, so that
//!    the store's directory high-water mark and the identity stay the same across runs) opens
//!    the store with `node.store_cache_mib = 6000` and no witnesses. The harness waits for the
//!    node's own start-up chain check to finish, asks for a checkpoint (kept, so verify checks
//!    one near the head, at a range boundary or not), then times `GET /v1/audit/verify` twice:
//!    the first warms sled's cache, the second is the hot figure.
//! 3. The node is stopped and `audit_bench 0 <store> 0 6000` walks the chain alone, cold and
//!    hot, in one process: the same-run baseline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::load::{self, Target};
use crate::procfs;
use crate::procs::{self, Proc};
use crate::report::{log, run_example, Row};
use crate::setup::{self, NodeFiles};
use crate::{BoxError, RunArgs};

/// The page cache the node and the chain walk run with: holds the 10 M-entry audit tree.
const CACHE_MIB: &str = "6000";
/// Entries appended per `audit_bench` call while the cached store grows.
const GROW_CHUNK: u64 = 2_500_000;
/// How long the node's start-up chain check may take on a cold 10 M-entry store.
const STARTUP_CHECK: Duration = Duration::from_secs(900);

pub async fn run(args: &RunArgs, work: &Path, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    let store = std::path::absolute(args.out.join("audit-store"))?;
    let entries = grow_store(args, &store)?;
    let node = node_files(args, &store)?;
    log(format!(
        "audit verify through the API: a gateway node on {} ({entries} entries cached), cache {CACHE_MIB} MiB",
        store.display()
    ));
    let mut cmd = Command::new(&args.gateway);
    cmd.arg("run")
        .arg("--config")
        .arg(&node.config)
        .current_dir(&node.dir);
    let log_file = work.join("audit-api-node.log");
    let mut proc = Proc::spawn("gateway (audit store)", cmd, &log_file)?;
    procs::wait_listening(&mut proc, node.local, Duration::from_secs(300))?;
    let began = Instant::now();
    wait_for_startup_check(&mut proc, &log_file)?;
    log(format!(
        "the node's start-up chain check finished after {:.1}s",
        began.elapsed().as_secs_f64()
    ));
    let target = Target {
        addr: node.local,
        path: String::new(),
        token: Some(node.token.clone()),
        tls: None,
        ok: StatusCode::OK,
    };
    let mut conn = load::open(&target).await?;
    let (status, _) = load::call(
        &mut conn,
        &target,
        Method::POST,
        "/v1/audit/checkpoint",
        &Bytes::new(),
        "application/json",
    )
    .await?;
    if status != StatusCode::OK {
        return Err(format!("POST /v1/audit/checkpoint: status {status}").into());
    }
    let ticks = procfs::clock_ticks();
    let mut runs = Vec::new();
    for run in ["first (warms sled's cache)", "second (hot)"] {
        let cpu = procfs::cpu_seconds(proc.pid(), ticks).unwrap_or(0.0);
        let busy = procfs::machine_busy_seconds(ticks).unwrap_or(0.0);
        let begin = Instant::now();
        let (status, body) = load::call(
            &mut conn,
            &target,
            Method::GET,
            "/v1/audit/verify",
            &Bytes::new(),
            "application/json",
        )
        .await?;
        let secs = begin.elapsed().as_secs_f64();
        let cpu = procfs::cpu_seconds(proc.pid(), ticks).unwrap_or(0.0) - cpu;
        // The machine is shared: how busy it was besides the node says what the wall time
        // means; CPU seconds compare across runs.
        let others = procfs::machine_busy_seconds(ticks).unwrap_or(0.0) - busy - cpu;
        let v: Value = serde_json::from_slice(&body)?;
        if status != StatusCode::OK || v["ok"] != Value::Bool(true) {
            return Err(format!("GET /v1/audit/verify: status {status}: {v}").into());
        }
        let n = v["entries"].as_u64().unwrap_or(0);
        log(format!(
            "GET /v1/audit/verify, {run}: {n} entries in {secs:.2}s ({:.0} entries/s, {cpu:.1} CPU-s; other processes {:.2} cores), latest checkpoint {}",
            n as f64 / secs.max(1e-9),
            others / secs.max(1e-9),
            v["checkpoint_size"]
        ));
        runs.push(json!({
            "run": run,
            "entries": n,
            "secs": secs,
            "per_s": n as f64 / secs.max(1e-9),
            "node_cpu_secs": cpu,
            "other_processes_cores": others / secs.max(1e-9),
            "checkpoint_size": v["checkpoint_size"],
        }));
    }
    proc.stop(Duration::from_secs(60));
    log(format!(
        "the same store, node stopped: the chain walk alone (audit_bench 0 <store> 0 {CACHE_MIB})"
    ));
    let store_s = store.display().to_string();
    let chain = run_example(
        args,
        "audit_bench",
        &["0", &store_s, "0", CACHE_MIB],
        Duration::from_secs(900),
    )
    .unwrap_or_else(|e| json!({ "error": e.to_string() }));
    let hot = runs.get(1).and_then(|r| r["per_s"].as_f64());
    let chain_hot = chain["verify_hot_per_sec"].as_f64();
    let ratio = hot.zip(chain_hot).map(|(api, chain)| api / chain);
    // CPU per entry, API over chain alone: what the tree and checkpoint work adds, whatever
    // else the machine was doing.
    let cpu_ratio = runs
        .get(1)
        .and_then(|r| r["node_cpu_secs"].as_f64())
        .zip(chain["verify_hot_cpu_secs"].as_f64())
        .filter(|(_, chain)| *chain > 0.0)
        .map(|(api, chain)| api / chain);
    log(format!(
        "chain walk alone: {:.0} entries/s cold, {:.0} hot; API hot / chain hot = {:.2} entries/s, {:.2} CPU-s",
        chain["verify_per_sec"].as_f64().unwrap_or(0.0),
        chain_hot.unwrap_or(0.0),
        ratio.unwrap_or(0.0),
        cpu_ratio.unwrap_or(0.0)
    ));
    let short = runs
        .get(1)
        .and_then(|r| r["entries"].as_u64())
        .filter(|n| *n < args.audit_entries)
        .map(|n| format!("the store holds {n} of {} entries", args.audit_entries));
    rows.push(Row {
        scenario: "audit_verify_api_10m".to_owned(),
        ours_per_s: hot,
        baseline_per_s: chain_hot,
        ratio,
        first_error: short,
        detail: Some(json!({
            "what": "GET /v1/audit/verify (gateway audit verify) on the cached audit store through a real node: chain, indexes, Merkle tree and every kept checkpoint in one walk; ours = the second (hot) call, baseline = the store's chain walk alone, hot (audit_bench, same store, node stopped), ratio = ours / baseline",
            "cache_mib": CACHE_MIB,
            "runs": runs,
            "cpu_api_over_chain_hot": cpu_ratio,
            "chain_only": chain,
        })),
        ..Row::default()
    });
    Ok(())
}

/// Grows the cached store to `--audit-entries` with `audit_bench` (durable batches, as the
/// full run does); returns how many entries it holds.
fn grow_store(args: &RunArgs, store: &Path) -> Result<u64, BoxError> {
    // The size is remembered next to the store (as the full run does), so that growing it
    // needs no full verify first.
    let size_file = args.out.join("audit-store.entries");
    let mut entries: u64 = std::fs::read_to_string(&size_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let store_s = store.display().to_string();
    while entries < args.audit_entries {
        let step = GROW_CHUNK.min(args.audit_entries - entries);
        log(format!(
            "audit store: {entries} entries cached, appending {step} (once: ~3 min per 1 M entries)"
        ));
        let v = run_example(
            args,
            "audit_bench",
            &[&step.to_string(), &store_s, "0"],
            Duration::from_secs(3600),
        )?;
        entries = v["entries"].as_u64().ok_or("audit_bench: no entry count")?;
        std::fs::write(&size_file, entries.to_string())?;
    }
    Ok(entries)
}

/// The node that opens the cached store: the sender of a federation kept in
/// `<out>/audit-store-federation` (made once), its config rendered afresh with free ports,
/// `data_dir` at the store, a 6000 MiB cache, and no witnesses.
fn node_files(args: &RunArgs, store: &Path) -> Result<NodeFiles, BoxError> {
    let fed_dir = std::path::absolute(args.out.join("audit-store-federation"))?;
    let node_dir = fed_dir.join(setup::SENDER);
    if !node_dir.join("api.token").exists() {
        let _ = std::fs::remove_dir_all(&fed_dir);
        setup::create_federation(&fed_dir)?;
    }
    let token = std::fs::read_to_string(node_dir.join("api.token"))?
        .trim()
        .to_owned();
    let token_sha256 = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let local = setup::free_port()?;
    let peer = setup::free_port()?;
    let federation = Path::new("..").join("federation");
    let rendered = gateway::config::ConfigTemplate {
        facility_id: setup::SENDER,
        peer_listen: peer,
        local_listen: local,
        token_sha256_hex: &hex::encode(token_sha256.as_ref()),
        directory: &federation.join(pki_tools::layout::DIRECTORY),
        crl: &federation.join(pki_tools::layout::CRL),
    }
    .render()?;
    let config = node_dir.join("node.toml");
    std::fs::write(&config, node_config(&rendered, store)?)?;
    Ok(NodeFiles {
        id: setup::SENDER,
        dir: node_dir,
        config,
        token,
        local,
        peer,
    })
}

/// The rendered demo config with `data_dir` at `store`, the 6000 MiB cache, and an `[audit]`
/// section that witnesses nobody and checkpoints once a day (the harness asks for one).
fn node_config(rendered: &str, store: &Path) -> Result<String, BoxError> {
    let store = store.to_str().ok_or("the store path is not UTF-8")?;
    let data_dir = format!(
        "data_dir = {}\nstore_cache_mib = {CACHE_MIB}\n",
        toml_string(store)
    );
    if !rendered.contains("data_dir = \"data\"\n") {
        return Err("the rendered config has no data_dir line".into());
    }
    Ok(rendered.replacen("data_dir = \"data\"\n", &data_dir, 1)
        + "\n[audit]\n# No witnesses: the list names no member; one checkpoint a day.\n\
           checkpoint_interval_secs = 86400\nwitnesses = [\"bench-nobody\"]\n")
}

fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Waits until the node logs its start-up chain check (`ops::audit_check`), so that it does
/// not run beside the timed calls.
fn wait_for_startup_check(proc: &mut Proc, log_file: &PathBuf) -> Result<(), BoxError> {
    let deadline = Instant::now() + STARTUP_CHECK;
    loop {
        proc.check_alive()?;
        let text = std::fs::read_to_string(log_file).unwrap_or_default();
        if text.contains("audit chain verified") {
            return Ok(());
        }
        if text.contains("audit chain verification failed") {
            return Err(
                format!("the node's chain check failed; see {}", log_file.display()).into(),
            );
        }
        if Instant::now() > deadline {
            return Err(format!("no start-up chain check after {STARTUP_CHECK:?}").into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_config_points_at_the_store_and_reads_back() {
        let rendered = gateway::config::ConfigTemplate {
            facility_id: setup::SENDER,
            peer_listen: "127.0.0.1:1".parse().unwrap(),
            local_listen: "127.0.0.1:2".parse().unwrap(),
            token_sha256_hex: &"ab".repeat(32),
            directory: Path::new("../federation/directory.json"),
            crl: Path::new("../federation/crl.pem"),
        }
        .render()
        .unwrap();
        let store = Path::new("/srv/bench \"store\"");
        let text = node_config(&rendered, store).unwrap();
        // The gateway's own parser (unknown keys refused) reads it back.
        let config =
            gateway::config::NodeConfig::parse(&text, Path::new("/srv/node/node.toml")).unwrap();
        assert_eq!(config.data_dir, store);
        assert_eq!(config.store_cache_bytes, 6000 * 1024 * 1024);
        assert_eq!(config.audit.witnesses, vec!["bench-nobody".to_owned()]);
        assert_eq!(config.audit.checkpoint_interval_secs, 86400);
        assert!(node_config("version = 1\n", Path::new("/x")).is_err());
    }
}
