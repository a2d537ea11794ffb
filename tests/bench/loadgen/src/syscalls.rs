//! `bench-loadgen run --syscalls`: the kernel side of a transfer on each node at ~10 KB,
//! ~100 KB and ~1 MB (issue 17): what callgrind's user-space count does not see.
//!
//! Both nodes run natively (the gateway binary as built, no tracer at start). For each payload,
//! after a warm-up, two windows of the same number of transfers, one after the other on one
//! keep-alive connection:
//! * untraced: `/proc/<pid>/stat` (utime, stime, page faults) and `/proc/<pid>/io` (read and
//!   write syscalls, bytes, bytes sent to the disk) before and after, and `perf stat -p` with
//!   software events (task clock, context switches, migrations, faults) and, where tracefs has
//!   them, syscall tracepoints (all syscalls, fsync, fdatasync, openat, renames, futex): cheap
//!   counters that do not slow the node down;
//! * under `strace -f -y -s 0 -p` (every thread, fds shown as their paths, no buffer contents
//!   printed: payloads never reach the trace): syscalls by kind, and for the ones that make a
//!   transfer durable, what they act on: fsync/fdatasync by file, files created (`O_CREAT`),
//!   renamed and removed, by directory. strace slows every syscall, so its window's times are
//!   not used.
//!
//! After the first payload, both windows are repeated without transfers for as long as they
//! took, and that idle background (timers, probes, sled's flusher), as a rate per second, is
//! subtracted from every window. The crypto floor is measured in-process in the same run (the
//! fastest of 5 passes), so CPU per transfer can be read against it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::floor;
use crate::instructions::{chosen_payloads, tool_output, warm_up, TRANSFER_TIMEOUT};
use crate::load::{self, Target};
use crate::procfs;
use crate::procs::{self, Proc};
use crate::report::{gateway_target, log, Row};
use crate::setup::{self, NodeFiles, Payload};
use crate::{BoxError, RunArgs};

use strace::{parse_strace, StraceCounts};

mod strace;

/// Pause after the warm-up and after each window, for the work a transfer leaves behind once
/// its receipt is answered (the receiver's audit group commit, the sender's delivered state).
const SETTLE: Duration = Duration::from_secs(1);

/// The software events `perf stat` counts per node.
const PERF_SOFTWARE: [&str; 5] = [
    "task-clock",
    "context-switches",
    "cpu-migrations",
    "page-faults",
    "major-faults",
];

/// Syscall tracepoints counted natively where tracefs has them (a cross-check of strace's
/// counts without strace's slowdown).
const PERF_TRACEPOINTS: [&str; 9] = [
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_fdatasync",
    "syscalls:sys_enter_fsync",
    "syscalls:sys_enter_openat",
    "syscalls:sys_enter_rename",
    "syscalls:sys_enter_renameat2",
    "syscalls:sys_enter_unlinkat",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_epoll_wait",
];

/// /proc counters of one process at one moment.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ProcCounters {
    /// utime, stime in clock ticks; minor and major faults (all threads, dead ones included).
    pub utime: f64,
    pub stime: f64,
    pub minflt: f64,
    pub majflt: f64,
    /// /proc/<pid>/io: rchar, wchar, syscr, syscw, read_bytes, write_bytes,
    /// cancelled_write_bytes.
    pub io: BTreeMap<String, f64>,
}

/// Reads utime, stime, minflt and majflt from a /proc/<pid>/stat line.
pub(crate) fn parse_stat(stat: &str) -> Option<ProcCounters> {
    // The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    // rest starts at field 3 (state): minflt is field 10, majflt 12, utime 14, stime 15.
    let get = |field: usize| f.get(field - 3).copied().filter(|v| v.is_finite());
    Some(ProcCounters {
        minflt: get(10)?,
        majflt: get(12)?,
        utime: get(14)?,
        stime: get(15)?,
        io: BTreeMap::new(),
    })
}

/// Reads `/proc/<pid>/io` (`key: value` lines).
pub(crate) fn parse_io(io: &str) -> BTreeMap<String, f64> {
    io.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn counters(pid: u32) -> Result<ProcCounters, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let mut c = parse_stat(&stat).ok_or("unexpected /proc/pid/stat format")?;
    c.io = parse_io(&std::fs::read_to_string(format!("/proc/{pid}/io"))?);
    Ok(c)
}

/// `perf stat -x,` output: event → count (lines `value,unit,event,…`; uncounted events left
/// out).
pub(crate) fn parse_perf_stat(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut it = l.split(',');
            let value: f64 = it.next()?.trim().parse().ok()?;
            let _unit = it.next()?;
            let event = it.next()?.trim();
            (!event.is_empty()).then(|| (event.to_owned(), value))
        })
        .collect()
}

/// `window - idle × window_secs / idle_secs`, per transfer, key by key (keys only in the idle
/// window count as negative: they are background the window happened not to have).
pub(crate) fn per_transfer_map(
    window: &BTreeMap<String, f64>,
    window_secs: f64,
    idle: &BTreeMap<String, f64>,
    idle_secs: f64,
    transfers: u32,
) -> BTreeMap<String, f64> {
    let k = f64::from(transfers.max(1));
    let scale = window_secs / idle_secs.max(1e-9);
    let mut out = BTreeMap::new();
    for key in window.keys().chain(idle.keys()) {
        let w = window.get(key).copied().unwrap_or(0.0);
        let i = idle.get(key).copied().unwrap_or(0.0);
        out.insert(key.clone(), (w - i * scale) / k);
    }
    out
}

fn sum(m: &BTreeMap<String, f64>) -> f64 {
    m.values().sum()
}

/// One untraced window on both nodes.
#[derive(Debug, Clone)]
struct NativeWindow {
    secs: f64,
    /// Per node (sender, receiver): /proc counters as a flat map (`utime_s`, `stime_s`,
    /// `minflt`, `majflt`, `io.<key>`) and perf's counts (`perf.<event>`), window deltas.
    counts: Vec<BTreeMap<String, f64>>,
    perf_error: Option<String>,
}

/// One strace window on both nodes.
#[derive(Debug, Clone)]
struct TracedWindow {
    secs: f64,
    counts: Vec<StraceCounts>,
}

struct Nodes {
    /// Sender, receiver.
    procs: Vec<Proc>,
    ticks: f64,
}

pub async fn run(args: &RunArgs, work: &Path, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    let payloads = chosen_payloads(
        &args.testdata,
        &args.sizes,
        args.sys_transfers,
        args.sys_transfers,
    )?;
    let strace_version = tool_output(&args.strace, &["-V"])?;
    let strace_version = strace_version.lines().next().unwrap_or("").to_owned();
    let perf_version = tool_output(&args.perf, &["--version"]).unwrap_or_else(|e| e.to_string());
    let tracepoints: Vec<&str> = PERF_TRACEPOINTS
        .into_iter()
        .filter(|t| tracepoint_exists(t))
        .collect();
    let fed = setup::create_federation(work)?;
    let mut procs = Vec::new();
    for node in [&fed.receiver, &fed.sender] {
        procs.push(start_native(args, work, node)?);
    }
    procs.reverse();
    let nodes = Nodes {
        procs,
        ticks: procfs::clock_ticks(),
    };
    log(format!(
        "syscalls: both nodes native ({}); per payload {} warm-up, then {} transfers untraced (/proc, {perf_version}: {} tracepoints) and {} under {strace_version}",
        args.gateway.display(),
        args.instr_warmup,
        args.sys_transfers,
        tracepoints.len(),
        args.sys_transfers
    ));
    let ct = "application/fhir+json";
    let mut idle: Option<(NativeWindow, TracedWindow)> = None;
    let mut measured = Vec::new();
    for (payload, transfers) in &payloads {
        let floor = least_disturbed_floor(&payload.bytes)?;
        let target = gateway_target(&fed, payload, "fhir");
        warm_up(&target, payload, ct, args.instr_warmup, SETTLE).await?;
        let native = native_window(
            args,
            &nodes,
            &tracepoints,
            Some((&target, payload, *transfers)),
            0.0,
        )
        .await?;
        let traced = traced_window(
            args,
            work,
            &nodes,
            Some((&target, payload, *transfers)),
            0.0,
        )
        .await?;
        log(format!(
            "syscalls {}: {transfers} transfers in {:.1} s untraced, {:.1} s under strace",
            payload.label, native.secs, traced.secs
        ));
        if idle.is_none() {
            log(format!(
                "syscalls: idle windows of {:.1} s and {:.1} s",
                native.secs, traced.secs
            ));
            let ni = native_window(args, &nodes, &tracepoints, None, native.secs).await?;
            let ti = traced_window(args, work, &nodes, None, traced.secs).await?;
            idle = Some((ni, ti));
        }
        measured.push((payload.clone(), *transfers, floor, native, traced));
    }
    let (native_idle, traced_idle) = idle.ok_or("no payload measured")?;
    for (payload, transfers, floor, native, traced) in &measured {
        rows.push(row(
            args,
            (&strace_version, &perf_version),
            payload,
            *transfers,
            floor,
            (native, &native_idle),
            (traced, &traced_idle),
        ));
    }
    drop(nodes);
    Ok(())
}

/// The crypto floor's passes per payload: the floor times each primitive by wall clock, so on
/// a shared machine a pass that was preempted reads high; the fastest of a few is the floor
/// (the nodes' CPU time, read from /proc, is not inflated that way).
const FLOOR_PASSES: usize = 5;

fn least_disturbed_floor(payload: &[u8]) -> Result<floor::Floor, BoxError> {
    let mut best: Option<floor::Floor> = None;
    for _ in 0..FLOOR_PASSES {
        let f = floor::measure(payload, Duration::from_millis(400))?;
        if best
            .as_ref()
            .is_none_or(|b| f.ms_per_transfer < b.ms_per_transfer)
        {
            best = Some(f);
        }
    }
    best.ok_or_else(|| "no floor pass".into())
}

fn tracepoint_exists(event: &str) -> bool {
    let Some((group, name)) = event.split_once(':') else {
        return false;
    };
    [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|root| Path::new(root).join(group).join(name).exists())
}

fn start_native(args: &RunArgs, work: &Path, node: &NodeFiles) -> Result<Proc, BoxError> {
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
    Ok(p)
}

/// Sends the transfers of a window, or (with `None`) waits `idle_secs`; then settles.
async fn window_load(
    load: Option<(&Target, &Payload, u32)>,
    idle_secs: f64,
) -> Result<(), BoxError> {
    match load {
        Some((target, payload, n)) => {
            load::send_sequential(
                target,
                &payload.bytes,
                "application/fhir+json",
                n,
                TRANSFER_TIMEOUT,
            )
            .await?;
            tokio::time::sleep(SETTLE).await;
        }
        None => tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await,
    }
    Ok(())
}

fn flat(c: &ProcCounters, ticks: f64) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    m.insert("utime_s".to_owned(), c.utime / ticks);
    m.insert("stime_s".to_owned(), c.stime / ticks);
    m.insert("minflt".to_owned(), c.minflt);
    m.insert("majflt".to_owned(), c.majflt);
    for (k, v) in &c.io {
        m.insert(format!("io.{k}"), *v);
    }
    m
}

async fn native_window(
    args: &RunArgs,
    nodes: &Nodes,
    tracepoints: &[&str],
    load: Option<(&Target, &Payload, u32)>,
    idle_secs: f64,
) -> Result<NativeWindow, BoxError> {
    let dir = args.out.join("syscalls");
    std::fs::create_dir_all(&dir)?;
    let mut perfs = Vec::new();
    let mut perf_error = None;
    for (i, p) in nodes.procs.iter().enumerate() {
        let out = dir.join(format!("perf-stat.{i}.csv"));
        let _ = std::fs::remove_file(&out);
        let events: Vec<&str> = PERF_SOFTWARE
            .iter()
            .copied()
            .chain(tracepoints.iter().copied())
            .collect();
        let mut cmd = Command::new(&args.perf);
        cmd.arg("stat")
            .arg("-x,")
            .arg("-o")
            .arg(&out)
            .arg("-e")
            .arg(events.join(","))
            .arg("-p")
            .arg(p.pid().to_string());
        match Proc::spawn(
            &format!("perf stat {}", p.name),
            cmd,
            &out.with_extension("log"),
        ) {
            Ok(proc) => perfs.push(Some((proc, out))),
            Err(e) => {
                perf_error = Some(e.to_string());
                perfs.push(None);
            }
        }
    }
    // perf opens its counters right after start; give it that moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<ProcCounters> = nodes
        .procs
        .iter()
        .map(|p| counters(p.pid()))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    window_load(load, idle_secs).await?;
    let secs = started.elapsed().as_secs_f64();
    let after: Vec<ProcCounters> = nodes
        .procs
        .iter()
        .map(|p| counters(p.pid()))
        .collect::<Result<_, _>>()?;
    let mut counts = Vec::new();
    for ((b, a), perf) in before.iter().zip(&after).zip(perfs) {
        let (b, a) = (flat(b, nodes.ticks), flat(a, nodes.ticks));
        let mut m: BTreeMap<String, f64> = a
            .iter()
            .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
            .collect();
        if let Some((mut proc, out)) = perf {
            interrupt(&mut proc);
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let parsed = parse_perf_stat(&text);
            if parsed.is_empty() {
                perf_error = Some(format!(
                    "perf stat counted nothing: {}",
                    text.lines().last().unwrap_or("")
                ));
            }
            for (k, v) in parsed {
                m.insert(format!("perf.{k}"), v);
            }
        }
        counts.push(m);
    }
    Ok(NativeWindow {
        secs,
        counts,
        perf_error,
    })
}

/// SIGINT (perf stat prints its counts on it), then up to 10 s for it to exit.
fn interrupt(proc: &mut Proc) {
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(proc.pid().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(proc.child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    proc.stop(Duration::from_secs(5));
}

/// Whether every thread of `pid` has a tracer.
fn all_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("TracerPid:"))
                    .map(|v| v.trim() != "0")
            })
            .unwrap_or(true)
    })
}

async fn traced_window(
    args: &RunArgs,
    work: &Path,
    nodes: &Nodes,
    load: Option<(&Target, &Payload, u32)>,
    idle_secs: f64,
) -> Result<TracedWindow, BoxError> {
    let mut straces: Vec<(Proc, PathBuf)> = Vec::new();
    for (i, p) in nodes.procs.iter().enumerate() {
        let out = work.join(format!(
            "strace.{i}.{}.txt",
            load.map_or("idle", |l| l.1.label)
        ));
        let mut cmd = Command::new(&args.strace);
        // -s 0: no buffer contents (payloads) in the trace; file names are printed in full.
        cmd.args(["-f", "-qq", "-y", "-s", "0", "-e", "signal=none", "-o"])
            .arg(&out)
            .arg("-p")
            .arg(p.pid().to_string());
        let proc = Proc::spawn(
            &format!("strace {}", p.name),
            cmd,
            &out.with_extension("log"),
        )?;
        straces.push((proc, out));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.procs.iter().all(|p| all_traced(p.pid())) {
        for (s, _) in &mut straces {
            s.check_alive()?;
        }
        if Instant::now() > deadline {
            return Err("strace did not attach to every thread within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    window_load(load, idle_secs).await?;
    let secs = started.elapsed().as_secs_f64();
    let mut counts = Vec::new();
    for (mut s, out) in straces {
        // SIGTERM: strace detaches from every thread and flushes its output.
        s.stop(Duration::from_secs(30));
        let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", s.name))?;
        counts.push(parse_strace(&text));
    }
    Ok(TracedWindow { secs, counts })
}

fn row(
    args: &RunArgs,
    versions: (&str, &str),
    payload: &Payload,
    transfers: u32,
    floor: &floor::Floor,
    native: (&NativeWindow, &NativeWindow),
    traced: (&TracedWindow, &TracedWindow),
) -> Row {
    let mut detail = serde_json::Map::new();
    detail.insert("strace".into(), json!(versions.0));
    detail.insert("perf".into(), json!(versions.1));
    detail.insert("gateway".into(), json!(args.gateway.display().to_string()));
    detail.insert("warmup_transfers".into(), json!(args.instr_warmup));
    detail.insert("transfers".into(), json!(transfers));
    detail.insert("native_window_secs".into(), json!(native.0.secs));
    detail.insert("native_idle_secs".into(), json!(native.1.secs));
    detail.insert("strace_window_secs".into(), json!(traced.0.secs));
    detail.insert("strace_idle_secs".into(), json!(traced.1.secs));
    detail.insert("floor_ms_per_transfer".into(), json!(floor.ms_per_transfer));
    if let Some(e) = native
        .0
        .perf_error
        .as_ref()
        .or(native.1.perf_error.as_ref())
    {
        detail.insert("perf_error".into(), json!(e));
    }
    let mut cpu_ms = Vec::new();
    let mut summary = Vec::new();
    for (i, name) in ["sender", "receiver"].into_iter().enumerate() {
        let n = per_transfer_map(
            &native.0.counts[i],
            native.0.secs,
            &native.1.counts[i],
            native.1.secs,
            transfers,
        );
        let (tw, ti) = (&traced.0.counts[i], &traced.1.counts[i]);
        let t = |w: &BTreeMap<String, f64>, idle: &BTreeMap<String, f64>| {
            per_transfer_map(w, traced.0.secs, idle, traced.1.secs, transfers)
        };
        let calls = t(&tw.calls, &ti.calls);
        let errors = t(&tw.errors, &ti.errors);
        let syncs = t(&tw.syncs, &ti.syncs);
        let created = t(&tw.created, &ti.created);
        let renamed = t(&tw.renamed, &ti.renamed);
        let removed = t(&tw.removed, &ti.removed);
        let g = |k: &str| n.get(k).copied().unwrap_or(f64::NAN);
        let user_ms = g("utime_s") * 1e3;
        let sys_ms = g("stime_s") * 1e3;
        cpu_ms.push(user_ms + sys_ms);
        let syscalls = sum(&calls);
        let sync_calls = sum(&syncs);
        summary.push(format!(
            "{name}: user {user_ms:.3} ms + system {sys_ms:.3} ms, {syscalls:.0} syscalls, {sync_calls:.1} syncs, {:.1} files created",
            sum(&created)
        ));
        let mut by_kind: Vec<(&String, &f64)> = calls.iter().collect();
        by_kind.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
        detail.insert(
            name.into(),
            json!({
                "user_ms_per_transfer": user_ms,
                "system_ms_per_transfer": sys_ms,
                "cpu_ms_per_transfer": user_ms + sys_ms,
                "system_share": sys_ms / (user_ms + sys_ms),
                "context_switches_per_transfer": g("perf.context-switches"),
                "cpu_migrations_per_transfer": g("perf.cpu-migrations"),
                "page_faults_per_transfer": g("minflt") + g("majflt"),
                "perf_task_clock_ms_per_transfer": g("perf.task-clock"),
                "perf_syscalls_per_transfer": g("perf.raw_syscalls:sys_enter"),
                "perf_fdatasync_per_transfer": g("perf.syscalls:sys_enter_fdatasync"),
                "perf_fsync_per_transfer": g("perf.syscalls:sys_enter_fsync"),
                "disk_write_bytes_per_transfer": g("io.write_bytes"),
                "disk_read_bytes_per_transfer": g("io.read_bytes"),
                "write_syscall_bytes_per_transfer": g("io.wchar"),
                "read_syscall_bytes_per_transfer": g("io.rchar"),
                "native": n,
                "syscalls_per_transfer": syscalls,
                "syscalls_by_kind": by_kind.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
                "errors_by_kind": errors,
                "syncs_per_transfer": sync_calls,
                "syncs_by_target": syncs,
                "files_created_per_transfer": sum(&created),
                "created_by_dir": created,
                "renames_per_transfer": sum(&renamed),
                "renamed_by_dir": renamed,
                "removed_per_transfer": sum(&removed),
                "removed_by_dir": removed,
            }),
        );
    }
    let both = cpu_ms.iter().sum::<f64>();
    detail.insert("cpu_ms_per_transfer".into(), json!(both));
    detail.insert(
        "cpu_over_floor".into(),
        json!(both / floor.ms_per_transfer.max(1e-9)),
    );
    log(format!(
        "syscalls per {} transfer: {}; CPU/floor {:.2}",
        payload.label,
        summary.join("; "),
        both / floor.ms_per_transfer.max(1e-9)
    ));
    Row {
        scenario: format!("syscalls_{}", payload.label),
        payload_bytes: Some(payload.bytes.len() as u64),
        payload_source: Some(payload.source.clone()),
        concurrency: Some(1),
        ours_completed: Some(u64::from(transfers)),
        cpu_ms_per_transfer: Some(both),
        cpu_ms_sender: cpu_ms.first().copied(),
        cpu_ms_receiver: cpu_ms.get(1).copied(),
        floor_ms_per_transfer: Some(floor.ms_per_transfer),
        cpu_ratio: Some(both / floor.ms_per_transfer.max(1e-9)),
        detail: Some(Value::Object(detail)),
        ..Row::default()
    }
}

/// The kernel-side rows as tables: per payload and node, and the ~100 KB row's syscalls by
/// kind, syncs by target and files by directory.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario.starts_with("syscalls_"))
        .collect();
    if rows.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\n| per transfer (one at a time) | node | user ms | system ms | system % | perf task-clock ms | syscalls | fsync+fdatasync | files created | renames | removed | ctx switches | page faults | disk write KB | CPU/floor (both) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        let Some(d) = &r.detail else { continue };
        for node in ["sender", "receiver"] {
            let v = |k: &str| d[node][k].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "| {} ({} B) | {node} | {:.3} | {:.3} | {:.0} | {:.3} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
                r.scenario,
                r.payload_bytes.unwrap_or(0),
                v("user_ms_per_transfer"),
                v("system_ms_per_transfer"),
                v("system_share") * 100.0,
                v("perf_task_clock_ms_per_transfer"),
                v("syscalls_per_transfer"),
                v("syncs_per_transfer"),
                v("files_created_per_transfer"),
                v("renames_per_transfer"),
                v("removed_per_transfer"),
                v("context_switches_per_transfer"),
                v("page_faults_per_transfer"),
                v("disk_write_bytes_per_transfer") / 1024.0,
                if node == "sender" {
                    format!("{:.2}", r.cpu_ratio.unwrap_or(f64::NAN))
                } else {
                    String::new()
                },
            );
        }
    }
    for r in rows.iter().filter(|r| r.scenario == "syscalls_100k") {
        let Some(d) = &r.detail else { continue };
        for node in ["sender", "receiver"] {
            let _ = writeln!(
                s,
                "\n{node}, ~100 KB: syscalls per transfer by kind: {}",
                d[node]["syscalls_by_kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|kv| Some((kv[0].as_str()?, kv[1].as_f64()?)))
                    .filter(|(_, v)| *v >= 0.05)
                    .map(|(k, v)| format!("{k} {v:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (key, label) in [
                ("syncs_by_target", "syncs by target"),
                ("created_by_dir", "files created by dir"),
                ("renamed_by_dir", "renames by dir"),
                ("removed_by_dir", "removed by dir"),
            ] {
                let parts: Vec<String> = d[node][key]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                    .filter(|(_, v)| v.abs() >= 0.05)
                    .map(|(k, v)| format!("`{k}` {v:.2}"))
                    .collect();
                let _ = writeln!(s, "{node}, ~100 KB: {label}: {}", parts.join(", "));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests;
