//! Content classification: what a record is (its format, from the bytes,
//! never from a label), whom it is about (its patients) and which data
//! categories it holds.
//!
//! [`classify_content`] is the one entry point:
//! - FHIR R4 JSON (a Bundle or any single resource) and CDA R2 / C-CDA XML are
//!   read in full (FHIR by a byte-level scanner that validates the whole
//!   document and falls back to serde_json for anything it cannot decide, see
//!   `fhir`) and classified from the codes they contain, by the
//!   reviewable table `data/category-codes.tsv` (sources cited in its
//!   header, embedded at build time), plus a few fixed signals (security
//!   labels, genetics resource types, profiles and extensions);
//! - DICOM yields its PatientID and the category `unclassified`;
//! - PDF, images, text and anything else are `unclassified`, with no patient.
//!
//! Table rules are exact codes, prefixes (`F1*`) or `*` (any code of the
//! system); the most specific rule wins, so an exact or longer-prefix entry
//! with category `general` carves an exception out of a prefix rule.
//!
//! Categories of FHIR and CDA always contain [`Category::General`]: every
//! record carries general data (demographics, encounters), and sensitive
//! categories are added on top. The gateway unions these with the categories
//! the sender declared; the stricter (the union) wins.
//!
//! A record that claims a format and breaks it (bad JSON, a repeated JSON key,
//! broken XML, a DTD, a limit exceeded) is refused with a [`ClassifyError`],
//! whose text never contains record content.

use std::collections::BTreeSet;
use std::fmt;

use crate::Category;

mod cda;
mod detect;
mod dicom;
mod fhir;
mod patients;
mod table;

pub use cda::{MAX_CDA_BYTES, MAX_XML_ATTRIBUTES, MAX_XML_DEPTH, MAX_XML_ELEMENTS};
pub use detect::{detect_format, Format};
pub use patients::{PatientProblem, Patients};

/// The embedded code table.
pub const CATEGORY_CODES_TSV: &str = include_str!("../../data/category-codes.tsv");

/// Largest FHIR JSON document classified (64 MiB, as CDA).
pub const MAX_FHIR_BYTES: usize = 64 * 1024 * 1024;

/// Errors classifying a record. Never contains record content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("record is not JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("record is not a FHIR R4 Bundle")]
    NotBundle,
    #[error("record is JSON but not a FHIR resource (no resourceType string)")]
    NotFhir,
    #[error("record: Bundle.entry is not an array")]
    BadEntries,
    /// JSON parsers disagree on repeated properties (most keep the last), so a repeated
    /// `code` could hide a sensitive one from this check; FHIR forbids repeats anyway.
    #[error("record repeats a JSON property within one object (FHIR forbids this)")]
    RepeatedKey,
    #[error("record is larger than the {limit}-byte limit for parsed formats")]
    TooLarge { limit: usize },
    #[error("record is not well-formed XML (near byte {position})")]
    Xml { position: u64 },
    #[error("XML record is not UTF-8")]
    XmlNotUtf8,
    #[error("XML record has a DOCTYPE: DTDs and entity declarations are refused")]
    XmlDoctype,
    #[error("XML record exceeds the {what} limit of {limit}")]
    XmlLimit { what: &'static str, limit: usize },
    #[error("record is not a CDA document (root is not ClinicalDocument in urn:hl7-org:v3)")]
    NotCda,
    #[error("CDA document has {0} recordTarget elements; exactly one patient is required")]
    RecordTargets(usize),
    #[error("DICOM header could not be read")]
    Dicom,
    #[error("category code table line {line}: {problem}")]
    Table { line: usize, problem: String },
}

/// What the gateway needs to know about a record's content.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentFacts {
    /// The format, from the bytes.
    pub format: Format,
    /// The distinct patients the record is about.
    pub patients: Patients,
    /// FHIR and CDA: `General` plus every sensitive category found. Other
    /// formats: `{Unclassified}`.
    pub categories: BTreeSet<Category>,
    /// Number of codes and signals that matched a sensitive category.
    pub matched_codes: usize,
    /// FHIR: the resource types in the record (entries, contained and a
    /// single root resource; not the document's own Bundle). Empty otherwise.
    pub resource_types: BTreeSet<String>,
}

impl ContentFacts {
    /// Number of distinct patients.
    pub fn patient_count(&self) -> usize {
        self.patients.count()
    }

    /// Exactly one patient, and `declared` is one of its aliases.
    pub fn single_patient_matches(&self, declared: &str) -> Result<(), PatientProblem> {
        self.patients.single_patient_matches(declared)
    }

    fn unclassified(format: Format, patients: Patients) -> ContentFacts {
        ContentFacts {
            format,
            patients,
            categories: BTreeSet::from([Category::Unclassified]),
            matched_codes: 0,
            resource_types: BTreeSet::new(),
        }
    }
}

impl fmt::Debug for ContentFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentFacts")
            .field("format", &self.format)
            .field("patients", &self.patients)
            .field("categories", &self.categories)
            .field("matched_codes", &self.matched_codes)
            .field("resource_types", &self.resource_types)
            .finish()
    }
}

/// Detects the format of `bytes` and classifies them (see the module docs).
pub fn classify_content(bytes: &[u8]) -> Result<ContentFacts, ClassifyError> {
    let table = table::TABLE.as_ref().map_err(Clone::clone)?;
    let format = detect_format(bytes);
    match format {
        Format::FhirJson => classify_fhir_with(table, bytes, fhir::scan::read),
        Format::Cda => {
            let facts = cda::read(table, bytes)?;
            Ok(ContentFacts {
                format,
                patients: facts.patients,
                categories: facts.categories,
                matched_codes: facts.matched_codes,
                resource_types: BTreeSet::new(),
            })
        }
        Format::Dicom => Ok(ContentFacts::unclassified(format, dicom::read(bytes)?)),
        Format::Pdf | Format::Other => Ok(ContentFacts::unclassified(format, Patients::default())),
    }
}

type FhirReader = fn(&table::Table, &[u8]) -> Result<fhir::FhirFacts, ClassifyError>;

fn read_fhir(
    table: &table::Table,
    bytes: &[u8],
    reader: FhirReader,
) -> Result<fhir::FhirFacts, ClassifyError> {
    if bytes.len() > MAX_FHIR_BYTES {
        return Err(ClassifyError::TooLarge {
            limit: MAX_FHIR_BYTES,
        });
    }
    let facts = reader(table, detect::strip_bom(bytes))?;
    if facts.root_type.is_none() {
        return Err(ClassifyError::NotFhir);
    }
    if facts.bad_entries {
        return Err(ClassifyError::BadEntries);
    }
    Ok(facts)
}

fn classify_fhir_with(
    table: &table::Table,
    bytes: &[u8],
    reader: FhirReader,
) -> Result<ContentFacts, ClassifyError> {
    let facts = read_fhir(table, bytes, reader)?;
    Ok(ContentFacts {
        format: Format::FhirJson,
        patients: facts.distinct_patients(),
        categories: facts.categories,
        matched_codes: facts.matched_codes,
        resource_types: facts.resource_types,
    })
}

/// [`classify_content`] for FHIR JSON through the tree-based reference
/// reader: the same answers, slower. For the equivalence tests and the
/// benchmark; not part of the API.
#[doc(hidden)]
pub fn classify_fhir_reference(bytes: &[u8]) -> Result<ContentFacts, ClassifyError> {
    let table = table::TABLE.as_ref().map_err(Clone::clone)?;
    classify_fhir_with(table, bytes, fhir::tree::read)
}

/// [`classify_content`] for FHIR JSON through the serde_json streaming
/// reader alone (the one the gateway ran before the byte-level scanner, and
/// the scanner's fallback): for the equivalence tests and the benchmark.
#[doc(hidden)]
pub fn classify_fhir_stream(bytes: &[u8]) -> Result<ContentFacts, ClassifyError> {
    let table = table::TABLE.as_ref().map_err(Clone::clone)?;
    classify_fhir_with(table, bytes, fhir::stream::read)
}

/// What the byte-level FHIR scanner does with a document on its own, against
/// the streaming reader (for the equivalence tests).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanCheck {
    /// The scanner decided, and its facts are the streaming reader's, field by field.
    Same,
    /// The scanner left the document to the streaming reader.
    Undecided,
    /// The scanner decided and the streaming reader disagrees (refuses, or
    /// finds other facts): a bug.
    Differs,
}

/// Runs the byte-level scanner alone and the streaming reader on the same
/// document (BOM stripped, as the classifier does) and compares their raw
/// facts: categories, codes matched, resource types, root type, entries,
/// Patient resources, references. For the equivalence tests.
#[doc(hidden)]
pub fn fhir_scan_check(bytes: &[u8]) -> Result<ScanCheck, ClassifyError> {
    let table = table::TABLE.as_ref().map_err(Clone::clone)?;
    let bytes = detect::strip_bom(bytes);
    let Ok(scanned) = fhir::scan::decide(table, bytes) else {
        return Ok(ScanCheck::Undecided);
    };
    Ok(match fhir::stream::read(table, bytes) {
        Ok(streamed) if streamed == scanned => ScanCheck::Same,
        _ => ScanCheck::Differs,
    })
}

/// Checks that the embedded table parses (the engine refuses to start if not).
pub fn check_table() -> Result<(), ClassifyError> {
    table::TABLE.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Categories of a set of codings `(system URI, code)`. Always contains
/// `General`. Fails closed: if the embedded table were broken, every category
/// is returned.
pub fn classify_codes<'a>(codings: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeSet<Category> {
    let mut categories = BTreeSet::from([Category::General]);
    match table::TABLE.as_ref() {
        Ok(table) => {
            for (system, code) in codings {
                if let Some(category) = table.coding(system, code) {
                    categories.insert(category);
                }
            }
        }
        Err(_) => categories.extend(Category::ALL),
    }
    categories
}

fn not_json(e: &serde_json::Error) -> ClassifyError {
    ClassifyError::NotJson {
        line: e.line(),
        column: e.column(),
    }
}

/// What the gateway needed to know about a FHIR bundle before
/// [`classify_content`]; kept until every caller has moved.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleFacts {
    /// Ids of the Patient resources in the bundle and their identifiers' values.
    pub patient_ids: BTreeSet<String>,
    /// Resource types of the bundle's resources.
    pub resource_types: BTreeSet<String>,
    /// Always contains `General`, plus every sensitive category found.
    pub categories: BTreeSet<Category>,
    /// Number of codes and signals that matched a sensitive category.
    pub matched_codes: usize,
}

impl fmt::Debug for BundleFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleFacts")
            .field(
                "patient_ids",
                &format_args!("<{} redacted>", self.patient_ids.len()),
            )
            .field("resource_types", &self.resource_types)
            .field("categories", &self.categories)
            .field("matched_codes", &self.matched_codes)
            .finish()
    }
}

/// Classifies a FHIR R4 Bundle (JSON); anything else is refused. A thin
/// wrapper over the streaming reader of [`classify_content`], with the same
/// categories (signals included). Prefer [`classify_content`], whose
/// [`Patients`] count patients correctly.
pub fn classify_fhir_bundle(bytes: &[u8]) -> Result<BundleFacts, ClassifyError> {
    bundle_facts(bytes, fhir::scan::read)
}

/// [`classify_fhir_bundle`] through the tree-based reference reader.
#[doc(hidden)]
pub fn classify_fhir_bundle_reference(bytes: &[u8]) -> Result<BundleFacts, ClassifyError> {
    bundle_facts(bytes, fhir::tree::read)
}

fn bundle_facts(bytes: &[u8], reader: FhirReader) -> Result<BundleFacts, ClassifyError> {
    let table = table::TABLE.as_ref().map_err(Clone::clone)?;
    let facts = match read_fhir(table, bytes, reader) {
        Err(ClassifyError::NotFhir) => return Err(ClassifyError::NotBundle),
        other => other?,
    };
    if facts.root_type.as_deref() != Some("Bundle") {
        return Err(ClassifyError::NotBundle);
    }
    Ok(BundleFacts {
        patient_ids: facts.patient_ids(),
        resource_types: facts.resource_types,
        categories: facts.categories,
        matched_codes: facts.matched_codes,
    })
}

#[cfg(test)]
mod tests;
