//! The CLI's output when its reader goes away (`gateway transfers --json | head`) or cannot
//! take it (a full disk): a closed pipe ends the command quietly with the status of a tool
//! killed by SIGPIPE, a write error is reported, and neither panics.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use pki_tools::FacilityKind;

use tests::{bundle_by_prefix, gateway_bin, wait_child_exit, Fed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_or_full_stdout_ends_a_listing_without_a_panic() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let _b = fed.start("clinic-b");
    let bundle = bundle_by_prefix("Clemente_Kreiger");
    let id = a.send_bundle("clinic-b", &bundle).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    let config = a.dir.config_path.display().to_string();
    let listing = ["transfers", "--json", "--config", config.as_str()];

    // The reader is there: the listing is printed whole.
    let (code, out, err) = a.cli(&["transfers", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");

    // stdout is a pipe whose read end is closed before the command starts: no reader ever
    // exists, so the first write fails with EPIPE whatever the timing (closing it after the
    // spawn would race with a child that writes first).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(gateway_bin())
        .args(listing)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_child_exit(&mut child, Duration::from_secs(20));
    if code.is_none() {
        let _ = child.kill();
    }
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(code, Some(141), "closed pipe: {stderr}");
    assert!(
        stderr.is_empty(),
        "closed pipe: nothing to say, got: {stderr}"
    );

    // A full disk is a failure, with its reason.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(gateway_bin())
        .args(listing)
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the output") && stderr.contains("No space left"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
