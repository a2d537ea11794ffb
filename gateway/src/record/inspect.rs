//! What a record is, read from its bytes: its format against its label, its one patient
//! against the declared one, and its data categories.
//!
//! The sender's gateway calls [`inspect`] before it authorizes and seals a record; the
//! receiver calls [`check_received`] on what it decrypts, so a sender whose metadata leaves a
//! category out (a bug, an old build, a compromised node) is refused there too.
//! Invariant: content the gateway cannot read is `unclassified` (treated as sensitive by the
//! default policies) unless a named clinician declares its categories; it is never `general`
//! by default.

use std::collections::BTreeSet;

use policies::classify::{classify_content, ClassifyError, ContentFacts, Format, PatientProblem};
use policies::Category;

use super::{ContentType, PatientRef, RecordError, RecordMetadata};

/// Formats the gateway parses are classified whole, up to this size (FHIR and CDA alike).
pub const MAX_PARSED_BYTES: usize = policies::classify::MAX_FHIR_BYTES;

/// How much of a record that is not parsed whole is read to tell its format and, for DICOM,
/// its header (the PatientID sits in the first kilobytes; a header this large is refused).
pub const INSPECT_PREFIX_BYTES: usize = 1024 * 1024;

/// The bytes a check sees: the whole record, or only its first bytes (a record sealed while it
/// is uploaded, or received while it streams past).
#[derive(Clone, Copy)]
pub enum Content<'a> {
    Whole(&'a [u8]),
    Prefix(&'a [u8]),
}

impl Content<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Content::Whole(b) | Content::Prefix(b) => b,
        }
    }
}

/// A clinician's explicit statement of a record's categories, accepted for content the
/// gateway cannot classify. It names who made it, so it is accountable in both audit logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    pub clinician: String,
    pub clinician_role: String,
    pub categories: BTreeSet<Category>,
}

impl Declaration {
    /// The text both audit logs carry, e.g. "declared general by dr-ng (physician)".
    pub fn audit_text(&self) -> String {
        let names: Vec<&str> = self.categories.iter().map(|c| c.as_str()).collect();
        format!(
            "declared {} by {} ({})",
            names.join(", "),
            self.clinician,
            self.clinician_role
        )
    }
}

/// What the gateway concluded from a record's bytes.
#[derive(Debug)]
pub struct Inspected {
    pub format: Format,
    /// What policy evaluates: the declared categories united with the derived ones (the
    /// stricter wins), or a clinician's declaration in place of `unclassified`.
    pub categories: BTreeSet<Category>,
    /// What the content itself yields (`unclassified` for content the gateway cannot read).
    pub derived: BTreeSet<Category>,
    /// Set when a clinician's declaration replaced `unclassified`.
    pub declaration: Option<Declaration>,
}

/// Checks a record a local caller submits: the label must fit the bytes, a record about a
/// patient must be about exactly the declared one, and its categories are derived.
///
/// `declared` are the categories the caller named. For content the gateway can classify they
/// are added to what it finds. For content it cannot, they replace `unclassified` only as a
/// declaration: with the clinician and role who make it.
pub fn inspect(
    content_type: &ContentType,
    patient: &PatientRef,
    declared: &BTreeSet<Category>,
    clinician: Option<&str>,
    clinician_role: Option<&str>,
    content: Content<'_>,
) -> Result<Inspected, RecordError> {
    let facts = read(content_type, content)?;
    check_patient(&facts, patient.reveal())?;
    let derived = derived_categories(&facts);
    let mut categories: BTreeSet<Category> = declared.union(&derived).copied().collect();
    let mut declaration = None;
    if derived.contains(&Category::Unclassified) {
        if let (Some(clinician), Some(role), false) =
            (clinician, clinician_role, declared.is_empty())
        {
            // The clinician vouches for what the gateway cannot read; what the gateway did
            // find (a security label, say) still counts.
            categories.remove(&Category::Unclassified);
            declaration = Some(Declaration {
                clinician: clinician.to_owned(),
                clinician_role: role.to_owned(),
                categories: declared.clone(),
            });
        }
    }
    Ok(Inspected {
        format: facts.format,
        categories: normalize(categories),
        derived: normalize(derived),
        declaration,
    })
}

/// Checks what a peer sent against the metadata it signed: the bytes must have the labelled
/// format and be about the named patient, and every category the receiver finds must be in the
/// metadata's categories (or, for content it cannot read, `unclassified` or a declaration).
pub fn check_received(
    meta: &RecordMetadata,
    content: Content<'_>,
) -> Result<Inspected, RecordError> {
    let content_type = ContentType::parse(&meta.content_type)?;
    let facts = read(&content_type, content)?;
    check_patient(&facts, &meta.patient)?;
    let categories = meta.categories()?;
    let declaration = meta.declaration()?;
    let derived = normalize(derived_categories(&facts));
    if derived.contains(&Category::Unclassified)
        && !categories.contains(&Category::Unclassified)
        && declaration.is_none()
    {
        return Err(RecordError::UnclassifiedUndeclared);
    }
    let omitted: Vec<&str> = derived
        .iter()
        .filter(|c| c.is_sensitive() && **c != Category::Unclassified && !categories.contains(c))
        .map(|c| c.as_str())
        .collect();
    if !omitted.is_empty() {
        return Err(RecordError::CategoriesOmitted(omitted.join(", ")));
    }
    Ok(Inspected {
        format: facts.format,
        categories,
        derived,
        declaration,
    })
}

/// The categories of the content: the classifier's, plus `unclassified` for opaque content a
/// FHIR record carries (a `Binary` resource holds bytes of any format, which the codes around
/// it do not describe).
fn derived_categories(facts: &ContentFacts) -> BTreeSet<Category> {
    let mut categories = facts.categories.clone();
    if facts.resource_types.contains("Binary") {
        categories.insert(Category::Unclassified);
    }
    categories
}

/// Detects the format, refuses a label the bytes contradict, and classifies.
fn read(content_type: &ContentType, content: Content<'_>) -> Result<ContentFacts, RecordError> {
    let bytes = content.bytes();
    let found = policies::classify::detect_format(bytes);
    if found != content_type.format() {
        return Err(RecordError::LabelMismatch {
            declared: content_type.mime().to_owned(),
            found: describe(found),
        });
    }
    if let Content::Prefix(prefix) = content {
        // Only the first bytes are at hand: fine for formats read by their header, refused for
        // anything that might be a parsed format further in (JSON or XML).
        if let Some(kind) = parsed_kind(found, prefix) {
            if prefix.len() >= MAX_PARSED_BYTES {
                return Err(RecordError::TooLargeToClassify(MAX_PARSED_BYTES));
            }
            return Err(RecordError::NotStreamable(kind));
        }
    } else if bytes.len() > MAX_PARSED_BYTES && parsed_kind(found, bytes).is_some() {
        return Err(RecordError::TooLargeToClassify(MAX_PARSED_BYTES));
    }
    classify_content(bytes).map_err(|e| unreadable(&e))
}

/// JSON- or XML-looking content (after a byte-order mark and white space): it may be a format
/// the gateway parses, so it is only ever classified whole.
/// `found` is the format already detected: a DICOM preamble is arbitrary bytes, never JSON.
fn parsed_kind(found: Format, bytes: &[u8]) -> Option<&'static str> {
    if found == Format::Dicom {
        return None;
    }
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => Some("JSON"),
        Some(b'<') => Some("XML"),
        _ => None,
    }
}

fn check_patient(facts: &ContentFacts, declared: &str) -> Result<(), RecordError> {
    match facts.single_patient_matches(declared) {
        Ok(()) => Ok(()),
        Err(PatientProblem::Multiple(n)) => Err(RecordError::MultiplePatients(n)),
        Err(PatientProblem::Mismatch) => Err(RecordError::PatientMismatch),
        // A DICOM object must carry its PatientID; FHIR without any patient (a practitioner
        // directory), PDF and the rest have nobody to contradict.
        Err(PatientProblem::NoPatient) if facts.format == Format::Dicom => {
            Err(RecordError::NoPatient)
        }
        Err(PatientProblem::NoPatient) => Ok(()),
    }
}

/// Refusal text for content that claims a format and breaks it (never record content).
fn unreadable(e: &ClassifyError) -> RecordError {
    RecordError::Unreadable(e.to_string())
}

/// How a detected format is named in a refusal.
fn describe(format: Format) -> &'static str {
    match format {
        Format::FhirJson => "FHIR JSON (declare fhir)",
        Format::Cda => "CDA/C-CDA XML (declare ccda)",
        Format::Dicom => "DICOM (declare dicom)",
        Format::Pdf => "PDF (declare pdf)",
        Format::Other => "not FHIR, CDA, DICOM or PDF (declare its MIME type)",
    }
}

/// `general` only when nothing else is there; never empty.
fn normalize(mut categories: BTreeSet<Category>) -> BTreeSet<Category> {
    if categories.len() > 1 {
        categories.remove(&Category::General);
    }
    if categories.is_empty() {
        categories.insert(Category::General);
    }
    categories
}

/// The decrypted bytes the receive-side classification reads: the whole record for formats the
/// gateway parses (JSON or XML, up to `MAX_PARSED_BYTES`), the first bytes of anything else.
pub struct Kept {
    bytes: Vec<u8>,
    limit: usize,
    /// Bytes were left out (past `limit`): only a prefix is at hand.
    cut: bool,
    /// The limit was chosen from the first bytes already.
    decided: bool,
}

impl Kept {
    pub fn for_record(meta: &RecordMetadata) -> Kept {
        let parsed = ContentType::parse(&meta.content_type)
            .map(|c| c.parsed_whole())
            .unwrap_or(false);
        Kept {
            bytes: Vec::new(),
            limit: if parsed {
                MAX_PARSED_BYTES
            } else {
                INSPECT_PREFIX_BYTES
            },
            cut: false,
            decided: parsed,
        }
    }

    pub fn push(&mut self, plain: &[u8]) {
        if !self.decided && !plain.is_empty() {
            // Whatever the label says, content that looks like JSON or XML is read whole: it
            // may be a parsed format under another name.
            let found = policies::classify::detect_format(plain);
            if parsed_kind(found, plain).is_some() {
                self.limit = MAX_PARSED_BYTES;
            }
            self.decided = true;
        }
        let room = self.limit.saturating_sub(self.bytes.len());
        if plain.len() > room {
            self.cut = true;
        }
        self.bytes
            .extend_from_slice(plain.get(..room.min(plain.len())).unwrap_or_default());
    }

    pub fn content(&self) -> Content<'_> {
        if self.cut {
            Content::Prefix(&self.bytes)
        } else {
            Content::Whole(&self.bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdf() -> Vec<u8> {
        b"%PDF-1.4\n%%EOF\n".to_vec()
    }

    #[test]
    fn a_label_the_bytes_contradict_is_refused_naming_both() {
        let patient = PatientRef::parse("p-1").unwrap();
        let err = inspect(
            &ContentType::FhirBundle,
            &patient,
            &BTreeSet::new(),
            None,
            None,
            Content::Whole(&pdf()),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "content type mismatch: declared application/fhir+json but the content is PDF (declare pdf)"
        );
    }

    #[test]
    fn unreadable_content_is_unclassified_unless_a_clinician_declares_it() {
        let patient = PatientRef::parse("p-1").unwrap();
        let general = BTreeSet::from([Category::General]);
        let plain = inspect(
            &ContentType::Pdf,
            &patient,
            &general,
            None,
            None,
            Content::Whole(&pdf()),
        )
        .unwrap();
        assert!(plain.categories.contains(&Category::Unclassified));
        assert!(plain.declaration.is_none());
        let declared = inspect(
            &ContentType::Pdf,
            &patient,
            &general,
            Some("dr-a"),
            Some("physician"),
            Content::Whole(&pdf()),
        )
        .unwrap();
        assert_eq!(declared.categories, general);
        assert_eq!(declared.derived, BTreeSet::from([Category::Unclassified]));
        assert_eq!(
            declared.declaration.unwrap().audit_text(),
            "declared general by dr-a (physician)"
        );
    }

    #[test]
    fn json_or_xml_is_never_sealed_from_a_prefix() {
        let patient = PatientRef::parse("p-1").unwrap();
        let other = ContentType::parse("application/octet-stream").unwrap();
        for prefix in [&b"  {\"a\": 1"[..], b"[1,2", b"<x>"] {
            let err = inspect(
                &other,
                &patient,
                &BTreeSet::new(),
                None,
                None,
                Content::Prefix(prefix),
            )
            .unwrap_err();
            assert!(matches!(err, RecordError::NotStreamable(_)), "{err}");
        }
        let ok = inspect(
            &other,
            &patient,
            &BTreeSet::new(),
            None,
            None,
            Content::Prefix(b"\x00\x01binary"),
        )
        .unwrap();
        assert_eq!(ok.categories, BTreeSet::from([Category::Unclassified]));
    }
}
