//! `gateway status [--json]`: one screen for IT, from `GET /v1/status`: who this node is and
//! when its certificates and trust files run out, which peers are reachable and what waits
//! for each, and the latest delivery errors.

use http::Method;
use serde_json::Value;

use super::args::ConfigArg;
use super::call::{client, ok_json};
use super::output::print_json;
use super::{outln, Failure};

pub async fn status(config: &ConfigArg, json: bool) -> Result<(), Failure> {
    let c = client(config).await?;
    let mut s = ok_json(&c, Method::GET, "/v1/status", None).await?;
    // Not running: the API answered in-process from the data dir, which holds the queue but
    // not which peers the node found unreachable (circuits live in memory).
    let running = !c.is_offline();
    if let Some(o) = s.as_object_mut() {
        o.insert("node_running".to_owned(), Value::Bool(running));
    }
    if json {
        return print_json(&s);
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    outln!(
        "facility     {}  (gateway {})",
        text(&s["facility"]),
        text(&s["version"])
    )?;
    if !running {
        outln!("node         not running: read from its data dir; reachability of peers unknown")?;
    }
    let id = &s["identity"];
    outln!(
        "certificate  sha256 {}  expires {}",
        text(&id["tls_certificate_sha256"]),
        when(&id["certificate_expires"])
    )?;
    outln!("signing key  {}", text(&id["signing_key"]))?;
    outln!(
        "ca           expires {}",
        when(&s["ca"]["certificate_expires"])
    )?;
    let dir = &s["directory"];
    outln!(
        "directory    version {}, issued {} ({} ago), expires {}  {}",
        dir["version"],
        text(&dir["issued"]),
        span(dir["age_secs"].as_i64()),
        when(&dir["expires"]),
        verdict(&dir["fresh"], "EXPIRED")
    )?;
    let crl = &s["crl"];
    outln!(
        "crl          issued {} ({} ago), nextUpdate {}, refused after {}  {}",
        text(&crl["issued"]),
        span(crl["age_secs"].as_i64()),
        when(&crl["next_update"]),
        when(&crl["refused_after"]),
        verdict(&crl["fresh"], "STALE")
    )?;
    outln!("")?;
    outln!(
        "{:<24} {:<10} {:>8} {:>10}  NOTE",
        "PEER",
        "REACHABLE",
        "PENDING",
        "OLDEST"
    )?;
    for p in s["peers"].as_array().into_iter().flatten() {
        let reachable = match (running, p["reachable"].as_bool()) {
            (false, _) => "?",
            (true, Some(true)) => "yes",
            (true, _) => "NO",
        };
        let mut note = Vec::new();
        if p["active"].as_bool() != Some(true) {
            note.push("not active in the directory".to_owned());
        }
        if let Some(c) = p["circuit"].as_object() {
            note.push(format!(
                "unreachable since {}, {} failed probes, next probe {}",
                c.get("down_since").map_or("-".to_owned(), text),
                c.get("failed_probes").unwrap_or(&Value::Null),
                c.get("next_probe").map_or("-".to_owned(), text)
            ));
        }
        // Values, not their JSON (whose Display ignores the column widths).
        let row = format!(
            "{:<24} {:<10} {:>8} {:>10}  {}",
            text(&p["facility"]),
            reachable,
            p["pending"].as_u64().unwrap_or(0),
            p["oldest_pending_age_secs"]
                .as_i64()
                .map_or("-".to_owned(), |s| span(Some(s))),
            note.join("; ")
        );
        outln!("{}", row.trim_end())?;
    }
    outln!("")?;
    let errors = s["last_errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        return outln!("last errors  none");
    }
    outln!("last errors (pending and recently failed transfers, newest first):")?;
    for e in &errors {
        // A transfer parked behind its peer's probe has an error and no attempt of its own.
        let attempts = match e["attempts"].as_u64() {
            Some(n) if n > 0 => format!(" after attempt {n}"),
            _ => String::new(),
        };
        outln!(
            "  {}  {}  {}  {}{}: {}",
            text(&e["at"]),
            text(&e["peer"]),
            text(&e["transfer_id"]),
            text(&e["state"]),
            attempts,
            text(&e["error"])
        )?;
    }
    Ok(())
}

/// `{at, in_secs}` as "2027-01-01T00:00:00Z (in 29d 3h)" or "(… ago)".
fn when(v: &Value) -> String {
    let Some(at) = v["at"].as_str() else {
        return "unknown".to_owned();
    };
    match v["in_secs"].as_i64() {
        Some(s) if s >= 0 => format!("{at} (in {})", span(Some(s))),
        Some(s) => format!("{at} ({} ago)", span(Some(-s))),
        None => at.to_owned(),
    }
}

fn verdict(fresh: &Value, bad: &'static str) -> &'static str {
    if fresh.as_bool() == Some(true) {
        "ok"
    } else {
        bad
    }
}

/// A duration for a person: "3d 4h", "5h 2m", "7m 12s", "40s".
fn span(secs: Option<i64>) -> String {
    let Some(s) = secs else {
        return "-".to_owned();
    };
    let s = s.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn spans_read_as_a_person_says_them() {
        assert_eq!(span(Some(40)), "40s");
        assert_eq!(span(Some(432)), "7m 12s");
        assert_eq!(span(Some(3 * 3600 + 120)), "3h 2m");
        assert_eq!(span(Some(2 * 86_400 + 5 * 3600)), "2d 5h");
        assert_eq!(span(None), "-");
    }
}
