//! Every `pki` command, driven through the real binary, including its error cases.

#![allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]

mod common;

use std::fs;

use common::{exists, Scratch};
use pki_tools::directory::verify_directory;
use pki_tools::FacilityFile;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn ca_der(s: &Scratch) -> Vec<u8> {
    pem::parse(s.read("fed/ca.crt")).unwrap().into_contents()
}

#[test]
fn init_creates_ca_and_refuses_to_overwrite_without_force() {
    let s = Scratch::new();
    let out = s
        .pki(&["init", "--dir", "fed", "--name", "Test Health Federation"])
        .ok();
    assert!(
        out.stdout.contains("initialised federation"),
        "{}",
        out.stdout
    );
    assert_eq!(s.list("fed"), ["ca.crt", "ca.key", "federation.json"]);
    assert_eq!(s.mode("fed/ca.key"), 0o600);
    assert_eq!(s.mode("fed"), 0o700);
    let first_ca = s.read("fed/ca.crt");

    s.pki(&["init", "--dir", "fed", "--name", "Other"])
        .fails_with(&["fed: a federation already exists there", "--force"]);
    assert_eq!(
        s.read("fed/ca.crt"),
        first_ca,
        "refused init must not touch the CA"
    );

    // --force replaces the CA and drops the old federation's published files.
    s.pki(&["publish", "--dir", "fed"]).ok();
    s.pki(&["init", "--dir", "fed", "--name", "Other", "--force"])
        .ok();
    assert_ne!(s.read("fed/ca.crt"), first_ca);
    assert!(!exists(&s.path("fed/directory.json")));
    assert!(!exists(&s.path("fed/crl.pem")));
    assert_eq!(s.mode("fed/ca.key"), 0o600);
}

#[test]
fn init_rejects_bad_names() {
    let s = Scratch::new();
    s.pki(&["init", "--dir", "fed", "--name", ""])
        .fails_with(&["invalid name: must not be empty"]);
    let long = "x".repeat(65);
    s.pki(&["init", "--dir", "fed", "--name", &long])
        .fails_with(&["invalid name"]);
    assert!(!exists(&s.path("fed/ca.key")));
}

#[test]
fn add_facility_writes_node_material() {
    let s = Scratch::new();
    s.federation_with_three();
    for node in ["node-a", "node-l", "node-p"] {
        assert_eq!(
            s.list(node),
            [
                "ca.crt",
                "encryption.key",
                "facility.json",
                "signing.key",
                "tls.crt",
                "tls.key"
            ]
        );
        for key in ["tls.key", "signing.key", "encryption.key"] {
            assert_eq!(s.mode(&format!("{node}/{key}")), 0o600, "{node}/{key}");
        }
        assert_eq!(s.read(&format!("{node}/ca.crt")), s.read("fed/ca.crt"));
    }
    let a = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    assert_eq!(a.id.as_str(), "hosp-a");
    assert_eq!(a.name, "Hospital A");
    assert_eq!(a.kind.as_str(), "hospital", "kind defaults to hospital");
    assert_eq!(a.endpoint, "https://hosp-a.example.org:8443");
    let cert = pem::parse(s.read("node-a/tls.crt"))
        .unwrap()
        .into_contents();
    assert_eq!(a.tls_cert_sha256, pki_tools::cert_fingerprint(&cert));
    let p = FacilityFile::load(&s.path("node-p/facility.json")).unwrap();
    assert_eq!(p.kind.as_str(), "payer");
    // The JSON has exactly the contract's fields, keys in hex.
    let json: serde_json::Value = serde_json::from_str(&s.read("node-a/facility.json")).unwrap();
    let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "encryption_public_key",
            "endpoint",
            "id",
            "kind",
            "name",
            "signing_public_key",
            "tls_cert_sha256"
        ]
    );
    assert_eq!(
        json["signing_public_key"].as_str().unwrap(),
        hex::encode(a.signing_public_key)
    );
}

#[test]
fn add_facility_error_cases() {
    let s = Scratch::new();
    s.federation_with_three();
    let state_before = s.read("fed/federation.json");

    s.pki(&[
        "add-facility",
        "--dir",
        "fed",
        "--id",
        "hosp-a",
        "--name",
        "Again",
        "--endpoint",
        "https://b.example:443",
        "--out",
        "node-dup",
    ])
    .fails_with(&["facility hosp-a already exists in fed"]);
    assert!(!exists(&s.path("node-dup")));

    for bad_id in ["Hosp-B", "h", "-x", "hosp_b", "hosp.b"] {
        let id_arg = format!("--id={bad_id}");
        s.pki(&[
            "add-facility",
            "--dir",
            "fed",
            &id_arg,
            "--name",
            "B",
            "--endpoint",
            "https://b.example:443",
            "--out",
            "node-b",
        ])
        .fails_with(&["invalid facility id"]);
    }
    for bad_endpoint in [
        "http://b.example:443",
        "https://b.example",
        "https://b.example:0",
        "https://b.example:443/path",
        "https://b_x.example:443",
        "b.example:443",
    ] {
        s.pki(&[
            "add-facility",
            "--dir",
            "fed",
            "--id",
            "hosp-b",
            "--name",
            "B",
            "--endpoint",
            bad_endpoint,
            "--out",
            "node-b",
        ])
        .fails_with(&["invalid endpoint"]);
    }
    s.pki(&[
        "add-facility",
        "--dir",
        "fed",
        "--id",
        "hosp-b",
        "--name",
        "B",
        "--kind",
        "pharmacy",
        "--endpoint",
        "https://b.example:443",
        "--out",
        "node-b",
    ])
    .fails_with(&["invalid facility kind"]);
    // An existing node directory is never overwritten.
    s.pki(&[
        "add-facility",
        "--dir",
        "fed",
        "--id",
        "hosp-b",
        "--name",
        "B",
        "--endpoint",
        "https://b.example:443",
        "--out",
        "node-a",
    ])
    .fails_with(&["node-a/ca.crt: already exists", "refusing to overwrite"]);

    assert!(!exists(&s.path("node-b")));
    assert_eq!(
        s.read("fed/federation.json"),
        state_before,
        "failed commands change nothing"
    );
}

#[test]
fn usage_errors_exit_2() {
    let s = Scratch::new();
    assert_eq!(s.pki(&[]).code, 2);
    assert_eq!(s.pki(&["init", "--dir", "fed"]).code, 2);
    assert_eq!(s.pki(&["frobnicate"]).code, 2);
    assert_eq!(
        s.pki(&["publish", "--dir", "fed", "--valid-days", "soon"])
            .code,
        2
    );
}

#[test]
fn publish_writes_verifiable_directory_with_increasing_version() {
    let s = Scratch::new();
    s.federation_with_three();
    let out = s.pki(&["publish", "--dir", "fed"]).ok();
    assert!(out.stdout.contains("directory version 1"), "{}", out.stdout);
    let d1 = verify_directory(
        s.read("fed/directory.json").as_bytes(),
        &ca_der(&s),
        now(),
        None,
    )
    .unwrap();
    assert_eq!(d1.version, 1);
    assert_eq!(d1.federation, "Test Health Federation");
    let week = 7 * 86_400;
    assert!((d1.expires_at - d1.issued_at - week).abs() <= 1);
    let ids: Vec<_> = d1
        .facilities
        .iter()
        .map(|f| f.id.as_str().to_owned())
        .collect();
    assert_eq!(ids, ["hosp-a", "lab-1", "payer-x"]);
    let a = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    let entry = d1.facility(&a.id).unwrap();
    assert_eq!(entry.tls_cert_sha256, vec![a.tls_cert_sha256]);
    assert_eq!(entry.signing_keys, vec![a.signing_public_key]);
    assert_eq!(entry.encryption_key, a.encryption_public_key);
    assert_eq!(entry.endpoint, a.endpoint);
    assert_eq!(entry.status.to_string(), "active");

    s.pki(&["publish", "--dir", "fed", "--valid-days", "2"])
        .ok();
    let d2 = verify_directory(
        s.read("fed/directory.json").as_bytes(),
        &ca_der(&s),
        now(),
        Some(2),
    )
    .unwrap();
    assert_eq!(d2.version, 2);
    assert!((d2.expires_at - d2.issued_at - 2 * 86_400).abs() <= 1);
    // A node that has seen version 2 refuses to go back to version 1.
    let old = fs::read(s.path("fed/directory.json")).unwrap();
    assert!(verify_directory(&old, &ca_der(&s), now(), Some(3)).is_err());

    s.pki(&["publish", "--dir", "fed", "--valid-days", "0"])
        .fails_with(&["invalid validity"]);
    assert_eq!(
        s.list("fed"),
        [
            "ca.crt",
            "ca.key",
            "crl.pem",
            "directory.json",
            "federation.json"
        ]
    );
}

#[test]
fn revoke_marks_facility_and_refuses_unknown_or_repeated() {
    let s = Scratch::new();
    s.federation_with_three();
    s.pki(&["revoke", "--dir", "fed", "--id", "nope-1"])
        .fails_with(&["facility nope-1 is not registered in fed"]);
    s.pki(&[
        "revoke", "--dir", "fed", "--id", "lab-1", "--reason", "bored",
    ])
    .fails_with(&["invalid revocation reason"]);
    s.pki(&[
        "revoke",
        "--dir",
        "fed",
        "--id",
        "lab-1",
        "--reason",
        "key-compromise",
    ])
    .ok();
    s.pki(&["revoke", "--dir", "fed", "--id", "lab-1"])
        .fails_with(&["facility lab-1 is revoked"]);
    s.pki(&["publish", "--dir", "fed"]).ok();
    let d = verify_directory(
        s.read("fed/directory.json").as_bytes(),
        &ca_der(&s),
        now(),
        None,
    )
    .unwrap();
    let lab = d.facility(&"lab-1".parse().unwrap()).unwrap();
    assert_eq!(lab.status.to_string(), "revoked");
    let hosp = d.facility(&"hosp-a".parse().unwrap()).unwrap();
    assert_eq!(hosp.status.to_string(), "active");
    // A revoked facility cannot be rotated back into service.
    s.pki(&["rotate", "--dir", "fed", "--id", "lab-1", "--out", "node-l"])
        .fails_with(&["facility lab-1 is revoked"]);
}

#[test]
fn rotate_keeps_previous_material_and_directory_lists_both() {
    let s = Scratch::new();
    s.federation_with_three();
    let before = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    let old_cert = s.read("node-a/tls.crt");
    let old_signing = s.read("node-a/signing.key");
    let old_enc = s.read("node-a/encryption.key");
    let old_tls_key = s.read("node-a/tls.key");

    s.pki(&[
        "rotate", "--dir", "fed", "--id", "hosp-a", "--out", "node-a",
    ])
    .ok();
    assert_eq!(
        s.list("node-a"),
        [
            "ca.crt",
            "encryption-previous.key",
            "encryption.key",
            "facility.json",
            "signing-previous.key",
            "signing.key",
            "tls-previous.crt",
            "tls-previous.key",
            "tls.crt",
            "tls.key"
        ]
    );
    for key in [
        "tls.key",
        "signing.key",
        "encryption.key",
        "tls-previous.key",
        "signing-previous.key",
        "encryption-previous.key",
    ] {
        assert_eq!(s.mode(&format!("node-a/{key}")), 0o600, "{key}");
    }
    assert_eq!(s.read("node-a/tls-previous.crt"), old_cert);
    assert_eq!(s.read("node-a/tls-previous.key"), old_tls_key);
    assert_eq!(s.read("node-a/signing-previous.key"), old_signing);
    assert_eq!(s.read("node-a/encryption-previous.key"), old_enc);
    assert_ne!(s.read("node-a/tls.crt"), old_cert);

    let after = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    assert_ne!(after.tls_cert_sha256, before.tls_cert_sha256);
    assert_ne!(after.signing_public_key, before.signing_public_key);
    assert_ne!(after.encryption_public_key, before.encryption_public_key);

    s.pki(&["publish", "--dir", "fed"]).ok();
    let d = verify_directory(
        s.read("fed/directory.json").as_bytes(),
        &ca_der(&s),
        now(),
        None,
    )
    .unwrap();
    let entry = d.facility(&after.id).unwrap();
    assert_eq!(
        entry.tls_cert_sha256,
        vec![after.tls_cert_sha256, before.tls_cert_sha256]
    );
    assert_eq!(
        entry.signing_keys,
        vec![after.signing_public_key, before.signing_public_key]
    );
    assert_eq!(entry.encryption_key, after.encryption_public_key);

    // A second rotation drops the oldest material and revokes its certificate as superseded.
    let first_serial = s.serial("node-a/tls-previous.crt");
    s.pki(&[
        "rotate", "--dir", "fed", "--id", "hosp-a", "--out", "node-a",
    ])
    .ok();
    let third = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    s.pki(&["publish", "--dir", "fed"]).ok();
    let d = verify_directory(
        s.read("fed/directory.json").as_bytes(),
        &ca_der(&s),
        now(),
        None,
    )
    .unwrap();
    let entry = d.facility(&after.id).unwrap();
    assert_eq!(
        entry.tls_cert_sha256,
        vec![third.tls_cert_sha256, after.tls_cert_sha256]
    );
    let crl = s
        .openssl(&["crl", "-in", "fed/crl.pem", "-noout", "-text"])
        .ok();
    assert!(crl.stdout.contains(&first_serial), "{}", crl.stdout);
    assert!(crl.stdout.contains("Superseded"), "{}", crl.stdout);
}

#[test]
fn rotate_error_cases() {
    let s = Scratch::new();
    s.federation_with_three();
    s.pki(&[
        "rotate", "--dir", "fed", "--id", "nope-1", "--out", "node-a",
    ])
    .fails_with(&["facility nope-1 is not registered in fed"]);
    // The node directory of another facility is refused.
    s.pki(&[
        "rotate", "--dir", "fed", "--id", "hosp-a", "--out", "node-l",
    ])
    .fails_with(&["node-l/tls.crt: is not the current certificate of facility hosp-a"]);
    // A missing node directory names the missing file.
    s.pki(&[
        "rotate", "--dir", "fed", "--id", "hosp-a", "--out", "nowhere",
    ])
    .fails_with(&["nowhere/tls.crt", "No such file"]);
    // A key readable by others is refused before anything is rotated.
    s.set_mode("node-a/signing.key", 0o644);
    s.pki(&[
        "rotate", "--dir", "fed", "--id", "hosp-a", "--out", "node-a",
    ])
    .fails_with(&["node-a/signing.key", "mode 0644"]);
    s.set_mode("node-a/signing.key", 0o600);
    // A corrupt key is refused, naming the file.
    fs::write(s.path("node-a/encryption.key"), "garbage").unwrap();
    s.pki(&[
        "rotate", "--dir", "fed", "--id", "hosp-a", "--out", "node-a",
    ])
    .fails_with(&["node-a/encryption.key: not a PKCS#8 private key"]);
    assert!(!exists(&s.path("node-a/tls-previous.crt")));
    assert_eq!(
        s.list("node-a").len(),
        6,
        "no temporary files left: {:?}",
        s.list("node-a")
    );
}

#[test]
fn missing_unreadable_or_corrupt_federation_files_are_named() {
    let s = Scratch::new();
    s.pki(&["publish", "--dir", "nofed"])
        .fails_with(&["nofed/federation.json", "No such file"]);

    s.pki(&["init", "--dir", "fed", "--name", "F"]).ok();
    let key = s.read("fed/ca.key");
    let cert = s.read("fed/ca.crt");
    let state = s.read("fed/federation.json");

    fs::write(s.path("fed/ca.key"), "not a key").unwrap();
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/ca.key: not a PKCS#8 private key"]);

    fs::write(s.path("fed/ca.key"), &key).unwrap();
    s.set_mode("fed/ca.key", 0o640);
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/ca.key: private key file has mode 0640"]);
    s.set_mode("fed/ca.key", 0o600);

    fs::write(
        s.path("fed/ca.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/ca.crt: not a valid X.509 certificate"]);
    fs::write(s.path("fed/ca.crt"), "garbage").unwrap();
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/ca.crt: not a PEM file"]);
    fs::write(s.path("fed/ca.crt"), &cert).unwrap();

    // A CA key that does not belong to the CA certificate.
    let other = Scratch::new();
    other.pki(&["init", "--dir", "fed", "--name", "Other"]).ok();
    fs::write(s.path("fed/ca.key"), other.read("fed/ca.key")).unwrap();
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/ca.key: does not match fed/ca.crt"]);
    fs::write(s.path("fed/ca.key"), &key).unwrap();

    fs::write(s.path("fed/federation.json"), &state[..state.len() / 2]).unwrap();
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/federation.json: not a valid federation state file"]);
    fs::write(s.path("fed/federation.json"), r#"{"format":"x"}"#).unwrap();
    let run = s
        .pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/federation.json"]);
    assert!(
        !run.stderr.contains("\"x\""),
        "file contents echoed: {}",
        run.stderr
    );
    fs::write(s.path("fed/federation.json"), &state).unwrap();

    // Structurally valid JSON that breaks the state's invariants.
    s.pki(&[
        "add-facility",
        "--dir",
        "fed",
        "--id",
        "hosp-a",
        "--name",
        "A",
        "--endpoint",
        "https://a.example:443",
        "--out",
        "node-a",
    ])
    .ok();
    let good = s.read("fed/federation.json");
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    let facility = json["facilities"][0].clone();
    json["facilities"].as_array_mut().unwrap().push(facility);
    fs::write(s.path("fed/federation.json"), json.to_string()).unwrap();
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/federation.json: facility hosp-a is listed twice"]);
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["facilities"][0]["encryption_keys"] = serde_json::json!([]);
    fs::write(s.path("fed/federation.json"), json.to_string()).unwrap();
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/federation.json: facility hosp-a must have one or two"]);
    fs::write(s.path("fed/federation.json"), &good).unwrap();

    // Unreadable (a directory where a file should be).
    fs::remove_file(s.path("fed/ca.crt")).unwrap();
    fs::create_dir(s.path("fed/ca.crt")).unwrap();
    s.pki(&["publish", "--dir", "fed"])
        .fails_with(&["fed/ca.crt"]);
    fs::remove_dir(s.path("fed/ca.crt")).unwrap();
    fs::write(s.path("fed/ca.crt"), &cert).unwrap();

    s.pki(&["publish", "--dir", "fed"]).ok();
    assert_eq!(
        s.list("fed"),
        [
            "ca.crt",
            "ca.key",
            "crl.pem",
            "directory.json",
            "federation.json"
        ]
    );
}

#[test]
fn inspect_summarises_each_kind_of_file() {
    let s = Scratch::new();
    s.federation_with_three();
    s.pki(&[
        "revoke",
        "--dir",
        "fed",
        "--id",
        "lab-1",
        "--reason",
        "cessation-of-operation",
    ])
    .ok();
    s.pki(&["publish", "--dir", "fed"]).ok();

    let cert = s.pki(&["inspect", "node-a/tls.crt"]).ok().stdout;
    let serial = s.serial("node-a/tls.crt");
    let a = FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    for needle in [
        "CN=hosp-a",
        "healthfed federation root CA",
        serial.as_str(),
        "URI:urn:healthfed:facility:hosp-a",
        "DNS:hosp-a.example.org",
        "serverAuth, clientAuth",
        "Digital Signature",
        "CA:FALSE",
        "facility id:",
        &hex::encode(a.tls_cert_sha256),
        "valid (verified with node-a/ca.crt)",
    ] {
        assert!(cert.contains(needle), "{needle:?} missing from\n{cert}");
    }
    let ip_cert = s.pki(&["inspect", "node-l/tls.crt"]).ok().stdout;
    assert!(ip_cert.contains("IP:127.0.0.1"), "{ip_cert}");
    let ca = s.pki(&["inspect", "fed/ca.crt"]).ok().stdout;
    assert!(ca.contains("CA:TRUE"), "{ca}");
    assert!(ca.contains("Key Cert Sign"), "{ca}");

    let crl = s.pki(&["inspect", "fed/crl.pem"]).ok().stdout;
    let lab_serial = s.serial("node-l/tls.crt");
    for needle in [
        "CRL number:",
        "next update:",
        "revoked:             1",
        lab_serial.as_str(),
        "CessationOfOperation",
        "valid (verified with fed/ca.crt)",
    ] {
        assert!(crl.contains(needle), "{needle:?} missing from\n{crl}");
    }

    let dir = s.pki(&["inspect", "fed/directory.json"]).ok().stdout;
    for needle in [
        "valid (verified with fed/ca.crt)",
        "version:             1",
        "expires at:",
        "hosp-a",
        "payer-x",
        "revoked",
        &hex::encode(a.signing_public_key),
    ] {
        assert!(dir.contains(needle), "{needle:?} missing from\n{dir}");
    }
    // Without a ca.crt beside it the signature is reported as unchecked.
    fs::copy(
        s.path("fed/directory.json"),
        s.path("node-a/../directory-copy.json"),
    )
    .unwrap();
    let copy = s.pki(&["inspect", "directory-copy.json"]).ok().stdout;
    assert!(copy.contains("not checked"), "{copy}");
}

#[test]
fn inspect_never_prints_private_key_material() {
    let s = Scratch::new();
    s.federation_with_three();
    for (file, kind) in [
        ("node-a/signing.key", "Ed25519"),
        ("node-a/encryption.key", "X25519"),
        ("node-a/tls.key", "ECDSA P-256"),
        ("fed/ca.key", "ECDSA P-256"),
    ] {
        let out = s.pki(&["inspect", file]).ok().stdout;
        assert!(out.contains(kind), "{out}");
        assert!(out.contains("private key:         not shown"), "{out}");
        // The private scalar as openssl prints it (hex, colon-separated) must not appear.
        let text = s
            .openssl(&["pkey", "-in", file, "-noout", "-text"])
            .ok()
            .stdout;
        let private_hex: String = text
            .split("pub:")
            .next()
            .unwrap()
            .lines()
            .skip(2)
            .flat_map(|l| l.trim().split(':'))
            .collect();
        assert!(private_hex.len() >= 64, "{text}");
        assert!(
            !out.contains(&private_hex),
            "private key leaked by inspect {file}"
        );
        if kind != "ECDSA P-256" {
            // RFC 8410 v1 files end with the 32 private bytes.
            let der = pem::parse(s.read(file)).unwrap().into_contents();
            assert!(!out.contains(&hex::encode(&der[der.len() - 32..])));
        }
        // And the public key openssl derives is the one shown.
        let pub_hex: String = text
            .split("pub:")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.contains(':') || l.starts_with(' '))
            .flat_map(|l| l.trim().split(':'))
            .take_while(|h| h.len() == 2)
            .collect();
        assert!(
            out.contains(&pub_hex),
            "public key {pub_hex} missing from\n{out}"
        );
    }
    s.set_mode("node-a/tls.key", 0o644);
    let out = s.pki(&["inspect", "node-a/tls.key"]).ok().stdout;
    assert!(out.contains("WARNING"), "{out}");
}

#[test]
fn inspect_errors_name_the_file() {
    let s = Scratch::new();
    s.pki(&["inspect", "missing.pem"])
        .fails_with(&["missing.pem", "No such file"]);
    fs::write(s.path("junk.bin"), b"\x00\x01junk").unwrap();
    s.pki(&["inspect", "junk.bin"])
        .fails_with(&["junk.bin: not a certificate, CRL, PKCS#8 private key or signed directory"]);
    fs::write(
        s.path("bad.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    s.pki(&["inspect", "bad.crt"])
        .fails_with(&["bad.crt: not a valid X.509 certificate"]);
    fs::write(
        s.path("bad.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    s.pki(&["inspect", "bad.key"])
        .fails_with(&["bad.key: not a supported PKCS#8 private key"]);
}

#[test]
fn output_to_a_closed_pipe_or_a_full_disk_does_not_panic() {
    use std::process::{Command, Stdio};
    let s = Scratch::new();
    s.pki(&["init", "--dir", "fed", "--name", "Test Health Federation"])
        .ok();

    // stdout is a pipe whose read end is closed before `pki` starts: no reader ever exists,
    // so its write fails with EPIPE whatever the timing (closing it after the spawn races
    // with a fast child that writes first).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_pki"))
        .args(["inspect", "fed/ca.crt"])
        .current_dir(s.dir.path())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "closed pipe: {stderr}");
    assert!(
        stderr.is_empty(),
        "closed pipe: nothing to say, got: {stderr}"
    );

    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pki"))
        .args(["inspect", "fed/ca.crt"])
        .current_dir(s.dir.path())
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pki: cannot write the output") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
