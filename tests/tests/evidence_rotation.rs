//! Evidence of a transfer made before both ends rotated their signing keys away: the node
//! keeps every directory it accepted, and the evidence file carries the one in force when the
//! transfer was signed next to the current one. Three real members; hosp-a sends to clinic-b;
//! then hosp-a and clinic-b rotate twice (`pki rotate` + `pki publish`, SIGHUP), so that the
//! current directory no longer lists the keys that signed the header and the receipt; both ends'
//! files still verify offline with only the CA certificate and name both directory versions,
//! and the file without its transfer-time directory does not.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pki_tools::directory::verify_directory_file;
use pki_tools::{FacilityFile, FacilityKind};

use gateway::evidence::bundle::{EvidenceFile, EvidenceFileV1, FORMAT, FORMAT_V1};
use tests::{bundle_by_prefix, patient_id, Fed, Node};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn sighup(node: &Node) {
    let status = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The signing key a facility's node directory holds now.
fn signing_key(fed: &Fed, id: &str) -> [u8; 32] {
    FacilityFile::load(&fed.nodes[id].dir.join("facility.json"))
        .unwrap()
        .signing_public_key
}

/// The signing keys directory file `bytes` lists for `id` (verified against the CA).
fn listed_keys(fed: &Fed, bytes: &[u8], id: &str) -> (u64, Vec<[u8; 32]>) {
    let ca = fed.pki.ca_cert_der();
    let dir = verify_directory_file(
        bytes,
        ca,
        i64::try_from(common::now_ms() / 1000).unwrap(),
        None,
    )
    .unwrap()
    .directory;
    let keys = dir
        .facilities
        .iter()
        .find(|f| f.id.as_str() == id)
        .unwrap()
        .signing_keys
        .clone();
    (dir.version, keys)
}

async fn directory_version(node: &Node) -> u64 {
    let (_, status) = node.get("/v1/status").await;
    status["directory"]["version"].as_u64().unwrap_or(0)
}

/// `pki rotate` for both ends, `pki publish`, SIGHUP to every node; waits (bounded) until all
/// three use the new directory and both ends sign with their new keys.
async fn rotate_both(fed: &mut Fed, nodes: [&Node; 3], version: u64) {
    for id in ["hosp-a", "clinic-b"] {
        let out = fed.nodes[id].dir.clone();
        fed.pki.rotate(&id.parse().unwrap(), &out).unwrap();
    }
    fed.publish();
    let new_keys = [
        hex::encode(signing_key(fed, "hosp-a")),
        hex::encode(signing_key(fed, "clinic-b")),
    ];
    for node in nodes {
        sighup(node);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut versions = Vec::new();
        for node in nodes {
            versions.push(directory_version(node).await);
        }
        let switched = nodes[0].log_text().contains(&new_keys[0])
            && nodes[1].log_text().contains(&new_keys[1]);
        if switched && versions.iter().all(|v| *v == version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "directory {version} not in use everywhere ({versions:?}) or keys not switched:\n{}\n{}",
            nodes[0].log_text(),
            nodes[1].log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_transfer_still_verifies_after_both_signing_keys_were_rotated_out() {
    let mut fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("clinic-c", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let c = fed.start("clinic-c");
    let record = bundle_by_prefix("Chet_Thompson");
    let patient = patient_id(&record).unwrap();
    a.consent_for_treatment(&patient, "clinic-b").await;
    let id = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&id, "delivered", Duration::from_secs(30))
        .await;
    let old_keys = [signing_key(&fed, "hosp-a"), signing_key(&fed, "clinic-b")];

    let work = tempfile::tempdir().unwrap();
    let inspector = tempfile::tempdir().unwrap();
    std::fs::write(inspector.path().join("ca.crt"), common::ca_pem(&fed)).unwrap();

    // Before any rotation the file carries one directory; the same content as a version 1
    // file (its one `directory`) verifies too: files written before the format changed do.
    let before = common::export_evidence(&a, &id, &work.path().join("before.json"));
    let parsed: EvidenceFile = serde_json::from_slice(&before).unwrap();
    assert_eq!(parsed.format, FORMAT);
    assert_eq!(parsed.directories.len(), 1);
    let v1 = EvidenceFileV1 {
        format: FORMAT_V1.to_owned(),
        transfer_id: parsed.transfer_id.clone(),
        log: parsed.log.clone(),
        directory: parsed.directories[0].clone(),
        envelope_header: parsed.envelope_header.clone(),
        receipt: parsed.receipt.clone(),
        entries: parsed.entries.clone(),
        checkpoint: parsed.checkpoint.clone(),
    };
    let (code, stdout, stderr) = common::verify_evidence_in(inspector.path(), &v1.to_bytes());
    assert_eq!(code, 0, "version 1 file: {stdout}{stderr}");
    assert!(
        stdout.contains("File format healthfed-evidence/1."),
        "{stdout}"
    );

    // Two rotations of both ends: directory 3 lists neither end's first key.
    rotate_both(&mut fed, [&a, &b, &c], 2).await;
    rotate_both(&mut fed, [&a, &b, &c], 3).await;
    // The nodes work with the new keys (a transfer after the rotations is delivered).
    let later = a.send_bundle("clinic-b", &record).await.transfer_id();
    a.wait_state(&later, "delivered", Duration::from_secs(30))
        .await;

    // hosp-a's latest checkpoint is still the one its first export made (the checkpointer
    // runs every 300 s): signed with its first key and cosigned by clinic-b's first key, which
    // the directory of version 2 still lists (the exporter takes the newest that does).
    // clinic-b never exported: its export signs a checkpoint now, with its current key.
    let expect: [(&Node, &str, &[u64], &[&str]); 2] = [
        (
            &a,
            "hosp-a",
            &[1, 2, 3],
            &[
                "Directory version 2 of federation",
                ": verified the checkpoint, the cosignature by clinic-b.",
                ": verified the cosignature by clinic-c.",
            ],
        ),
        (
            &b,
            "clinic-b",
            &[1, 3],
            &[": verified the checkpoint, the cosignature by clinic-c, the cosignature by hosp-a."],
        ),
    ];
    for (node, log, versions, lines) in expect {
        let file = common::export_evidence(node, &id, &work.path().join(format!("{log}.json")));
        let (code, stdout, stderr) = common::verify_evidence_in(inspector.path(), &file);
        assert_eq!(code, 0, "{log}: {stdout}{stderr}");
        for expected in [
            "VERIFIED",
            id.as_str(),
            "Directory version 1 (in force at the transfer) of federation Test Federation",
            ": verified the envelope header, the receipt.",
            "Directory version 3 (current at export) of federation Test Federation",
            "File format healthfed-evidence/2.",
        ]
        .iter()
        .chain(lines)
        {
            assert!(
                stdout.contains(expected),
                "{log}: no {expected:?} in\n{stdout}"
            );
        }
        for w in [
            "clinic-c",
            if log == "hosp-a" {
                "clinic-b"
            } else {
                "hosp-a"
            },
        ] {
            assert!(
                stdout.contains(&format!("Witnessed by {w} (")),
                "{log}: {w} not named as witness:\n{stdout}"
            );
        }

        // The file really needs its transfer-time directory: the current one no longer lists
        // the keys that signed the header (hosp-a's) and the receipt (clinic-b's).
        let parsed: EvidenceFile = serde_json::from_slice(&file).unwrap();
        let dirs: Vec<Vec<u8>> = parsed
            .directories
            .iter()
            .map(|d| b64().decode(d).unwrap())
            .collect();
        let listed: Vec<u64> = dirs
            .iter()
            .map(|d| listed_keys(&fed, d, "hosp-a").0)
            .collect();
        assert_eq!(listed, versions, "{log}");
        let current_dir = dirs.last().unwrap();
        for (who, old) in [("hosp-a", old_keys[0]), ("clinic-b", old_keys[1])] {
            assert_eq!(listed_keys(&fed, &dirs[0], who), (1, vec![old]));
            let (version, current) = listed_keys(&fed, current_dir, who);
            assert_eq!(version, 3);
            assert!(
                !current.contains(&old),
                "{log}: {who}'s old key still listed"
            );
            assert!(current.contains(&signing_key(&fed, who)));
        }

        // With the current directory alone, the header's signature has no directory that
        // lists its key.
        let mut f = parsed.clone();
        f.directories = vec![f.directories.last().unwrap().clone()];
        let (code, stdout, stderr) = common::verify_evidence_in(inspector.path(), &f.to_bytes());
        assert_eq!(
            code, 1,
            "{log}: accepted without the transfer's directory: {stdout}"
        );
        assert!(
            stderr.contains("envelope header: the signature by hosp-a does not verify"),
            "{log}: {stderr}"
        );
        // Without the current one, clinic-b's checkpoint (signed at export with its current
        // key) has none.
        if log == "clinic-b" {
            let mut f = parsed.clone();
            f.directories.pop();
            let (code, _, stderr) = common::verify_evidence_in(inspector.path(), &f.to_bytes());
            assert_eq!(code, 1);
            assert!(stderr.contains("checkpoint:"), "{log}: {stderr}");
        }
        // Out of order: refused, naming the directory.
        let mut f = parsed.clone();
        f.directories.reverse();
        let (code, _, stderr) = common::verify_evidence_in(inspector.path(), &f.to_bytes());
        assert_eq!(code, 1);
        assert!(
            stderr.contains(&format!(
                "directory #2: version {} after version 3",
                versions[versions.len() - 2]
            )),
            "{log}: {stderr}"
        );
        // One directory twice: not strictly increasing.
        let mut f = parsed.clone();
        f.directories.insert(1, f.directories[0].clone());
        let (code, _, stderr) = common::verify_evidence_in(inspector.path(), &f.to_bytes());
        assert_eq!(code, 1);
        assert!(
            stderr.contains("directory #2: version 1 after version 1"),
            "{stderr}"
        );
        // A directory not signed by this federation's CA (another federation's, well formed):
        // refused, naming it.
        let other = Fed::new(&[("hosp-x", FacilityKind::Hospital)]);
        let stranger = std::fs::read(other.federation_dir().join("directory.json")).unwrap();
        let mut f = parsed.clone();
        f.directories.insert(1, b64().encode(&stranger));
        let (code, _, stderr) = common::verify_evidence_in(inspector.path(), &f.to_bytes());
        assert_eq!(code, 1);
        assert!(
            stderr.contains("directory #2: signature does not verify"),
            "{log}: {stderr}"
        );
        // Any directory changed in one bit: refused, naming it.
        for i in 0..parsed.directories.len() {
            let mut f = parsed.clone();
            let mut bytes = b64().decode(&f.directories[i]).unwrap();
            bytes[60] ^= 0x01;
            f.directories[i] = b64().encode(bytes);
            let (code, _, stderr) = common::verify_evidence_in(inspector.path(), &f.to_bytes());
            assert_eq!(code, 1, "{log}: directory #{} changed, accepted", i + 1);
            assert!(
                stderr.contains(&format!("directory #{}:", i + 1)),
                "{log}: {stderr}"
            );
        }
        // A version 1 file with the directory current at export (what the old exporter wrote)
        // no longer verifies: the reason this format exists.
        let v1 = EvidenceFileV1 {
            format: FORMAT_V1.to_owned(),
            transfer_id: parsed.transfer_id.clone(),
            log: parsed.log.clone(),
            directory: parsed.directories.last().unwrap().clone(),
            envelope_header: parsed.envelope_header.clone(),
            receipt: parsed.receipt.clone(),
            entries: parsed.entries.clone(),
            checkpoint: parsed.checkpoint.clone(),
        };
        let (code, _, stderr) = common::verify_evidence_in(inspector.path(), &v1.to_bytes());
        assert_eq!(code, 1);
        assert!(stderr.contains("envelope header:"), "{log}: {stderr}");
    }
}
