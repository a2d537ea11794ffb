//! `bench-loadgen run --instructions`: instructions per transfer on each node at ~10 KB,
//! ~100 KB and ~1 MB, counted by callgrind, a measure the machine's noise does not move
//! (issue 17).
//!
//! Both nodes run under `valgrind --tool=callgrind` (~50x slower, so few transfers). For each
//! payload in turn (~100 KB first, so that its figure stays comparable with the runs before the
//! other sizes were added): a warm-up of that payload (connections, caches, the first sled
//! pages, buffers of that size) and a settle pause, each node's counters are zeroed
//! (`callgrind_control -z`), the measured transfers go one after the other on one keep-alive
//! connection, and after the same pause the counters are dumped (`callgrind_control -d`): the
//! dump holds every instruction of the window, background threads (sled flusher, group commit,
//! timers) included. After the first payload an idle window of the same length is dumped, so
//! the background a node spends without transfers (a rate per second) can be subtracted from
//! every window. callgrind counts user-space instructions only: the kernel's share (syscalls,
//! fsync, TCP) is not in it (`--syscalls` measures that).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::load;
use crate::procs::{self, Proc};
use crate::report::{gateway_target, log, Row};
use crate::setup::{self, NodeFiles, Payload};
use crate::{BoxError, RunArgs};

/// Pause after the warm-up and after the window, for the work a transfer leaves behind once
/// its receipt is answered (the receiver's audit group commit, the sender's delivered state).
pub(crate) const SETTLE: Duration = Duration::from_secs(3);

/// Under valgrind a node needs far longer to start and answer than natively.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(300);
pub(crate) const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

/// `count` warm-up transfers of `payload`, one at a time, then `settle` for the work they leave
/// behind (group commits, delivered states), so that a measured window starts quiet.
pub(crate) async fn warm_up(
    target: &load::Target,
    payload: &Payload,
    content_type: &str,
    count: u32,
    settle: Duration,
) -> Result<(), BoxError> {
    load::send_sequential(
        target,
        &payload.bytes,
        content_type,
        count,
        TRANSFER_TIMEOUT,
    )
    .await
    .map_err(|e| format!("{} warm-up transfer refused: {e}", payload.label))?;
    tokio::time::sleep(settle).await;
    Ok(())
}

/// The payload labels of the issue-17 modes, in the order they are measured: ~100 KB first.
pub(crate) const LABELS: [&str; 3] = ["100k", "10k", "1m"];

struct Node {
    proc: Proc,
    /// `--callgrind-out-file`: dumps are written next to it as `<file>.<n>`.
    out_file: PathBuf,
}

/// The payloads a mode measures, in [`LABELS`] order: `wanted` (labels) or all three, each
/// with the transfers it gets (`transfers`, or `transfers_1m` for ~1 MB).
pub(crate) fn chosen_payloads(
    testdata: &Path,
    wanted: &[String],
    transfers: u32,
    transfers_1m: u32,
) -> Result<Vec<(Payload, u32)>, BoxError> {
    for w in wanted {
        if !LABELS.contains(&w.as_str()) {
            return Err(format!("unknown payload {w:?} (10k, 100k or 1m)").into());
        }
    }
    let all = setup::payloads(testdata)?;
    let mut out = Vec::new();
    for label in LABELS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == label) {
            continue;
        }
        let p = all
            .iter()
            .find(|p| p.label == label)
            .ok_or_else(|| format!("no {label} payload"))?;
        let n = if label == "1m" {
            transfers_1m
        } else {
            transfers
        };
        out.push((p.clone(), n.max(1)));
    }
    Ok(out)
}

/// One payload's measured window on both nodes.
struct Window {
    payload: Payload,
    transfers: u32,
    secs: f64,
    /// Sender, receiver.
    dumps: Vec<Dump>,
}

pub async fn run(args: &RunArgs, work: &Path, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    let payloads = chosen_payloads(
        &args.testdata,
        &args.sizes,
        args.instr_transfers,
        args.instr_transfers_1m,
    )?;
    let version = tool_output(&args.valgrind, &["--version"])?;
    let fed = setup::create_federation(work)?;
    log(format!(
        "instructions: both nodes under {version} callgrind; per payload {} warm-up + measured transfers ({})",
        args.instr_warmup,
        payloads
            .iter()
            .map(|(p, n)| format!("{} x {} B", n, p.bytes.len()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut nodes = Vec::new();
    for node in [&fed.receiver, &fed.sender] {
        nodes.push(start_node(args, work, node)?);
    }
    // Receiver first (the sender probes its peer at start-up); report sender first.
    nodes.reverse();
    let ct = "application/fhir+json";

    let mut windows: Vec<Window> = Vec::new();
    let mut idle: Option<(Vec<Dump>, f64)> = None;
    for (payload, transfers) in &payloads {
        let target = gateway_target(&fed, payload, "fhir");
        warm_up(&target, payload, ct, args.instr_warmup, SETTLE).await?;
        for n in &nodes {
            control(&n.proc, "-z")?;
        }
        let window_start = Instant::now();
        let sent = load::send_sequential(&target, &payload.bytes, ct, *transfers, TRANSFER_TIMEOUT)
            .await?;
        tokio::time::sleep(SETTLE).await;
        let mut dumps = Vec::new();
        for n in &nodes {
            dumps.push(dump(n, &args.out, &format!("{}.window", payload.label))?);
        }
        let secs = window_start.elapsed().as_secs_f64();
        log(format!(
            "instructions {}: {transfers} transfers in {:.1} s under callgrind",
            payload.label,
            sent.as_secs_f64()
        ));
        windows.push(Window {
            payload: payload.clone(),
            transfers: *transfers,
            secs,
            dumps,
        });
        if idle.is_none() {
            // The node's background without transfers, over a window as long as the first
            // measured one.
            log(format!("instructions: idle window of {secs:.1} s"));
            for n in &nodes {
                control(&n.proc, "-z")?;
            }
            let idle_start = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let mut dumps = Vec::new();
            for n in &nodes {
                dumps.push(dump(n, &args.out, "idle")?);
            }
            idle = Some((dumps, idle_start.elapsed().as_secs_f64()));
        }
    }
    for n in &mut nodes {
        // Valgrind writes its final profile on exit: give it time.
        n.proc.stop(Duration::from_secs(60));
    }
    let (idle, idle_secs) = idle.ok_or("no payload measured")?;
    for w in &windows {
        let floor = floor_instructions(args, w.payload.bytes.len())?;
        rows.push(window_row(args, &version, w, &idle, idle_secs, &floor));
    }
    Ok(())
}

/// Per transfer from a window's and the idle window's totals: (with the idle background,
/// without it). The idle background is a rate, scaled to the window's length.
pub(crate) fn per_transfer(
    window_total: f64,
    window_secs: f64,
    idle_total: f64,
    idle_secs: f64,
    transfers: u32,
) -> (f64, f64) {
    let k = f64::from(transfers.max(1));
    let idle_scaled = idle_total * window_secs / idle_secs.max(1e-9);
    (
        window_total / k,
        ((window_total - idle_scaled) / k).max(0.0),
    )
}

fn window_row(
    args: &RunArgs,
    version: &str,
    w: &Window,
    idle: &[Dump],
    idle_secs: f64,
    floor: &FloorCount,
) -> Row {
    let per = |wd: &Dump, id: &Dump| {
        per_transfer(
            wd.total as f64,
            w.secs,
            id.total as f64,
            idle_secs,
            w.transfers,
        )
    };
    let (snd_raw, snd) = per(&w.dumps[0], &idle[0]);
    let (rcv_raw, rcv) = per(&w.dumps[1], &idle[1]);
    let mut detail = serde_json::Map::new();
    detail.insert("tool".into(), json!(format!("{version} --tool=callgrind")));
    detail.insert("gateway".into(), json!(args.gateway.display().to_string()));
    detail.insert("warmup_transfers".into(), json!(args.instr_warmup));
    detail.insert("transfers".into(), json!(w.transfers));
    detail.insert("window_secs".into(), json!(w.secs));
    detail.insert(
        "floor_instructions_per_transfer".into(),
        json!(floor.per_transfer),
    );
    detail.insert("floor_iterations".into(), json!(floor.iterations));
    detail.insert(
        "instructions_over_floor".into(),
        json!((snd + rcv) / floor.per_transfer.max(1.0)),
    );
    detail.insert(
        "sender_over_floor".into(),
        json!(snd / floor.per_transfer.max(1.0)),
    );
    detail.insert(
        "receiver_over_floor".into(),
        json!(rcv / floor.per_transfer.max(1.0)),
    );
    for (name, wd, id, raw) in [
        ("sender", &w.dumps[0], &idle[0], snd_raw),
        ("receiver", &w.dumps[1], &idle[1], rcv_raw),
    ] {
        detail.insert(
            name.into(),
            json!({
                "window_instructions": wd.total,
                "idle_instructions": id.total,
                "idle_secs": idle_secs,
                "instructions_per_transfer_with_idle": raw,
                "profile": wd.path.display().to_string(),
                "self_cost": wd.areas,
            }),
        );
    }
    log(format!(
        "instructions per {} transfer: sender {:.2} M, receiver {:.2} M (idle background subtracted; with it {:.2} M / {:.2} M); crypto floor {:.2} M: {:.2}x",
        w.payload.label,
        snd / 1e6,
        rcv / 1e6,
        snd_raw / 1e6,
        rcv_raw / 1e6,
        floor.per_transfer / 1e6,
        (snd + rcv) / floor.per_transfer.max(1.0)
    ));
    Row {
        scenario: format!("instructions_{}", w.payload.label),
        payload_bytes: Some(w.payload.bytes.len() as u64),
        payload_source: Some(w.payload.source.clone()),
        concurrency: Some(1),
        ours_completed: Some(u64::from(w.transfers)),
        instructions_per_transfer: Some(snd + rcv),
        instructions_sender: Some(snd),
        instructions_receiver: Some(rcv),
        detail: Some(Value::Object(detail)),
        ..Row::default()
    }
}

struct FloorCount {
    per_transfer: f64,
    iterations: u64,
}

/// The crypto floor (`bench-loadgen floor`, both sides of one transfer's primitives) under
/// callgrind, counting only inside `floor::measure`'s loop (its separate AEAD-only pass
/// toggled off): instructions per iteration, the same unit as the nodes' count.
fn floor_instructions(args: &RunArgs, len: usize) -> Result<FloorCount, BoxError> {
    let dir = args.out.join("callgrind");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("floor.{len}.callgrind.out"));
    let me = std::env::current_exe()?;
    let out = Command::new(&args.valgrind)
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg("--dump-instr=no")
        .arg("--toggle-collect=bench_loadgen::floor::measure")
        .arg("--toggle-collect=bench_loadgen::floor::hpke_aead")
        .arg(&me)
        .arg("floor")
        .arg(len.to_string())
        .output()
        .map_err(|e| format!("{}: {e}", args.valgrind.display()))?;
    if !out.status.success() {
        return Err(format!("floor under callgrind failed ({})", out.status).into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("floor under callgrind: output: {e}"))?;
    let iterations = v["iterations"]
        .as_u64()
        .filter(|n| *n > 0)
        .ok_or("floor: no iterations")?;
    let total = totals(&std::fs::read_to_string(&file)?).ok_or("floor: no callgrind totals")?;
    if total == 0 {
        return Err("floor under callgrind counted nothing (toggle symbol not found?)".into());
    }
    Ok(FloorCount {
        per_transfer: total as f64 / iterations as f64,
        iterations,
    })
}

fn start_node(args: &RunArgs, work: &Path, node: &NodeFiles) -> Result<Node, BoxError> {
    let out_file = work.join(format!("callgrind.{}.out", node.id));
    let tool = [
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out_file.display()),
        // Per function and line is enough for callgrind_annotate; per instruction would
        // double the profile for nothing here.
        "--dump-instr=no".to_owned(),
        "--vgdb=yes".to_owned(),
    ];
    let proc = start_under_valgrind(args, work, node, &tool, "callgrind")?;
    Ok(Node { proc, out_file })
}

/// `valgrind <tool…> gateway run --config …` for one node, waited for until both its
/// listeners accept connections.
pub(crate) fn start_under_valgrind(
    args: &RunArgs,
    work: &Path,
    node: &NodeFiles,
    tool: &[String],
    label: &str,
) -> Result<Proc, BoxError> {
    let mut cmd = Command::new(&args.valgrind);
    cmd.args(tool)
        .arg(&args.gateway)
        .arg("run")
        .arg("--config")
        .arg(&node.config)
        .current_dir(&node.dir);
    let mut proc = Proc::spawn(
        &format!("gateway {} ({label})", node.id),
        cmd,
        &work.join(format!("{}.{label}.log", node.id)),
    )?;
    procs::wait_listening(&mut proc, node.local, START_TIMEOUT)?;
    procs::wait_listening(&mut proc, node.peer, START_TIMEOUT)?;
    Ok(proc)
}

/// `callgrind_control <flag> <pid>` (through vgdb, which also wakes a node whose threads all
/// wait in a syscall).
fn control(proc: &Proc, flag: &str) -> Result<String, BoxError> {
    let pid = proc.pid().to_string();
    tool_output(Path::new("callgrind_control"), &[flag, &pid])
        .map_err(|e| format!("{}: {e}", proc.name).into())
}

pub(crate) fn tool_output(bin: &Path, args: &[&str]) -> Result<String, BoxError> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {}: {} {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

struct Dump {
    /// Instructions (Ir) since the last zero.
    total: u64,
    /// The profile, copied to `<out>/callgrind/`.
    path: PathBuf,
    /// Exclusive instructions by area (see [`area`]), from callgrind_annotate.
    areas: Value,
}

/// Dumps a node's counters (which also zeroes them) and reads the new profile.
fn dump(node: &Node, out: &Path, what: &str) -> Result<Dump, BoxError> {
    let before = dumps_of(&node.out_file);
    control(&node.proc, "-d")?;
    // The dump is written by the node itself once vgdb got through: wait for the new file.
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        let now = dumps_of(&node.out_file);
        if let Some(f) = now.into_iter().find(|f| !before.contains(f)) {
            if let Ok(text) = std::fs::read_to_string(&f) {
                if let Some(total) = totals(&text) {
                    break (f, total);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{}: no callgrind dump after 60 s", node.proc.name).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let dir = out.join("callgrind");
    std::fs::create_dir_all(&dir)?;
    let role = if node.proc.name.contains(setup::SENDER) {
        "sender"
    } else {
        "receiver"
    };
    let path = dir.join(format!("{role}.{what}.callgrind.out"));
    std::fs::copy(&file.0, &path)?;
    let areas = annotate(&path, &dir, &format!("{role}.{what}"))
        .unwrap_or_else(|e| json!({ "error": e.to_string() }));
    Ok(Dump {
        total: file.1,
        path,
        areas,
    })
}

/// The numbered dumps written so far for a `--callgrind-out-file`.
fn dumps_of(out_file: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (out_file.parent(), out_file.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(&prefix))
                        .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `totals:` (or, in older formats, `summary:`) line of a callgrind profile: Ir.
fn totals(profile: &str) -> Option<u64> {
    profile.lines().rev().find_map(|l| {
        l.strip_prefix("totals:")
            .or_else(|| l.strip_prefix("summary:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

/// callgrind_annotate's inclusive listing of a profile, kept next to it for reading; the
/// exclusive instructions of every function (read from the profile itself: callgrind_annotate
/// 3.19 lists inlined frames' costs as their own rows there) summed by area, and the top ones.
fn annotate(profile: &Path, dir: &Path, stem: &str) -> Result<Value, BoxError> {
    let p = profile.display().to_string();
    let inclusive = tool_output(
        Path::new("callgrind_annotate"),
        &["--inclusive=yes", "--auto=no", "--threshold=99", &p],
    )?;
    std::fs::write(dir.join(format!("{stem}.inclusive.txt")), &inclusive)?;
    let mut by_fn = self_costs(&std::fs::read_to_string(profile)?);
    by_fn.sort_by_key(|f| std::cmp::Reverse(f.1));
    let mut sums: Vec<(&'static str, u64)> = Vec::new();
    for (name, ir) in &by_fn {
        let a = area(name);
        match sums.iter_mut().find(|(n, _)| *n == a) {
            Some((_, v)) => *v += ir,
            None => sums.push((a, *ir)),
        }
    }
    sums.sort_by_key(|a| std::cmp::Reverse(a.1));
    let top: Vec<Value> = by_fn
        .iter()
        .take(25)
        .map(|(n, ir)| json!({ "function": n, "ir": ir, "area": area(n) }))
        .collect();
    let areas: serde_json::Map<String, Value> = sums
        .into_iter()
        .map(|(a, v)| (a.to_owned(), json!(v)))
        .collect();
    Ok(json!({ "areas": areas, "top_self": top }))
}

/// Exclusive (self) Ir per function of a callgrind profile (format version 1, name
/// compression): cost lines under `fn=`, except the line after `calls=`, which is the
/// inclusive cost of that call.
fn self_costs(profile: &str) -> Vec<(String, u64)> {
    let mut names: std::collections::HashMap<String, String> = Default::default();
    let mut costs: std::collections::HashMap<String, u64> = Default::default();
    let mut positions = 1;
    let mut current: Option<String> = None;
    let mut after_calls = false;
    // `(id) name` defines a compressed name, `(id)` refers to one.
    let mut name_of = |v: &str| -> String {
        let Some(rest) = v.strip_prefix('(') else {
            return v.to_owned();
        };
        let Some((id, name)) = rest.split_once(')') else {
            return v.to_owned();
        };
        let name = name.trim_start();
        if name.is_empty() {
            names.get(id).cloned().unwrap_or_else(|| v.to_owned())
        } else {
            names.insert(id.to_owned(), name.to_owned());
            name.to_owned()
        }
    };
    for line in profile.lines() {
        if let Some(v) = line.strip_prefix("positions:") {
            positions = v.split_whitespace().count().max(1);
        } else if let Some(v) = line.strip_prefix("fn=") {
            current = Some(name_of(v));
        } else if let Some(v) = line.strip_prefix("cfn=") {
            name_of(v);
        } else if line.starts_with("calls=") {
            after_calls = true;
        } else if line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '+' || c == '-' || c == '*')
        {
            if std::mem::take(&mut after_calls) {
                continue;
            }
            let ir = line
                .split_whitespace()
                .nth(positions)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if let Some(f) = &current {
                *costs.entry(f.clone()).or_default() += ir;
            }
        }
    }
    costs.into_iter().collect()
}

/// The area a function's own instructions belong to, by its symbol (and file) name. Order
/// matters: the first match wins.
pub fn area(function: &str) -> &'static str {
    let f = function.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| f.contains(n));
    if has(&[
        "malloc",
        "_int_free",
        "cfree",
        "free [",
        ":free",
        "realloc",
        "calloc",
        "memalign",
        "__rust_alloc",
        "__rust_dealloc",
        "__rust_realloc",
        "unlink_chunk",
        "tcache",
        "alloc::alloc::",
        "alloc::raw_vec::",
        "finish_grow",
    ]) {
        return "allocation (malloc/free, Vec growth)";
    }
    if has(&[
        "memcpy", "memmove", "memset", "memcmp", "bcmp", "memchr", "strlen",
    ]) {
        return "memcpy/memset/memchr (libc)";
    }
    if f.starts_with("ge_")
        || f.starts_with("fe_")
        || has(&[
            "ring_core",
            "ring::",
            "aes",
            "gcm",
            "sha256",
            "sha2::",
            "sha512",
            "ed25519",
            "x25519",
            "curve25519",
            "hpke",
            "hkdf",
            "hmac",
            "fiat_",
            "chacha",
            "poly1305",
            "bn_mul",
            "limbs_",
            "digest::",
            "ghash",
            "ecp_nistz",
            "p256",
            "p384",
        ])
    {
        return "crypto (SHA-256, AES-GCM, Ed25519, X25519/HPKE, HMAC)";
    }
    if has(&["classify", "policies::"]) {
        return "classification and policy";
    }
    if has(&["serde_json"]) {
        return "JSON (serde_json)";
    }
    if has(&["postcard", "serde::", "serde_core", "ciborium", "toml"]) {
        return "serde/postcard (store records)";
    }
    if has(&[
        "merkle",
        "store::audit",
        "store/src/audit",
        "audited",
        "checkpoints",
        "witness",
    ]) {
        return "audit (chain, Merkle tree)";
    }
    if has(&["sled::", "crossbeam", "crc32fast", "sled/"]) {
        return "sled (store engine)";
    }
    if has(&["parking_lot"]) {
        return "parking_lot locks (snapshot gate)";
    }
    if has(&[
        "rustls",
        "webpki",
        "hyper",
        "h2::",
        "httparse",
        "http::",
        "axum",
        "tower",
        "tokio_rustls",
        "rustls_pki_types",
    ]) {
        return "HTTP/TLS (hyper, h2, rustls)";
    }
    if has(&["tokio::", "mio::", "futures", "tracing"]) {
        return "async runtime, tracing (tokio, futures)";
    }
    if has(&["gateway_store", "gateway/store"]) {
        return "store (rest)";
    }
    if has(&["gateway_envelope", "gateway/envelope"]) {
        return "envelope framing";
    }
    if has(&["gateway"]) {
        return "gateway (rest)";
    }
    if has(&["core::", "alloc::", "std::", "hashbrown", "/rustc/"]) {
        return "std/core (fmt, hashing, collections)";
    }
    if has(&["libc.so", "ld-linux", "libc-", "libpthread"]) {
        return "libc (rest)";
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::{area, self_costs, totals};

    #[test]
    fn totals_and_self_costs_are_read_from_callgrind_output() {
        assert_eq!(
            totals("events: Ir\nfn=(1) main\n3 10\n\ntotals: 123456\n"),
            Some(123_456)
        );
        assert_eq!(totals("summary: 42\n"), Some(42));
        assert_eq!(totals("events: Ir\n"), None);
        // main: 10 + 2 of its own, and a call to _int_malloc costing 7 (inclusive: not main's);
        // _int_malloc: 7 of its own, named by its compressed id the second time.
        let profile = "positions: line\nevents: Ir\nfn=(1) main\n3 10\ncfn=(2) _int_malloc\n\
                       calls=1 5\n4 7\n+1 2\nfn=(2)\n5 7\ntotals: 19\n";
        let mut costs = self_costs(profile);
        costs.sort();
        assert_eq!(
            costs,
            vec![("_int_malloc".to_owned(), 7), ("main".to_owned(), 12)]
        );
        assert_eq!(area("_int_malloc"), "allocation (malloc/free, Vec growth)");
        assert_eq!(
            area("sled::pagecache::PageCache::link"),
            "sled (store engine)"
        );
        assert_eq!(
            area("ring_core_0_17_14__sha256_block_data_order_avx"),
            "crypto (SHA-256, AES-GCM, Ed25519, X25519/HPKE, HMAC)"
        );
    }
}
