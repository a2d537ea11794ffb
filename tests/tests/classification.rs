//! The bytes decide, not the label: real nodes classify what a record is, refuse what
//! contradicts its label or holds several patients, treat what they cannot read as
//! `unclassified`, and the receiver re-classifies what it decrypts.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::time::Duration;

use http::StatusCode;
use pki_tools::FacilityKind;
use serde_json::Value;

use gateway_envelope::TransferId;
use tests::{bundle_by_prefix, patient_id, raw_peer_post, testdata, Fed, Node, RawIdentity};

use common::{ca_pem, encryption_key, seal_with_metadata, signing_key, wait_rejection};

const DELIVERY: Duration = Duration::from_secs(60);

/// Every content type a submission can declare: the four the gateway knows and MIME types.
const CONTENT_TYPES: [&str; 8] = [
    "fhir",
    "ccda",
    "pdf",
    "dicom",
    "application/json",
    "application/xml",
    "text/plain",
    "application/octet-stream",
];

/// A shared sensitive record: its bytes, the label that fits it, its patient and one
/// sensitive category the manifest lists for it.
struct Sensitive {
    name: &'static str,
    bytes: Vec<u8>,
    label: &'static str,
    patient: String,
    category: &'static str,
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(testdata(rel)).unwrap()
}

fn sensitive_records() -> Vec<Sensitive> {
    let eliseo = bundle_by_prefix("Eliseo_Cummings");
    let laurie = bundle_by_prefix("Laurie_McCullough");
    vec![
        Sensitive {
            name: "Eliseo_Cummings (Synthea bundle)",
            patient: patient_id(&eliseo).unwrap(),
            bytes: eliseo,
            label: "fhir",
            category: "mental-health",
        },
        Sensitive {
            name: "Laurie_McCullough (Synthea bundle)",
            patient: patient_id(&laurie).unwrap(),
            bytes: laurie,
            label: "fhir",
            category: "reproductive-health",
        },
        Sensitive {
            name: "Bundle-dg2 (genetics DiagnosticReport)",
            bytes: read("fhir/genetics/Bundle-dg2.json"),
            label: "fhir",
            patient: "example".to_owned(),
            category: "genetic",
        },
        Sensitive {
            name: "MolecularSequence-breastcancer (single resource)",
            bytes: read("fhir/genetics/MolecularSequence-breastcancer.json"),
            label: "fhir",
            patient: "brcapat".to_owned(),
            category: "genetic",
        },
        Sensitive {
            name: "Referral Note (C-CDA with a Mental Status section)",
            bytes: read("fhir/cda/Referral_Note_C-CDA2.1.xml"),
            label: "ccda",
            patient: "444222222".to_owned(),
            category: "mental-health",
        },
    ]
}

fn error_text(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// A clinician's explicit declaration of a record's categories, which the default policies
/// accept in place of `unclassified` for content the gateway cannot read.
const DECLARED_GENERAL: [(&str, &str); 3] = [
    ("categories", "general"),
    ("clinician", "dr-declares"),
    ("clinician_role", "physician"),
];

/// A minimal, well-formed PDF (what a scanned referral letter starts like).
fn pdf_bytes() -> Vec<u8> {
    let mut pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n".to_vec();
    pdf.extend_from_slice(b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n");
    pdf.extend_from_slice(b"trailer << /Root 1 0 R >>\n%%EOF\n");
    pdf
}

/// One DICOM data element in explicit-VR little endian.
fn dicom_element(out: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], value: &[u8]) {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        // DICOM values have even length: UIDs pad with NUL, text with a space.
        value.push(if vr == b"UI" { 0 } else { b' ' });
    }
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&u32::try_from(value.len()).unwrap().to_le_bytes());
    } else {
        out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_le_bytes());
    }
    out.extend_from_slice(&value);
}

/// A small DICOM Part 10 file (secondary capture, no pixel data) for `patient_id`.
fn dicom_bytes(patient_id: &str) -> Vec<u8> {
    let mut meta = Vec::new();
    dicom_element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
    dicom_element(
        &mut meta,
        0x0002,
        0x0002,
        b"UI",
        b"1.2.840.10008.5.1.4.1.1.7",
    );
    dicom_element(
        &mut meta,
        0x0002,
        0x0003,
        b"UI",
        b"1.2.826.0.1.3680043.2.1125.1.1",
    );
    dicom_element(&mut meta, 0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1");
    dicom_element(
        &mut meta,
        0x0002,
        0x0012,
        b"UI",
        b"1.2.826.0.1.3680043.2.1125.1",
    );
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    dicom_element(
        &mut out,
        0x0002,
        0x0000,
        b"UL",
        &u32::try_from(meta.len()).unwrap().to_le_bytes(),
    );
    out.extend_from_slice(&meta);
    dicom_element(
        &mut out,
        0x0008,
        0x0016,
        b"UI",
        b"1.2.840.10008.5.1.4.1.1.7",
    );
    dicom_element(
        &mut out,
        0x0008,
        0x0018,
        b"UI",
        b"1.2.826.0.1.3680043.2.1125.1.1",
    );
    dicom_element(&mut out, 0x0010, 0x0010, b"PN", b"Testpatient^Dicom");
    dicom_element(&mut out, 0x0010, 0x0020, b"LO", patient_id.as_bytes());
    out
}

/// The entries of two Synthea bundles in one bundle (the first one's envelope).
fn merged_bundle(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut a: Value = serde_json::from_slice(first).unwrap();
    let b: Value = serde_json::from_slice(second).unwrap();
    let extra = b["entry"].as_array().unwrap().clone();
    a["entry"].as_array_mut().unwrap().extend(extra);
    serde_json::to_vec(&a).unwrap()
}

/// Submits to clinic-b for treatment and asserts a 400 whose error contains `needle`.
async fn assert_refused(
    a: &Node,
    patient: &str,
    label: &str,
    bytes: Vec<u8>,
    extra: &[(&str, &str)],
    needle: &str,
) -> String {
    let sent = a
        .send("clinic-b", patient, "treatment", label, bytes, extra)
        .await;
    assert_eq!(sent.status, StatusCode::BAD_REQUEST, "{}", sent.body);
    let error = error_text(&sent.body);
    assert!(error.contains(needle), "{error}");
    error
}

async fn assert_nothing_received(node: &Node) {
    let inbox = node.inbox().await;
    assert!(inbox.is_empty(), "{} received {inbox:?}", node.dir.id);
}

/// A hospital, a clinic and a payer, each running.
fn hospital_clinic_payer() -> (Fed, Node, Node, Node) {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
        ("payer-c", FacilityKind::Payer),
    ]);
    let (a, b, c) = (
        fed.start("hosp-a"),
        fed.start("clinic-b"),
        fed.start("payer-c"),
    );
    (fed, a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_label_delivers_a_sensitive_record_without_consent() {
    let (_fed, a, b, c) = hospital_clinic_payer();

    for record in sensitive_records() {
        for label in CONTENT_TYPES {
            for (to, purpose) in [("clinic-b", "treatment"), ("payer-c", "payment")] {
                let sent = a
                    .send(
                        to,
                        &record.patient,
                        purpose,
                        label,
                        record.bytes.clone(),
                        &[],
                    )
                    .await;
                let what = format!("{} as {label} to {to} for {purpose}", record.name);
                assert!(
                    sent.status == StatusCode::BAD_REQUEST || sent.status == StatusCode::FORBIDDEN,
                    "{what}: {} {}",
                    sent.status,
                    sent.body
                );
                let error = error_text(&sent.body);
                if label == record.label {
                    // The right label: classified, and refused by consent or payment policy,
                    // naming what was found.
                    assert_eq!(sent.status, StatusCode::FORBIDDEN, "{what}: {error}");
                    assert!(error.contains(record.category), "{what}: {error}");
                    if purpose == "treatment" {
                        assert!(
                            error.contains("needs consent for") && error.contains(to),
                            "{what}: {error}"
                        );
                    } else {
                        // For payment no consent helps: the refusal says so, without
                        // suggesting one.
                        assert!(
                            error.contains("never disclosed for payment (found: ")
                                && !error.contains("needs consent"),
                            "{what}: {error}"
                        );
                    }
                } else {
                    // A wrong label is refused as such, naming both the label and the content.
                    assert_eq!(sent.status, StatusCode::BAD_REQUEST, "{what}: {error}");
                    assert!(error.contains("declared"), "{what}: {error}");
                }
            }
        }
    }
    assert_nothing_received(&b).await;
    assert_nothing_received(&c).await;

    // The denials in the audit log say what consent is missing, as the caller was told.
    let denials = a.audit_events("policy-decision").await;
    assert!(
        denials.iter().any(|e| {
            let reason = e["reason"].as_str().unwrap_or("");
            e["outcome"] == "deny"
                && reason.contains("needs consent for mental-health")
                && reason.contains("naming clinic-b")
        }),
        "{denials:#?}"
    );

    // Each refused label is in the sender's audit log, with no patient data in the reason.
    let rejected = common::rejections(&a).await;
    let mislabelled = rejected
        .iter()
        .filter(|e| e["reason"].as_str().unwrap_or("").contains("declared"))
        .count();
    assert!(mislabelled >= 5 * 7 * 2, "{rejected:#?}");
    for e in &rejected {
        let reason = e["reason"].as_str().unwrap_or("");
        for record in sensitive_records() {
            assert!(!reason.contains(&record.patient), "{reason}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_patient_per_transfer_with_the_right_count_and_a_mismatch_named_as_such() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");

    let clemente = bundle_by_prefix("Clemente_Kreiger");
    let eliseo = bundle_by_prefix("Eliseo_Cummings");
    let (x, y) = (patient_id(&clemente).unwrap(), patient_id(&eliseo).unwrap());
    // Patient x consented to everything going to clinic-b; y did not.
    a.consent_for_treatment(&x, "clinic-b").await;
    for merged in [
        merged_bundle(&clemente, &eliseo),
        merged_bundle(&eliseo, &clemente),
    ] {
        for declared in [&x, &y] {
            let sent = a
                .send(
                    "clinic-b",
                    declared,
                    "treatment",
                    "fhir",
                    merged.clone(),
                    &[],
                )
                .await;
            assert_eq!(sent.status, StatusCode::BAD_REQUEST, "{}", sent.body);
            let error = error_text(&sent.body);
            assert!(error.contains("2 patients"), "{error}");
        }
    }

    // One patient, declared wrong: a mismatch, not a count.
    let error = assert_refused(
        &a,
        "made-up-patient",
        "fhir",
        clemente.clone(),
        &[],
        "does not match",
    )
    .await;
    assert!(!error.contains("patients"), "{error}");

    // The same for a C-CDA document: a made-up id is refused, the recordTarget's id accepted.
    let ccd = read("fhir/cda/CCD2_C-CDA2.1_CCD.xml");
    assert_refused(
        &a,
        "made-up-patient",
        "ccda",
        ccd.clone(),
        &[],
        "does not match",
    )
    .await;
    let sent = a
        .send(
            "clinic-b",
            "98765432",
            "treatment",
            "ccda",
            ccd.clone(),
            &[],
        )
        .await;
    let id = sent.transfer_id();
    a.wait_state(&id, "delivered", DELIVERY).await;

    // Two recordTargets in one document (here the same patient twice: still refused, counted
    // as what they are).
    let text = String::from_utf8(ccd).unwrap();
    let start = text.find("<recordTarget").unwrap();
    let end = text.find("</recordTarget>").unwrap() + "</recordTarget>".len();
    let twice = format!("{}{}{}", &text[..end], &text[start..end], &text[end..]);
    assert_refused(
        &a,
        "98765432",
        "ccda",
        twice.into_bytes(),
        &[],
        "2 recordTarget elements",
    )
    .await;

    // A DICOM object's PatientID must match too.
    let dicom = dicom_bytes("pat-dicom-7");
    assert_refused(
        &a,
        "pat-dicom-8",
        "dicom",
        dicom.clone(),
        &DECLARED_GENERAL,
        "does not match",
    )
    .await;
    let sent = a
        .send(
            "clinic-b",
            "pat-dicom-7",
            "treatment",
            "dicom",
            dicom,
            &DECLARED_GENERAL,
        )
        .await;
    let id = sent.transfer_id();
    a.wait_state(&id, "delivered", DELIVERY).await;
    assert_eq!(b.inbox().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclassified_content_needs_consent_or_a_clinicians_declaration() {
    let (_fed, a, b, _c) = hospital_clinic_payer();

    // A PDF for pat-pdf-1, refused by policy (403); the refusal's text.
    let refused = |to: &'static str,
                   purpose: &'static str,
                   extra: &'static [(&'static str, &'static str)]| {
        let a = &a;
        async move {
            let sent = a
                .send(to, "pat-pdf-1", purpose, "pdf", pdf_bytes(), extra)
                .await;
            assert_eq!(sent.status, StatusCode::FORBIDDEN, "{}", sent.body);
            error_text(&sent.body)
        }
    };
    // A PDF the gateway cannot read: unclassified, so it needs consent naming the recipient.
    let error = refused("clinic-b", "treatment", &[]).await;
    assert!(
        error.contains("needs consent for unclassified naming clinic-b"),
        "{error}"
    );
    // Never for payment, whatever the consent.
    refused("payer-c", "payment", &[]).await;
    // Categories named without a clinician and a role are no declaration.
    refused("clinic-b", "treatment", &[("categories", "general")]).await;

    // A clinician's declaration: delivered, and both audit logs carry who declared what.
    let sent = a
        .send(
            "clinic-b",
            "pat-pdf-1",
            "treatment",
            "pdf",
            pdf_bytes(),
            &DECLARED_GENERAL,
        )
        .await;
    let id = sent.transfer_id();
    a.wait_state(&id, "delivered", DELIVERY).await;
    assert_eq!(b.fetch(&id).await, pdf_bytes());
    // Reading the decrypted metadata and the payload are each audited, naming the token.
    let (status, meta) = b.get(&format!("/v1/inbox/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{meta}");
    for event in ["metadata-read", "fetched"] {
        let reads = b.audit_events(event).await;
        assert!(
            reads.iter().any(|e| e["transfer_id"] == id.as_str()
                && e["reason"].as_str().unwrap_or("").starts_with("read by ")),
            "{event}: {reads:#?}"
        );
    }
    for node in [&a, &b] {
        let declared = node
            .audit_events("policy-decision")
            .await
            .into_iter()
            .filter(|e| e["transfer_id"] == id.as_str())
            .find(|e| {
                let reason = e["reason"].as_str().unwrap_or("");
                reason.contains("declared general by dr-declares (physician)")
            });
        assert!(
            declared.is_some(),
            "{}: {:#?}",
            node.dir.id,
            node.audit().await
        );
    }

    // With the patient's consent naming clinic-b, the undeclared PDF goes too.
    a.consent_for_treatment("pat-pdf-2", "clinic-b").await;
    let sent = a
        .send(
            "clinic-b",
            "pat-pdf-2",
            "treatment",
            "pdf",
            pdf_bytes(),
            &[],
        )
        .await;
    let id = sent.transfer_id();
    a.wait_state(&id, "delivered", DELIVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_refuses_content_whose_categories_the_sender_left_out() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let b = fed.start("clinic-b");
    let a_dir = &fed.nodes["hosp-a"].dir;
    let ca = ca_pem(&fed);
    let ident = RawIdentity::from_node_dir(a_dir);
    let signer = signing_key(a_dir);
    let to_b = encryption_key(&fed.nodes["clinic-b"].dir);
    let eliseo = bundle_by_prefix("Eliseo_Cummings");
    let patient = patient_id(&eliseo).unwrap();

    // A sender whose metadata says "general" for a bundle with mental-health and substance-use
    // codes (a buggy or compromised peer: the real gateway never sends this).
    let cases: [(&str, &str, Vec<u8>, &str); 3] = [
        (
            "application/fhir+json",
            "general",
            eliseo.clone(),
            "mental-health",
        ),
        ("application/pdf", "general", eliseo.clone(), "declared"),
        ("application/pdf", "general", pdf_bytes(), "unclassified"),
    ];
    for (content_type, category, payload, needle) in cases {
        let id = TransferId::new_random().unwrap();
        let metadata = common::metadata(content_type, &patient, &[category], None);
        let envelope = seal_with_metadata(
            id, "hosp-a", "clinic-b", &signer, &to_b, &metadata, &payload,
        );
        let (status, body) = raw_peer_post(b.dir.peer, &ca, &ident, "/v1/envelopes", envelope)
            .await
            .unwrap();
        assert!(
            (400..500).contains(&status),
            "{content_type} {needle}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let hex = id.to_string();
        let entry = wait_rejection(&b, Duration::from_secs(10), |e| {
            e["transfer_id"] == hex.as_str()
        })
        .await;
        let reason = entry["reason"].as_str().unwrap_or("");
        assert!(reason.contains(needle), "{reason}");
        assert!(!reason.contains(&patient), "{reason}");
    }
    assert_nothing_received(&b).await;
}

/// Every file below `dir`, as bytes.
fn files_below(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_patient_identifier_or_name_is_readable_in_either_nodes_data_or_log() {
    let fed = Fed::new(&[
        ("hosp-a", FacilityKind::Hospital),
        ("clinic-b", FacilityKind::Clinic),
    ]);
    let mut a = fed.start("hosp-a");
    let mut b = fed.start("clinic-b");

    // What a day at a facility leaves behind: consents, delivered FHIR, C-CDA, PDF and DICOM
    // records, a refused one, an acknowledged one, a record held for pull requests.
    let eliseo = bundle_by_prefix("Eliseo_Cummings");
    let clemente = bundle_by_prefix("Clemente_Kreiger");
    let (p_eliseo, p_clemente) = (patient_id(&eliseo).unwrap(), patient_id(&clemente).unwrap());
    // An EMR that uses social-security-like numbers as patient ids.
    let (p_pdf, p_dicom, p_ccda) = ("123-45-6789", "987-65-4321", "98765432");
    a.consent_for_treatment(&p_eliseo, "clinic-b").await;
    let mut ids = Vec::new();
    for (patient, label, bytes, extra) in [
        (p_eliseo.as_str(), "fhir", eliseo.clone(), &[][..]),
        (p_clemente.as_str(), "fhir", clemente.clone(), &[][..]),
        (
            p_ccda,
            "ccda",
            read("fhir/cda/CCD2_C-CDA2.1_CCD.xml"),
            &[][..],
        ),
        (p_pdf, "pdf", pdf_bytes(), &DECLARED_GENERAL[..]),
        (
            p_dicom,
            "dicom",
            dicom_bytes(p_dicom),
            &DECLARED_GENERAL[..],
        ),
    ] {
        let sent = a
            .send("clinic-b", patient, "treatment", label, bytes, extra)
            .await;
        ids.push(sent.transfer_id());
    }
    // Refused for consent: its audit entries name the patient too.
    let refused = a
        .send(
            "clinic-b",
            "555-12-3456",
            "treatment",
            "pdf",
            pdf_bytes(),
            &[],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    for id in &ids {
        a.wait_state(id, "delivered", DELIVERY).await;
    }
    let (status, _) = b
        .post_json(&format!("/v1/inbox/{}/ack", ids[0]), serde_json::json!({}))
        .await;
    assert!(status.is_success(), "ack: {status}");
    assert_eq!(
        a.put_record(&p_clemente, &clemente).await,
        StatusCode::CREATED
    );
    let stored = a.audit_events("record-stored").await;
    assert_eq!(stored.len(), 1, "{stored:#?}");
    // The patient queries still answer (the identifiers are there, just not in clear).
    let (status, entries) = a.get(&format!("/v1/audit?patient={p_pdf}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!entries.as_array().unwrap().is_empty(), "{entries}");
    a.stop();
    b.stop();

    let mut needles: Vec<String> = vec![
        p_eliseo.clone(),
        p_clemente.clone(),
        p_pdf.to_owned(),
        p_dicom.to_owned(),
        p_ccda.to_owned(),
        "555-12-3456".to_owned(),
    ];
    needles.extend(tests::patient_names(&eliseo));
    needles.extend(tests::patient_names(&clemente));
    needles.push("Isabella".to_owned());
    let mut hits = Vec::new();
    for node in [&a, &b] {
        let mut files = files_below(&node.config.data_dir);
        files.push((node.log.clone(), std::fs::read(&node.log).unwrap()));
        assert!(files.len() > 5, "{}: {} files", node.dir.id, files.len());
        for (path, bytes) in &files {
            for needle in &needles {
                let n = occurrences(bytes, needle.as_bytes());
                if n > 0 {
                    hits.push(format!("{}: {n}× {needle:?}", path.display()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "patient data readable at rest:\n{}",
        hits.join("\n")
    );
    // Control: the same scan does find what is stored in clear (the peer's facility id in the
    // sender's audit entries), so an empty result above means something.
    let control: usize = files_below(&a.config.data_dir)
        .iter()
        .map(|(_, bytes)| occurrences(bytes, b"clinic-b"))
        .sum();
    assert!(control > 0, "the scan read nothing");
}
