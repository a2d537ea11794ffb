//! What a transfer carries besides its payload: the record's metadata, sealed inside the envelope,
//! and what the gateway reads from the payload itself (`inspect`).
//!
//! `RecordMetadata` is the only wire type here (postcard, versioned). Patient identifiers and
//! clinician ids live in it, so it never derives a revealing `Debug`.
//! Invariant: the bytes decide what a record is, never its label: every path that accepts a
//! record (submit, receive, pull answers, stored records) goes through `inspect`.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use policies::{Category, Purpose};

mod inspect;

pub use inspect::{
    check_received, inspect, Content, Declaration, Inspected, Kept, INSPECT_PREFIX_BYTES,
    MAX_PARSED_BYTES,
};

/// Version 2 adds what the sender derived from the content and a clinician's declaration.
pub const METADATA_VERSION: u8 = 2;
/// Senders built before version 2 still send version 1; it is read as "derived = categories".
const METADATA_VERSION_1: u8 = 1;

/// Break-glass is an emergency authorization, valid this long from when the clinician invoked
/// it: a break-glass transfer or request that arrives later is refused.
pub const BREAK_GLASS_WINDOW_MS: u64 = 60 * 60 * 1000;

/// The content types a record may have. Anything else travels as `other` with its MIME type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentType {
    FhirBundle,
    Ccda,
    Pdf,
    Dicom,
    Other(String),
}

impl ContentType {
    pub fn parse(s: &str) -> Result<ContentType, RecordError> {
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "fhir" | "application/fhir+json" | "application/json+fhir" => ContentType::FhirBundle,
            "ccda" | "cda" | "application/cda+xml" | "application/hl7-cda+xml" => ContentType::Ccda,
            "pdf" | "application/pdf" => ContentType::Pdf,
            "dicom" | "application/dicom" => ContentType::Dicom,
            other => {
                let valid = other.contains('/')
                    && other.len() <= 127
                    && other
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/+-.;=_ ".contains(&b));
                if !valid {
                    return Err(RecordError::ContentType);
                }
                ContentType::Other(other.to_owned())
            }
        })
    }

    /// The format the bytes must have for this label.
    pub fn format(&self) -> policies::classify::Format {
        use policies::classify::Format;
        match self {
            ContentType::FhirBundle => Format::FhirJson,
            ContentType::Ccda => Format::Cda,
            ContentType::Pdf => Format::Pdf,
            ContentType::Dicom => Format::Dicom,
            ContentType::Other(_) => Format::Other,
        }
    }

    /// Whether the gateway must read the whole record to classify it (so it is never sealed
    /// while it is still being uploaded).
    pub fn parsed_whole(&self) -> bool {
        matches!(self, ContentType::FhirBundle | ContentType::Ccda)
    }

    pub fn mime(&self) -> &str {
        match self {
            ContentType::FhirBundle => "application/fhir+json",
            ContentType::Ccda => "application/cda+xml",
            ContentType::Pdf => "application/pdf",
            ContentType::Dicom => "application/dicom",
            ContentType::Other(m) => m,
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime())
    }
}

/// A patient identifier as the local EMR knows it. Redacted in `Debug`/`Display`: reveal it
/// only where it must be stored or compared.
#[derive(Clone, PartialEq, Eq)]
pub struct PatientRef(String);

impl PatientRef {
    pub fn parse(s: &str) -> Result<PatientRef, RecordError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_graphic())
            && !s.contains(['"', '\\']);
        if ok {
            Ok(PatientRef(s.to_owned()))
        } else {
            Err(RecordError::Patient)
        }
    }

    /// The identifier itself; callers store or compare it, never log it.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PatientRef(<redacted>)")
    }
}

/// Metadata sealed inside the envelope (frame 0). Serialized with postcard.
#[derive(Clone, Serialize, Deserialize)]
pub struct RecordMetadata {
    pub version: u8,
    pub content_type: String,
    pub patient: String,
    pub purpose: String,
    pub categories: Vec<String>,
    pub clinician: Option<String>,
    pub clinician_role: Option<String>,
    pub break_glass_reason: Option<String>,
    /// End of the break-glass window (unix ms), set with `break_glass_reason`.
    pub break_glass_until_ms: Option<u64>,
    /// Set when this transfer answers a pull request from the recipient.
    pub request_id: Option<String>,
    /// The patient consent the sender relied on (directives live where the patient gave them,
    /// usually at the sender): the receiver's policy sees it alongside its own directives.
    pub consent_basis: Option<ConsentBasis>,
    /// The categories the sender's gateway derived from the content (`unclassified` for content
    /// it cannot read). The receiver classifies the bytes again and refuses a record whose
    /// content carries a category missing from `categories`.
    pub derived_categories: Vec<String>,
    /// A clinician's explicit statement of the categories of content the gateway cannot
    /// classify (accepted in place of `unclassified`); signed inside the envelope.
    pub declaration: Option<DeclarationWire>,
}

/// A clinician's declaration as it travels in the metadata.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeclarationWire {
    pub clinician: String,
    pub clinician_role: String,
    pub categories: Vec<String>,
}

/// Metadata as senders before version 2 wrote it.
#[derive(Deserialize)]
struct RecordMetadataV1 {
    version: u8,
    content_type: String,
    patient: String,
    purpose: String,
    categories: Vec<String>,
    clinician: Option<String>,
    clinician_role: Option<String>,
    break_glass_reason: Option<String>,
    break_glass_until_ms: Option<u64>,
    request_id: Option<String>,
    consent_basis: Option<ConsentBasis>,
}

/// The sender's consent evaluation for this transfer, signed inside the envelope.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConsentBasis {
    pub permitted_categories: Vec<String>,
    pub research_permit: bool,
    pub directive_ids: Vec<String>,
}

impl fmt::Debug for RecordMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordMetadata")
            .field("content_type", &self.content_type)
            .field("purpose", &self.purpose)
            .field("categories", &self.categories)
            .finish_non_exhaustive()
    }
}

/// Checks a break-glass window carried by a peer: present, not expired, not longer than ours.
pub fn break_glass_window_ok(until_ms: Option<u64>, now_ms: u64) -> Result<(), &'static str> {
    let Some(until) = until_ms else {
        return Err("break-glass without a time limit");
    };
    if until < now_ms {
        return Err("break-glass authorization expired");
    }
    // Five minutes of clock skew allowed.
    if until > now_ms + BREAK_GLASS_WINDOW_MS + 5 * 60 * 1000 {
        return Err("break-glass window longer than allowed");
    }
    Ok(())
}

impl RecordMetadata {
    pub fn encode(&self) -> Vec<u8> {
        // postcard cannot fail on this plain struct except on allocation failure.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<RecordMetadata, RecordError> {
        // postcard writes a u8 as one byte: the version comes first in every version.
        match bytes.first().copied() {
            Some(METADATA_VERSION) => {
                postcard::from_bytes(bytes).map_err(|_| RecordError::MetadataEncoding)
            }
            Some(METADATA_VERSION_1) => {
                let v1: RecordMetadataV1 =
                    postcard::from_bytes(bytes).map_err(|_| RecordError::MetadataEncoding)?;
                Ok(RecordMetadata {
                    version: v1.version,
                    content_type: v1.content_type,
                    patient: v1.patient,
                    purpose: v1.purpose,
                    derived_categories: v1.categories.clone(),
                    categories: v1.categories,
                    clinician: v1.clinician,
                    clinician_role: v1.clinician_role,
                    break_glass_reason: v1.break_glass_reason,
                    break_glass_until_ms: v1.break_glass_until_ms,
                    request_id: v1.request_id,
                    consent_basis: v1.consent_basis,
                    declaration: None,
                })
            }
            Some(other) => Err(RecordError::MetadataVersion(other)),
            None => Err(RecordError::MetadataEncoding),
        }
    }

    /// The clinician's declaration, parsed.
    pub fn declaration(&self) -> Result<Option<Declaration>, RecordError> {
        let Some(d) = &self.declaration else {
            return Ok(None);
        };
        let categories = d
            .categories
            .iter()
            .map(|c| c.parse::<Category>().map_err(|_| RecordError::Category))
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(Some(Declaration {
            clinician: d.clinician.clone(),
            clinician_role: d.clinician_role.clone(),
            categories,
        }))
    }

    pub fn categories(&self) -> Result<BTreeSet<Category>, RecordError> {
        self.categories
            .iter()
            .map(|c| c.parse::<Category>().map_err(|_| RecordError::Category))
            .collect()
    }

    pub fn purpose(&self) -> Result<Purpose, RecordError> {
        self.purpose.parse().map_err(|_| RecordError::Purpose)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("content type not recognised (use fhir, ccda, pdf, dicom or a MIME type)")]
    ContentType,
    #[error("patient identifier must be 1-128 printable ASCII characters")]
    Patient,
    #[error("unknown data category (use hiv-sti, mental-health, substance-use, reproductive-health, genetic, abuse-violence, unclassified or general)")]
    Category,
    #[error(
        "unknown purpose of use (use treatment, payment, operations, research or public-health)"
    )]
    Purpose,
    #[error("the record could not be read: {0}")]
    Unreadable(String),
    /// The label says one format, the bytes another: refused, naming both.
    #[error("content type mismatch: declared {declared} but the content is {found}")]
    LabelMismatch {
        declared: String,
        found: &'static str,
    },
    #[error("the declared patient does not match the record's patient")]
    PatientMismatch,
    #[error("the record names no patient, so the declared patient cannot be checked")]
    NoPatient,
    #[error("the record holds data of {0} patients; send one patient's records per transfer")]
    MultiplePatients(usize),
    #[error("{0} content is classified whole, so it cannot be sealed while it is uploaded; send it without Content-Digest")]
    NotStreamable(&'static str),
    #[error("records the gateway parses (FHIR, CDA, JSON, XML) are refused over {0} bytes")]
    TooLargeToClassify(usize),
    #[error("content carries categories the sender's metadata omits: {0}")]
    CategoriesOmitted(String),
    #[error("content the receiver cannot classify arrived without the category unclassified or a clinician's declaration")]
    UnclassifiedUndeclared,
    #[error("record metadata is not valid postcard")]
    MetadataEncoding,
    #[error("record metadata version {0} is not supported")]
    MetadataVersion(u8),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn break_glass_window_is_required_bounded_and_expires() {
        let now = 1_000_000_000;
        assert!(break_glass_window_ok(Some(now + BREAK_GLASS_WINDOW_MS), now).is_ok());
        assert_eq!(
            break_glass_window_ok(None, now),
            Err("break-glass without a time limit")
        );
        assert_eq!(
            break_glass_window_ok(Some(now - 1), now),
            Err("break-glass authorization expired")
        );
        assert_eq!(
            break_glass_window_ok(Some(now + 10 * BREAK_GLASS_WINDOW_MS), now),
            Err("break-glass window longer than allowed")
        );
    }

    #[test]
    fn patient_ref_and_metadata_never_print_patient_data() {
        let p = PatientRef::parse("pat-12345").unwrap();
        assert!(!format!("{p:?}").contains("12345"));
        let meta = RecordMetadata {
            version: METADATA_VERSION,
            content_type: "application/fhir+json".to_owned(),
            patient: "pat-12345".to_owned(),
            purpose: "treatment".to_owned(),
            categories: vec!["general".to_owned()],
            clinician: Some("dr-who".to_owned()),
            clinician_role: None,
            break_glass_reason: None,
            break_glass_until_ms: None,
            request_id: None,
            consent_basis: None,
            derived_categories: vec!["general".to_owned()],
            declaration: None,
        };
        let shown = format!("{meta:?}");
        assert!(
            !shown.contains("12345") && !shown.contains("dr-who"),
            "{shown}"
        );
        let back = RecordMetadata::decode(&meta.encode()).unwrap();
        assert_eq!(back.patient, "pat-12345");
    }

    #[test]
    fn content_types_parse_and_refuse_garbage() {
        assert_eq!(ContentType::parse("fhir").unwrap(), ContentType::FhirBundle);
        assert_eq!(
            ContentType::parse("application/pdf").unwrap(),
            ContentType::Pdf
        );
        assert!(matches!(
            ContentType::parse("application/octet-stream").unwrap(),
            ContentType::Other(_)
        ));
        assert!(ContentType::parse("not a type").is_err());
        assert!(ContentType::parse("text/plain\r\nX-Injected: 1").is_err());
    }
}
