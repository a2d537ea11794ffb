//! HL7 CDA R2 / C-CDA documents: a pull parse with `quick-xml` (which never
//! expands DTD entities) under hard limits, collecting the codes and the one
//! patient of the document.
//!
//! Refused outright: any DOCTYPE (no DTD, so no entity expansion and no
//! external entities, whatever the parser would do), references to entities
//! other than XML's five predefined ones and character references, input
//! that is not UTF-8, more than [`MAX_CDA_BYTES`], elements nested deeper than
//! [`MAX_XML_DEPTH`], more than [`MAX_XML_ATTRIBUTES`] attributes on one
//! element or [`MAX_XML_ELEMENTS`] elements in all, a second root element, and
//! any document whose header has not exactly one `recordTarget`.
//!
//! Codes: the `code` / `codeSystem` attributes of every `code`, `value`,
//! `translation` and `confidentialityCode` element, wherever it sits (section
//! codes, entries, DS4P security observations), looked up by code-system OID.

use quick_xml::events::{BytesStart, Event};
use quick_xml::XmlVersion;

use super::detect::is_cda_root;
use super::patients::{Patients, PatientsBuilder};
use super::table::{fixed_signal, System, Table};
use super::ClassifyError;
use crate::Category;

/// Largest CDA document read (64 MiB, the gateway's limit for parsed records).
pub const MAX_CDA_BYTES: usize = 64 * 1024 * 1024;
/// Deepest element nesting (real C-CDA documents stay under 30).
pub const MAX_XML_DEPTH: usize = 256;
/// Most attributes on one element (CDA elements carry fewer than 10).
pub const MAX_XML_ATTRIBUTES: usize = 64;
/// Most elements in one document (a 64 MiB C-CDA holds about 2 million).
pub const MAX_XML_ELEMENTS: usize = 4_000_000;

/// What a CDA document holds, as far as the gateway is concerned.
pub(crate) struct CdaFacts {
    pub categories: std::collections::BTreeSet<Category>,
    pub matched_codes: usize,
    pub patients: Patients,
}

/// Where an element sits, as far as the patient is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    RecordTarget,
    PatientRole,
    Other,
}

/// Reads one CDA document.
pub(crate) fn read(table: &Table, bytes: &[u8]) -> Result<CdaFacts, ClassifyError> {
    if bytes.len() > MAX_CDA_BYTES {
        return Err(ClassifyError::TooLarge {
            limit: MAX_CDA_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ClassifyError::XmlNotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = quick_xml::Reader::from_str(text);
    let mut facts = CdaFacts {
        categories: std::collections::BTreeSet::from([Category::General]),
        matched_codes: 0,
        patients: Patients::default(),
    };
    let mut stack: Vec<Place> = Vec::new();
    let mut elements = 0usize;
    let mut root_done = false;
    let mut record_targets = 0usize;
    let mut patient_ids: Vec<String> = Vec::new();
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|_| ClassifyError::Xml { position })?;
        match event {
            Event::Start(_) | Event::Empty(_) if root_done => {
                return Err(ClassifyError::Xml { position });
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                elements += 1;
                if elements > MAX_XML_ELEMENTS {
                    return Err(ClassifyError::XmlLimit {
                        what: "element count",
                        limit: MAX_XML_ELEMENTS,
                    });
                }
                if stack.len() + 1 > MAX_XML_DEPTH {
                    return Err(ClassifyError::XmlLimit {
                        what: "element depth",
                        limit: MAX_XML_DEPTH,
                    });
                }
                if stack.is_empty() && !is_cda_root(e) {
                    return Err(ClassifyError::NotCda);
                }
                let parent = stack.last().copied().unwrap_or(Place::Other);
                let place = element(table, e, parent, position, &mut facts, &mut patient_ids)?;
                if place == Place::RecordTarget {
                    record_targets += 1;
                }
                if matches!(event, Event::Start(_)) {
                    stack.push(place);
                } else if stack.is_empty() {
                    root_done = true;
                }
            }
            Event::End(_) => {
                stack.pop();
                if stack.is_empty() {
                    root_done = true;
                }
            }
            Event::DocType(_) => return Err(ClassifyError::XmlDoctype),
            Event::GeneralRef(r) => {
                // Without a DTD only XML's predefined entities and character references exist.
                let known = matches!(&*r, "lt" | "gt" | "amp" | "apos" | "quot") || r.is_char_ref();
                if !known {
                    return Err(ClassifyError::Xml { position });
                }
            }
            Event::Text(t) => {
                if stack.is_empty() && !t.trim().is_empty() {
                    return Err(ClassifyError::Xml { position });
                }
            }
            Event::CData(_) if stack.is_empty() => return Err(ClassifyError::Xml { position }),
            Event::Eof => {
                if !stack.is_empty() || !root_done {
                    return Err(ClassifyError::Xml { position });
                }
                break;
            }
            Event::CData(_) | Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if record_targets != 1 {
        return Err(ClassifyError::RecordTargets(record_targets));
    }
    let mut builder = PatientsBuilder::default();
    if !patient_ids.is_empty() {
        builder.add(patient_ids, Vec::new());
    }
    facts.patients = builder.build();
    Ok(facts)
}

/// Reads one element's attributes: codes, patient ids, limits. Returns its place.
fn element(
    table: &Table,
    e: &BytesStart<'_>,
    parent: Place,
    position: u64,
    facts: &mut CdaFacts,
    patient_ids: &mut Vec<String>,
) -> Result<Place, ClassifyError> {
    let local = e.local_name();
    let name = local.as_ref();
    let place = match (parent, name) {
        (_, "recordTarget") => Place::RecordTarget,
        (Place::RecordTarget, "patientRole") => Place::PatientRole,
        _ => Place::Other,
    };
    let coded = matches!(
        name,
        "code" | "value" | "translation" | "confidentialityCode"
    );
    let patient_id = parent == Place::PatientRole && name == "id";
    let mut code = None;
    let mut system = None;
    let mut root = None;
    let mut extension = None;
    for (count, attribute) in e.attributes().enumerate() {
        if count >= MAX_XML_ATTRIBUTES {
            return Err(ClassifyError::XmlLimit {
                what: "attributes per element",
                limit: MAX_XML_ATTRIBUTES,
            });
        }
        // Duplicate attributes, missing quotes and the like are malformed XML.
        let attribute = attribute.map_err(|_| ClassifyError::Xml { position })?;
        let key = attribute.key.as_ref();
        let wanted = (coded && (key == "code" || key == "codeSystem"))
            || (patient_id && (key == "root" || key == "extension"));
        if !wanted {
            continue;
        }
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|_| ClassifyError::Xml { position })?
            .trim()
            .to_owned();
        match key {
            "code" => code = Some(value),
            "codeSystem" => system = Some(value),
            "root" => root = Some(value),
            _ => extension = Some(value),
        }
    }
    if let (Some(code), Some(system)) = (code, system) {
        let category = fixed_signal(&system, &code)
            .or_else(|| System::from_oid(&system).and_then(|s| table.lookup_in(s, &code)));
        if let Some(category) = category {
            if category.is_sensitive() {
                facts.matched_codes += 1;
            }
            facts.categories.insert(category);
        }
    }
    if patient_id {
        match (root, extension) {
            (Some(root), Some(extension)) if !extension.is_empty() => {
                patient_ids.push(format!("urn:oid:{root}|{extension}"));
                patient_ids.push(extension);
            }
            (Some(root), _) if !root.is_empty() => patient_ids.push(root),
            (None, Some(extension)) if !extension.is_empty() => patient_ids.push(extension),
            _ => {}
        }
    }
    Ok(place)
}
