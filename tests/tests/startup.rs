//! A node refuses to start when any of its private key files is readable by group or others.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use pki_tools::FacilityKind;

use tests::Fed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refuses_to_start_with_a_group_readable_private_key() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let dir = fed.nodes["hosp-a"].dir.clone();
    let log = dir.join("node.log");
    for file in ["tls.key", "signing.key", "encryption.key"] {
        let path = dir.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let log_before = std::fs::read_to_string(&log).unwrap_or_default().len();
        let mut node = fed.spawn("hosp-a");
        let code = node.wait_exit(Duration::from_secs(20));
        assert_eq!(
            code,
            Some(64),
            "{file} mode 0640: expected exit 64\n{}",
            node.log_text()
        );
        let new_log = node
            .log_text()
            .get(log_before..)
            .unwrap_or_default()
            .to_owned();
        assert!(
            new_log.contains(file),
            "the refusal does not name {file}: {new_log}"
        );
        assert!(
            std::net::TcpStream::connect(fed.nodes["hosp-a"].local).is_err(),
            "the local API must not be listening"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Control: with every key back at 0600 the same node starts and answers.
    let node = fed.start("hosp-a");
    let (status, _) = node.get("/v1/transfers").await;
    assert_eq!(status, http::StatusCode::OK);
}
