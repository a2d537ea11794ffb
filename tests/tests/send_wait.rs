//! `gateway send --wait` waits for the outcome and says it (delivered with its receipt, exit 0;
//! failed with the reason, exit 1), and the progress bars of `send` and `inbox get` are drawn
//! on a terminal (a real pseudo-terminal, through util-linux `script`) and never into a pipe
//! or with `--quiet`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pki_tools::FacilityKind;

use tests::{bundle, gateway_bin, patient_id, Fed};

/// Quick failure: two attempts, short backoff.
const TWO_ATTEMPTS: &str =
    "\n[delivery]\ninitial_backoff_ms = 100\nmax_backoff_ms = 200\nmax_attempts = 2\n";

const DELIVERY: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_prints_the_receipt_or_the_failure_and_exits_accordingly() {
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        TWO_ATTEMPTS,
    );
    let mut a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");
    let payload = bundle("Bundle-micro.json");
    let patient = patient_id(&payload).unwrap();
    let file = fed.dir.path().join("record.json");
    std::fs::write(&file, &payload).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let config = a.dir.config_path.to_str().unwrap().to_owned();
    let send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "--config",
            &config,
            "--to",
            "clinic-b",
            "--patient",
            &patient,
            "--purpose",
            "treatment",
            "--file",
            &file,
        ];
        args.extend_from_slice(extra);
        tests::gateway_cli(&args)
    };

    // Delivered: the id, then the outcome; exit 0; the receiver has it.
    let (code, out, err) = tokio::task::block_in_place(|| send(&["--wait"]));
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[1], "delivered: receipt verified", "{out}");
    let id = lines[0].to_owned();
    assert_eq!(a.transfer(&id).await["state"], "delivered");
    assert_eq!(b.fetch(&id).await, payload);

    // Without --wait the command returns at the acknowledgement: only the id.
    let (code, out, err) = tokio::task::block_in_place(|| send(&[]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    a.wait_state(out.trim(), "delivered", DELIVERY).await;

    // The receiver is gone: two attempts fail, the outcome is "failed" with the reason, exit 1.
    b.stop();
    let (code, out, err) = tokio::task::block_in_place(|| send(&["--wait"]));
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].starts_with("failed: "), "{out}");
    assert!(lines[1].contains("clinic-b"), "{out}");
    assert!(err.contains("was not delivered (failed)"), "{err}");
    let view = a.transfer(lines[0]).await;
    assert_eq!(view["state"], "failed", "{view}");

    // With the node stopped there is no delivery to wait for: refused as a usage error, and
    // nothing is queued.
    a.stop();
    let before = std::fs::read_dir(fed.nodes["hosp-a"].dir.join("data/spool/outbox"))
        .unwrap()
        .count();
    let (code, _, err) = send(&["--wait"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--wait needs a running node"), "{err}");
    let after = std::fs::read_dir(fed.nodes["hosp-a"].dir.join("data/spool/outbox"))
        .unwrap()
        .count();
    assert_eq!(before, after);
}

/// Runs `gateway <args>` under a pseudo-terminal (util-linux `script`): returns its exit code
/// and everything the terminal showed (stdout and stderr).
fn on_a_terminal<S: AsRef<str>>(args: &[S]) -> (i32, String) {
    let mut line = shell_quote(gateway_bin().to_str().unwrap());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a.as_ref()));
    }
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .output()
        .expect("util-linux `script` is needed for the terminal tests (package bsdutils)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A PDF the gateway cannot read (sent with a clinician's declaration): `mib` MiB.
fn large_pdf(path: &Path, mib: usize) {
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut x: u32 = 1;
    pdf.resize(mib * 1024 * 1024, 0);
    for byte in pdf.iter_mut().skip(9) {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *byte = (x >> 24) as u8;
    }
    std::fs::write(path, pdf).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_show_on_a_terminal_only() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let file = fed.dir.path().join("scan.pdf");
    large_pdf(&file, 48);
    let a_config = a.dir.config_path.to_str().unwrap().to_owned();
    let b_config = b.dir.config_path.to_str().unwrap().to_owned();
    let send_args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "send",
            "--config",
            &a_config,
            "--to",
            "clinic-b",
            "--patient",
            "pat-scan-1",
            "--purpose",
            "treatment",
            "--content-type",
            "pdf",
            "--category",
            "general",
            "--clinician",
            "dr-declares",
            "--clinician-role",
            "physician",
            "--file",
            file.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // On a terminal: the bar is drawn (its label and the total size) on stderr.
    let args = send_args(&[]);
    let (code, shown) = tokio::task::block_in_place(|| on_a_terminal(&args));
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("sending"), "{shown:?}");
    assert!(shown.contains("48.00 MiB"), "{shown:?}");
    // The id is printed on stdout after the bar was cleared (the same terminal line).
    let id = shown
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|t| t.len() == 32)
        .unwrap_or_else(|| panic!("no transfer id in {shown:?}"))
        .to_owned();
    a.wait_state(&id, "delivered", DELIVERY).await;

    // --wait on a terminal: the bar, then the outcome.
    let args = send_args(&["--wait"]);
    let (code, shown) = tokio::task::block_in_place(|| on_a_terminal(&args));
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("sending"), "{shown:?}");
    assert!(shown.contains("delivered: receipt verified"), "{shown:?}");

    // --quiet on a terminal: no bar.
    let args = send_args(&["--quiet"]);
    let (code, shown) = tokio::task::block_in_place(|| on_a_terminal(&args));
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("sending"), "{shown:?}");

    // Into a pipe: no bar and no terminal control sequences on stderr.
    let args = send_args(&[]);
    let out = Command::new(gateway_bin()).args(&args).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("sending") && !err.contains('\u{1b}'),
        "{err:?}"
    );

    // `inbox get` on a terminal shows the bar while it writes the decrypted record; piped it
    // does not; either way the file is the record.
    let out_file = fed.dir.path().join("got.pdf");
    let get = [
        "inbox",
        "--config",
        &b_config,
        "get",
        &id,
        "--out",
        out_file.to_str().unwrap(),
    ];
    let (code, shown) = tokio::task::block_in_place(|| on_a_terminal(&get));
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("receiving"), "{shown:?}");
    assert_eq!(
        std::fs::read(&out_file).unwrap(),
        std::fs::read(&file).unwrap()
    );
    std::fs::remove_file(&out_file).unwrap();
    let out = Command::new(gateway_bin()).args(get).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("receiving") && !err.contains('\u{1b}'),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(&out_file).unwrap(),
        std::fs::read(&file).unwrap()
    );
}
