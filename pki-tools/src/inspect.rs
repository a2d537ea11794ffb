//! `pki inspect`: a human-readable summary of a certificate, CRL, private key or signed
//! directory. Private key material is never printed: only the key type and its public key.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::der_parser::oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::AlgorithmIdentifier;

use crate::keys::{classify_pkcs8, KeyType};
use crate::{cert, directory, files, layout, PkiError};

/// Describe the file at `path`. Fails, naming the file, if it is missing, unreadable or not a
/// certificate, CRL, PKCS#8 private key or signed directory.
pub fn inspect(path: &Path) -> Result<String, PkiError> {
    let bytes = files::read(path)?;
    if directory::looks_like_directory(&bytes) {
        return Ok(describe_directory(path, &bytes));
    }
    if let Ok(blocks) = pem::parse_many(&bytes) {
        if let Some(block) = blocks.first() {
            return match block.tag() {
                "CERTIFICATE" => describe_cert(path, block.contents()),
                "X509 CRL" => describe_crl(path, block.contents()),
                "PRIVATE KEY" => describe_private_key(path, block.contents()),
                "EC PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => Err(
                    PkiError::invalid(path, "unsupported private key format (expected PKCS#8)"),
                ),
                other => Err(PkiError::invalid(
                    path,
                    format!("unsupported PEM block {other}"),
                )),
            };
        }
    }
    if cert::parse(&bytes).is_some() {
        return describe_cert(path, &bytes);
    }
    if matches!(CertificateRevocationList::from_der(&bytes), Ok((rest, _)) if rest.is_empty()) {
        return describe_crl(path, &bytes);
    }
    Err(PkiError::invalid(
        path,
        "not a certificate, CRL, PKCS#8 private key or signed directory",
    ))
}

fn describe_cert(path: &Path, der: &[u8]) -> Result<String, PkiError> {
    let cert =
        cert::parse(der).ok_or_else(|| PkiError::invalid(path, "not a valid X.509 certificate"))?;
    let mut out = String::new();
    let _ = writeln!(out, "certificate {}", path.display());
    line(&mut out, "subject", cert.subject().to_string());
    line(&mut out, "issuer", cert.issuer().to_string());
    line(&mut out, "serial", cert::serial_hex(cert.raw_serial()));
    let validity = cert.validity();
    let nb = validity.not_before.to_datetime();
    let na = validity.not_after.to_datetime();
    line(&mut out, "not before", fmt_time(nb));
    line(&mut out, "not after", fmt_time(na));
    let now = OffsetDateTime::now_utc();
    let status = if now < nb {
        "NOT YET VALID"
    } else if now > na {
        "EXPIRED"
    } else {
        "within validity period"
    };
    line(&mut out, "validity", status.to_owned());
    let mut sans = Vec::new();
    for ext in cert.iter_extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                let value = match (bc.ca, bc.path_len_constraint) {
                    (true, Some(n)) => format!("CA:TRUE, pathlen:{n}"),
                    (true, None) => "CA:TRUE".to_owned(),
                    (false, _) => "CA:FALSE".to_owned(),
                };
                line(&mut out, "basic constraints", value);
            }
            ParsedExtension::KeyUsage(ku) => line(&mut out, "key usage", ku.to_string()),
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let mut names = Vec::new();
                for (set, name) in [
                    (eku.server_auth, "serverAuth"),
                    (eku.client_auth, "clientAuth"),
                    (eku.code_signing, "codeSigning"),
                    (eku.email_protection, "emailProtection"),
                    (eku.time_stamping, "timeStamping"),
                    (eku.ocsp_signing, "OCSPSigning"),
                    (eku.any, "anyExtendedKeyUsage"),
                ] {
                    if set {
                        names.push(name.to_owned());
                    }
                }
                names.extend(eku.other.iter().map(|o| o.to_id_string()));
                line(&mut out, "ext key usage", names.join(", "));
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                sans.extend(san.general_names.iter().map(describe_general_name));
            }
            ParsedExtension::SubjectKeyIdentifier(id) => {
                line(&mut out, "subject key id", hex::encode(id.0));
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                if let Some(id) = &aki.key_identifier {
                    line(&mut out, "authority key id", hex::encode(id.0));
                }
            }
            _ => {}
        }
    }
    if !sans.is_empty() {
        line(&mut out, "subject alt names", sans.join(", "));
    }
    match crate::facility_id_from_cert(der) {
        Ok(id) => line(&mut out, "facility id", id.to_string()),
        Err(_) if cert.is_ca() => {}
        Err(e) => line(&mut out, "facility id", format!("none ({e})")),
    }
    line(&mut out, "public key", describe_spki(&cert));
    line(
        &mut out,
        "SHA-256",
        hex::encode(cert::cert_fingerprint(der)),
    );
    line(
        &mut out,
        "signature",
        check_signature(
            path,
            cert.tbs_certificate.as_ref(),
            &cert.signature_algorithm,
            &cert.signature_value.data,
        ),
    );
    Ok(out)
}

fn describe_crl(path: &Path, der: &[u8]) -> Result<String, PkiError> {
    let crl = match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => crl,
        _ => return Err(PkiError::invalid(path, "not a valid X.509 CRL")),
    };
    let mut out = String::new();
    let _ = writeln!(out, "certificate revocation list {}", path.display());
    line(&mut out, "issuer", crl.issuer().to_string());
    line(
        &mut out,
        "this update",
        fmt_time(crl.last_update().to_datetime()),
    );
    let next = crl.next_update().map(|t| t.to_datetime());
    let next_text = match next {
        Some(t) if t < OffsetDateTime::now_utc() => format!("{} (STALE)", fmt_time(t)),
        Some(t) => fmt_time(t),
        None => "none".to_owned(),
    };
    line(&mut out, "next update", next_text);
    line(
        &mut out,
        "CRL number",
        crl.crl_number()
            .map_or_else(|| "none".to_owned(), |n| n.to_string()),
    );
    line(
        &mut out,
        "signature",
        check_signature(
            path,
            crl.tbs_cert_list.as_ref(),
            &crl.signature_algorithm,
            &crl.signature_value.data,
        ),
    );
    let revoked: Vec<_> = crl.iter_revoked_certificates().collect();
    line(&mut out, "revoked", revoked.len().to_string());
    for r in revoked {
        let reason = r
            .reason_code()
            .map_or_else(|| "unspecified".to_owned(), |(_, code)| code.to_string());
        let _ = writeln!(
            out,
            "    serial {}  revoked {}  reason {}",
            cert::serial_hex(r.raw_serial()),
            fmt_time(r.revocation_date.to_datetime()),
            reason
        );
    }
    Ok(out)
}

fn describe_private_key(path: &Path, der: &[u8]) -> Result<String, PkiError> {
    let (kind, public) = classify_pkcs8(der).ok_or_else(|| {
        PkiError::invalid(
            path,
            "not a supported PKCS#8 private key (ECDSA P-256, Ed25519 or X25519)",
        )
    })?;
    let mut out = String::new();
    let _ = writeln!(out, "private key {}", path.display());
    let kind_text = match kind {
        KeyType::EcdsaP256 => "ECDSA P-256 (TLS or CA key)",
        KeyType::Ed25519 => "Ed25519 (record signing)",
        KeyType::X25519 => "X25519 (record encryption)",
    };
    line(&mut out, "type", kind_text.to_owned());
    line(&mut out, "public key", hex::encode(&public));
    line(
        &mut out,
        "public key SHA-256",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &public)),
    );
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        let note = if mode & 0o077 != 0 {
            " (WARNING: group/other can access this key; run chmod 600)"
        } else {
            ""
        };
        line(&mut out, "file mode", format!("{mode:04o}{note}"));
    }
    line(&mut out, "private key", "not shown".to_owned());
    Ok(out)
}

fn describe_directory(path: &Path, bytes: &[u8]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "signed federation directory {}", path.display());
    let ca_path = sibling_ca(path);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let status = match std::fs::read(&ca_path) {
        Err(_) => format!("not checked (no {} beside the file)", layout::CA_CERT),
        Ok(ca_pem) => match files::pem_decode(&ca_path, &ca_pem, "CERTIFICATE") {
            Err(e) => format!("not checked ({e})"),
            Ok(ca_der) => match directory::verify_directory(bytes, &ca_der, now, None) {
                Ok(_) => format!("valid (verified with {})", ca_path.display()),
                Err(e) => format!("REFUSED: {e}"),
            },
        },
    };
    line(&mut out, "signature", status);
    let d = match directory::decode_unverified(bytes) {
        Ok(d) => d,
        Err(e) => {
            line(&mut out, "content", format!("unreadable: {e}"));
            return out;
        }
    };
    line(&mut out, "federation", d.federation.clone());
    line(&mut out, "version", d.version.to_string());
    line(&mut out, "issued at", fmt_unix(d.issued_at));
    let expiry = if d.expires_at <= now {
        format!("{} (EXPIRED)", fmt_unix(d.expires_at))
    } else {
        fmt_unix(d.expires_at)
    };
    line(&mut out, "expires at", expiry);
    line(&mut out, "facilities", d.facilities.len().to_string());
    let _ = writeln!(
        out,
        "    {:<20} {:<9} {:<8} {:<36} NAME",
        "ID", "KIND", "STATUS", "ENDPOINT"
    );
    for f in &d.facilities {
        let _ = writeln!(
            out,
            "    {:<20} {:<9} {:<8} {:<36} {}",
            f.id.as_str(),
            f.kind.as_str(),
            f.status.to_string(),
            f.endpoint,
            f.name
        );
        for fp in &f.tls_cert_sha256 {
            let _ = writeln!(out, "        tls cert sha256  {}", hex::encode(fp));
        }
        for key in &f.signing_keys {
            let _ = writeln!(out, "        signing key      {}", hex::encode(key));
        }
        let _ = writeln!(
            out,
            "        encryption key   {}",
            hex::encode(f.encryption_key)
        );
    }
    out
}

fn sibling_ca(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(layout::CA_CERT),
        _ => PathBuf::from(layout::CA_CERT),
    }
}

/// Check an ECDSA P-256 signature against the `ca.crt` next to the inspected file.
fn check_signature(path: &Path, tbs: &[u8], alg: &AlgorithmIdentifier<'_>, sig: &[u8]) -> String {
    let ca_path = sibling_ca(path);
    let Ok(ca_pem) = std::fs::read(&ca_path) else {
        return format!("not checked (no {} beside the file)", layout::CA_CERT);
    };
    let Ok(ca_der) = files::pem_decode(&ca_path, &ca_pem, "CERTIFICATE") else {
        return format!(
            "not checked ({} is not a PEM certificate)",
            ca_path.display()
        );
    };
    let Some(ca) = cert::parse(&ca_der) else {
        return format!("not checked ({} is not a certificate)", ca_path.display());
    };
    if alg.algorithm != oid!(1.2.840 .10045 .4 .3 .2) {
        return "not checked (not ecdsa-with-SHA256)".to_owned();
    }
    match cert::p256_public_point(&ca) {
        Err(problem) => format!("not checked ({problem})"),
        Ok(point) => match UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point).verify(tbs, sig)
        {
            Ok(()) => format!("valid (verified with {})", ca_path.display()),
            Err(_) => format!("INVALID (does not verify with {})", ca_path.display()),
        },
    }
}

fn describe_spki(cert: &X509Certificate<'_>) -> String {
    match cert::p256_public_point(cert) {
        Ok(point) => format!(
            "ECDSA P-256, SHA-256 {}",
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &point))
        ),
        Err(_) => format!(
            "algorithm {}",
            cert.public_key().algorithm.algorithm.to_id_string()
        ),
    }
}

fn describe_general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(bytes) => {
            let ip = if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                Some(IpAddr::V4(Ipv4Addr::from(v4)))
            } else {
                <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
            };
            ip.map_or_else(|| "IP:(malformed)".to_owned(), |ip| format!("IP:{ip}"))
        }
        other => format!("{other:?}"),
    }
}

fn line(out: &mut String, label: &str, value: String) {
    let _ = writeln!(out, "  {:<20} {}", format!("{label}:"), value);
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn fmt_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs).map_or_else(|_| secs.to_string(), fmt_time)
}
