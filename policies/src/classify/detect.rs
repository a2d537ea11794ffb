//! Which format a record is, from its bytes alone (never from a label).
//!
//! Cheap by design: it reads as little as it can (the DICOM and PDF magic, the
//! top-level keys of a JSON object up to `resourceType`, the XML prolog up to
//! the root element). The full parse comes with classification, which refuses
//! a document that claims a format and then breaks it.

use std::fmt;

use quick_xml::events::Event;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The formats the gateway tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// FHIR R4 JSON: a Bundle or a single resource (an object with `resourceType`).
    FhirJson,
    /// HL7 CDA R2 / C-CDA: XML whose root is `ClinicalDocument` in `urn:hl7-org:v3`.
    Cda,
    /// DICOM Part 10 file (`DICM` at offset 128).
    Dicom,
    /// PDF (`%PDF-` at the start).
    Pdf,
    /// Anything else: plain JSON or XML, images, text, unknown bytes.
    Other,
}

impl Format {
    /// Name used in audit records and refusal texts.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::FhirJson => "fhir-json",
            Format::Cda => "cda",
            Format::Dicom => "dicom",
            Format::Pdf => "pdf",
            Format::Other => "other",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HL7 v3 namespace of CDA.
pub(crate) const HL7_V3_NS: &str = "urn:hl7-org:v3";

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The bytes without a leading UTF-8 byte-order mark.
pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)
}

/// The format of `bytes`. Never fails: what it cannot place is [`Format::Other`].
pub fn detect_format(bytes: &[u8]) -> Format {
    // DICOM first: its 128-byte preamble is arbitrary and may look like anything.
    if bytes.get(128..132) == Some(b"DICM") {
        return Format::Dicom;
    }
    if bytes.starts_with(b"%PDF-") {
        return Format::Pdf;
    }
    let body = strip_bom(bytes);
    let start = body
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(body.len());
    match body.get(start) {
        Some(b'{') if json_has_resource_type(body) => Format::FhirJson,
        Some(b'<') if cda_root(body) => Format::Cda,
        _ => Format::Other,
    }
}

/// Does the top-level JSON object have a `resourceType` member? Reads the
/// members before it (skipping their values without building them) and stops
/// there; FHIR puts `resourceType` first, so this is usually a few bytes.
fn json_has_resource_type(body: &[u8]) -> bool {
    let mut found = false;
    let mut de = serde_json::Deserializer::from_slice(body);
    // Finding it aborts the parse on purpose; any other error means "not found".
    let _ = FindResourceType { found: &mut found }.deserialize(&mut de);
    found
}

struct FindResourceType<'a> {
    found: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for FindResourceType<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FindResourceType<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "resourceType" {
                *self.found = true;
                return Err(de::Error::custom("found"));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Is the root element `ClinicalDocument` in the HL7 v3 namespace? Reads the
/// prolog (declaration, comments, processing instructions, a DOCTYPE, which
/// classification then refuses) and the root's start tag only.
fn cda_root(body: &[u8]) -> bool {
    let mut reader = quick_xml::Reader::from_reader(body);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => return is_cda_root(&e),
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// The root element's name is `ClinicalDocument` (optionally prefixed) and
/// that prefix (or the default namespace) is bound to `urn:hl7-org:v3` on it.
pub(crate) fn is_cda_root(e: &quick_xml::events::BytesStart<'_>) -> bool {
    if e.local_name().as_ref() != "ClinicalDocument" {
        return false;
    }
    let name = e.name();
    let binding = match name.prefix() {
        Some(prefix) => format!("xmlns:{}", prefix.as_ref()),
        None => "xmlns".to_owned(),
    };
    e.attributes()
        .any(|a| a.is_ok_and(|a| a.key.as_ref() == binding && a.value.as_ref() == HL7_V3_NS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_bytes() {
        assert_eq!(
            detect_format(b"{\"resourceType\":\"Bundle\"}"),
            Format::FhirJson
        );
        assert_eq!(
            detect_format(b"\xEF\xBB\xBF \n{\"id\":{\"x\":[1]},\"resourceType\":\"Patient\"}"),
            Format::FhirJson
        );
        // resourceType nested, not at the top: plain JSON.
        assert_eq!(
            detect_format(b"{\"a\":{\"resourceType\":\"Patient\"}}"),
            Format::Other
        );
        assert_eq!(detect_format(b"{\"a\":1}"), Format::Other);
        assert_eq!(
            detect_format(b"[{\"resourceType\":\"Patient\"}]"),
            Format::Other
        );
        // Broken before resourceType: not recognisably FHIR.
        assert_eq!(
            detect_format(b"{\"a\":,\"resourceType\":\"X\"}"),
            Format::Other
        );
        // Broken after resourceType: FHIR, refused by classification.
        assert_eq!(
            detect_format(b"{\"resourceType\":\"X\",}"),
            Format::FhirJson
        );

        let cda = b"<?xml version=\"1.0\"?>\n<!-- c --><ClinicalDocument xmlns=\"urn:hl7-org:v3\"><x/></ClinicalDocument>";
        assert_eq!(detect_format(cda), Format::Cda);
        let prefixed = b"<v3:ClinicalDocument xmlns:v3=\"urn:hl7-org:v3\"/>";
        assert_eq!(detect_format(prefixed), Format::Cda);
        let doctype =
            b"<!DOCTYPE x [<!ENTITY a \"b\">]><ClinicalDocument xmlns=\"urn:hl7-org:v3\"/>";
        assert_eq!(detect_format(doctype), Format::Cda);
        assert_eq!(detect_format(b"<ClinicalDocument/>"), Format::Other);
        assert_eq!(
            detect_format(b"<ClinicalDocument xmlns=\"urn:other\"/>"),
            Format::Other
        );
        assert_eq!(detect_format(b"<section><code/></section>"), Format::Other);

        let mut dicom = vec![0u8; 128];
        dicom.extend_from_slice(b"DICM");
        assert_eq!(detect_format(&dicom), Format::Dicom);
        let mut dicom_braces = vec![b'{'; 128];
        dicom_braces.extend_from_slice(b"DICM");
        assert_eq!(detect_format(&dicom_braces), Format::Dicom);
        assert_eq!(detect_format(b"%PDF-1.7\n..."), Format::Pdf);
        assert_eq!(detect_format(b" %PDF-1.7"), Format::Other);
        assert_eq!(detect_format(b"\x89PNG\r\n\x1a\n"), Format::Other);
        assert_eq!(detect_format(b"free text about a patient"), Format::Other);
        assert_eq!(detect_format(b""), Format::Other);
    }
}
