//! `bench-loadgen run --allocations`: heap allocations and bytes per transfer on each node at
//! ~10 KB, ~100 KB and ~1 MB, counted by valgrind's DHAT on the gateway binary as built (no
//! special build, no allocator of our own), and the allocation sites that make them (issue 17).
//!
//! DHAT writes its profile only when the process exits, and has no monitor command to zero or
//! dump it, so a window is the difference of two runs: for each payload, one federation is
//! started under `valgrind --tool=dhat`, warmed up with that payload, then sends the measured
//! transfers one after the other and stops (SIGTERM: the node drains and exits, DHAT writes
//! its profile); a second, fresh federation does the same but sleeps for as long as the first
//! one's window took instead of sending. Start-up, warm-up, idle background and shutdown are
//! in both runs, so the difference divided by the transfers is what the transfers allocated.
//! Allocation sites are compared the same way, keyed by their call stack.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::instructions::{
    chosen_payloads, start_under_valgrind, tool_output, warm_up, SETTLE, TRANSFER_TIMEOUT,
};
use crate::load;
use crate::procs::Proc;
use crate::report::{gateway_target, log, Row};
use crate::setup::{self, Payload};
use crate::{BoxError, RunArgs};

/// Frames kept per allocation (`--num-callers`): enough to get past the allocator and
/// `Vec`/`HashMap` growth into the code that asked for the memory.
const CALLERS: u32 = 24;

/// Non-allocator frames that name a site in the report.
const SITE_FRAMES: usize = 2;

/// Sites listed per node.
const TOP_SITES: usize = 15;

/// One DHAT profile, summed: totals and, per allocation site, blocks and bytes.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Profile {
    pub blocks: u64,
    pub bytes: u64,
    /// Site (its first [`SITE_FRAMES`] frames outside the allocator) → (blocks, bytes).
    pub sites: HashMap<String, (u64, u64)>,
}

/// Reads a DHAT (file version 2, heap mode) JSON profile: `pps` (program points: `tb` total
/// bytes, `tbk` total blocks, `fs` frame indices into `ftbl`) and `ftbl` (frame names).
pub(crate) fn parse_dhat(text: &str) -> Result<Profile, BoxError> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("dhat profile: {e}"))?;
    if v["mode"].as_str().is_some_and(|m| m != "heap") {
        return Err(format!("dhat profile: mode {} (want heap)", v["mode"]).into());
    }
    let ftbl: Vec<&str> = v["ftbl"]
        .as_array()
        .ok_or("dhat profile: no ftbl")?
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    let mut p = Profile::default();
    for pp in v["pps"].as_array().ok_or("dhat profile: no pps")? {
        let bytes = pp["tb"].as_u64().unwrap_or(0);
        let blocks = pp["tbk"].as_u64().unwrap_or(0);
        p.bytes += bytes;
        p.blocks += blocks;
        let frames: Vec<String> = pp["fs"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .filter_map(|i| i.as_u64())
                    .filter_map(|i| ftbl.get(usize::try_from(i).ok()?))
                    .map(|f| frame_name(f))
                    .collect()
            })
            .unwrap_or_default();
        let site = site(&frames);
        let e = p.sites.entry(site).or_default();
        e.0 += blocks;
        e.1 += bytes;
    }
    Ok(p)
}

/// A frame without its address: `0x4C2F: gateway::x (src/x.rs:12)` → `gateway::x (src/x.rs:12)`
/// (addresses may differ between two runs; names and lines do not).
fn frame_name(frame: &str) -> String {
    match frame.split_once(": ") {
        Some((addr, rest)) if addr.starts_with("0x") => rest.to_owned(),
        _ => frame.to_owned(),
    }
}

/// Whether a frame names code that wanted the memory: a function with a full path outside
/// the standard library (`policies::classify::scan`, `<hyper::proto::h1::Conn<…>>::poll`). The
/// allocator, `Vec`/`String`/`HashMap` growth and the inlined frames DHAT names by their
/// generic instance only (`with_capacity_in<u8, …>`, `UnknownInlinedFun`) do not.
fn is_caller(frame: &str) -> bool {
    let name = frame.split(" (").next().unwrap_or(frame);
    let path = name.trim_start_matches('<');
    let Some((krate, _)) = path.split_once("::") else {
        return false;
    };
    !krate.contains(['<', ' ', '{'])
        && !["alloc", "core", "std", "hashbrown", "__rust", "__rdl"].contains(&krate)
}

/// The first [`SITE_FRAMES`] callers (see [`is_caller`]), innermost first, joined by " ← ";
/// for a stack without one, its first frame past `malloc`.
fn site(frames: &[String]) -> String {
    let callers: Vec<&str> = frames
        .iter()
        .map(String::as_str)
        .filter(|f| is_caller(f))
        .take(SITE_FRAMES)
        .collect();
    if callers.is_empty() {
        frames
            .iter()
            .find(|f| !f.starts_with("malloc ") && !f.starts_with("realloc ") && *f != "[root]")
            .or(frames.last())
            .cloned()
            .unwrap_or_else(|| "[unknown]".to_owned())
    } else {
        callers.join(" ← ")
    }
}

/// A window's allocations per transfer: `with` minus `without`, divided by the transfers.
#[derive(Debug)]
pub(crate) struct Diff {
    pub blocks: f64,
    pub bytes: f64,
    /// The sites with the most blocks per transfer, and those with the most bytes (sites that
    /// allocate less in `with` are left out).
    pub top_by_blocks: Vec<Value>,
    pub top_by_bytes: Vec<Value>,
    /// Blocks and bytes per transfer by the crate of each site's innermost caller.
    pub by_crate: Vec<Value>,
}

/// The crate a site's innermost caller belongs to (`sled`, `gateway_store`, …).
fn crate_of(site: &str) -> &str {
    let name = site.trim_start_matches('<');
    match name.split_once("::") {
        Some((krate, _)) if !krate.contains(['<', ' ', '{', '(']) => krate,
        _ => "(libc, std: no caller with a path)",
    }
}

pub(crate) fn difference(with: &Profile, without: &Profile, transfers: u32, top: usize) -> Diff {
    let k = f64::from(transfers.max(1));
    let blocks = (with.blocks as f64 - without.blocks as f64) / k;
    let bytes = (with.bytes as f64 - without.bytes as f64) / k;
    let mut sites: Vec<(&String, f64, f64)> = with
        .sites
        .iter()
        .map(|(s, (b, n))| {
            let (b0, n0) = without.sites.get(s).copied().unwrap_or((0, 0));
            (s, (*b as f64 - b0 as f64) / k, (*n as f64 - n0 as f64) / k)
        })
        .filter(|(_, b, n)| *b > 0.0 || *n > 0.0)
        .collect();
    let mut crates: Vec<(&str, f64, f64)> = Vec::new();
    for (s, b, n) in &sites {
        let c = crate_of(s);
        match crates.iter_mut().find(|e| e.0 == c) {
            Some(e) => {
                e.1 += b;
                e.2 += n;
            }
            None => crates.push((c, *b, *n)),
        }
    }
    crates.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let as_json = |v: &[(&String, f64, f64)]| -> Vec<Value> {
        v.iter()
            .take(top)
            .map(
                |(s, b, n)| json!({ "site": s, "blocks_per_transfer": b, "bytes_per_transfer": n }),
            )
            .collect()
    };
    sites.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let top_by_blocks = as_json(&sites);
    sites.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    let top_by_bytes = as_json(&sites);
    Diff {
        blocks,
        bytes,
        top_by_blocks,
        top_by_bytes,
        by_crate: crates
            .into_iter()
            .map(|(c, b, n)| json!({ "crate": c, "blocks_per_transfer": b, "bytes_per_transfer": n }))
            .collect(),
    }
}

/// One federation's run under DHAT: the two nodes' profiles and the window's length.
struct Lifecycle {
    /// Sender, receiver.
    profiles: Vec<Profile>,
    window_secs: f64,
}

pub async fn run(args: &RunArgs, work: &Path, rows: &mut Vec<Row>) -> Result<(), BoxError> {
    let payloads = chosen_payloads(
        &args.testdata,
        &args.sizes,
        args.instr_transfers,
        args.instr_transfers_1m,
    )?;
    let version = tool_output(&args.valgrind, &["--version"])?;
    log(format!(
        "allocations: both nodes under {version} dhat; per payload one run with {} warm-up + the measured transfers, one with the warm-up and an idle window as long",
        args.instr_warmup
    ));
    for (payload, transfers) in &payloads {
        let with = lifecycle(args, work, payload, Some(*transfers), 0.0).await?;
        log(format!(
            "allocations {}: {transfers} transfers in {:.1} s under dhat; the run without transfers next",
            payload.label, with.window_secs
        ));
        let without = lifecycle(args, work, payload, None, with.window_secs).await?;
        rows.push(row(args, &version, payload, *transfers, &with, &without));
    }
    Ok(())
}

/// Starts a fresh federation under DHAT, warms it up with `payload`, then sends `transfers`
/// (or, with `None`, sleeps `idle_secs`), stops both nodes and reads their profiles.
async fn lifecycle(
    args: &RunArgs,
    work: &Path,
    payload: &Payload,
    transfers: Option<u32>,
    idle_secs: f64,
) -> Result<Lifecycle, BoxError> {
    let what = if transfers.is_some() { "with" } else { "idle" };
    let dir = work.join(format!("dhat-{}-{what}", payload.label));
    std::fs::create_dir_all(&dir)?;
    let fed = setup::create_federation(&dir)?;
    let mut nodes: Vec<(Proc, std::path::PathBuf)> = Vec::new();
    // Receiver first (the sender probes its peer at start-up); sender first in the result.
    for node in [&fed.receiver, &fed.sender] {
        let out = dir.join(format!("dhat.{}.json", node.id));
        let tool = [
            "--tool=dhat".to_owned(),
            format!("--dhat-out-file={}", out.display()),
            format!("--num-callers={CALLERS}"),
        ];
        nodes.push((start_under_valgrind(args, &dir, node, &tool, "dhat")?, out));
    }
    nodes.reverse();
    let target = gateway_target(&fed, payload, "fhir");
    let ct = "application/fhir+json";
    warm_up(&target, payload, ct, args.instr_warmup, SETTLE).await?;
    let started = Instant::now();
    match transfers {
        Some(n) => {
            load::send_sequential(&target, &payload.bytes, ct, n, TRANSFER_TIMEOUT).await?;
            tokio::time::sleep(SETTLE).await;
        }
        None => tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await,
    }
    let window_secs = started.elapsed().as_secs_f64();
    let mut profiles = Vec::new();
    let role_dir = args.out.join("dhat");
    std::fs::create_dir_all(&role_dir)?;
    for ((mut proc, out), role) in nodes.into_iter().zip(["sender", "receiver"]) {
        // SIGTERM: the node drains and exits, and DHAT writes the profile on the way out.
        proc.stop(Duration::from_secs(180));
        let text = std::fs::read_to_string(&out).map_err(|e| {
            format!(
                "{}: no dhat profile {} ({e}); did it exit cleanly?",
                proc.name,
                out.display()
            )
        })?;
        let _ = std::fs::copy(
            &out,
            role_dir.join(format!("{role}.{}.{what}.dhat.json", payload.label)),
        );
        profiles.push(parse_dhat(&text).map_err(|e| format!("{}: {e}", proc.name))?);
    }
    Ok(Lifecycle {
        profiles,
        window_secs,
    })
}

fn row(
    args: &RunArgs,
    version: &str,
    payload: &Payload,
    transfers: u32,
    with: &Lifecycle,
    without: &Lifecycle,
) -> Row {
    let mut detail = serde_json::Map::new();
    detail.insert("tool".into(), json!(format!("{version} --tool=dhat")));
    detail.insert("gateway".into(), json!(args.gateway.display().to_string()));
    detail.insert("warmup_transfers".into(), json!(args.instr_warmup));
    detail.insert("transfers".into(), json!(transfers));
    detail.insert("window_secs".into(), json!(with.window_secs));
    detail.insert("idle_secs".into(), json!(without.window_secs));
    let mut summary = Vec::new();
    for (i, name) in ["sender", "receiver"].into_iter().enumerate() {
        let (w, o) = (&with.profiles[i], &without.profiles[i]);
        let d = difference(w, o, transfers, TOP_SITES);
        let (blocks, bytes) = (d.blocks, d.bytes);
        summary.push(format!("{name} {blocks:.0} allocations, {bytes:.0} B"));
        detail.insert(
            name.into(),
            json!({
                "allocations_per_transfer": blocks,
                "bytes_per_transfer": bytes,
                "with_transfers": { "blocks": w.blocks, "bytes": w.bytes },
                "without_transfers": { "blocks": o.blocks, "bytes": o.bytes },
                "top_sites": d.top_by_blocks,
                "top_sites_by_bytes": d.top_by_bytes,
                "by_crate": d.by_crate,
            }),
        );
    }
    log(format!(
        "allocations per {} transfer: {}",
        payload.label,
        summary.join("; ")
    ));
    Row {
        scenario: format!("allocations_{}", payload.label),
        payload_bytes: Some(payload.bytes.len() as u64),
        payload_source: Some(payload.source.clone()),
        concurrency: Some(1),
        ours_completed: Some(u64::from(transfers)),
        detail: Some(Value::Object(detail)),
        ..Row::default()
    }
}

/// The allocation rows as a table, and the top sites of the ~100 KB row.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario.starts_with("allocations_"))
        .collect();
    if rows.is_empty() {
        return s;
    }
    let num = |d: &Value, node: &str, k: &str| d[node][k].as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        s,
        "\n| heap allocations per transfer (DHAT) | bytes | transfers | sender allocs | sender bytes | receiver allocs | receiver bytes |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        let Some(d) = &r.detail else { continue };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.scenario,
            r.payload_bytes.unwrap_or(0),
            r.ours_completed.unwrap_or(0),
            num(d, "sender", "allocations_per_transfer"),
            num(d, "sender", "bytes_per_transfer"),
            num(d, "receiver", "allocations_per_transfer"),
            num(d, "receiver", "bytes_per_transfer"),
        );
    }
    for r in rows.iter().filter(|r| r.scenario == "allocations_100k") {
        let Some(d) = &r.detail else { continue };
        for node in ["sender", "receiver"] {
            let _ = writeln!(
                s,
                "\n{node}, ~100 KB, allocations per transfer by the crate of the innermost caller: {}",
                d[node]["by_crate"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["blocks_per_transfer"].as_f64().unwrap_or(0.0) >= 0.5)
                    .map(|c| format!(
                        "{} {:.0} ({:.0} B)",
                        c["crate"].as_str().unwrap_or(""),
                        c["blocks_per_transfer"].as_f64().unwrap_or(f64::NAN),
                        c["bytes_per_transfer"].as_f64().unwrap_or(f64::NAN)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(
                s,
                "{node}, ~100 KB, most bytes per transfer: {}",
                d[node]["top_sites_by_bytes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(6)
                    .map(|c| format!(
                        "`{}` {:.0} B",
                        c["site"].as_str().unwrap_or(""),
                        c["bytes_per_transfer"].as_f64().unwrap_or(f64::NAN)
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        for node in ["sender", "receiver"] {
            let _ = writeln!(
                s,
                "\n| {node}: top sites per ~100 KB transfer | allocs | bytes |\n|---|---:|---:|"
            );
            for site in d[node]["top_sites"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "| `{}` | {:.1} | {:.0} |",
                    site["site"].as_str().unwrap_or(""),
                    site["blocks_per_transfer"].as_f64().unwrap_or(f64::NAN),
                    site["bytes_per_transfer"].as_f64().unwrap_or(f64::NAN),
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{difference, parse_dhat, site};

    /// The shape valgrind 3.19's DHAT writes (`--dhat-out-file`), cut to three program points.
    const PROFILE: &str = r#"{"dhatFileVersion":2,"mode":"heap","verb":"Allocated",
      "bklt":true,"bkacc":true,"tu":"instrs","Mtu":"instr","tuth":500,
      "cmd":"gateway run --config node.toml","pid":4242,"te":1000,"tg":900,
      "pps":[
        {"tb":1024,"tbk":4,"tl":10,"mb":256,"mbk":1,"gb":256,"gbk":1,"eb":0,"ebk":0,
         "rb":0,"wb":0,"fs":[1,2,3,4,5,6,7]},
        {"tb":100,"tbk":10,"tl":1,"mb":10,"mbk":1,"gb":10,"gbk":1,"eb":0,"ebk":0,
         "rb":0,"wb":0,"fs":[1,8,9]},
        {"tb":50,"tbk":5,"tl":1,"mb":10,"mbk":1,"gb":10,"gbk":1,"eb":0,"ebk":0,
         "rb":0,"wb":0,"fs":[1,8,9]}
      ],
      "ftbl":["[root]",
        "0x48407B4: malloc (in /usr/libexec/valgrind/vgpreload_dhat-amd64-linux.so)",
        "0x2A1B3C: UnknownInlinedFun (library/alloc/src/raw_vec/mod.rs:464)",
        "0x3B4C5D: with_capacity_in<u8, alloc::alloc::Global> (library/alloc/src/vec/mod.rs:965)",
        "0x3B4D00: <alloc::vec::Vec<T> as core::clone::Clone>::clone (library/alloc/src/vec/mod.rs:3749)",
        "0x3B4D10: gateway_store::spool::SpoolWriter::new (gateway/store/src/spool.rs:88)",
        "0x3B4D20: {closure#0}<gateway::receive::inbox::Store> (gateway/src/receive/inbox.rs:39)",
        "0x3B4D30: gateway::receive::inbox::store (gateway/src/receive/inbox.rs:40)",
        "0x4C5D6E: policies::classify::scan (policies/src/classify.rs:12)",
        "0x4C5E00: policies::classify::classify (policies/src/classify.rs:30)"]}"#;

    #[test]
    fn dhat_profiles_are_summed_by_site_past_the_allocator() {
        let p = parse_dhat(PROFILE).unwrap();
        assert_eq!((p.blocks, p.bytes), (19, 1174));
        let spool = "gateway_store::spool::SpoolWriter::new (gateway/store/src/spool.rs:88) \
                     ← gateway::receive::inbox::store (gateway/src/receive/inbox.rs:40)";
        assert_eq!(p.sites.get(spool), Some(&(4, 1024)));
        // Two program points with the same stack are one site.
        let classify = "policies::classify::scan (policies/src/classify.rs:12) ← \
                        policies::classify::classify (policies/src/classify.rs:30)";
        assert_eq!(p.sites.get(classify), Some(&(15, 150)));
        assert_eq!(p.sites.len(), 2);
        assert_eq!(site(&["malloc (x)".to_owned()]), "malloc (x)");
        assert!(parse_dhat(r#"{"mode":"copy","pps":[],"ftbl":[]}"#).is_err());
        assert!(parse_dhat("not json").is_err());
    }

    #[test]
    fn a_window_is_the_run_with_transfers_minus_the_run_without() {
        let with = parse_dhat(PROFILE).unwrap();
        let mut without = parse_dhat(PROFILE).unwrap();
        // The run without transfers made the same start-up allocations but none of the spool
        // ones: 2 transfers account for 4 blocks and 1024 bytes.
        without.blocks -= 4;
        without.bytes -= 1024;
        without.sites.retain(|s, _| !s.contains("spool"));
        let d = difference(&with, &without, 2, 10);
        assert_eq!((d.blocks, d.bytes), (2.0, 512.0));
        assert_eq!(d.top_by_blocks.len(), 1);
        assert_eq!(d.top_by_blocks[0]["blocks_per_transfer"], 2.0);
        assert_eq!(d.top_by_bytes[0]["bytes_per_transfer"], 512.0);
        assert!(d.top_by_blocks[0]["site"]
            .as_str()
            .unwrap()
            .starts_with("gateway_store::spool"));
        assert_eq!(d.by_crate.len(), 1);
        assert_eq!(d.by_crate[0]["crate"], "gateway_store");
    }
}
