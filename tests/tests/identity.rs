//! Refusals at the TLS and identity layer: a peer that is not a current, listed member of the
//! federation never gets to send a request, and the receiving node audits the refused
//! connection; a sender never delivers to a server that is not the facility it addressed.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pki_tools::{Endpoint, FacilityId, FacilityKind, Federation};
use serde_json::Value;

use tests::{bundle, raw_peer_post, Fed, Node, RawIdentity};

use common::{add_config_line, ca_pem, wait_rejection};

const PATH: &str = "/v1/envelopes";

/// Waits for a `connection-refused` audit entry whose reason contains `needle`.
async fn refused_connection(node: &Node, needle: &str) -> Value {
    let needle = needle.to_ascii_lowercase();
    wait_rejection(node, Duration::from_secs(10), |e| {
        e["outcome"] == "connection-refused"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.to_ascii_lowercase().contains(&needle))
    })
    .await
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    format!("https://{}:{}", addr.ip(), addr.port())
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_non_members_are_refused_and_audited() {
    let mut fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    // Reload the CRL and directory every second so the revocation case does not wait 10 s.
    add_config_line(&fed, "clinic-b", "federation", "reload_interval_secs = 1");
    let b = fed.start("clinic-b");
    let ca = ca_pem(&fed);
    let a_dir = fed.nodes["hosp-a"].dir.clone();
    let a_id: FacilityId = "hosp-a".parse().unwrap();
    let a_endpoint = endpoint(fed.nodes["hosp-a"].peer);

    // Control: hosp-a's genuine identity gets through TLS and identity (the empty body is then
    // refused by the envelope layer, which proves the request reached the route).
    let genuine = RawIdentity::from_node_dir(&a_dir);
    let (status, _) = raw_peer_post(b.dir.peer, &ca, &genuine, PATH, Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        !b.audit()
            .await
            .iter()
            .any(|e| e["outcome"] == "connection-refused"),
        "the genuine member must not be refused"
    );

    // Unknown CA: a certificate for "hosp-a" from another federation's CA.
    let foreign_dir = tempfile::tempdir().unwrap();
    let mut foreign =
        Federation::init(&foreign_dir.path().join("fed"), "Foreign Federation", false).unwrap();
    foreign
        .add_facility(
            &a_id,
            "Impostor",
            &a_endpoint,
            FacilityKind::Hospital,
            &foreign_dir.path().join("node"),
        )
        .unwrap();
    let impostor = RawIdentity::from_node_dir(&foreign_dir.path().join("node"));
    let result = raw_peer_post(b.dir.peer, &ca, &impostor, PATH, b"x".to_vec()).await;
    assert!(
        result.is_err(),
        "a foreign CA's certificate got an answer: {result:?}"
    );
    let e = refused_connection(&b, "unknownissuer").await;
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .starts_with("tls handshake refused"),
        "{e}"
    );

    // Expired: hosp-a's name, our CA, but not valid since yesterday.
    let expired_dir = fed.dir.path().join("expired-a");
    let now = time::OffsetDateTime::now_utc();
    fed.pki
        .issue_tls_cert_with_validity(
            &a_id,
            &a_endpoint,
            now - time::Duration::days(3),
            now - time::Duration::days(1),
            &expired_dir,
        )
        .unwrap();
    let expired = RawIdentity::from_node_dir(&expired_dir);
    let result = raw_peer_post(b.dir.peer, &ca, &expired, PATH, b"x".to_vec()).await;
    assert!(
        result.is_err(),
        "an expired certificate got an answer: {result:?}"
    );
    refused_connection(&b, "expired").await;

    // Not in the directory: a facility the CA certified but the operator never published.
    let unlisted = fed.add("lab-x", FacilityKind::Lab);
    let unlisted_id = RawIdentity::from_node_dir(&unlisted.dir);
    let result = raw_peer_post(b.dir.peer, &ca, &unlisted_id, PATH, b"x".to_vec()).await;
    assert!(
        result.is_err(),
        "an unpublished facility got an answer: {result:?}"
    );
    let e = refused_connection(&b, "not in the federation directory").await;
    assert_eq!(e["peer"], "lab-x", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .starts_with("peer identity refused"),
        "{e}"
    );

    // Revoked: hosp-a's genuine certificate, once the CRL lists it, is refused at the handshake.
    fed.pki.revoke(&a_id, Some("key-compromise")).unwrap();
    fed.publish();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if raw_peer_post(b.dir.peer, &ca, &genuine, PATH, Vec::new())
            .await
            .is_err()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revoked hosp-a still accepted after 15 s\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refused_connection(&b, "revoked").await;

    // None of this stored anything, and the audit chain holds.
    assert!(b.inbox().await.is_empty());
    assert!(b.audit_verifies().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_to_a_server_that_is_another_facility_is_not_made() {
    let mut fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    // The directory says clinic-b lives at clinic-c's address.
    let c_peer = fed.nodes["clinic-c"].peer;
    fed.add_at(
        "clinic-b",
        FacilityKind::Clinic,
        c_peer,
        "127.0.0.1:9".parse().unwrap(),
    );
    fed.publish();
    let a = fed.start("hosp-a");
    let c = fed.start("clinic-c");

    let id = a
        .send_bundle("clinic-b", &bundle("Bundle-micro.json"))
        .await
        .transfer_id();
    let expected = "server is facility clinic-c, expected clinic-b";
    let mut view: Value;
    tests::assert_eventually!(
        Duration::from_secs(20),
        {
            view = a.transfer(&id).await;
            view["attempts"].as_u64().unwrap_or(0) >= 2
                && view["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(expected))
        },
        "no identity-mismatch error recorded: {view}"
    );
    assert_ne!(view["state"], "delivered", "{view}");
    assert!(!view["receipt_held"].as_bool().unwrap(), "{view}");
    let retries: Vec<Value> = a
        .audit()
        .await
        .into_iter()
        .filter(|e| e["transfer_id"] == id.as_str() && e["event"] == "retry-scheduled")
        .collect();
    assert!(
        retries
            .iter()
            .any(|e| e["reason"].as_str().is_some_and(|r| r.contains(expected))),
        "hosp-a's audit does not show the mismatch: {retries:#?}"
    );
    assert!(a.audit().await.iter().all(|e| e["event"] != "delivered"));
    // clinic-c received nothing and has no record of the transfer.
    assert!(c.inbox().await.is_empty());
    assert!(c
        .audit()
        .await
        .iter()
        .all(|e| e["transfer_id"] != id.as_str()));
    assert!(a.audit_verifies().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sender_is_cut_off_even_on_an_established_connection() {
    let mut fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    add_config_line(&fed, "clinic-b", "federation", "reload_interval_secs = 1");
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let payload = bundle("Bundle-micro.json");

    // A first transfer opens hosp-a's pooled HTTP/2 connection to clinic-b.
    let first = a.send_bundle("clinic-b", &payload).await.transfer_id();
    a.wait_state(&first, "delivered", Duration::from_secs(60))
        .await;

    // The operator revokes hosp-a; clinic-b picks up the new CRL and directory.
    let a_id: FacilityId = "hosp-a".parse().unwrap();
    fed.pki.revoke(&a_id, Some("key-compromise")).unwrap();
    fed.publish();
    tests::assert_eventually!(
        Duration::from_secs(15),
        b.log_text().contains("federation trust reloaded"),
        "clinic-b did not reload its trust"
    );

    // hosp-a still holds the connection it opened before the revocation: nothing it sends on
    // it may be accepted.
    let second = a.send_bundle("clinic-b", &payload).await.transfer_id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = a.transfer(&second).await;
    assert_ne!(view["state"], "delivered", "{view}");
    assert_eq!(
        b.inbox().await.len(),
        1,
        "clinic-b accepted a record from a revoked facility"
    );
    assert!(b
        .audit()
        .await
        .iter()
        .all(|e| !(e["event"] == "received" && e["transfer_id"] == second.as_str())));
    // It is refused at the identity layer, before the envelope is read: no policy decision
    // about it was even needed.
    let e = refused_connection(&b, "facility hosp-a is not active").await;
    assert_eq!(e["peer"], "hosp-a", "{e}");
    assert!(b
        .audit()
        .await
        .iter()
        .all(|e| e["transfer_id"] != second.as_str()));
    tests::assert_eventually!(
        Duration::from_secs(10),
        a.transfer(&second).await["state"] == "failed",
        "the refused transfer did not fail"
    );
    let view = a.transfer(&second).await;
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("peer identity refused")),
        "{view}"
    );
    assert!(b.audit_verifies().await);
}
