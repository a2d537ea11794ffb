//! Classification throughput: `classify_fhir_bundle` (the byte-level scanner)
//! against the tree-based original (`classify_fhir_bundle_reference`) and the
//! serde_json streaming reader (`classify_fhir_stream`) on the same bytes,
//! then the cost of `classify_content` (format detection, classification,
//! patient resolution) per 100 KB of FHIR and per C-CDA document.
//!
//! `cargo run --release -p policies --example classify_bench [-- <seconds per run>]`
//! prints one JSON object per measurement on stdout, e.g.
//! `{"bench":"policies.classify","bundle":"...","bytes":1012331,"old_mb_s":30.1,
//!   "new_mb_s":120.4,"speedup":4.0,"stream_mb_s":100.2,"over_stream":1.2}`
//! (MB = 10^6 bytes) and
//! `{"bench":"policies.classify_content","input":"...","format":"cda","bytes":48145,
//!   "us_per_doc":310.2,"us_per_100kb":644.3,"mb_s":155.2}`. Bundles: the ~1 MB
//! Synthea bundle from tests/testdata/fhir/bundles, its first entries cut to
//! ~100 KB, and a ~190 KB non-Synthea bundle; documents: the four shared
//! C-CDA documents (tests/testdata/fhir/cda).
//!
//! `classify_bench --callgrind <10k|100k|1m> <runs> <content|stream|tree>`
//! classifies one of the transfer benchmark's payloads `runs` times for an
//! instruction count under callgrind (BENCHMARKS.md, issue 17):
//! `valgrind --tool=callgrind --toggle-collect='classify_bench::counted_classifications'
//!   target/release/examples/classify_bench --callgrind 100k 20 content`.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use policies::classify::{
    classify_content, classify_fhir_bundle, classify_fhir_bundle_reference,
    classify_fhir_reference, classify_fhir_stream,
};
use serde_json::Value;

const BUNDLES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/testdata/fhir/bundles/"
);
const CDA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/testdata/fhir/cda/");
const CDA_DOCUMENTS: [&str; 5] = [
    "CCD1_C-CDA2.1_CCD.xml",
    "CCD2_C-CDA2.1_CCD.xml",
    "Consultation_Note_C-CDA2.1.xml",
    "History_and_Physical_C-CDA2.1.xml",
    "Referral_Note_C-CDA2.1.xml",
];
const ONE_MB: &str = "Gilberto_Orosco_6ece62f3-283c-4387-aa9b-affba8ebf4c3.json";
const CLEMENTE: &str = "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json";

/// The transfer benchmark's payloads (tests/bench/loadgen/src/setup.rs `payloads`, rebuilt the
/// same way so that the figures compare): Clemente Kreiger's bundle as compact JSON, its Patient
/// entry first, then as many of its other entries (in order; for `1m` repeated, ids suffixed
/// `-rN`) as reach the target size. 10 823, 92 385 and 1 000 597 bytes.
fn transfer_payload(label: &str) -> Result<Vec<u8>, String> {
    let path = format!("{BUNDLES}{CLEMENTE}");
    let raw = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let base: Value = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
    let entries = base["entry"].as_array().cloned().unwrap_or_default();
    let is_patient = |e: &Value| e["resource"]["resourceType"] == "Patient";
    let (target, rounds) = match label {
        "10k" => (10_000, 1),
        "100k" => (100_000, 1),
        "1m" => (1_000_000, 16),
        _ => return Err(format!("unknown payload {label} (10k, 100k, 1m)")),
    };
    let mut pool = Vec::new();
    for round in 0..rounds {
        for e in entries.iter().filter(|e| !is_patient(e)) {
            let mut e = e.clone();
            if round > 0 {
                if let Some(id) = e["resource"]["id"]
                    .as_str()
                    .map(|s| format!("{s}-r{round}"))
                {
                    e["resource"]["id"] = Value::String(id);
                }
                if let Some(url) = e["fullUrl"].as_str().map(|s| format!("{s}-r{round}")) {
                    e["fullUrl"] = Value::String(url);
                }
            }
            pool.push(e);
        }
    }
    let mut chosen: Vec<Value> = entries.iter().filter(|e| is_patient(e)).cloned().collect();
    let mut bundle = base.clone();
    bundle["entry"] = Value::Array(chosen.clone());
    let json = |v: &Value| serde_json::to_vec(v).map_err(|e| e.to_string());
    let mut size = json(&bundle)?.len();
    for e in pool {
        if size >= target {
            break;
        }
        size += json(&e)?.len() + 1;
        chosen.push(e);
    }
    bundle["entry"] = Value::Array(chosen);
    json(&bundle)
}

/// The FHIR readers a run can pick.
fn reader(name: &str) -> Option<fn(&[u8]) -> bool> {
    match name {
        "content" => Some(|b| classify_content(b).is_ok()),
        "stream" => Some(|b| classify_fhir_stream(b).is_ok()),
        "tree" => Some(|b| classify_fhir_reference(b).is_ok()),
        _ => None,
    }
}

/// The classifications callgrind counts (`--toggle-collect` on this function's name), after
/// one outside it that builds the code table.
#[inline(never)]
fn counted_classifications(bytes: &[u8], runs: u64, f: fn(&[u8]) -> bool) -> u64 {
    let mut ok = 0;
    for _ in 0..runs {
        ok += u64::from(f(black_box(bytes)));
    }
    ok
}

/// `--callgrind <10k|100k|1m> <runs> <content|stream|tree>`: classify one transfer payload
/// `runs` times, for an instruction count per classification under callgrind.
fn callgrind(args: &[String]) -> ExitCode {
    let [label, runs, name] = args else {
        eprintln!("usage: classify_bench --callgrind <10k|100k|1m> <runs> <content|stream|tree>");
        return ExitCode::from(64);
    };
    let (Ok(runs), Some(f)) = (runs.parse::<u64>(), reader(name)) else {
        eprintln!("usage: classify_bench --callgrind <10k|100k|1m> <runs> <content|stream|tree>");
        return ExitCode::from(64);
    };
    let bytes = match transfer_payload(label) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("classify_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !f(&bytes) {
        eprintln!("classify_bench: {label} is refused by the {name} reader");
        return ExitCode::FAILURE;
    }
    let ok = counted_classifications(&bytes, runs, f);
    println!(
        "{}",
        serde_json::json!({"bench": "policies.classify_callgrind", "payload": label,
            "bytes": bytes.len(), "reader": name, "runs": runs, "ok": ok})
    );
    ExitCode::SUCCESS
}

/// The first entries of `bytes` (a Bundle) whose re-serialization stays under `limit`.
fn cut_to(bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut bundle: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let entries = bundle
        .get_mut("entry")
        .and_then(serde_json::Value::as_array_mut)
        .ok_or("no entries")?;
    let all = std::mem::take(entries);
    let mut out = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
    for entry in all {
        let entries = bundle
            .get_mut("entry")
            .and_then(serde_json::Value::as_array_mut)
            .ok_or("no entries")?;
        entries.push(entry);
        let next = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
        if next.len() > limit {
            break;
        }
        out = next;
    }
    Ok(out)
}

/// MB/s of `f` on `bytes`, over at least `budget` of repeated runs.
fn throughput<T>(bytes: &[u8], budget: Duration, f: fn(&[u8]) -> Option<T>) -> f64 {
    let start = Instant::now();
    let mut runs = 0u64;
    while runs < 3 || start.elapsed() < budget {
        black_box(f(black_box(bytes)));
        runs += 1;
    }
    (bytes.len() as f64 * runs as f64) / start.elapsed().as_secs_f64() / 1e6
}

/// One `classify_content` measurement: per document, per 100 KB and MB/s.
fn content_line(name: &str, bytes: &[u8], budget: Duration) -> Result<String, String> {
    let facts = classify_content(bytes).map_err(|e| format!("{name}: {e}"))?;
    let mb_s = throughput(bytes, budget, |b| classify_content(b).ok());
    let us_per_doc = bytes.len() as f64 / mb_s;
    Ok(serde_json::json!({
        "bench": "policies.classify_content",
        "input": name,
        "format": facts.format.as_str(),
        "bytes": bytes.len(),
        "us_per_doc": (us_per_doc * 10.0).round() / 10.0,
        "us_per_100kb": (100_000.0 / mb_s * 10.0).round() / 10.0,
        "mb_s": (mb_s * 10.0).round() / 10.0,
    })
    .to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--callgrind") {
        return callgrind(args.get(1..).unwrap_or_default());
    }
    let seconds = match std::env::args().nth(1).map(|s| s.parse::<f64>()) {
        None => 2.0,
        Some(Ok(s)) if s > 0.0 => s,
        Some(_) => {
            eprintln!("usage: classify_bench [seconds per run]");
            return ExitCode::from(64);
        }
    };
    let budget = Duration::from_secs_f64(seconds);
    let load =
        |file: &str| std::fs::read(format!("{BUNDLES}{file}")).map_err(|e| format!("{file}: {e}"));
    let inputs = load(ONE_MB).and_then(|one_mb| {
        Ok(vec![
            ("synthea-100k".to_owned(), cut_to(&one_mb, 100_000)?),
            ("synthea-1m".to_owned(), one_mb),
            (
                "practitionerInformation".to_owned(),
                load("practitionerInformation1559319163815.json")?,
            ),
        ])
    });
    let inputs = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("classify_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, bytes) in &inputs {
        let new = classify_fhir_bundle(bytes);
        if new.is_err() || new != classify_fhir_bundle_reference(bytes) {
            eprintln!("classify_bench: {name}: implementations disagree or fail");
            return ExitCode::FAILURE;
        }
        let old_mb_s = throughput(bytes, budget, |b| classify_fhir_bundle_reference(b).ok());
        let new_mb_s = throughput(bytes, budget, |b| classify_fhir_bundle(b).ok());
        let stream_mb_s = throughput(bytes, budget, |b| classify_fhir_stream(b).ok());
        println!(
            "{}",
            serde_json::json!({
                "bench": "policies.classify",
                "bundle": name,
                "bytes": bytes.len(),
                "old_mb_s": (old_mb_s * 10.0).round() / 10.0,
                "new_mb_s": (new_mb_s * 10.0).round() / 10.0,
                "speedup": (new_mb_s / old_mb_s * 100.0).round() / 100.0,
                "stream_mb_s": (stream_mb_s * 10.0).round() / 10.0,
                "over_stream": (new_mb_s / stream_mb_s * 100.0).round() / 100.0,
            })
        );
    }
    let mut content: Vec<(String, Vec<u8>)> = inputs
        .iter()
        .filter(|(name, _)| name == "synthea-100k")
        .cloned()
        .collect();
    for file in CDA_DOCUMENTS {
        match std::fs::read(format!("{CDA}{file}")) {
            Ok(bytes) => content.push((file.to_owned(), bytes)),
            Err(e) => {
                eprintln!("classify_bench: {file}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for (name, bytes) in &content {
        match content_line(name, bytes, budget) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("classify_bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
