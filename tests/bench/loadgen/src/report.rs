//! The benchmark run: phases, measurements, results.json and results.md.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use crate::durable::{self, DurableFloor};
use crate::floor::{self, Floor};
use crate::load::{self, LoadResult, LoadSpec, Target};
use crate::procfs;
use crate::procs::{self, Proc};
use crate::setup::{self, BenchFederation, Payload};
use crate::{BoxError, RunArgs};

const GIB: u64 = 1 << 30;
const MIB: f64 = 1024.0 * 1024.0;

/// One line of results.json. Fields that do not apply to a scenario are null.
#[derive(Debug, Default, Serialize)]
pub struct Row {
    pub scenario: String,
    pub payload_bytes: Option<u64>,
    pub payload_source: Option<String>,
    pub concurrency: Option<usize>,
    /// Gateway transfers/s (submit to verified receipt), or the scenario's rate.
    pub ours_per_s: Option<f64>,
    /// nginx mTLS proxy requests/s with the same payload and concurrency.
    pub baseline_per_s: Option<f64>,
    pub ratio: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub baseline_p50_ms: Option<f64>,
    pub baseline_p99_ms: Option<f64>,
    pub baseline_p999_ms: Option<f64>,
    /// CPU (user + system) of both nodes per delivered transfer.
    pub cpu_ms_per_transfer: Option<f64>,
    pub cpu_ms_sender: Option<f64>,
    pub cpu_ms_receiver: Option<f64>,
    pub floor_ms_per_transfer: Option<f64>,
    /// cpu_ms_per_transfer / floor_ms_per_transfer.
    pub cpu_ratio: Option<f64>,
    /// The durability floor's CPU per transfer (the store's three durable commits alone,
    /// `durable.rs`), measured in the same run as the crypto floor.
    pub durable_floor_ms: Option<f64>,
    /// cpu_ms_per_transfer / (floor_ms_per_transfer + durable_floor_ms).
    pub cpu_ratio_with_durability: Option<f64>,
    /// Largest peak RSS of the two nodes during the scenario.
    pub peak_rss_mib: Option<f64>,
    pub peak_rss_mib_sender: Option<f64>,
    pub peak_rss_mib_receiver: Option<f64>,
    pub baseline_cpu_ms_per_req: Option<f64>,
    /// Largest peak RSS of the nginx processes during the scenario.
    pub baseline_peak_rss_mib: Option<f64>,
    pub loadgen_cpu_ms_per_req: Option<f64>,
    /// Cores busy machine-wide during the gateway window, and how many of them were used by
    /// processes outside the benchmark (other work on the machine competing for the 2 cores).
    pub machine_busy_cores: Option<f64>,
    pub other_processes_cores: Option<f64>,
    /// Transfers (requests) completed inside the measured window: `ours_per_s` × window.
    pub ours_completed: Option<u64>,
    pub baseline_completed: Option<u64>,
    pub ours_errors: Option<u64>,
    pub baseline_errors: Option<u64>,
    pub first_error: Option<String>,
    pub mb_per_s: Option<f64>,
    pub baseline_mb_per_s: Option<f64>,
    /// `--instructions`: user-space instructions (callgrind Ir) per transfer, both nodes and
    /// each, with each node's idle background subtracted.
    pub instructions_per_transfer: Option<f64>,
    pub instructions_sender: Option<f64>,
    pub instructions_receiver: Option<f64>,
    pub detail: Option<Value>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// CPU seconds of a set of processes (missing ones count as zero: they were sampled before).
fn cpu_of(pids: &[u32], ticks: f64) -> Vec<f64> {
    pids.iter()
        .map(|p| procfs::cpu_seconds(*p, ticks).unwrap_or(0.0))
        .collect()
}

struct Measured {
    load: LoadResult,
    /// CPU seconds in the window, per measured pid.
    cpu: Vec<f64>,
    loadgen_cpu: f64,
    /// Machine-wide busy CPU seconds in the window.
    machine_cpu: f64,
    /// Peak RSS (KiB) per measured pid over warm-up + window.
    peak_kib: Vec<u64>,
}

async fn measure(
    target: &Target,
    payload: &Bytes,
    content_type: &str,
    spec: LoadSpec,
    pids: &[u32],
    ticks: f64,
) -> Measured {
    for p in pids {
        let _ = procfs::reset_peak_rss(*p);
    }
    let me = std::process::id();
    let mut samples: Vec<(Vec<f64>, f64, f64)> = Vec::new();
    let load = load::run(target, payload, content_type, spec, |_| {
        samples.push((
            cpu_of(pids, ticks),
            procfs::cpu_seconds(me, ticks).unwrap_or(0.0),
            procfs::machine_busy_seconds(ticks).unwrap_or(0.0),
        ))
    })
    .await;
    let (cpu, loadgen_cpu, machine_cpu) = match (samples.first(), samples.get(1)) {
        (Some((a, la, ma)), Some((b, lb, mb))) => (
            a.iter().zip(b).map(|(x, y)| y - x).collect(),
            lb - la,
            mb - ma,
        ),
        _ => (vec![0.0; pids.len()], 0.0, 0.0),
    };
    let peak_kib = pids
        .iter()
        .map(|p| procfs::peak_rss_kib(*p).unwrap_or(0))
        .collect();
    Measured {
        load,
        cpu,
        loadgen_cpu,
        machine_cpu,
        peak_kib,
    }
}

fn per_req_ms(cpu_s: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| cpu_s * 1e3 / n as f64)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Env {
    fed: BenchFederation,
    sender: Proc,
    receiver: Proc,
    nginx: Proc,
    ticks: f64,
}

impl Env {
    fn gateway_target(&self, payload: &Payload, content_type: &str) -> Target {
        gateway_target(&self.fed, payload, content_type)
    }

    fn nginx_target(&self) -> Result<Target, BoxError> {
        let id = &self.fed.sender.dir;
        Ok(Target {
            addr: self.fed.sink_tls,
            path: "/ingest".to_owned(),
            token: None,
            tls: Some(load::mtls_client(
                &self.fed.ca_cert,
                &id.join(pki_tools::layout::TLS_CERT),
                &id.join(pki_tools::layout::TLS_KEY),
            )?),
            ok: StatusCode::OK,
        })
    }

    fn node_pids(&self) -> Vec<u32> {
        vec![self.sender.pid(), self.receiver.pid()]
    }

    fn nginx_pids(&self) -> Vec<u32> {
        let mut v = vec![self.nginx.pid()];
        v.extend(procfs::children(self.nginx.pid()));
        v
    }

    fn check_alive(&mut self) -> Result<(), BoxError> {
        self.sender.check_alive()?;
        self.receiver.check_alive()?;
        self.nginx.check_alive()
    }
}

/// A transfer to the receiver through the sender's local API, answered once the receipt is
/// verified.
pub(crate) fn gateway_target(
    fed: &BenchFederation,
    payload: &Payload,
    content_type: &str,
) -> Target {
    let q = serde_urlencoded::to_string([
        ("to", setup::RECEIVER),
        ("patient", payload.patient.as_str()),
        ("purpose", "treatment"),
        ("content_type", content_type),
        ("wait", "receipt"),
    ])
    .unwrap_or_default();
    Target {
        addr: fed.sender.local,
        path: format!("/v1/transfers?{q}"),
        token: Some(fed.sender.token.clone()),
        tls: None,
        ok: StatusCode::OK,
    }
}

pub(crate) fn log(msg: impl AsRef<str>) {
    eprintln!("[bench {}] {}", utc_now(), msg.as_ref());
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%H:%M:%S"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Start attempts: the ports come from [`setup::free_port`], which releases them before the
/// servers bind, so another socket can take one in between.
const START_ATTEMPTS: u32 = 3;

/// Starts both nodes and nginx, on new ports (and in a new directory) after a start that
/// failed because a port was taken. Any other start failure would recur and is returned.
fn start(args: &RunArgs, work: &Path) -> Result<Env, BoxError> {
    let mut attempt = 1;
    loop {
        let dir = if attempt == 1 {
            work.to_owned()
        } else {
            work.join(format!("start-{attempt}"))
        };
        match start_in(args, &dir) {
            Err(e) if attempt < START_ATTEMPTS && port_was_taken(&e.to_string()) => {
                log(format!(
                    "start attempt {attempt} lost a port, retrying: {e}"
                ));
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a start failure (which quotes the server's log) is a bind to a port in use: what
/// the gateway ("bind …: Address already in use") and nginx ("bind() to … failed (98:
/// Address already in use)") say when another socket holds their port.
fn port_was_taken(error: &str) -> bool {
    error.contains("Address already in use")
}

fn start_in(args: &RunArgs, work: &Path) -> Result<Env, BoxError> {
    std::fs::create_dir_all(work)?;
    let fed = setup::create_federation(work)?;
    let mut nodes = Vec::new();
    for node in [&fed.sender, &fed.receiver] {
        let mut cmd = Command::new(&args.gateway);
        cmd.arg("run")
            .arg("--config")
            .arg(&node.config)
            .current_dir(&node.dir);
        let mut p = Proc::spawn(
            &format!("gateway {}", node.id),
            cmd,
            &work.join(format!("{}.log", node.id)),
        )?;
        procs::wait_listening(&mut p, node.local, Duration::from_secs(60))?;
        procs::wait_listening(&mut p, node.peer, Duration::from_secs(60))?;
        nodes.push(p);
    }
    let prefix = work.join("nginx");
    for d in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"] {
        std::fs::create_dir_all(prefix.join(d))?;
    }
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, procs::nginx_conf(&fed, &prefix))?;
    let mut cmd = Command::new(&args.nginx);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf);
    let mut nginx = Proc::spawn("nginx", cmd, &work.join("nginx.log"))?;
    procs::wait_listening(&mut nginx, fed.sink_tls, Duration::from_secs(30))?;
    let receiver = nodes.pop().ok_or("receiver missing")?;
    let sender = nodes.pop().ok_or("sender missing")?;
    Ok(Env {
        fed,
        sender,
        receiver,
        nginx,
        ticks: procfs::clock_ticks(),
    })
}

pub async fn run(mut args: RunArgs) -> Result<(), BoxError> {
    let begun = Instant::now();
    // Processes start in their own directories: make every path absolute first.
    args.gateway = std::path::absolute(&args.gateway)?;
    args.examples = std::path::absolute(&args.examples)?;
    args.testdata = std::path::absolute(&args.testdata)?;
    let work = tempfile::Builder::new()
        .prefix("healthfed-bench-")
        .tempdir_in(std::env::temp_dir())?;
    log(format!("work dir {}", work.path().display()));
    let machine = procfs::machine_state();
    log(format!("machine: {machine:?}"));
    let mut rows = vec![Row {
        scenario: "machine".to_owned(),
        detail: serde_json::to_value(&machine).ok(),
        ..Row::default()
    }];
    let result = run_in(&args, work.path(), &mut rows).await;
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join("results.json");
    let mut json_rows = rows
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    if args.evidence || args.audit_api || args.instructions || args.allocations || args.syscalls {
        // A partial run: keep the rows of earlier runs, but for the scenarios it measured.
        let earlier: Vec<Value> = std::fs::read(&json_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let kept = earlier
            .into_iter()
            .filter(|old| !rows.iter().any(|r| old["scenario"] == r.scenario.as_str()));
        json_rows = kept.chain(json_rows).collect();
    }
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json_rows)?)?;
    let md = markdown(&rows);
    std::fs::write(args.out.join("results.md"), &md)?;
    println!("{md}");
    log(format!(
        "wrote {} ({} rows) in {:.0}s",
        json_path.display(),
        rows.len(),
        begun.elapsed().as_secs_f64()
    ));
    if args.keep {
        let kept = work.keep();
        log(format!("kept {}", kept.display()));
    }
    result
}

async fn run_in(args: &RunArgs, work: &Path, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    if args.instructions {
        return crate::instructions::run(args, work, rows).await;
    }
    if args.evidence {
        return crate::evidence::run(args, work, rows).await;
    }
    if args.audit_api {
        return crate::audit_api::run(args, work, rows).await;
    }
    if args.allocations {
        return crate::allocations::run(args, work, rows).await;
    }
    if args.syscalls {
        return crate::syscalls::run(args, work, rows).await;
    }
    let mut payloads = setup::payloads(&args.testdata)?;
    if args.quick {
        payloads.retain(|p| p.label == "100k");
    }
    if args.only_big_file {
        payloads.clear();
    }
    let partial = !args.payloads.is_empty();
    if partial {
        payloads.retain(|p| args.payloads.iter().any(|l| l == p.label));
    }
    let concurrencies: &[usize] = if args.quick {
        &[8, 32]
    } else if !args.concurrencies.is_empty() {
        &args.concurrencies
    } else {
        &[1, 8, 32, 128]
    };
    let seconds = args.seconds.unwrap_or(if args.quick { 5 } else { 8 });
    let warmup = Duration::from_secs(if args.quick { 1 } else { 2 });

    log("starting two gateway nodes and nginx");
    let mut env = start(args, work)?;
    let nginx = env.nginx_target()?;

    // The 1 GiB file runs first, on freshly started nodes: its peak RSS is then what the
    // streaming path needs, not what the allocator kept from 128 concurrent 1 MB uploads
    // (VmHWM can be reset, but memory freed to malloc and not returned stays resident).
    if !args.quick && !partial {
        env.check_alive()?;
        match big_file(&env, &nginx, args, work).await {
            Ok(big) => rows.extend(big),
            Err(e) => {
                log(format!("1 GiB scenario failed: {e}"));
                rows.push(Row {
                    scenario: "transfer_1gib".into(),
                    payload_bytes: Some(GIB),
                    first_error: Some(e.to_string()),
                    ..Row::default()
                });
            }
        }
    }

    // Sanity: every payload goes through both before anything is measured.
    for p in payloads.iter_mut() {
        let t = env.gateway_target(p, "fhir");
        load::send_once(&t, &p.bytes, "application/fhir+json")
            .await
            .map_err(|e| format!("payload {} refused by the gateway: {e}", p.label))?;
        load::send_once(&nginx, &p.bytes, "application/fhir+json").await?;
        log(format!(
            "payload {}: {} bytes, {}",
            p.label,
            p.bytes.len(),
            p.source
        ));
    }

    log("crypto floor");
    let mut floors = Vec::new();
    for p in &payloads {
        let f = floor::measure(
            &p.bytes,
            Duration::from_millis(if args.quick { 500 } else { 1500 }),
        )?;
        let mut row = floor_row(p.label, &p.source, &f);
        let classify = classify_ms(
            &p.bytes,
            Duration::from_millis(if args.quick { 300 } else { 1000 }),
        );
        log(format!(
            "{}: crypto floor {:.3} ms/transfer; FHIR classification alone {} ms",
            p.label,
            f.ms_per_transfer,
            classify
                .as_ref()
                .map_or_else(Clone::clone, |ms| format!("{ms:.3}"))
        ));
        if let (Some(Value::Object(d)), Ok(ms)) = (row.detail.as_mut(), classify) {
            d.insert("fhir_classify_ms".into(), ms.into());
        }
        rows.push(row);
        let d = durable::measure(
            &work.join(format!("durable-floor-{}", p.label)),
            p.bytes.len(),
            Duration::from_millis(if args.quick { 500 } else { 1500 }),
        )
        .await?;
        log(format!(
            "{}: durability floor {:.3} ms CPU/transfer ({} commits in series, {:.3} ms wall; commit p50 {:.3} ms)",
            p.label, d.cpu_ms_per_transfer, d.commits_per_transfer, d.wall_ms_per_transfer, d.commit_p50_ms
        ));
        rows.push(durable_row(p.label, &d));
        floors.push((f, d));
    }

    for (p, (f, d)) in payloads.iter().zip(&floors) {
        for &c in concurrencies {
            env.check_alive()?;
            let spec = LoadSpec {
                concurrency: c,
                warmup,
                measure: Duration::from_secs(seconds),
                grace: Duration::from_secs(60),
            };
            let ours_t = env.gateway_target(p, "fhir");
            let ours = measure(
                &ours_t,
                &p.bytes,
                "application/fhir+json",
                spec,
                &env.node_pids(),
                env.ticks,
            )
            .await;
            let base = measure(
                &nginx,
                &p.bytes,
                "application/fhir+json",
                spec,
                &env.nginx_pids(),
                env.ticks,
            )
            .await;
            let row = transfer_row(p, c, &ours, &base, f, d);
            log(format!(
                "{} x{c}: ours {:.1}/s p99 {:.1} ms cpu {:.2} ms | nginx {:.1}/s | errors {}/{}",
                p.label,
                row.ours_per_s.unwrap_or(0.0),
                row.p99_ms.unwrap_or(f64::NAN),
                row.cpu_ms_per_transfer.unwrap_or(f64::NAN),
                row.baseline_per_s.unwrap_or(0.0),
                ours.load.errors,
                base.load.errors,
            ));
            rows.push(row);
        }
    }

    // Nodes and nginx are stopped before the store and policy benches so they get the cores.
    drop(env);

    if !args.quick && !args.only_big_file && !partial {
        rows.push(policy_row(args));
        rows.extend(audit_rows(args, work));
    }
    Ok(())
}

/// What the sender spends on `policies::classify::classify_fhir_bundle` (the gateway's FHIR
/// parse and classification of every bundle it sends), per transfer: not crypto, but a cost
/// every FHIR transfer pays, measured the same way as the floor.
fn classify_ms(bundle: &[u8], min_time: Duration) -> Result<f64, String> {
    let started = Instant::now();
    let mut n = 0u32;
    while n < 3 || started.elapsed() < min_time {
        let facts = policies::classify::classify_fhir_bundle(bundle).map_err(|e| e.to_string())?;
        std::hint::black_box(facts);
        n += 1;
    }
    Ok(started.elapsed().as_secs_f64() * 1e3 / f64::from(n))
}

fn floor_row(label: &str, source: &str, f: &Floor) -> Row {
    Row {
        scenario: format!("crypto_floor_{label}"),
        payload_bytes: Some(f.payload_bytes as u64),
        payload_source: Some(source.to_owned()),
        floor_ms_per_transfer: Some(f.ms_per_transfer),
        detail: serde_json::to_value(f).ok(),
        ..Row::default()
    }
}

fn durable_row(label: &str, d: &DurableFloor) -> Row {
    Row {
        scenario: format!("durable_floor_{label}"),
        payload_bytes: Some(d.payload_bytes as u64),
        ours_per_s: Some(1e3 / d.wall_ms_per_transfer),
        p50_ms: Some(d.commit_p50_ms),
        durable_floor_ms: Some(d.cpu_ms_per_transfer),
        detail: serde_json::to_value(d).ok(),
        ..Row::default()
    }
}

fn transfer_row(
    p: &Payload,
    c: usize,
    ours: &Measured,
    base: &Measured,
    f: &Floor,
    d: &DurableFloor,
) -> Row {
    let ours_per_s = Some(ours.load.per_s());
    let baseline_per_s = Some(base.load.per_s());
    let n = ours.load.completed;
    let cpu = per_req_ms(ours.cpu.iter().sum(), n);
    Row {
        scenario: format!("transfer_{}", p.label),
        payload_bytes: Some(p.bytes.len() as u64),
        payload_source: Some(p.source.clone()),
        concurrency: Some(c),
        ours_per_s,
        baseline_per_s,
        ratio: ratio(ours_per_s, baseline_per_s),
        p50_ms: ours.load.percentile_ms(0.50),
        p99_ms: ours.load.percentile_ms(0.99),
        p999_ms: ours.load.percentile_ms(0.999),
        baseline_p50_ms: base.load.percentile_ms(0.50),
        baseline_p99_ms: base.load.percentile_ms(0.99),
        baseline_p999_ms: base.load.percentile_ms(0.999),
        cpu_ms_per_transfer: cpu,
        cpu_ms_sender: ours.cpu.first().and_then(|c| per_req_ms(*c, n)),
        cpu_ms_receiver: ours.cpu.get(1).and_then(|c| per_req_ms(*c, n)),
        floor_ms_per_transfer: Some(f.ms_per_transfer),
        cpu_ratio: ratio(cpu, Some(f.ms_per_transfer)),
        durable_floor_ms: Some(d.cpu_ms_per_transfer),
        cpu_ratio_with_durability: ratio(cpu, Some(f.ms_per_transfer + d.cpu_ms_per_transfer)),
        peak_rss_mib: ours.peak_kib.iter().max().map(|k| mib(*k)),
        peak_rss_mib_sender: ours.peak_kib.first().map(|k| mib(*k)),
        peak_rss_mib_receiver: ours.peak_kib.get(1).map(|k| mib(*k)),
        baseline_cpu_ms_per_req: per_req_ms(base.cpu.iter().sum(), base.load.completed),
        baseline_peak_rss_mib: base.peak_kib.iter().max().map(|k| mib(*k)),
        loadgen_cpu_ms_per_req: per_req_ms(ours.loadgen_cpu, n),
        machine_busy_cores: Some(ours.machine_cpu / ours.load.window.as_secs_f64()),
        other_processes_cores: Some(
            (ours.machine_cpu - ours.cpu.iter().sum::<f64>() - ours.loadgen_cpu).max(0.0)
                / ours.load.window.as_secs_f64(),
        ),
        ours_completed: Some(ours.load.completed),
        baseline_completed: Some(base.load.completed),
        ours_errors: Some(ours.load.errors),
        baseline_errors: Some(base.load.errors),
        first_error: ours
            .load
            .first_error
            .clone()
            .or_else(|| base.load.first_error.clone())
            .or_else(|| {
                (ours.load.timed_out || base.load.timed_out)
                    .then(|| "in-flight requests abandoned after the grace period".to_owned())
            }),
        mb_per_s: Some(ours.load.per_s() * p.bytes.len() as f64 / 1e6),
        baseline_mb_per_s: Some(base.load.per_s() * p.bytes.len() as f64 / 1e6),
        instructions_per_transfer: None,
        instructions_sender: None,
        instructions_receiver: None,
        detail: None,
    }
}

/// PDF header of the 1 GiB file: the gateway reads a record's format from its bytes, and a
/// large archive that is not FHIR or CDA is what it seals as it arrives.
const GIB_PDF_HEADER: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n";

/// Writes exactly 1 GiB: a PDF header, then a real bundle's bytes repeated.
fn generate_gib(testdata: &Path, path: &Path) -> Result<String, BoxError> {
    let (raw, patient) = setup::clemente_raw(testdata)?;
    let mut block = Vec::with_capacity(8 << 20);
    block.extend_from_slice(GIB_PDF_HEADER);
    while block.len() < (8 << 20) {
        block.extend_from_slice(&raw);
    }
    block.truncate(8 << 20);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for _ in 0..(GIB / (8 << 20)) {
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(patient)
}

/// One 1 GiB upload through the gateway: elapsed time, CPU seconds and peak RSS of each node.
struct BigPass {
    elapsed: Result<Duration, BoxError>,
    cpu: Vec<f64>,
    peak_kib: Vec<u64>,
}

async fn big_pass(env: &Env, target: &Target, file: &Path, digest: Option<&str>) -> BigPass {
    let pids = env.node_pids();
    for p in &pids {
        let _ = procfs::reset_peak_rss(*p);
    }
    let cpu0 = cpu_of(&pids, env.ticks);
    let elapsed = load::send_file(
        target,
        file,
        "application/octet-stream",
        digest,
        Duration::from_secs(600),
    )
    .await;
    let cpu1 = cpu_of(&pids, env.ticks);
    BigPass {
        elapsed,
        cpu: cpu0.iter().zip(&cpu1).map(|(a, b)| b - a).collect(),
        peak_kib: pids
            .iter()
            .map(|p| procfs::peak_rss_kib(*p).unwrap_or(0))
            .collect(),
    }
}

/// The 1 GiB file through the gateway twice, then nginx: first with `Content-Digest` (the
/// gateway seals it as it arrives, as for `gateway send`), then without (it spools the
/// upload to a temp file first). Nodes are fresh, so peak RSS is what this path needs.
async fn big_file(
    env: &Env,
    nginx: &Target,
    args: &RunArgs,
    work: &Path,
) -> Result<Vec<Row>, BoxError> {
    let file = work.join("generated-1gib.bin");
    log("generating the 1 GiB file");
    let patient = generate_gib(&args.testdata, &file)?;
    let digest = {
        use base64::Engine as _;
        let d = file_sha256(&file)?;
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(d)
        )
    };
    let payload = Payload {
        label: "1gib",
        bytes: Bytes::new(),
        patient,
        source: "a PDF header, then Clemente_Kreiger bundle bytes repeated to exactly 1 GiB".into(),
    };
    let ct = "application/pdf";
    // A PDF is `unclassified` to the gateway: the clinician declares it general, as an EMR
    // sending a scanned archive would.
    let mut target = env.gateway_target(&payload, "pdf");
    target
        .path
        .push_str("&categories=general&clinician=bench&clinician_role=physician");

    log("1 GiB through the gateway, with Content-Digest (sealed as it arrives)");
    let streamed = big_pass(env, &target, &file, Some(&digest)).await;
    log("1 GiB through the gateway, without Content-Digest (spooled first)");
    let spooled = big_pass(env, &target, &file, None).await;

    let npids = env.nginx_pids();
    for p in &npids {
        let _ = procfs::reset_peak_rss(*p);
    }
    log("1 GiB through nginx");
    let base = load::send_file(nginx, &file, ct, None, Duration::from_secs(600)).await;
    let npeak = npids
        .iter()
        .map(|p| procfs::peak_rss_kib(*p).unwrap_or(0))
        .max();
    let _ = std::fs::remove_file(&file);

    let f = floor::measure(&vec![0x42u8; GIB as usize / 16], Duration::from_millis(500))?;
    let floor_ms = f.ms_per_transfer * 16.0;
    let mbps = |d: &Duration| GIB as f64 / 1e6 / d.as_secs_f64();
    let row = |scenario: &str, pass: &BigPass| {
        let ours_ok = pass.elapsed.as_ref().ok();
        let cpu_ms = pass.cpu.iter().sum::<f64>() * 1e3;
        let row = Row {
            scenario: scenario.to_owned(),
            payload_bytes: Some(GIB),
            payload_source: Some(payload.source.clone()),
            concurrency: Some(1),
            ours_per_s: ours_ok.map(|d| 1.0 / d.as_secs_f64()),
            baseline_per_s: base.as_ref().ok().map(|d| 1.0 / d.as_secs_f64()),
            p50_ms: ours_ok.map(|d| d.as_secs_f64() * 1e3),
            cpu_ms_per_transfer: ours_ok.map(|_| cpu_ms),
            cpu_ms_sender: ours_ok.and(pass.cpu.first().map(|c| c * 1e3)),
            cpu_ms_receiver: ours_ok.and(pass.cpu.get(1).map(|c| c * 1e3)),
            floor_ms_per_transfer: Some(floor_ms),
            cpu_ratio: ours_ok.map(|_| cpu_ms / floor_ms),
            peak_rss_mib: pass.peak_kib.iter().max().map(|k| mib(*k)),
            peak_rss_mib_sender: pass.peak_kib.first().map(|k| mib(*k)),
            peak_rss_mib_receiver: pass.peak_kib.get(1).map(|k| mib(*k)),
            baseline_peak_rss_mib: npeak.map(mib),
            mb_per_s: ours_ok.map(mbps),
            baseline_mb_per_s: base.as_ref().ok().map(mbps),
            first_error: pass
                .elapsed
                .as_ref()
                .err()
                .map(|e| format!("gateway: {e}"))
                .or_else(|| base.as_ref().err().map(|e| format!("nginx: {e}"))),
            ..Row::default()
        };
        log(format!(
            "{scenario}: ours {:.1} MB/s (peak RSS {:.1}/{:.1} MiB, CPU/floor {:.2}) | nginx {:.1} MB/s",
            row.mb_per_s.unwrap_or(0.0),
            row.peak_rss_mib_sender.unwrap_or(0.0),
            row.peak_rss_mib_receiver.unwrap_or(0.0),
            row.cpu_ratio.unwrap_or(f64::NAN),
            row.baseline_mb_per_s.unwrap_or(0.0)
        ));
        Row {
            ratio: ratio(row.mb_per_s, row.baseline_mb_per_s),
            ..row
        }
    };
    Ok(vec![
        row("transfer_1gib", &streamed),
        row("transfer_1gib_spooled", &spooled),
    ])
}

fn file_sha256(path: &Path) -> Result<[u8; 32], BoxError> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish().as_ref().try_into()?)
}

/// Runs a release example with a deadline; returns its stdout parsed as JSON.
pub(crate) fn run_example(
    args: &RunArgs,
    name: &str,
    extra: &[&str],
    timeout: Duration,
) -> Result<Value, BoxError> {
    let bin = args.examples.join(name);
    let mut child = std::process::Command::new(&bin)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut s) = child.stdout.take() {
                std::io::Read::read_to_string(&mut s, &mut out)?;
            }
            if !status.success() {
                return Err(format!("{name} failed ({status})").into());
            }
            let line = out
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with('{'))
                .unwrap_or("");
            return Ok(serde_json::from_str(line).map_err(|e| format!("{name} output: {e}"))?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name} did not finish within {}s", timeout.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn policy_row(args: &RunArgs) -> Row {
    log("policy decisions");
    match run_example(args, "decisions_bench", &["3"], Duration::from_secs(120)) {
        Ok(v) => Row {
            scenario: "policy_decisions".into(),
            concurrency: Some(1),
            ours_per_s: v["decisions_per_sec"].as_f64(),
            detail: Some(v),
            ..Row::default()
        },
        Err(e) => Row {
            scenario: "policy_decisions".into(),
            first_error: Some(e.to_string()),
            ..Row::default()
        },
    }
}

/// Entries appended per growth step of the cached audit store (~1 min each at the measured
/// ~8 k durable appends/s).
const AUDIT_CHUNK: u64 = 500_000;

/// Audit rows. Appending 10 M durable entries takes longer than a bounded run (~20 min at the
/// rates measured here), so the big store is cached in `<out>/audit-store` and grown by each
/// full run within `--audit-budget-secs` until it holds `--audit-entries`; verify and query are
/// measured on it at whatever size it has (reported in `detail.entries`). The append rate is
/// measured separately on a fresh store.
/// The sled page caches the 10 M-entry measurements run with: the default, and one that
/// holds the audit tree (row suffix, MiB).
const AUDIT_CACHES: [(&str, &str); 2] = [("", "1024"), ("_cache_6000mib", "6000")];

fn audit_rows(args: &RunArgs, work: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    log("audit store: durable append rate (fresh store, 100 000 entries)");
    let fresh = work.join("audit-fresh");
    let fresh_s = fresh.display().to_string();
    match run_example(
        args,
        "audit_bench",
        &["100000", &fresh_s, "10"],
        Duration::from_secs(300),
    ) {
        Ok(v) => rows.push(Row {
            scenario: "audit_append_durable".into(),
            concurrency: Some(1),
            ours_per_s: v["batch_append_per_sec"]
                .as_f64()
                .or_else(|| v["append_per_sec"].as_f64()),
            detail: Some(v),
            ..Row::default()
        }),
        Err(e) => rows.push(Row {
            scenario: "audit_append_durable".into(),
            first_error: Some(e.to_string()),
            ..Row::default()
        }),
    }
    let _ = std::fs::remove_dir_all(&fresh);

    let cached = args.out.join("audit-store");
    let cached_s = cached.display().to_string();
    let budget_end = Instant::now() + Duration::from_secs(args.audit_budget_secs);
    // The size is remembered next to the store so that growing it needs no full verify first.
    let size_file = args.out.join("audit-store.entries");
    let mut entries: u64 = std::fs::read_to_string(&size_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    while entries < args.audit_entries && Instant::now() + Duration::from_secs(120) < budget_end {
        let step = AUDIT_CHUNK.min(args.audit_entries - entries).to_string();
        log(format!(
            "audit store: {entries} entries cached, appending {step}"
        ));
        match run_example(
            args,
            "audit_bench",
            &[&step, &cached_s, "0"],
            Duration::from_secs(600),
        ) {
            Ok(v) => {
                entries = v["entries"].as_u64().unwrap_or(entries);
                let _ = std::fs::write(&size_file, entries.to_string());
            }
            Err(e) => {
                log(format!("audit store growth failed: {e}"));
                break;
            }
        }
    }
    // Once with sled's default page cache (the node's default store_cache_mib), once with
    // one that holds the 10 M-entry audit tree.
    for (suffix, cache_mib) in AUDIT_CACHES {
        log(format!(
            "audit store: verify and 1000 patient queries on {entries} entries, {cache_mib} MiB cache"
        ));
        match run_example(
            args,
            "audit_bench",
            &["0", &cached_s, "1000", cache_mib],
            Duration::from_secs(900),
        ) {
            Ok(v) => {
                let entries = v["entries"].as_u64();
                let partial = entries.is_some_and(|n| n < args.audit_entries).then(|| {
                    format!(
                        "store holds {} of {} entries; rerun the full bench to grow it",
                        entries.unwrap_or(0),
                        args.audit_entries
                    )
                });
                rows.push(Row {
                    scenario: format!("audit_verify{suffix}"),
                    ours_per_s: v["verify_per_sec"].as_f64(),
                    first_error: partial.clone(),
                    detail: Some(serde_json::json!({
                        "entries": entries,
                        "cache_mib": v["cache_mib"],
                        "verify_secs": v["verify_secs"],
                        "verify_cpu_secs": v["verify_cpu_secs"],
                        "verify_hot_per_sec": v["verify_hot_per_sec"],
                        "verify_hot_cpu_secs": v["verify_hot_cpu_secs"],
                    })),
                    ..Row::default()
                });
                rows.push(Row {
                    scenario: format!("audit_query_by_patient{suffix}"),
                    p50_ms: v["query_patient_p50_ms"].as_f64(),
                    p99_ms: v["query_patient_p99_ms"].as_f64(),
                    first_error: partial,
                    detail: Some(serde_json::json!({
                        "entries": entries,
                        "cache_mib": v["cache_mib"],
                        "queries": v["queries"],
                        "avg_results": v["query_patient_avg_results"],
                        "limit100_p50_ms": v["query_patient_limit100_p50_ms"],
                        "limit100_p99_ms": v["query_patient_limit100_p99_ms"],
                    })),
                    ..Row::default()
                });
            }
            Err(e) => rows.push(Row {
                scenario: format!("audit_verify{suffix}"),
                first_error: Some(e.to_string()),
                ..Row::default()
            }),
        }
    }
    rows
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
}

/// The human-readable table (pasted into BENCHMARKS.md).
/// The note column of an "other" row: its error, or the detail a reader needs to judge it.
fn note(r: &Row) -> String {
    if let Some(e) = &r.first_error {
        return e.clone();
    }
    let d = r.detail.as_ref();
    let get = |k: &str| d.and_then(|d| d.get(k)).filter(|v| !v.is_null());
    let mut parts = Vec::new();
    for (key, label) in [
        ("entries", "entries"),
        ("cache_mib", "cache MiB"),
        ("verify_cpu_secs", "verify CPU s"),
        ("verify_hot_per_sec", "hot verify /s"),
        ("avg_results", "results/query"),
        ("limit100_p50_ms", "limit=100 p50 ms"),
        ("limit100_p99_ms", "limit=100 p99 ms"),
        ("commits_per_transfer", "commits/transfer"),
        ("wall_ms_per_transfer", "wall ms/transfer"),
        ("uptime_secs", "up s"),
        ("free_page_reporting", "host takes freed memory back"),
        ("mem_free_mib", "free MiB"),
        ("kernel", "kernel"),
    ] {
        if let Some(v) = get(key) {
            parts.push(match (v.as_f64(), v.as_str()) {
                (Some(x), _) if x.fract() != 0.0 => format!("{label} {x:.2}"),
                // A string without its JSON quotes.
                (_, Some(text)) => format!("{label} {text}"),
                _ => format!("{label} {v}"),
            });
        }
    }
    parts.join(", ")
}

pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario | bytes | conc | ours/s | nginx/s | ratio | p50 ms | p99 ms | p999 ms | nginx p99 ms | CPU ms/transfer (snd+rcv) | floor ms | CPU/floor | durable floor ms | CPU/(floor+durable) | peak RSS MiB snd/rcv | nginx CPU ms/req | cores busy (others) | errors |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows.iter().filter(|r| r.scenario.starts_with("transfer")) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}+{}) | {} | {} | {} | {} | {}/{} | {} | {} ({}) | {} |",
            r.scenario,
            r.payload_bytes.map_or_else(String::new, |b| b.to_string()),
            r.concurrency.map_or_else(String::new, |c| c.to_string()),
            f(r.ours_per_s, 1),
            f(r.baseline_per_s, 1),
            f(r.ratio, 2),
            f(r.p50_ms, 1),
            f(r.p99_ms, 1),
            f(r.p999_ms, 1),
            f(r.baseline_p99_ms, 1),
            f(r.cpu_ms_per_transfer, 2),
            f(r.cpu_ms_sender, 2),
            f(r.cpu_ms_receiver, 2),
            f(r.floor_ms_per_transfer, 3),
            f(r.cpu_ratio, 1),
            f(r.durable_floor_ms, 3),
            f(r.cpu_ratio_with_durability, 1),
            f(r.peak_rss_mib_sender, 0),
            f(r.peak_rss_mib_receiver, 0),
            f(r.baseline_cpu_ms_per_req, 2),
            f(r.machine_busy_cores, 2),
            f(r.other_processes_cores, 2),
            match (r.ours_errors, r.baseline_errors, &r.first_error) {
                (Some(a), Some(b), None) => format!("{a}/{b}"),
                (a, b, e) => format!(
                    "{}/{} {}",
                    a.unwrap_or(0),
                    b.unwrap_or(0),
                    e.as_deref().unwrap_or("").chars().take(80).collect::<String>()
                ),
            }
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.scenario.starts_with("transfer_1gib"))
    {
        let _ = writeln!(
            s,
            "\n{}: ours {} MB/s, nginx {} MB/s; peak RSS sender {} MiB, receiver {} MiB, nginx {} MiB; CPU {} ms (floor {} ms)",
            r.scenario,
            f(r.mb_per_s, 1),
            f(r.baseline_mb_per_s, 1),
            f(r.peak_rss_mib_sender, 1),
            f(r.peak_rss_mib_receiver, 1),
            f(r.baseline_peak_rss_mib, 1),
            f(r.cpu_ms_per_transfer, 0),
            f(r.floor_ms_per_transfer, 0),
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.scenario.starts_with("instructions"))
    {
        let _ = writeln!(
            s,
            "\n{}: {} instructions per transfer (sender {} + receiver {}; callgrind, {} transfers, idle background subtracted); crypto floor {} instructions: {}x",
            r.scenario,
            f(r.instructions_per_transfer, 0),
            f(r.instructions_sender, 0),
            f(r.instructions_receiver, 0),
            r.ours_completed.unwrap_or(0),
            f(r.detail.as_ref().and_then(|d| d["floor_instructions_per_transfer"].as_f64()), 0),
            f(r.detail.as_ref().and_then(|d| d["instructions_over_floor"].as_f64()), 2),
        );
    }
    s.push_str(&crate::allocations::markdown(rows));
    s.push_str(&crate::syscalls::markdown(rows));
    let _ = writeln!(
        s,
        "\n| other | rate /s | p50 ms | p99 ms | floor ms | note |\n|---|---:|---:|---:|---:|---|"
    );
    let issue17 = ["instructions", "allocations_", "syscalls_"];
    for r in rows.iter().filter(|r| {
        !r.scenario.starts_with("transfer") && !issue17.iter().any(|p| r.scenario.starts_with(p))
    }) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario,
            f(r.ours_per_s, 0),
            f(r.p50_ms, 3),
            f(r.p99_ms, 3),
            f(r.floor_ms_per_transfer.or(r.durable_floor_ms), 3),
            note(r),
        );
    }
    let _ = MIB;
    s
}

#[cfg(test)]
mod tests {
    use super::port_was_taken;

    #[test]
    fn a_port_in_use_is_told_apart_from_other_start_failures() {
        // What `gateway run` and nginx 1.22 (the end of its log) print when another socket holds
        // their port.
        let gateway = "gateway hosp-central exited early (exit status: 64); end of \
                       /tmp/x/hosp-central.log:\n  gateway: bind 127.0.0.1:41599: Address \
                       already in use (os error 98)";
        let nginx = "nginx exited early (exit status: 1); end of /tmp/x/nginx.log:\n  \
                     2026/11/26 23:12:45 [emerg] 30575#30575: bind() to 127.0.0.1:41599 failed \
                     (98: Address already in use)\n  2026/11/26 23:12:45 [emerg] \
                     30575#30575: still could not bind()";
        assert!(port_was_taken(gateway));
        assert!(port_was_taken(nginx));
        let bad_config = "gateway hosp-central exited early (exit status: 64); end of \
                          /tmp/x/hosp-central.log:\n  gateway: config: unknown envelope suite";
        assert!(!port_was_taken(bad_config));
        assert!(!port_was_taken(
            "gateway hosp-central not listening on 127.0.0.1:1 after 60s"
        ));
    }
}
