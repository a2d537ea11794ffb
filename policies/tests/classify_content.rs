//! `classify_content` on every shared record (tests/testdata/fhir, see its
//! MANIFEST.md), on hostile XML, on merged multi-patient bundles and on a
//! DICOM file built here with dicom-rs.

use std::collections::BTreeSet;
use std::path::Path;

use policies::classify::{
    classify_content, detect_format, ClassifyError, ContentFacts, Format, PatientProblem,
    MAX_XML_ATTRIBUTES, MAX_XML_DEPTH,
};
use policies::Category::{self, *};

const FHIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/testdata/fhir/");

fn read(file: &str) -> Vec<u8> {
    std::fs::read(format!("{FHIR}{file}")).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn classify(name: &str, bytes: &[u8]) -> ContentFacts {
    classify_content(bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A C-CDA section fragment (no header, no namespace declarations) inside a
/// minimal ClinicalDocument with one recordTarget, as MANIFEST.md suggests.
fn wrap_section(section: &[u8]) -> Vec<u8> {
    let section = std::str::from_utf8(section).unwrap_or_else(|e| panic!("{e}"));
    format!(
        r#"<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <recordTarget><patientRole><id root="2.16.840.1.113883.19.5" extension="wrap-1"/></patientRole></recordTarget>
  <component><structuredBody><component>{section}</component></structuredBody></component>
</ClinicalDocument>"#
    )
    .into_bytes()
}

/// Every file of tests/testdata/fhir: format, sensitive categories (General is
/// always added for FHIR and CDA) and distinct patients. Categories follow
/// MANIFEST.md's "sensitive categories" / "sensitive codes seen"; where the
/// answer differs from the manifest's wording, the comment says why.
const EXPECTED: &[(&str, Format, &[Category], usize)] = &[
    // 12 Patient resources.
    (
        "bundles/Bundle-b248b1b2-1686-4b94-9936-37d7a5f94b51.json",
        Format::FhirJson,
        &[],
        12,
    ),
    (
        "bundles/Bundle-bundle-transaction.json",
        Format::FhirJson,
        &[],
        5,
    ),
    ("bundles/Bundle-father.json", Format::FhirJson, &[], 1),
    // No Patient resource, but every Observation's subject is Patient/example (not in the
    // bundle): that is a patient too.
    ("bundles/Bundle-micro.json", Format::FhirJson, &[], 1),
    ("bundles/Bundle-xds.json", Format::FhirJson, &[], 1),
    // LOINC 28245-9 Abuse Status [OMAHA] is HL7 SDV, abuse-violence.
    (
        "bundles/Chet_Thompson_eda17701-070d-4fae-9f7d-c8cd6263b63a.json",
        Format::FhirJson,
        &[HivSti, ReproductiveHealth, AbuseViolence],
        1,
    ),
    (
        "bundles/Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "bundles/Eliseo_Cummings_55c373ad-af55-46ed-8f69-9c7a40a89d46.json",
        Format::FhirJson,
        &[MentalHealth, SubstanceUse],
        1,
    ),
    (
        "bundles/Fletcher_Hyatt_fe0562b5-f517-4951-8366-32fdab088930.json",
        Format::FhirJson,
        &[SubstanceUse],
        1,
    ),
    (
        "bundles/Gilberto_Orosco_6ece62f3-283c-4387-aa9b-affba8ebf4c3.json",
        Format::FhirJson,
        &[MentalHealth, SubstanceUse],
        1,
    ),
    (
        "bundles/Laurie_McCullough_8a417ce8-b525-42ab-a2be-651291f73c8c.json",
        Format::FhirJson,
        &[MentalHealth, ReproductiveHealth],
        1,
    ),
    (
        "bundles/Milan_Beatty_e78d0ed2-1b54-4c30-90ae-f7405af1e402.json",
        Format::FhirJson,
        &[MentalHealth],
        1,
    ),
    (
        "bundles/Trenton_Turner_54a45132-91fc-485e-b401-8c7644a0d517.json",
        Format::FhirJson,
        &[SubstanceUse],
        1,
    ),
    (
        "bundles/practitionerInformation1559319163815.json",
        Format::FhirJson,
        &[],
        0,
    ),
    // Consents name their patient; pkb's provisions carry PSY and SEX security labels.
    (
        "consent/Consent-consent-example-Emergency.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-Out.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-basic.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-grantor.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-notAuthor.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-notOrg.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-notThem.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-notThis.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-notTime.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-pkb.json",
        Format::FhirJson,
        &[MentalHealth, ReproductiveHealth],
        1,
    ),
    (
        "consent/Consent-consent-example-signature.json",
        Format::FhirJson,
        &[],
        1,
    ),
    (
        "consent/Consent-consent-example-smartonfhir.json",
        Format::FhirJson,
        &[],
        1,
    ),
    // The disclosure audit's entity carries HIV and confidentiality V labels.
    (
        "auditevent/AuditEvent-example-disclosure.json",
        Format::FhirJson,
        &[HivSti, Unclassified],
        0,
    ),
    (
        "auditevent/AuditEvent-example-error.json",
        Format::FhirJson,
        &[],
        0,
    ),
    (
        "auditevent/AuditEvent-example-login.json",
        Format::FhirJson,
        &[],
        0,
    ),
    (
        "auditevent/AuditEvent-example-logout.json",
        Format::FhirJson,
        &[],
        0,
    ),
    (
        "auditevent/AuditEvent-example-media.json",
        Format::FhirJson,
        &[],
        0,
    ),
    (
        "auditevent/AuditEvent-example-pixQuery.json",
        Format::FhirJson,
        &[],
        0,
    ),
    (
        "auditevent/AuditEvent-example-rest.json",
        Format::FhirJson,
        &[],
        0,
    ),
    (
        "auditevent/AuditEvent-example-search.json",
        Format::FhirJson,
        &[],
        0,
    ),
    (
        "auditevent/AuditEvent-example.json",
        Format::FhirJson,
        &[],
        0,
    ),
    // securityLabel v3-Confidentiality V: restricted without saying why.
    (
        "other/DocumentReference-example.json",
        Format::FhirJson,
        &[Unclassified],
        1,
    ),
    (
        "other/Provenance-consent-signature.json",
        Format::FhirJson,
        &[],
        0,
    ),
    // DiagnosticReport-geneticsFamilyMemberHistory / family-member-history-genetics extensions.
    ("genetics/Bundle-dg2.json", Format::FhirJson, &[Genetic], 1),
    (
        "genetics/MolecularSequence-breastcancer.json",
        Format::FhirJson,
        &[Genetic],
        1,
    ),
    // observation-genetics* extensions, HGNC gene code.
    (
        "genetics/Observation-example-genetics-1.json",
        Format::FhirJson,
        &[Genetic],
        1,
    ),
    (
        "genetics/Observation-example-genetics-2.json",
        Format::FhirJson,
        &[Genetic],
        1,
    ),
    // -3, -4 and -5 are genetic only by their text and by links to -1, which is not in the
    // record: their code is free text only, so they cannot be classified (fail closed).
    (
        "genetics/Observation-example-genetics-3.json",
        Format::FhirJson,
        &[Unclassified],
        1,
    ),
    (
        "genetics/Observation-example-genetics-4.json",
        Format::FhirJson,
        &[Unclassified],
        1,
    ),
    (
        "genetics/Observation-example-genetics-5.json",
        Format::FhirJson,
        &[Unclassified],
        1,
    ),
    (
        "genetics/Observation-example-genetics-brcapat.json",
        Format::FhirJson,
        &[Genetic],
        1,
    ),
    // Pregnancy appears only as text ("pregnancy" as the contained Condition's code text):
    // unclassified, not reproductive-health (no code says so).
    (
        "sensitive/CarePlan-preg.json",
        Format::FhirJson,
        &[Unclassified],
        1,
    ),
    (
        "sensitive/Observation-alcohol-type.json",
        Format::FhirJson,
        &[SubstanceUse],
        1,
    ),
    (
        "sensitive/Observation-clinical-gender.json",
        Format::FhirJson,
        &[ReproductiveHealth],
        1,
    ),
    // The subject has a display only: no patient.
    (
        "sensitive/Procedure-ob.json",
        Format::FhirJson,
        &[ReproductiveHealth],
        0,
    ),
    ("cda/CCD1_C-CDA2.1_CCD.xml", Format::Cda, &[], 1),
    ("cda/CCD2_C-CDA2.1_CCD.xml", Format::Cda, &[], 1),
    (
        "cda/Consultation_Note_C-CDA2.1.xml",
        Format::Cda,
        &[MentalHealth],
        1,
    ),
    // Alcoholic drinks per day (LOINC 74013-4) = 0 is social history, not substance use.
    ("cda/History_and_Physical_C-CDA2.1.xml", Format::Cda, &[], 1),
    (
        "cda/Referral_Note_C-CDA2.1.xml",
        Format::Cda,
        &[MentalHealth],
        1,
    ),
    (
        "cda/section_Mental_Status_PHQ-9_C-CDAR2.1.xml",
        Format::Cda,
        &[MentalHealth],
        1,
    ),
    (
        "cda/section_Problems_Pregnancy_with_Week_Gestation_C-CDA2.1.xml",
        Format::Cda,
        &[ReproductiveHealth],
        1,
    ),
];

#[test]
fn every_shared_record_is_classified_as_its_manifest_says() {
    let mut on_disk = BTreeSet::new();
    for dir in std::fs::read_dir(FHIR).unwrap_or_else(|e| panic!("{e}")) {
        let dir = dir.unwrap_or_else(|e| panic!("{e}")).path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
            let path = file.unwrap_or_else(|e| panic!("{e}")).path();
            let rel = path
                .strip_prefix(Path::new(FHIR))
                .unwrap_or_else(|e| panic!("{e}"))
                .display()
                .to_string();
            on_disk.insert(rel);
        }
    }
    let listed: BTreeSet<String> = EXPECTED.iter().map(|e| e.0.to_owned()).collect();
    assert_eq!(on_disk, listed, "every data file has an expectation");
    assert_eq!(listed.len(), 56, "MANIFEST.md lists 56 data files");

    for (file, format, sensitive, patients) in EXPECTED {
        let mut bytes = read(file);
        let fragment = file.contains("/section_");
        if fragment {
            // A fragment on its own is not a CDA document.
            assert_eq!(detect_format(&bytes), Format::Other, "{file}");
            bytes = wrap_section(&bytes);
        }
        let facts = classify(file, &bytes);
        assert_eq!(facts.format, *format, "{file}");
        let mut want: BTreeSet<Category> = sensitive.iter().copied().collect();
        want.insert(General);
        assert_eq!(facts.categories, want, "{file}");
        assert_eq!(facts.patient_count(), *patients, "{file}");
        assert_eq!(facts.matched_codes > 0, !sensitive.is_empty(), "{file}");
    }
}

#[test]
fn declared_patient_is_checked_against_the_one_patient() {
    let chet = read("bundles/Chet_Thompson_eda17701-070d-4fae-9f7d-c8cd6263b63a.json");
    let facts = classify("chet", &chet);
    assert_eq!(
        facts.single_patient_matches("eda17701-070d-4fae-9f7d-c8cd6263b63a"),
        Ok(())
    );
    // The resource id, its fullUrl, Patient/<id> and system|value identifiers are aliases too.
    for alias in [
        "9e2f7a3b-94df-4b3d-bee2-360881649fa5",
        "urn:uuid:9e2f7a3b-94df-4b3d-bee2-360881649fa5",
        "Patient/9e2f7a3b-94df-4b3d-bee2-360881649fa5",
        "http://hl7.org/fhir/sid/us-ssn|999-86-1255",
    ] {
        assert_eq!(facts.single_patient_matches(alias), Ok(()), "{alias}");
    }
    // The old bug: a wrong id on a one-patient bundle said "3 patients".
    assert_eq!(
        facts.single_patient_matches("made-up-id"),
        Err(PatientProblem::Mismatch)
    );
    assert!(!format!("{facts:?}").contains("eda17701"));

    // CDA: the recordTarget's id extension, or urn:oid:root|extension.
    let referral = classify("referral", &read("cda/Referral_Note_C-CDA2.1.xml"));
    assert_eq!(referral.single_patient_matches("444222222"), Ok(()));
    assert_eq!(
        referral.single_patient_matches("urn:oid:2.16.840.1.113883.4.1|444222222"),
        Ok(())
    );
    assert_eq!(
        referral.single_patient_matches("444-22-2222"),
        Err(PatientProblem::Mismatch)
    );
    // Two ids of one patientRole are one patient.
    let ccd2 = classify("ccd2", &read("cda/CCD2_C-CDA2.1_CCD.xml"));
    assert_eq!(ccd2.patient_count(), 1);
    assert_eq!(ccd2.single_patient_matches("98765432"), Ok(()));
    assert_eq!(ccd2.single_patient_matches("12345679"), Ok(()));

    let ob = classify("ob", &read("sensitive/Procedure-ob.json"));
    assert_eq!(
        ob.single_patient_matches("Jane Doe"),
        Err(PatientProblem::NoPatient)
    );
}

/// Two shared bundles merged into one, in both orders: two patients, whichever is declared.
#[test]
fn merged_bundles_hold_two_patients_in_either_order() {
    let parse = |file: &str| -> serde_json::Value {
        serde_json::from_slice(&read(file)).unwrap_or_else(|e| panic!("{e}"))
    };
    let x = "bundles/Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json";
    let y = "bundles/Trenton_Turner_54a45132-91fc-485e-b401-8c7644a0d517.json";
    let ids = [
        "1484a42d-0eaf-4654-9cbf-6b050a5cd73b",
        "54a45132-91fc-485e-b401-8c7644a0d517",
    ];
    for (first, second) in [(x, y), (y, x)] {
        let mut merged = parse(first);
        let extra = parse(second)
            .get("entry")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(entries) = merged
            .get_mut("entry")
            .and_then(serde_json::Value::as_array_mut)
        {
            entries.extend(extra);
        }
        let bytes = serde_json::to_vec(&merged).unwrap_or_else(|e| panic!("{e}"));
        let facts = classify("merged", &bytes);
        assert_eq!(facts.patient_count(), 2);
        assert!(facts.categories.contains(&SubstanceUse));
        for id in ids {
            assert_eq!(
                facts.single_patient_matches(id),
                Err(PatientProblem::Multiple(2))
            );
        }
        let text = PatientProblem::Multiple(2).to_string();
        assert!(text.contains("2 patients"), "{text}");
    }

    // Patient X's bundle plus one Observation about patient Y (a reference only).
    let mut one_more = parse(x);
    if let Some(entries) = one_more
        .get_mut("entry")
        .and_then(serde_json::Value::as_array_mut)
    {
        entries.push(serde_json::json!({"resource": {
            "resourceType": "Observation",
            "subject": {"reference": "Patient/someone-else"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "7200002"}]}
        }}));
    }
    let bytes = serde_json::to_vec(&one_more).unwrap_or_else(|e| panic!("{e}"));
    let facts = classify("x+y-ref", &bytes);
    assert_eq!(
        facts.single_patient_matches(ids[0]),
        Err(PatientProblem::Multiple(2))
    );
}

fn cda_error(doc: &str) -> ClassifyError {
    match classify_content(doc.as_bytes()) {
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains("secret"), "{text}");
            e
        }
        Ok(facts) => panic!("accepted {doc:.60}: {facts:?}"),
    }
}

const CDA_OPEN: &str = r#"<ClinicalDocument xmlns="urn:hl7-org:v3">"#;
const RECORD_TARGET: &str = r#"<recordTarget><patientRole><id root="1.2.3" extension="secret-7"/></patientRole></recordTarget>"#;

#[test]
fn hostile_xml_is_refused_with_a_clear_reason() {
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol3;</title></ClinicalDocument>"#;
    assert_eq!(detect_format(laughs.as_bytes()), Format::Cda);
    assert_eq!(cda_error(laughs), ClassifyError::XmlDoctype);

    let external = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"#;
    assert_eq!(cda_error(external), ClassifyError::XmlDoctype);

    // An entity reference without any DTD is undefined, so malformed.
    let undefined = format!("{CDA_OPEN}{RECORD_TARGET}<title>&secret;</title></ClinicalDocument>");
    assert!(matches!(cda_error(&undefined), ClassifyError::Xml { .. }));
    let in_attribute = format!(
        r#"{CDA_OPEN}{RECORD_TARGET}<code code="&secret;" codeSystem="2.16.840.1.113883.6.1"/></ClinicalDocument>"#
    );
    assert!(matches!(
        cda_error(&in_attribute),
        ClassifyError::Xml { .. }
    ));

    let deep = format!(
        "{CDA_OPEN}{RECORD_TARGET}{}{}</ClinicalDocument>",
        "<x>".repeat(MAX_XML_DEPTH),
        "</x>".repeat(MAX_XML_DEPTH)
    );
    assert_eq!(
        cda_error(&deep),
        ClassifyError::XmlLimit {
            what: "element depth",
            limit: MAX_XML_DEPTH
        }
    );
    let attributes: String = (0..=MAX_XML_ATTRIBUTES)
        .map(|i| format!(" a{i}=\"v\""))
        .collect();
    let wide = format!("{CDA_OPEN}{RECORD_TARGET}<x{attributes}/></ClinicalDocument>");
    assert_eq!(
        cda_error(&wide),
        ClassifyError::XmlLimit {
            what: "attributes per element",
            limit: MAX_XML_ATTRIBUTES
        }
    );
    let repeated = format!(r#"{CDA_OPEN}{RECORD_TARGET}<x a="1" a="2"/></ClinicalDocument>"#);
    assert!(matches!(cda_error(&repeated), ClassifyError::Xml { .. }));

    let two = format!("{CDA_OPEN}{RECORD_TARGET}{RECORD_TARGET}</ClinicalDocument>");
    assert_eq!(cda_error(&two), ClassifyError::RecordTargets(2));
    assert!(cda_error(&two).to_string().contains("2 recordTarget"));
    let none = format!("{CDA_OPEN}<title>secret</title></ClinicalDocument>");
    assert_eq!(cda_error(&none), ClassifyError::RecordTargets(0));

    for broken in [
        format!("{CDA_OPEN}{RECORD_TARGET}<x></y></ClinicalDocument>"),
        format!("{CDA_OPEN}{RECORD_TARGET}<x>"),
        format!("{CDA_OPEN}{RECORD_TARGET}</ClinicalDocument><ClinicalDocument/>"),
        format!("{CDA_OPEN}{RECORD_TARGET}</ClinicalDocument>secret trailing text"),
        format!("{CDA_OPEN}{RECORD_TARGET}<x secret=unquoted/></ClinicalDocument>"),
    ] {
        assert!(
            matches!(cda_error(&broken), ClassifyError::Xml { .. }),
            "{broken}"
        );
    }
    let latin1 =
        b"<ClinicalDocument xmlns=\"urn:hl7-org:v3\"><title>\xe9</title></ClinicalDocument>";
    assert!(classify_content(latin1).is_err());
}

#[test]
fn cda_security_labels_and_codes_by_oid() {
    let doc = |body: &str| format!("{CDA_OPEN}{RECORD_TARGET}{body}</ClinicalDocument>");
    let one = |body: &str| classify("cda", doc(body).as_bytes()).categories;
    assert_eq!(
        one(r#"<confidentialityCode code="R" codeSystem="2.16.840.1.113883.5.25"/>"#),
        BTreeSet::from([General, Unclassified])
    );
    assert_eq!(
        one(r#"<confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>"#),
        BTreeSet::from([General])
    );
    // DS4P: a security observation's value carries the sensitivity code.
    assert_eq!(
        one(r#"<value code="SDV" codeSystem="2.16.840.1.113883.5.4"/>"#),
        BTreeSet::from([General, AbuseViolence])
    );
    assert_eq!(
        one(
            r#"<code code="X" codeSystem="9.9"><translation code="F20.9" codeSystem="2.16.840.1.113883.6.90"/></code>"#
        ),
        BTreeSet::from([General, MentalHealth])
    );
    // A code in a non-coded element (or an attribute of another name) does not count.
    assert_eq!(
        one(r#"<id code="F20.9" codeSystem="2.16.840.1.113883.6.90"/>"#),
        BTreeSet::from([General])
    );
    // A prefixed root is fine too.
    let prefixed = r#"<v3:ClinicalDocument xmlns:v3="urn:hl7-org:v3"><v3:recordTarget><v3:patientRole><v3:id root="1.2" extension="p"/></v3:patientRole></v3:recordTarget><v3:code code="10190-7" codeSystem="2.16.840.1.113883.6.1"/></v3:ClinicalDocument>"#;
    let facts = classify("prefixed", prefixed.as_bytes());
    assert!(facts.categories.contains(&MentalHealth));
    assert_eq!(facts.single_patient_matches("p"), Ok(()));
}

/// Not a fuzzer (see policies/fuzz), but every truncation and many corruptions
/// of a real C-CDA document must end in an answer, never a panic.
#[test]
fn the_cda_reader_survives_truncation_and_corruption() {
    let bytes = read("cda/CCD2_C-CDA2.1_CCD.xml");
    let mut refused = 0;
    let cuts: Vec<usize> = (0..bytes.len()).step_by(97).collect();
    for &cut in &cuts {
        if classify_content(&bytes[..cut]).is_err() {
            refused += 1;
        }
    }
    // Past the root's start tag, every strict prefix is an unclosed document.
    let root_at = bytes
        .windows(17)
        .position(|w| w == b"<ClinicalDocument")
        .unwrap_or(0);
    let after_root = cuts.iter().filter(|&&c| c > root_at + 200).count();
    assert!(refused >= after_root, "{refused} of {}", cuts.len());
    let mut corrupted = bytes.clone();
    for i in (0..corrupted.len()).step_by(53) {
        if let Some(b) = corrupted.get_mut(i) {
            *b = match *b {
                b'<' => b'>',
                b'"' => b'<',
                other => other.wrapping_add(1),
            };
        }
        let _ = classify_content(&corrupted);
    }
}

#[test]
fn fhir_security_labels_and_genetics_signals() {
    let one = |doc: serde_json::Value| {
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        classify("doc", &bytes).categories
    };
    let label = |system: &str, code: &str| {
        serde_json::json!({"resourceType": "Observation", "status": "final",
            "meta": {"security": [{"system": system, "code": code}]},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}})
    };
    let act = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
    let conf = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
    for (code, category) in [
        ("HIV", HivSti),
        ("STD", HivSti),
        ("PSY", MentalHealth),
        ("PSYTHPN", MentalHealth),
        ("SUD", SubstanceUse),
        ("ETH", SubstanceUse),
        ("SEX", ReproductiveHealth),
        ("GDIS", Genetic),
        ("SDV", AbuseViolence),
    ] {
        assert_eq!(
            one(label(act, code)),
            BTreeSet::from([General, category]),
            "{code}"
        );
    }
    assert_eq!(
        one(label(conf, "R")),
        BTreeSet::from([General, Unclassified])
    );
    assert_eq!(
        one(label(conf, "V")),
        BTreeSet::from([General, Unclassified])
    );
    assert_eq!(one(label(conf, "N")), BTreeSet::from([General]));

    let ge = serde_json::json!({"resourceType": "DiagnosticReport", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "GE"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "0-0"}]}});
    assert_eq!(one(ge), BTreeSet::from([General, Genetic]));
    let profile = serde_json::json!({"resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/uv/genomics-reporting/StructureDefinition/variant"]},
        "code": {"coding": [{"system": "http://loinc.org", "code": "0-0"}]}});
    assert_eq!(one(profile), BTreeSet::from([General, Genetic]));
    let fmh = serde_json::json!({"resourceType": "FamilyMemberHistory", "status": "completed",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/family-member-history-genetics-parent"}]});
    assert_eq!(one(fmh), BTreeSet::from([General, Genetic]));
    let hgnc = serde_json::json!({"resourceType": "Observation",
        "component": [{"valueCodeableConcept": {"coding": [{"system": "http://www.genenames.org", "code": "HGNC:1100"}]}}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "0-0"}]}});
    assert_eq!(one(hgnc), BTreeSet::from([General, Genetic]));
    let text_only = serde_json::json!({"resourceType": "Condition", "code": {"text": "secret"}});
    assert_eq!(one(text_only), BTreeSet::from([General, Unclassified]));
}

#[test]
fn unparsed_formats_are_unclassified_without_a_patient() {
    for (bytes, format) in [
        (&b"%PDF-1.7\n1 0 obj\n"[..], Format::Pdf),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", Format::Other),
        (b"Patient has HIV; free text", Format::Other),
        (b"{\"not\":\"fhir\"}", Format::Other),
        (b"<note><to>x</to></note>", Format::Other),
        (b"", Format::Other),
    ] {
        let facts = classify("unparsed", bytes);
        assert_eq!(facts.format, format);
        assert_eq!(facts.categories, BTreeSet::from([Unclassified]));
        assert_eq!(facts.patient_count(), 0);
    }
    // Claims FHIR JSON, then breaks it: refused, not waved through as "other".
    assert!(matches!(
        classify_content(b"{\"resourceType\":\"Bundle\",\"entry\":[secret"),
        Err(ClassifyError::NotJson { .. })
    ));
    assert_eq!(
        classify_content(b"{\"resourceType\":\"Patient\",\"id\":\"a\",\"id\":\"b\"}").err(),
        Some(ClassifyError::RepeatedKey)
    );
}

fn dicom_file(patient_id: Option<&str>) -> Vec<u8> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    let mut elements = vec![
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::SECONDARY_CAPTURE_IMAGE_STORAGE),
        ),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("2.25.42"),
        ),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("OT")),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(vec![0u8; 64]),
        ),
    ];
    if let Some(id) = patient_id {
        elements.push(DataElement::new(
            tags::PATIENT_ID,
            VR::LO,
            PrimitiveValue::from(id),
        ));
    }
    let object = InMemDicomObject::from_element_iter(elements);
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
                .media_storage_sop_instance_uid("2.25.42"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap_or_else(|e| panic!("{e}"));
    out
}

#[test]
fn dicom_yields_its_patient_id_and_unclassified_content() {
    let bytes = dicom_file(Some("PAT-42"));
    assert_eq!(detect_format(&bytes), Format::Dicom);
    let facts = classify("dicom", &bytes);
    assert_eq!(facts.categories, BTreeSet::from([Unclassified]));
    assert_eq!(facts.single_patient_matches("PAT-42"), Ok(()));
    assert_eq!(
        facts.single_patient_matches("PAT-4"),
        Err(PatientProblem::Mismatch)
    );
    let anonymous = classify("dicom", &dicom_file(None));
    assert_eq!(anonymous.patient_count(), 0);
    // A DICOM magic with a broken header is refused.
    let mut broken = bytes.clone();
    broken.truncate(140);
    assert_eq!(classify_content(&broken).err(), Some(ClassifyError::Dicom));
}
