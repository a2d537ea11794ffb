//! Interoperability: the real `openssl` binary accepts what `pki` issues.

#![allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]

mod common;

use common::Scratch;

#[test]
fn openssl_verifies_every_issued_tls_certificate() {
    let s = Scratch::new();
    s.federation_with_three();
    for node in ["node-a", "node-l", "node-p"] {
        let cert = format!("{node}/tls.crt");
        let out = s.openssl(&["verify", "-CAfile", "fed/ca.crt", &cert]).ok();
        assert_eq!(out.stdout.trim(), format!("{cert}: OK"));
        // The TLS purposes too, as a TLS stack would check them.
        for purpose in ["sslserver", "sslclient"] {
            s.openssl(&[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                "fed/ca.crt",
                &cert,
            ])
            .ok();
        }
        // The node's own copy of the CA verifies it as well.
        s.openssl(&["verify", "-CAfile", &format!("{node}/ca.crt"), &cert])
            .ok();
    }
    // A certificate is not accepted under another federation's CA.
    let other = Scratch::new();
    other.pki(&["init", "--dir", "fed", "--name", "Other"]).ok();
    let foreign_ca = other.path("fed/ca.crt");
    let out = s.openssl(&[
        "verify",
        "-CAfile",
        foreign_ca.to_str().unwrap(),
        "node-a/tls.crt",
    ]);
    assert_ne!(out.code, 0, "{}", out.stdout);
}

#[test]
fn openssl_shows_the_requested_extensions() {
    let s = Scratch::new();
    s.federation_with_three();
    let text = s
        .openssl(&["x509", "-in", "node-a/tls.crt", "-noout", "-text"])
        .ok()
        .stdout;
    for needle in [
        "URI:urn:healthfed:facility:hosp-a",
        "DNS:hosp-a.example.org",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "X509v3 Key Usage: critical",
        "Digital Signature",
        "CA:FALSE",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "ecdsa-with-SHA256",
        "NIST CURVE: P-256",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    assert!(!text.contains("Key Encipherment"), "{text}");
    let ip = s
        .openssl(&["x509", "-in", "node-l/tls.crt", "-noout", "-text"])
        .ok()
        .stdout;
    assert!(ip.contains("IP Address:127.0.0.1"), "{ip}");
    assert!(ip.contains("URI:urn:healthfed:facility:lab-1"), "{ip}");

    // Validity is at most one year; the serial is positive and at most 20 bytes.
    let dates = s
        .openssl(&[
            "x509",
            "-in",
            "node-a/tls.crt",
            "-noout",
            "-startdate",
            "-enddate",
        ])
        .ok()
        .stdout;
    let (start, end) = parse_dates(&dates);
    assert_eq!(end - start, 365 * 86_400);
    let serial = s.serial("node-a/tls.crt");
    assert!(serial.len() <= 40 && serial.len() >= 16, "{serial}");
    assert!(
        u8::from_str_radix(&serial[..2], 16).unwrap() < 0x80,
        "{serial}"
    );

    // The AKI of the facility certificate is the SKI of the CA.
    let ca = s
        .openssl(&["x509", "-in", "fed/ca.crt", "-noout", "-text"])
        .ok()
        .stdout;
    let ski = after(&ca, "X509v3 Subject Key Identifier:");
    let aki = after(&text, "X509v3 Authority Key Identifier:");
    assert_eq!(aki.trim_start_matches("keyid:"), ski);
}

#[test]
fn openssl_sees_a_proper_root_ca() {
    let s = Scratch::new();
    s.pki(&["init", "--dir", "fed", "--name", "Test Health Federation"])
        .ok();
    let text = s
        .openssl(&["x509", "-in", "fed/ca.crt", "-noout", "-text"])
        .ok()
        .stdout;
    for needle in [
        "CA:TRUE",
        "Certificate Sign",
        "CRL Sign",
        "O = Test Health Federation",
        "X509v3 Subject Key Identifier",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    let dates = s
        .openssl(&[
            "x509",
            "-in",
            "fed/ca.crt",
            "-noout",
            "-startdate",
            "-enddate",
        ])
        .ok()
        .stdout;
    let (start, end) = parse_dates(&dates);
    assert_eq!(end - start, 7305 * 86_400, "20 years");
    // Self-signed: it verifies against itself.
    s.openssl(&["verify", "-CAfile", "fed/ca.crt", "fed/ca.crt"])
        .ok();
}

#[test]
fn openssl_verifies_crl_and_lists_revoked_serial() {
    let s = Scratch::new();
    s.federation_with_three();
    s.pki(&["publish", "--dir", "fed"]).ok();
    let out = s
        .openssl(&[
            "crl",
            "-in",
            "fed/crl.pem",
            "-CAfile",
            "fed/ca.crt",
            "-noout",
        ])
        .ok();
    assert!(out.stderr.contains("verify OK"), "{}", out.stderr);
    let empty = s
        .openssl(&["crl", "-in", "fed/crl.pem", "-noout", "-text"])
        .ok()
        .stdout;
    assert!(empty.contains("No Revoked Certificates"), "{empty}");

    let lab_serial = s.serial("node-l/tls.crt");
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
    s.pki(&["publish", "--dir", "fed"]).ok();
    let out = s
        .openssl(&[
            "crl",
            "-in",
            "fed/crl.pem",
            "-CAfile",
            "fed/ca.crt",
            "-noout",
        ])
        .ok();
    assert!(out.stderr.contains("verify OK"), "{}", out.stderr);
    let text = s
        .openssl(&["crl", "-in", "fed/crl.pem", "-noout", "-text"])
        .ok()
        .stdout;
    for needle in [
        format!("Serial Number: {lab_serial}"),
        "Key Compromise".to_owned(),
        "X509v3 CRL Number".to_owned(),
        "X509v3 Authority Key Identifier".to_owned(),
        "Next Update".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from\n{text}");
    }
    let hosp_serial = s.serial("node-a/tls.crt");
    assert!(
        !text.contains(&hosp_serial),
        "unrevoked serial listed:\n{text}"
    );
    // CRL number is monotonic: 2 after the second publish.
    assert!(text.contains("CRL Number: \n                2"), "{text}");

    // With the CRL, openssl refuses the revoked certificate and still accepts the others.
    let revoked = s.openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        "fed/ca.crt",
        "-CRLfile",
        "fed/crl.pem",
        "node-l/tls.crt",
    ]);
    assert_ne!(revoked.code, 0);
    assert!(revoked.stdout.contains("revoked") || revoked.stderr.contains("revoked"));
    s.openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        "fed/ca.crt",
        "-CRLfile",
        "fed/crl.pem",
        "node-a/tls.crt",
    ])
    .ok();

    // nextUpdate is thisUpdate + 7 days.
    let upd = s
        .openssl(&[
            "crl",
            "-in",
            "fed/crl.pem",
            "-noout",
            "-lastupdate",
            "-nextupdate",
        ])
        .ok()
        .stdout;
    let mut lines = upd.lines();
    let last = parse_openssl_time(lines.next().unwrap().split_once('=').unwrap().1);
    let next = parse_openssl_time(lines.next().unwrap().split_once('=').unwrap().1);
    assert_eq!(next - last, 7 * 86_400);
}

#[test]
fn openssl_reads_signing_and_encryption_keys() {
    let s = Scratch::new();
    s.federation_with_three();
    let facility = pki_tools::FacilityFile::load(&s.path("node-a/facility.json")).unwrap();
    for (file, header, public) in [
        (
            "node-a/signing.key",
            "ED25519 Private-Key",
            facility.signing_public_key,
        ),
        (
            "node-a/encryption.key",
            "X25519 Private-Key",
            facility.encryption_public_key,
        ),
    ] {
        let text = s
            .openssl(&["pkey", "-in", file, "-noout", "-text"])
            .ok()
            .stdout;
        assert!(text.starts_with(header), "{text}");
        // openssl derives the same public key that facility.json and the directory publish.
        let out = std::process::Command::new(common::OPENSSL)
            .args(["pkey", "-in", file, "-pubout", "-outform", "DER"])
            .current_dir(s.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let spki = out.stdout;
        assert_eq!(&spki[spki.len() - 32..], public.as_slice(), "{file}");
    }
    let tls = s
        .openssl(&["pkey", "-in", "node-a/tls.key", "-noout", "-text"])
        .ok()
        .stdout;
    assert!(tls.contains("NIST CURVE: P-256"), "{tls}");
    // The TLS key belongs to the TLS certificate.
    let key_pub = s
        .openssl(&["pkey", "-in", "node-a/tls.key", "-pubout"])
        .ok()
        .stdout;
    let cert_pub = s
        .openssl(&["x509", "-in", "node-a/tls.crt", "-noout", "-pubkey"])
        .ok()
        .stdout;
    assert_eq!(key_pub, cert_pub);
}

fn after(text: &str, label: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.contains(label));
    lines.next();
    lines.next().unwrap().trim().to_owned()
}

fn parse_dates(out: &str) -> (i64, i64) {
    let mut lines = out.lines();
    let start = parse_openssl_time(lines.next().unwrap().split_once('=').unwrap().1);
    let end = parse_openssl_time(lines.next().unwrap().split_once('=').unwrap().1);
    (start, end)
}

/// Parse OpenSSL's `Nov 26 11:53:20 2026 GMT` into Unix seconds.
fn parse_openssl_time(s: &str) -> i64 {
    let format = time::macros::format_description!(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), &format)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .assume_utc()
        .unix_timestamp()
}
