//! `bench-loadgen run --evidence`: what issue 14's evidence costs, in one run.
//!
//! Three real members (sender, receiver and a third that only witnesses), so that every log has
//! two witnesses, as in the federation:
//!
//! 1. transfers/s at ~100 KB x 32 senders with witnessing on and off, in alternating pairs
//!    (on/off, off/on, ...) on fresh nodes, so that the machine's noise hits both sides. "On":
//!    each node is witnessed by the two others, and the harness asks the sender and the receiver
//!    for a checkpoint every second (`POST /v1/audit/checkpoint`: sign, submit to both
//!    witnesses, keep their cosignatures), because the config refuses an interval under 60 s
//!    and a 60 s interval would not checkpoint at all inside a 10 s window. "Off":
//!    `audit.witnesses` names no member, and the interval is a day (only the start-up
//!    checkpoint, before the window).
//! 2. checkpoint + cosign round trip on idle "on" nodes: one transfer, then the timed
//!    `POST /v1/audit/checkpoint`, which answers once both witnesses have cosigned (or failed).
//! 3. `gateway evidence verify` of one exported evidence file, as a process, alternated with
//!    `gateway --version` (the process start to subtract).
//! 4. `GET /v1/audit/verify` on the sender's log (chain, then the Merkle tree recomputed and
//!    every checkpoint and cosignature checked), timed: the API path, on the log this run made.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::load::{self, LoadSpec, Target};
use crate::procfs;
use crate::procs::{self, Proc};
use crate::report::{gateway_target, log, Row};
use crate::setup::{self, BenchFederation, NodeFiles, Payload, RECEIVER, SENDER, WITNESS};
use crate::{BoxError, RunArgs};

const CONCURRENCY: usize = 32;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const RTT_ROUNDS: usize = 50;
const VERIFY_RUNS: usize = 100;
const FHIR: &str = "application/fhir+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Witnessing {
    On,
    Off,
}

impl Witnessing {
    fn name(self) -> &'static str {
        match self {
            Witnessing::On => "on",
            Witnessing::Off => "off",
        }
    }
}

/// The three running members; stopped on drop.
struct Nodes {
    fed: BenchFederation,
    witness: NodeFiles,
    /// Sender, receiver, witness.
    procs: Vec<Proc>,
}

impl Nodes {
    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// The `[audit]` section each node gets (the rendered demo config has none).
fn audit_section(mode: Witnessing, me: &str) -> String {
    match mode {
        Witnessing::On => {
            let others: Vec<String> = [SENDER, RECEIVER, WITNESS]
                .iter()
                .filter(|id| **id != me)
                .map(|id| format!("\"{id}\""))
                .collect();
            format!(
                "\n[audit]\n# The shortest interval the config allows; the benchmark asks for a checkpoint\n\
                 # every second on top (POST /v1/audit/checkpoint).\n\
                 checkpoint_interval_secs = 60\nwitnesses = [{}]\n",
                others.join(", ")
            )
        }
        Witnessing::Off => "\n[audit]\n# Witnessing off: the list names no member; one checkpoint a day (the one at start).\n\
             checkpoint_interval_secs = 86400\nwitnesses = [\"bench-nobody\"]\n"
            .to_owned(),
    }
}

fn start(args: &RunArgs, dir: &Path, mode: Witnessing) -> Result<Nodes, BoxError> {
    std::fs::create_dir_all(dir)?;
    let (fed, extra) = setup::create_federation_with(dir, &[(WITNESS, "South Laboratory")])?;
    let witness = extra.into_iter().next().ok_or("witness member missing")?;
    let mut procs = Vec::new();
    // Receiver and witness first: the sender probes its peers at start-up.
    for node in [&fed.receiver, &witness, &fed.sender] {
        let mut config = std::fs::read_to_string(&node.config)?;
        config.push_str(&audit_section(mode, node.id));
        std::fs::write(&node.config, config)?;
        procs.push(start_node(args, dir, node)?);
    }
    // Report order: sender, receiver, witness.
    procs.rotate_right(1);
    Ok(Nodes {
        fed,
        witness,
        procs,
    })
}

fn start_node(args: &RunArgs, dir: &Path, node: &NodeFiles) -> Result<Proc, BoxError> {
    let mut cmd = Command::new(&args.gateway);
    cmd.arg("run")
        .arg("--config")
        .arg(&node.config)
        .current_dir(&node.dir);
    let mut p = Proc::spawn(
        &format!("gateway {}", node.id),
        cmd,
        &dir.join(format!("{}.log", node.id)),
    )?;
    procs::wait_listening(&mut p, node.local, Duration::from_secs(60))?;
    procs::wait_listening(&mut p, node.peer, Duration::from_secs(60))?;
    Ok(p)
}

fn local_api(node: &NodeFiles) -> Target {
    Target {
        addr: node.local,
        path: String::new(),
        token: Some(node.token.clone()),
        tls: None,
        ok: StatusCode::OK,
    }
}

/// Cosignature lines of a C2SP signed note: `— healthfed/<member>/witness <base64>`.
fn cosignatures(note: &[u8]) -> usize {
    String::from_utf8_lossy(note)
        .lines()
        .filter(|l| l.starts_with("\u{2014} ") && l.contains("/witness "))
        .count()
}

/// One `POST /v1/audit/checkpoint`: how long it took and how many cosignatures the answer
/// carries.
async fn checkpoint(
    conn: &mut hyper::client::conn::http1::SendRequest<load::Body>,
    target: &Target,
) -> Result<(Duration, usize), BoxError> {
    let begin = Instant::now();
    let (status, body) = load::call(
        conn,
        target,
        Method::POST,
        "/v1/audit/checkpoint",
        &Bytes::new(),
        "application/json",
    )
    .await?;
    let took = begin.elapsed();
    if status != StatusCode::OK {
        return Err(format!("checkpoint: status {status}").into());
    }
    Ok((took, cosignatures(&body)))
}

fn percentile_ms(v: &[Duration], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v.get(rank - 1).map(|d| d.as_secs_f64() * 1e3)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// What the checkpoint driver saw during a load run.
#[derive(Default)]
struct Driven {
    latencies: Vec<Duration>,
    /// Answers carrying both witnesses' cosignatures.
    fully_cosigned: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Asks the sender and the receiver for a checkpoint every second until `stop`.
async fn drive_checkpoints(targets: Vec<Target>, stop: Arc<AtomicBool>) -> Driven {
    let mut out = Driven::default();
    let mut conns = Vec::new();
    for t in &targets {
        conns.push(load::open(t).await.ok());
    }
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now() + CHECKPOINT_EVERY;
        for (t, conn) in targets.iter().zip(conns.iter_mut()) {
            let result = match conn.as_mut() {
                Some(c) => checkpoint(c, t).await,
                None => Err("no connection".into()),
            };
            match result {
                Ok((took, n)) => {
                    out.latencies.push(took);
                    if n >= 2 {
                        out.fully_cosigned += 1;
                    }
                }
                Err(e) => {
                    out.failed += 1;
                    out.first_error.get_or_insert_with(|| e.to_string());
                    *conn = load::open(t).await.ok();
                }
            }
        }
        tokio::time::sleep_until(tick.into()).await;
    }
    out
}

/// One measured load run on fresh nodes.
async fn load_run(
    args: &RunArgs,
    dir: &Path,
    payload: &Payload,
    mode: Witnessing,
    spec: LoadSpec,
) -> Result<Value, BoxError> {
    let nodes = start(args, dir, mode)?;
    let pids = nodes.pids();
    let ticks = procfs::clock_ticks();
    let target = gateway_target(&nodes.fed, payload, "fhir");
    // A first transfer outside the clock: links up, the sender's peer reachable.
    load::send_once(&target, &payload.bytes, FHIR).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let driver = (mode == Witnessing::On).then(|| {
        tokio::spawn(drive_checkpoints(
            vec![local_api(&nodes.fed.sender), local_api(&nodes.fed.receiver)],
            stop.clone(),
        ))
    });
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let res = load::run(&target, &payload.bytes, FHIR, spec, |_| {
        let cpu = pids
            .iter()
            .map(|p| procfs::cpu_seconds(*p, ticks).unwrap_or(0.0))
            .sum();
        samples.push((cpu, procfs::machine_busy_seconds(ticks).unwrap_or(0.0)));
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let driven = match driver {
        Some(h) => Some(h.await?),
        None => None,
    };
    // The mode did what it says: the third member holds both logs' checkpoints with
    // witnessing on, and none with it off.
    let held = witnessed_logs(&nodes.witness).await?;
    let want = if mode == Witnessing::On { 2 } else { 0 };
    if held != want {
        return Err(format!(
            "witnessing {}: {} holds {held} logs' checkpoints, expected {want}",
            mode.name(),
            setup::WITNESS
        )
        .into());
    }
    let (cpu, busy) = match (samples.first(), samples.get(1)) {
        (Some(a), Some(b)) => (b.0 - a.0, b.1 - a.1),
        _ => (0.0, 0.0),
    };
    let window = spec.measure.as_secs_f64();
    let per_s = res.per_s();
    log(format!(
        "witnessing {}: {per_s:.1} transfers/s, {} errors, CPU {:.2} ms per transfer (3 nodes){}",
        mode.name(),
        res.errors,
        if res.completed > 0 {
            cpu * 1e3 / res.completed as f64
        } else {
            0.0
        },
        driven.as_ref().map_or(String::new(), |d| format!(
            ", {} checkpoints ({} with both cosignatures, {} failed)",
            d.latencies.len() as u64 + d.failed,
            d.fully_cosigned,
            d.failed
        ))
    ));
    Ok(json!({
        "witnessing": mode.name(),
        "per_s": per_s,
        "completed": res.completed,
        "errors": res.errors,
        "first_error": res.first_error,
        "p50_ms": res.percentile_ms(0.5),
        "p99_ms": res.percentile_ms(0.99),
        "cpu_ms_per_transfer_3_nodes": (res.completed > 0).then(|| cpu * 1e3 / res.completed as f64),
        "machine_busy_cores": busy / window,
        "checkpoints_under_load": driven.map(|d| json!({
            "made": d.latencies.len(),
            "fully_cosigned": d.fully_cosigned,
            "failed": d.failed,
            "first_error": d.first_error,
            "p50_ms": percentile_ms(&d.latencies, 0.5),
            "p90_ms": percentile_ms(&d.latencies, 0.9),
            "max_ms": percentile_ms(&d.latencies, 1.0),
        })),
    }))
}

/// How many other members' logs `node` holds a checkpoint of (`GET /v1/witness`).
async fn witnessed_logs(node: &NodeFiles) -> Result<usize, BoxError> {
    let target = local_api(node);
    let mut conn = load::open(&target).await?;
    let (status, body) = load::call(
        &mut conn,
        &target,
        Method::GET,
        "/v1/witness",
        &Bytes::new(),
        "application/json",
    )
    .await?;
    let v: Value = serde_json::from_slice(&body)?;
    match v["logs"].as_array() {
        Some(logs) if status == StatusCode::OK => {
            Ok(logs.iter().filter(|l| l["size"].as_u64() > Some(0)).count())
        }
        _ => Err(format!("GET /v1/witness: status {status}").into()),
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

pub async fn run(args: &RunArgs, work: &Path, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    let payload = setup::payloads(&args.testdata)?
        .into_iter()
        .find(|p| p.label == "100k")
        .ok_or("no 100k payload")?;
    let spec = LoadSpec {
        concurrency: CONCURRENCY,
        warmup: Duration::from_secs(2),
        measure: Duration::from_secs(args.seconds.unwrap_or(8)),
        grace: Duration::from_secs(60),
    };
    log(format!(
        "evidence: {} pairs of ~100 KB x {CONCURRENCY} runs, witnessing on/off alternated, 3 members each",
        args.evidence_pairs
    ));
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for pair in 0..args.evidence_pairs {
        let order = if pair % 2 == 0 {
            [Witnessing::On, Witnessing::Off]
        } else {
            [Witnessing::Off, Witnessing::On]
        };
        let mut on = Value::Null;
        let mut off = Value::Null;
        for mode in order {
            let dir = work.join(format!("pair{pair}-{}", mode.name()));
            let r = load_run(args, &dir, &payload, mode, spec).await?;
            if !args.keep {
                // Each run writes ~100 KB per transfer on two nodes: do not let them pile up.
                let _ = std::fs::remove_dir_all(&dir);
            }
            match mode {
                Witnessing::On => on = r,
                Witnessing::Off => off = r,
            }
        }
        if num(&off, "per_s") > 0.0 {
            ratios.push(num(&on, "per_s") / num(&off, "per_s"));
        }
        if num(&off, "cpu_ms_per_transfer_3_nodes") > 0.0 {
            cpu_ratios.push(
                num(&on, "cpu_ms_per_transfer_3_nodes") / num(&off, "cpu_ms_per_transfer_3_nodes"),
            );
        }
        runs.push(
            json!({ "pair": pair + 1, "order": order.map(Witnessing::name), "on": on, "off": off }),
        );
    }
    let on_rates: Vec<f64> = runs.iter().map(|r| num(&r["on"], "per_s")).collect();
    let off_rates: Vec<f64> = runs.iter().map(|r| num(&r["off"], "per_s")).collect();
    let errors: u64 = runs
        .iter()
        .map(|r| r["on"]["errors"].as_u64().unwrap_or(0) + r["off"]["errors"].as_u64().unwrap_or(0))
        .sum();
    let ratio = median(&ratios);
    log(format!(
        "witnessing on / off, median of {} pairs: {:.3} transfers/s, {:.3} CPU per transfer",
        ratios.len(),
        ratio.unwrap_or(0.0),
        median(&cpu_ratios).unwrap_or(0.0)
    ));
    rows.push(Row {
        scenario: "witnessing_on_off_100k".to_owned(),
        payload_bytes: Some(payload.bytes.len() as u64),
        payload_source: Some(payload.source.clone()),
        concurrency: Some(CONCURRENCY),
        ours_per_s: median(&on_rates),
        baseline_per_s: median(&off_rates),
        ratio,
        ours_errors: Some(errors),
        detail: Some(json!({
            "meaning": "ours = witnessing on (checkpoint every second on sender and receiver, each cosigned by two witnesses), baseline = witnessing off; ratio = median of the per-pair on/off ratios",
            "ratios": ratios,
            "cpu_ratio_on_off_median": median(&cpu_ratios),
            "cpu_ratios": cpu_ratios,
            "runs": runs,
        })),
        ..Row::default()
    });

    // 2-4 on one more "on" federation, idle but for the harness.
    let dir = work.join("evidence");
    let nodes = start(args, &dir, Witnessing::On)?;
    let sender = local_api(&nodes.fed.sender);
    let mut conn = load::open(&sender).await?;
    let transfer = gateway_target(&nodes.fed, &payload, "fhir");
    if args.evidence_fill_secs > 0 {
        // A longer log (and many kept checkpoints) for the round trip and for audit verify.
        let stop = Arc::new(AtomicBool::new(false));
        let driver = tokio::spawn(drive_checkpoints(
            vec![local_api(&nodes.fed.sender), local_api(&nodes.fed.receiver)],
            stop.clone(),
        ));
        let fill = LoadSpec {
            concurrency: CONCURRENCY,
            warmup: Duration::ZERO,
            measure: Duration::from_secs(args.evidence_fill_secs),
            grace: Duration::from_secs(60),
        };
        let res = load::run(&transfer, &payload.bytes, FHIR, fill, |_| {}).await;
        stop.store(true, Ordering::Relaxed);
        let d = driver.await?;
        log(format!(
            "filled the log: {} transfers in {}s, {} checkpoints",
            res.completed,
            args.evidence_fill_secs,
            d.latencies.len()
        ));
    }
    let mut rtts = Vec::new();
    let mut short = 0u64;
    let mut last_transfer = String::new();
    for _ in 0..RTT_ROUNDS {
        let (status, body) = load::call(
            &mut conn,
            &sender,
            Method::POST,
            &transfer.path,
            &payload.bytes,
            FHIR,
        )
        .await?;
        if status != StatusCode::OK {
            return Err(format!("transfer before a checkpoint: status {status}").into());
        }
        let v: Value = serde_json::from_slice(&body)?;
        last_transfer = v["transfer_id"]
            .as_str()
            .ok_or("transfer answer without transfer_id")?
            .to_owned();
        let (took, n) = checkpoint(&mut conn, &sender).await?;
        rtts.push(took);
        if n < 2 {
            short += 1;
        }
    }
    log(format!(
        "checkpoint + cosign round trip: p50 {:.2} ms, p90 {:.2} ms ({short} of {RTT_ROUNDS} without both cosignatures)",
        percentile_ms(&rtts, 0.5).unwrap_or(0.0),
        percentile_ms(&rtts, 0.9).unwrap_or(0.0)
    ));
    if short > 0 {
        return Err(format!("{short} of {RTT_ROUNDS} checkpoints lacked a cosignature").into());
    }
    rows.push(Row {
        scenario: "checkpoint_cosign_rtt".to_owned(),
        p50_ms: percentile_ms(&rtts, 0.5),
        p99_ms: percentile_ms(&rtts, 0.99),
        detail: Some(json!({
            "what": "POST /v1/audit/checkpoint on the sender after one more transfer: sign, submit to both witnesses over mTLS, each checks and cosigns, keep both cosignatures",
            "rounds": RTT_ROUNDS,
            "witnesses": 2,
            "p90_ms": percentile_ms(&rtts, 0.9),
            "max_ms": percentile_ms(&rtts, 1.0),
        })),
        ..Row::default()
    });

    rows.push(evidence_verify(args, &nodes, &dir, &last_transfer)?);
    let mut api = audit_verify_api(&mut conn, &sender).await?;
    let data = nodes.fed.sender.dir.join("data");
    drop(nodes);
    // The same log through the store's chain walk alone (what `audit_bench` times on 10 M
    // entries), so the share of the tree and checkpoint pass is seen on one log.
    chain_only(args, &data, &mut api);
    rows.push(api);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// `audit_bench 0 <data dir> 0`: the chain verified twice (cold, hot) by the store alone,
/// on the stopped sender's store; its figures go into the row's detail (or why not).
fn chain_only(args: &RunArgs, data: &Path, row: &mut Row) {
    let bench = args.examples.join("audit_bench");
    let out = Command::new(&bench)
        .arg("0")
        .arg(data)
        .arg("0")
        .stderr(Stdio::piped())
        .output();
    let chain = match out {
        Ok(o) if o.status.success() => serde_json::from_slice::<Value>(&o.stdout)
            .unwrap_or_else(|e| json!({ "error": format!("audit_bench output: {e}") })),
        Ok(o) => {
            json!({ "error": format!("audit_bench: {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()) })
        }
        Err(e) => json!({ "error": format!("{}: {e}", bench.display()) }),
    };
    let hot = chain["verify_hot_per_sec"].as_f64();
    let share = row.ours_per_s.zip(hot).map(|(api, hot)| api / hot);
    log(format!(
        "the same log by the store's chain walk alone: {:.0} entries/s hot (API path / chain = {:.2})",
        hot.unwrap_or(0.0),
        share.unwrap_or(0.0)
    ));
    if let Some(d) = row.detail.as_mut() {
        d["chain_only"] = chain;
        d["api_over_chain_hot"] = json!(share);
    }
}

fn timed(cmd: &mut Command) -> Result<Duration, BoxError> {
    let begin = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    let took = begin.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(took)
}

/// `gateway evidence verify` of the last transfer's evidence file, alternated with
/// `gateway --version`, `VERIFY_RUNS` times each.
fn evidence_verify(
    args: &RunArgs,
    nodes: &Nodes,
    dir: &Path,
    transfer: &str,
) -> Result<Row, BoxError> {
    let file: PathBuf = dir.join("evidence.json");
    let s = &nodes.fed.sender;
    timed(
        Command::new(&args.gateway)
            .args(["evidence", "export", "--config"])
            .arg(&s.config)
            .args(["--transfer", transfer, "--out"])
            .arg(&file)
            .current_dir(&s.dir),
    )?;
    let bytes = std::fs::metadata(&file)?.len();
    let mut verify = Vec::new();
    let mut start = Vec::new();
    for _ in 0..VERIFY_RUNS {
        start.push(timed(Command::new(&args.gateway).arg("--version"))?);
        verify.push(timed(
            Command::new(&args.gateway)
                .args(["evidence", "verify"])
                .arg(&file)
                .arg("--ca")
                .arg(&nodes.fed.ca_cert),
        )?);
    }
    let v50 = percentile_ms(&verify, 0.5);
    let s50 = percentile_ms(&start, 0.5);
    let net = v50.zip(s50).map(|(v, s)| v - s);
    log(format!(
        "gateway evidence verify ({bytes} B file): p50 {:.2} ms a run, process start p50 {:.2} ms, so {:.2} ms verifying",
        v50.unwrap_or(0.0),
        s50.unwrap_or(0.0),
        net.unwrap_or(0.0)
    ));
    Ok(Row {
        scenario: "evidence_verify".to_owned(),
        payload_bytes: Some(bytes),
        p50_ms: v50,
        p99_ms: percentile_ms(&verify, 0.99),
        detail: Some(json!({
            "what": "gateway evidence verify FILE --ca ca.crt as a process, alternated with gateway --version",
            "runs": VERIFY_RUNS,
            "verify_p90_ms": percentile_ms(&verify, 0.9),
            "process_start_p50_ms": s50,
            "process_start_p90_ms": percentile_ms(&start, 0.9),
            "verify_minus_start_p50_ms": net,
        })),
        ..Row::default()
    })
}

/// `GET /v1/audit/verify` on the sender's log, five times: entries/s of the whole API path.
async fn audit_verify_api(
    conn: &mut hyper::client::conn::http1::SendRequest<load::Body>,
    sender: &Target,
) -> Result<Row, BoxError> {
    let mut took = Vec::new();
    let mut entries = 0;
    for _ in 0..5 {
        let begin = Instant::now();
        let (status, body) = load::call(
            conn,
            sender,
            Method::GET,
            "/v1/audit/verify",
            &Bytes::new(),
            "application/json",
        )
        .await?;
        took.push(begin.elapsed());
        let v: Value = serde_json::from_slice(&body)?;
        if status != StatusCode::OK || v["ok"] != Value::Bool(true) {
            return Err(format!("audit verify: status {status}: {v}").into());
        }
        entries = v["entries"].as_u64().unwrap_or(0);
    }
    let p50 = percentile_ms(&took, 0.5);
    let rate = p50
        .filter(|ms| *ms > 0.0)
        .map(|ms| entries as f64 / (ms / 1e3));
    log(format!(
        "audit verify through the API: {entries} entries in {:.1} ms (p50 of 5) = {:.0} entries/s",
        p50.unwrap_or(0.0),
        rate.unwrap_or(0.0)
    ));
    Ok(Row {
        scenario: "audit_verify_api".to_owned(),
        ours_per_s: rate,
        p50_ms: p50,
        detail: Some(json!({
            "what": "GET /v1/audit/verify on the sender: the chain, then the Merkle tree recomputed from the entries and every checkpoint and cosignature checked (one audit-read entry written per call)",
            "entries": entries,
            "runs": 5,
            "max_ms": percentile_ms(&took, 1.0),
        })),
        ..Row::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosignatures_count_only_witness_lines() {
        let note = "healthfed/hosp-central/audit\n3\nAAAA\n\n\
                    \u{2014} healthfed/hosp-central/audit abc=\n\
                    \u{2014} healthfed/clinic-north/witness def=\n\
                    \u{2014} healthfed/lab-south/witness ghi=\n";
        assert_eq!(cosignatures(note.as_bytes()), 2);
        assert_eq!(cosignatures(b"healthfed/x/audit\n1\nAAAA\n\n"), 0);
    }

    #[test]
    fn each_mode_names_its_witnesses() {
        let on = audit_section(Witnessing::On, SENDER);
        assert!(on.contains(&format!("witnesses = [\"{RECEIVER}\", \"{WITNESS}\"]")));
        assert!(!on.contains(&format!("\"{SENDER}\"")));
        let off = audit_section(Witnessing::Off, SENDER);
        for id in [SENDER, RECEIVER, WITNESS] {
            assert!(!off.contains(id), "{off}");
        }
    }
}
