//! Listings (transfers, inbox, audit log) are served a page at a time, so that a node's
//! history, which grows without bound, never has to fit in one response: `limit` (default
//! 1000, at most 10 000), a cursor (`after` a transfer id, `since` an audit seq) and an RFC 8288
//! `Link: <…>; rel="next"` header. The CLI follows the pages to the end.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use gateway::cli::client::next_link;
use http::{header, Method, StatusCode};
use http_body_util::BodyExt;
use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{bundle, gateway_cli, patient_id, Fed, Node};

/// The page size a listing gets without a `limit` (what the CLI reads); the log below must
/// outgrow it.
const CLI_PAGE: usize = gateway::api::DEFAULT_PAGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_paged_and_the_cli_reads_every_page() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let record = bundle("Bundle-father.json");
    if let Some(patient) = patient_id(&record) {
        a.consent_for_treatment(&patient, "clinic-b").await;
    }
    let mut sent = BTreeSet::new();
    for _ in 0..210 {
        sent.insert(a.send_bundle("clinic-b", &record).await.transfer_id());
    }
    for id in &sent {
        a.wait_state(id, "delivered", Duration::from_secs(60)).await;
    }

    // The API: pages of 64 joined by their Link headers hold every transfer once, newest first.
    let mut path = Some("/v1/transfers?limit=64".to_owned());
    let (mut listed, mut pages) = (Vec::new(), 0);
    while let Some(p) = path.take() {
        let (status, link, page) = get_with_link(&a, &p).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page = page.as_array().unwrap().clone();
        assert!(page.len() <= 64);
        path = link.map(|l| next_link(&l).unwrap_or_else(|| panic!("no rel=next: {l}")));
        listed.extend(page);
        pages += 1;
    }
    assert_eq!(pages, 4, "210 transfers in pages of 64");
    let ids: Vec<String> = listed
        .iter()
        .map(|t| t["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), sent);
    assert_eq!(ids.len(), sent.len(), "no transfer listed twice");
    let times: Vec<u64> = listed
        .iter()
        .map(|t| t["created_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");

    // Without a limit a listing returns one default page; a bad limit or cursor is refused.
    let audit_len = a.cli(&["audit", "verify"]).1;
    let (status, link, first) = get_with_link(&a, "/v1/audit").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        first.as_array().unwrap().len(),
        CLI_PAGE,
        "log: {audit_len}"
    );
    // Entries the verification counted, its own `audit-read` entry the last of them.
    let verified: u64 = audit_len
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    // The link carries the listing's snapshot: the seq of this page's own `audit-read` entry.
    assert_eq!(
        link.as_deref(),
        Some(
            format!(
                "</v1/audit?since=1000&until={}&limit=1000>; rel=\"next\"",
                verified + 1
            )
            .as_str()
        )
    );
    let patient = patient_id(&record).unwrap();
    let (_, link, page) = get_with_link(&a, &format!("/v1/audit?patient={patient}&limit=5")).await;
    let last_seq = page.as_array().unwrap().last().unwrap()["seq"].clone();
    assert_eq!(
        link.unwrap(),
        format!(
            "</v1/audit?patient={patient}&since={last_seq}&until={}&limit=5>; rel=\"next\"",
            verified + 2
        ),
        "the next page keeps the filter"
    );
    for bad in [
        "/v1/transfers?limit=0",
        "/v1/transfers?limit=10001",
        "/v1/audit?limit=10001",
        "/v1/inbox?after=not-an-id",
    ] {
        let (status, body) = a.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = a
        .get(&format!("/v1/transfers?after={}", "ab".repeat(16)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("after"), "{body}");

    // The CLI follows every page: the whole audit log, more than one page of it, in order.
    let (code, out, err) = a.cli(&["audit", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(
        entries.len() > CLI_PAGE,
        "the log must span pages: {}",
        entries.len()
    );
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // What was verified, then one `audit-read` entry per listing since: the two pages above
    // and this listing's first page (its later pages are cut at its snapshot).
    assert_eq!(entries.len() as u64, verified + 3, "{audit_len}");
    assert_eq!(entries.last().unwrap()["event"], "audit-read");
    let (code, text, err) = a.cli(&["audit", "list"]);
    assert_eq!(code, 0, "{err}");
    // The JSON listing's second page and this listing's first were recorded since.
    assert_eq!(text.lines().count(), entries.len() + 2);

    let (code, out, err) = a.cli(&["transfers", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), sent.len());
    let b_config = b.dir.config_path.display().to_string();
    let (code, out, err) = gateway_cli(&["inbox", "--config", &b_config, "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let received: BTreeSet<String> = serde_json::from_str::<Vec<Value>>(&out)
        .unwrap()
        .iter()
        .map(|t| t["transfer_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(received, sent);

    // A listing the node refuses prints nothing on stdout (no table header), only the reason.
    pki_tools::files::write_atomic(&a.dir.dir.join("api.token"), b"not-the-token", true).unwrap();
    let (code, out, err) = a.cli(&["transfers"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.is_empty(), "stdout: {out}");
    assert!(!err.is_empty());
}

/// GET with the node's token: (status, Link header, JSON body).
async fn get_with_link(node: &Node, path: &str) -> (StatusCode, Option<String>, Value) {
    let resp = node
        .api()
        .call(Method::GET, path, Body::empty(), None)
        .await
        .unwrap();
    let status = resp.status();
    let link = resp
        .headers()
        .get(header::LINK)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, link, serde_json::from_slice(&body).unwrap())
}
