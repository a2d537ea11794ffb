//! The backup and restore drill (docs/operations.md, Backup and restore): a backup taken from a
//! running node in the middle of a burst restores into a new data directory; the restored node
//! starts, its audit log verifies, every acknowledged transfer is delivered exactly once (the
//! receivers' dedupe by transfer id absorbs the resends of what the backup held in flight) and
//! it sends and receives again. And what a restore refuses: a non-empty data directory, a wrong
//! passphrase, a damaged or truncated file, a node still running; and that the file is read by
//! the `age` tool and GNU tar as they are.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Method, StatusCode};
use pki_tools::FacilityKind;
use serde_json::Value;

use gateway::cli::client::{collect_json, ApiClient};
use tests::{bundle, bundle_by_prefix, patient_id, Fed, Node};

const PASSPHRASE: &str = "correct horse battery staple 42";
const DELIVERY: Duration = Duration::from_secs(120);

/// A private file holding `text` (passphrase files must be 0600, like keys).
fn passphrase_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    pki_tools::files::write_atomic(&path, text.as_bytes(), true).unwrap();
    path
}

/// Points a facility's node.toml at another data directory (beside the old one).
fn use_data_dir(fed: &Fed, id: &str, name: &str) -> PathBuf {
    let path = &fed.nodes[id].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("data_dir = \"data\""), "{text}");
    std::fs::write(
        path,
        text.replace("data_dir = \"data\"", &format!("data_dir = \"{name}\"")),
    )
    .unwrap();
    fed.nodes[id].dir.join(name)
}

/// Submits without panicking; `Some(id)` only for a 202.
async fn try_submit(api: &ApiClient, to: &str, patient: &str, payload: &[u8]) -> Option<String> {
    let query = serde_urlencoded::to_string([
        ("to", to),
        ("patient", patient),
        ("purpose", "treatment"),
        ("content_type", "fhir"),
    ])
    .unwrap();
    let resp = api
        .call(
            Method::POST,
            &format!("/v1/transfers?{query}"),
            Body::from(payload.to_vec()),
            Some("application/octet-stream"),
        )
        .await
        .ok()?;
    let (status, body) = collect_json(resp).await.ok()?;
    (status == StatusCode::ACCEPTED).then(|| body["transfer_id"].as_str().unwrap().to_owned())
}

/// Waits until every transfer the node lists is delivered; returns them by id.
async fn all_delivered(node: &Node) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let map: BTreeMap<String, Value> = node
            .transfers()
            .await
            .into_iter()
            .map(|t| (t["transfer_id"].as_str().unwrap().to_owned(), t))
            .collect();
        let failed: Vec<&Value> = map.values().filter(|t| t["state"] == "failed").collect();
        assert!(failed.is_empty(), "transfers failed: {failed:#?}");
        if map.values().all(|t| t["state"] == "delivered") {
            return map;
        }
        assert!(
            Instant::now() < deadline,
            "transfers still undelivered\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Transfer id → how many inbox entries a node holds for it.
async fn inbox_counts(node: &Node) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in node.inbox().await {
        *counts
            .entry(e["transfer_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Decrypts a backup with the `age` tool (the C2SP age reference implementation in Go), which
/// reads a passphrase only from a terminal: util-linux `script` gives it one, and the
/// passphrase is typed into it.
fn age_decrypt(file: &Path, out: &Path) {
    use std::io::Write as _;
    let quote = |p: &Path| format!("'{}'", p.to_str().unwrap().replace('\'', r"'\''"));
    let line = format!("age -d -o {} {}", quote(out), quote(file));
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux `script` is needed (package bsdutils)");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSPHRASE}\n").as_bytes())
        .unwrap();
    // Keep the terminal's input open until age is done with it.
    let code = tests::wait_child_exit(&mut child, Duration::from_secs(60));
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert_ne!(
        code,
        Some(127),
        "the `age` tool is needed for this test (Debian package age): {shown}"
    );
    assert_eq!(code, Some(0), "age -d failed: {shown}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const CONCURRENCY: usize = 6;
/// The backup is taken once this many submissions of the burst were acknowledged, and the
/// burst goes on for as many after the backup is written.
const BACKUP_AFTER: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_a_burst_restores_and_the_node_rejoins() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    // clinic-c is down during the burst: the transfers to it are certainly still queued when
    // the backup is taken, so the restored node holds work in flight and must resend it.
    let payload = Arc::new(bundle("Bundle-micro.json"));
    let patient = Arc::new(patient_id(&payload).unwrap());

    // Records received before the backup: the restored node must still open them (keyring).
    let received = bundle_by_prefix("Laurie_McCullough");
    b.consent_for_treatment(&patient_id(&received).unwrap(), "hosp-a")
        .await;
    let received_id = b.send_bundle("hosp-a", &received).await.transfer_id();
    b.wait_state(&received_id, "delivered", DELIVERY).await;

    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let (next, stop, accepted, payload, patient) = (
            next.clone(),
            stop.clone(),
            accepted.clone(),
            payload.clone(),
            patient.clone(),
        );
        let api = ApiClient::remote(&a.config).unwrap();
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let to = if (n + w) % 2 == 0 {
                    "clinic-b"
                } else {
                    "clinic-c"
                };
                let id = try_submit(&api, to, &patient, &payload).await;
                accepted
                    .lock()
                    .unwrap()
                    .push((id.expect("submit refused"), to.to_owned()));
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() < BACKUP_AFTER {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let work = fed.dir.path().join("drill");
    std::fs::create_dir(&work).unwrap();
    let pass = passphrase_file(&work, "pass", PASSPHRASE);
    let file = work.join("hosp-a.backup");
    let acked_before = accepted.lock().unwrap().len();
    let (code, out, err) = {
        let (config, pass, file) = (a.dir.config_path.clone(), pass.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            tests::gateway_cli(&[
                "backup",
                "--config",
                config.to_str().unwrap(),
                "--out",
                file.to_str().unwrap(),
                "--passphrase-file",
                pass.to_str().unwrap(),
                "--include-keys",
            ])
        })
        .await
        .unwrap()
    };
    assert_eq!(code, 0, "backup failed: {out}{err}\n{}", a.log_text());
    assert!(out.contains("keys included"), "{out}");
    // The burst goes on after the backup: the copy was taken between acknowledgements.
    let acked_after = accepted.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() < acked_after + BACKUP_AFTER {
        assert!(Instant::now() < deadline, "the burst stopped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let accepted: Vec<(String, String)> = accepted.lock().unwrap().clone();
    assert!(acked_before >= BACKUP_AFTER, "{acked_before}");
    assert_eq!(mode(&file), 0o600);
    // No staging left in the data directory.
    let leftovers: Vec<_> = std::fs::read_dir(a.dir.dir.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The original delivers everything (clinic-c comes up), then the node is lost.
    let c = fed.start("clinic-c");
    let original = all_delivered(&a).await;
    a.stop();

    // Restore into a new data directory.
    let restored_dir = use_data_dir(&fed, "hosp-a", "data-restored");
    let (code, out, err) = tests::gateway_cli(&[
        "restore",
        "--config",
        fed.nodes["hosp-a"].config_path.to_str().unwrap(),
        "--from",
        file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "restore failed: {out}{err}");
    assert!(out.contains("audit log verified"), "{out}");
    // Keys come back private.
    assert_eq!(mode(&restored_dir.join("patient-index.key")), 0o600);
    assert_eq!(mode(&restored_dir.join("keys")), 0o700);
    let ring: Vec<PathBuf> = std::fs::read_dir(restored_dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!ring.is_empty());
    for key in &ring {
        assert_eq!(mode(key), 0o600, "{}", key.display());
    }

    // What the backup held: a strict part of the burst, with the transfers to clinic-c still
    // pending (it was down), so the restored node has work in flight to resend.
    let (code, out, err) = tests::gateway_cli(&[
        "transfers",
        "--json",
        "--config",
        fed.nodes["hosp-a"].config_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let in_backup: Vec<Value> = serde_json::from_str(&out).unwrap();
    let in_backup: BTreeMap<String, Value> = in_backup
        .into_iter()
        .map(|t| (t["transfer_id"].as_str().unwrap().to_owned(), t))
        .collect();
    assert!(
        in_backup.len() < original.len(),
        "{} of {}",
        in_backup.len(),
        original.len()
    );
    assert!(in_backup.keys().all(|id| original.contains_key(id)));
    let pending: Vec<&Value> = in_backup
        .values()
        .filter(|t| t["state"] != "delivered")
        .collect();
    assert!(
        pending.iter().any(|t| t["to"] == "clinic-c"),
        "the backup holds no pending transfer to clinic-c: {in_backup:#?}"
    );

    let a = fed.start("hosp-a");
    assert!(a.audit_verifies().await, "{}", a.log_text());
    let restored = all_delivered(&a).await;
    for id in in_backup.keys() {
        assert_eq!(restored[id]["receipt_held"], true, "{}", restored[id]);
    }
    // The log says a backup was taken and that this store was restored from it.
    assert!(!a.audit_events("backup-taken").await.is_empty());
    assert_eq!(a.audit_events("store-restored").await.len(), 1);

    // Exactly once: each acknowledged transfer is in its receiver's inbox once, and the
    // receivers hold nothing else from hosp-a.
    let (inbox_b, inbox_c) = (inbox_counts(&b).await, inbox_counts(&c).await);
    for (id, to) in &accepted {
        let inbox = if to == "clinic-b" { &inbox_b } else { &inbox_c };
        assert_eq!(inbox.get(id), Some(&1), "transfer {id} to {to}");
    }
    let burst_to_b = accepted.iter().filter(|(_, to)| to == "clinic-b").count();
    assert_eq!(inbox_c.len(), accepted.len() - burst_to_b);
    assert_eq!(inbox_b.len(), burst_to_b);
    let mut received_at_c = BTreeMap::<String, usize>::new();
    for e in c.audit_events("received").await {
        *received_at_c
            .entry(e["transfer_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert!(received_at_c.values().all(|&n| n == 1), "{received_at_c:?}");

    // The restored node rejoins: it still opens what it received before the backup, sends and
    // receives again.
    assert_eq!(a.fetch(&received_id).await, received);
    let new_id = a.send_bundle("clinic-b", &payload).await.transfer_id();
    a.wait_state(&new_id, "delivered", DELIVERY).await;
    assert_eq!(b.fetch(&new_id).await, *payload);
    let back = c.send_bundle("hosp-a", &payload).await.transfer_id();
    c.wait_state(&back, "delivered", DELIVERY).await;
    assert_eq!(a.fetch(&back).await, *payload);
    assert!(a.audit_verifies().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_used_dir_a_wrong_passphrase_damage_and_a_running_node() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let payload = bundle("Bundle-micro.json");
    for _ in 0..3 {
        let id = a.send_bundle("clinic-b", &payload).await.transfer_id();
        a.wait_state(&id, "delivered", DELIVERY).await;
    }
    // The oldest entries go to a signed archive in the data directory: the backup carries it.
    let archives = a.dir.dir.join("data/audit-archives");
    std::fs::create_dir_all(&archives).unwrap();
    let archive = archives.join("hosp-a-audit-first.json");
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (code, out, err) = tests::gateway_cli(&[
        "audit",
        "archive",
        "--config",
        a.dir.config_path.to_str().unwrap(),
        "--before",
        &now,
        "--out",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let work = fed.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let pass = passphrase_file(&work, "pass", PASSPHRASE);
    let wrong = passphrase_file(&work, "wrong", "not the passphrase at all");
    let file = work.join("a.backup");
    let config = a.dir.config_path.to_str().unwrap().to_owned();
    let backup = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--config",
            &config,
            "--out",
            out.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tests::gateway_cli(&args)
    };
    let (code, out, err) = backup(&file, &["--include-keys"]);
    assert_eq!(code, 0, "{out}{err}");
    // The file is standard age and a standard tar: the age tool and GNU tar read it, and the
    // manifest's digest is the extracted store copy's.
    let tarball = work.join("a.tar");
    age_decrypt(&file, &tarball);
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("store.kv"),
        "{names:?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("manifest.json"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "patient-index.key"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("spool/outbox/")),
        "{names:?}"
    );
    let unpacked = work.join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "healthfed-backup/1");
    assert_eq!(manifest["facility"], "hosp-a");
    assert_eq!(manifest["keys_included"], true);
    let listed = manifest["files"].as_array().unwrap();
    assert_eq!(listed.len() + 1, names.len());
    for f in listed {
        let bytes = std::fs::read(unpacked.join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(
            f["sha256"].as_str().unwrap(),
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes)),
            "{f}"
        );
    }
    assert_eq!(mode(&unpacked.join("patient-index.key")) & 0o077, 0);
    std::fs::remove_dir_all(&unpacked).unwrap();
    std::fs::remove_file(&tarball).unwrap();

    let keyless = work.join("a-keyless.backup");
    let (code, out, err) = backup(&keyless, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no keys"), "{out}");
    // A passphrase file others can read is refused before anything is asked of the node.
    let open = work.join("open-pass");
    std::fs::write(&open, PASSPHRASE).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = tests::gateway_cli(&[
        "backup",
        "--config",
        &config,
        "--out",
        work.join("x").to_str().unwrap(),
        "--passphrase-file",
        open.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("passphrase file"), "{err}");

    let restore = |from: &Path, pass: &Path| {
        tests::gateway_cli(&[
            "restore",
            "--config",
            &config,
            "--from",
            from.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
    };
    // While the node runs: refused.
    let (code, _, err) = restore(&file, &pass);
    assert_eq!(code, 1);
    assert!(err.contains("stop it first"), "{err}");
    a.stop();
    // With the node stopped, the backup is taken from its store directly.
    let offline = work.join("a-offline.backup");
    let (code, out, err) = backup(&offline, &["--include-keys"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("the node is not running"), "{err}");
    // Into the node's own (non-empty) data directory: refused, nothing touched.
    let (code, _, err) = restore(&file, &pass);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");

    let dir = use_data_dir(&fed, "hosp-a", "data-restored");
    let empty_or_absent =
        |dir: &Path| !dir.exists() || std::fs::read_dir(dir).unwrap().next().is_none();
    // A wrong passphrase.
    let (code, _, err) = restore(&file, &wrong);
    assert_eq!(code, 1);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(empty_or_absent(&dir));
    // One byte flipped in the middle of the file: age's chunk authentication fails there, and
    // the message names the entry being read.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let flipped = work.join("flipped.backup");
    std::fs::write(&flipped, &bytes).unwrap();
    let (code, _, err) = restore(&flipped, &pass);
    assert_eq!(code, 1);
    assert!(err.contains("fails authentication"), "{err}");
    assert!(err.contains("(at "), "{err}");
    assert!(empty_or_absent(&dir));
    // Cut short.
    let bytes = std::fs::read(&file).unwrap();
    let cut = work.join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let (code, _, err) = restore(&cut, &pass);
    assert_eq!(code, 1, "{err}");
    assert!(empty_or_absent(&dir));
    // Not a backup at all.
    let (code, _, err) = restore(&pass, &pass);
    assert_eq!(code, 1, "{err}");

    // The keyless backup restores, but the node refuses to start without the store's key;
    // with the key file and keyring from the key backup (here: the old data directory) it
    // starts and its log verifies.
    let (code, out, err) = restore(&keyless, &pass);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("no keys in this backup") || out.contains("no keys"),
        "{out}{err}"
    );
    assert!(!dir.join("patient-index.key").exists());
    let mut refused = fed.spawn("hosp-a");
    let exit = refused.wait_exit(Duration::from_secs(30));
    assert!(
        matches!(exit, Some(c) if c != 0),
        "{exit:?}\n{}",
        refused.log_text()
    );
    assert!(
        refused.log_text().contains("patient index key"),
        "{}",
        refused.log_text()
    );
    let old = a.dir.dir.join("data");
    std::fs::copy(old.join("patient-index.key"), dir.join("patient-index.key")).unwrap();
    std::fs::set_permissions(
        dir.join("patient-index.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let ring = dir.join("keys");
    std::fs::create_dir_all(&ring).unwrap();
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(old.join("keys")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ring.join(e.file_name())).unwrap();
    }
    let restored_archive = dir.join("audit-archives/hosp-a-audit-first.json");
    assert_eq!(
        std::fs::read(&restored_archive).unwrap(),
        std::fs::read(&archive).unwrap()
    );
    let (code, out, err) = tests::gateway_cli(&[
        "audit",
        "verify",
        "--config",
        &config,
        "--archive",
        restored_archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let mut a = fed.start("hosp-a");
    assert!(a.audit_verifies().await);
    assert_eq!(a.transfers().await.len(), 3);
    let id = a.send_bundle("clinic-b", &payload).await.transfer_id();
    a.wait_state(&id, "delivered", DELIVERY).await;
    assert_eq!(b.inbox().await.len(), 4);
    a.stop();

    // The backup taken offline restores too, into yet another directory.
    let path = &fed.nodes["hosp-a"].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, text.replace("data-restored", "data-offline")).unwrap();
    let (code, out, err) = restore(&offline, &pass);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit log verified"), "{out}");
    let a = fed.start("hosp-a");
    assert!(a.audit_verifies().await);
    assert_eq!(a.transfers().await.len(), 3);
}
