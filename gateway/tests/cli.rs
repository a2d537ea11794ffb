//! The `gateway` binary's command-line contract: usage errors and bad config exit 64 with a
//! message naming the problem. (Also makes `cargo test --workspace` build the binary that the
//! multi-process tests in tests/ start.)

use std::process::Command;

fn gateway(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .output()
        .expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_config_file_is_a_usage_error_naming_the_file() {
    let (code, err) = gateway(&["run", "--config", "/nonexistent/node.toml"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/node.toml"), "{err}");
}

#[test]
fn config_with_unknown_key_is_refused_without_echoing_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "version = 1\nsecret_typo = \"hunter2\"\n").expect("write");
    let (code, err) = gateway(&["check", "--config", path.to_str().expect("utf8")]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("secret_typo"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn unknown_subcommand_fails() {
    let (code, _) = gateway(&["frobnicate"]);
    assert_ne!(code, 0);
}

#[test]
fn demo_once_delivers_and_every_audit_chain_verifies_afterwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = dir.path().join("demo");
    let fed_arg = fed.to_str().expect("utf8");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["demo", "--dir", fed_arg, "--once"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("byte-identical to what was sent: true"),
        "{stdout}"
    );
    assert!(
        stdout.contains("RESULT: delivered, receipt verified."),
        "{stdout}"
    );
    for node in ["hosp-central", "clinic-north", "payer-province"] {
        let config = fed.join(node).join("node.toml");
        let (code, err) = gateway(&[
            "audit",
            "verify",
            "--config",
            config.to_str().expect("utf8"),
        ]);
        assert_eq!(code, 0, "{node}: {err}");
    }
}
