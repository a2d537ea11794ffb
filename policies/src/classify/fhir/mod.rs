//! FHIR R4 JSON: a Bundle or any single resource. Three readers with the same
//! answers:
//! - [`scan`], the one the gateway runs: a byte-level tokenizer ([`json`])
//!   that validates the whole document and decodes only the strings it looks
//!   at; whatever it cannot decide it hands to
//! - [`stream`], one pass through serde_json's tokenizer, no tree, strings
//!   borrowed: the fallback and the scanner's reference; both run the FHIR
//!   logic of [`walk`] (what a value means where it sits);
//! - [`tree`], the original tree walk, the independent reference the other
//!   two are tested and benchmarked against.
//!
//! What counts, wherever it sits in the record (entries, contained resources,
//! nested bundles):
//! - every Coding (`system` + `code`) the table or a fixed signal knows,
//!   `meta.security` labels included;
//! - resource-type and profile signals: MolecularSequence, a genetics profile
//!   in `meta.profile`, an HL7 genetics extension (observation-genetics*,
//!   family-member-history-genetics*, DiagnosticReport-genetics*,
//!   hla-genotyping*) → genetic;
//! - a finding (Observation, Condition, Procedure, DiagnosticReport,
//!   ServiceRequest) whose `code` is free text only → unclassified: nothing
//!   tells the gateway what it is;
//! - Patient resources and `subject` / `patient` / `beneficiary` references,
//!   resolved to distinct patients (see [`super::patients`]).

use std::collections::BTreeSet;

use super::patients::{Patients, PatientsBuilder};
use crate::Category;

mod json;
pub(crate) mod scan;
pub(crate) mod stream;
pub(crate) mod tree;
mod walk;

/// Resource types whose `code` says what the finding is: free text only there
/// means the gateway cannot classify it.
const CODED_FINDINGS: [&str; 5] = [
    "Observation",
    "Condition",
    "Procedure",
    "DiagnosticReport",
    "ServiceRequest",
];

/// Keys whose Reference value names the patient a resource is about.
pub(crate) const PATIENT_REFERENCE_KEYS: [&str; 3] = ["subject", "patient", "beneficiary"];

/// What a FHIR reader found, before patients are resolved.
#[derive(Default, PartialEq, Eq)]
pub(crate) struct FhirFacts {
    /// Resource type of the document itself; `None` if it has none.
    pub root_type: Option<String>,
    /// `Bundle.entry` is present but not an array.
    pub bad_entries: bool,
    pub resource_types: BTreeSet<String>,
    /// Sensitive categories and `General`.
    pub categories: BTreeSet<Category>,
    pub matched_codes: usize,
    pub patients: Vec<PatientResource>,
    /// Distinct `reference` strings of patient references.
    pub references: BTreeSet<String>,
    /// Patient references by identifier only: (system, value).
    pub identifier_references: BTreeSet<(Option<String>, String)>,
    /// `urn:` fullUrls of entries that are not Patients, as far as a patient
    /// reference names them (a reference to one is not a patient reference).
    pub other_urns: BTreeSet<String>,
}

/// One Patient resource of the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PatientResource {
    pub id: Option<String>,
    pub full_url: Option<String>,
    /// A contained resource: its id is local (`#id`).
    pub contained: bool,
    /// (system, value) of each identifier with a value.
    pub identifiers: Vec<(Option<String>, String)>,
}

impl FhirFacts {
    pub(crate) fn new() -> FhirFacts {
        FhirFacts {
            categories: BTreeSet::from([Category::General]),
            ..FhirFacts::default()
        }
    }

    /// A category signalled by something other than a table code.
    pub(crate) fn signal(&mut self, category: Category) {
        if category.is_sensitive() {
            self.matched_codes += 1;
        }
        self.categories.insert(category);
    }

    /// The end of a resource (root, entry or contained). Returns the index of
    /// its Patient record, if it is a Patient.
    pub(crate) fn resource(
        &mut self,
        kind: &str,
        id: Option<&str>,
        identifiers: Vec<(Option<String>, String)>,
        text_only_code: bool,
        contained: bool,
    ) -> Option<usize> {
        if !self.resource_types.contains(kind) {
            self.resource_types.insert(kind.to_owned());
        }
        if kind == "MolecularSequence" {
            self.signal(Category::Genetic);
        }
        if text_only_code && CODED_FINDINGS.contains(&kind) {
            self.signal(Category::Unclassified);
        }
        if kind != "Patient" {
            return None;
        }
        self.patients.push(PatientResource {
            id: id.map(str::to_owned),
            full_url: None,
            contained,
            identifiers,
        });
        Some(self.patients.len() - 1)
    }

    /// A Patient entry's `fullUrl`, once its resource is read.
    pub(crate) fn patient_entry(&mut self, full_url: &str, patient: usize) {
        if let Some(p) = self.patients.get_mut(patient) {
            p.full_url = Some(full_url.to_owned());
        }
    }

    /// The `urn:` fullUrls of the entries that are not Patients, at the end of
    /// the read. Only those a patient reference names are kept, so a reader
    /// can pass borrowed strings and the common case (every reference points at
    /// the Patient) costs no allocation.
    pub(crate) fn other_entries<'a>(&mut self, urns: impl Iterator<Item = &'a str>) {
        let unresolved: BTreeSet<&str> = self
            .references
            .iter()
            .map(String::as_str)
            .filter(|r| r.starts_with("urn:"))
            .filter(|r| {
                !self
                    .patients
                    .iter()
                    .any(|p| p.full_url.as_deref() == Some(*r))
            })
            .collect();
        if unresolved.is_empty() {
            return;
        }
        let named: Vec<String> = urns
            .filter(|u| unresolved.contains(u))
            .map(str::to_owned)
            .collect();
        self.other_urns.extend(named);
    }

    pub(crate) fn reference(&mut self, reference: &str) {
        if !self.references.contains(reference) {
            self.references.insert(reference.to_owned());
        }
    }

    /// Ids and identifier values of the Patient resources: what
    /// [`super::BundleFacts::patient_ids`] has always held.
    pub(crate) fn patient_ids(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for p in &self.patients {
            ids.extend(p.id.iter().cloned());
            ids.extend(p.identifiers.iter().map(|(_, v)| v.clone()));
        }
        ids
    }

    /// Resolves Patient resources and patient references to distinct patients.
    pub(crate) fn distinct_patients(&self) -> Patients {
        let mut builder = PatientsBuilder::default();
        let mut contained_keys = BTreeSet::new();
        for p in &self.patients {
            let mut keys = Vec::new();
            let mut aliases = Vec::new();
            if let Some(id) = &p.id {
                if p.contained {
                    keys.push(format!("#{id}"));
                    contained_keys.insert(format!("#{id}"));
                } else {
                    keys.push(format!("Patient/{id}"));
                }
                aliases.push(id.clone());
            }
            if let Some(url) = &p.full_url {
                keys.push(url.clone());
                if let Some(tail) = patient_tail(url) {
                    keys.push(tail);
                }
            }
            for (system, value) in &p.identifiers {
                if let Some(system) = system {
                    keys.push(format!("{system}|{value}"));
                }
                aliases.push(value.clone());
            }
            builder.add(keys, aliases);
        }
        for reference in &self.references {
            if let Some((keys, aliases)) = self.resolve(reference, &contained_keys) {
                builder.add(keys, aliases);
            }
        }
        for (system, value) in &self.identifier_references {
            let keys = system
                .iter()
                .map(|s| format!("{s}|{value}"))
                .collect::<Vec<_>>();
            builder.add(keys, vec![value.clone()]);
        }
        builder.build()
    }

    /// Keys and aliases of one patient reference; `None` if it does not point
    /// at a patient (another resource type, or a local reference to a
    /// non-Patient contained resource).
    fn resolve(
        &self,
        reference: &str,
        contained_keys: &BTreeSet<String>,
    ) -> Option<(Vec<String>, Vec<String>)> {
        if reference.starts_with('#') {
            return contained_keys
                .contains(reference)
                .then(|| (vec![reference.to_owned()], Vec::new()));
        }
        if reference.starts_with("urn:") {
            let key = vec![reference.to_owned()];
            if self
                .patients
                .iter()
                .any(|p| p.full_url.as_deref() == Some(reference))
            {
                return Some((key, Vec::new()));
            }
            if self.other_urns.contains(reference) {
                return None;
            }
            // A subject the record does not contain is still someone: fail closed and
            // count it as a patient of its own.
            return Some((key, vec![reference.to_owned()]));
        }
        let tail = patient_tail(reference)?;
        let id = tail.strip_prefix("Patient/").unwrap_or_default().to_owned();
        let mut keys = vec![tail];
        if reference.contains("://") {
            keys.push(reference.to_owned());
        }
        Some((keys, vec![id]))
    }
}

/// `Patient/<id>` of a relative or absolute reference to a Patient (a version
/// suffix `/_history/<v>` dropped); `None` for other resource types.
fn patient_tail(reference: &str) -> Option<String> {
    let unversioned = match reference.find("/_history/") {
        Some(at) => reference.get(..at).unwrap_or(reference),
        None => reference,
    };
    let mut parts = unversioned.rsplit('/');
    let id = parts.next().filter(|id| !id.is_empty())?;
    (parts.next() == Some("Patient")).then(|| format!("Patient/{id}"))
}

/// A `meta.profile` of the HL7 genetics / genomics profiles.
pub(crate) fn genetics_profile(url: &str) -> bool {
    let last = url.rsplit('/').next().unwrap_or(url).to_ascii_lowercase();
    url.contains("observation-genetics")
        || url.contains("genomics-reporting")
        || last.starts_with("hla")
}

/// An HL7 genetics extension URL (R4 core and the genomics reporting IG).
pub(crate) fn genetics_extension(url: &str) -> bool {
    // The prefix test first: it rules out most extension URLs without a search.
    let Some(rest) = url.strip_prefix("http://hl7.org/fhir/") else {
        return false;
    };
    let last = rest.rsplit('/').next().unwrap_or(rest);
    last.starts_with("observation-genetics")
        || last.starts_with("family-member-history-genetics")
        || last.starts_with("DiagnosticReport-genetics")
        || last.starts_with("hla-genotyping")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_to_patients() {
        assert_eq!(patient_tail("Patient/x"), Some("Patient/x".to_owned()));
        assert_eq!(
            patient_tail("https://h.example/fhir/Patient/x/_history/2"),
            Some("Patient/x".to_owned())
        );
        assert_eq!(patient_tail("Group/g"), None);
        assert_eq!(patient_tail("Patient/"), None);
        assert_eq!(patient_tail("x"), None);
    }

    #[test]
    fn genetics_urls() {
        assert!(genetics_profile(
            "http://hl7.org/fhir/StructureDefinition/observation-genetics"
        ));
        assert!(genetics_profile(
            "http://hl7.org/fhir/uv/genomics-reporting/StructureDefinition/variant"
        ));
        assert!(genetics_profile(
            "http://hl7.org/fhir/StructureDefinition/hlaresult"
        ));
        assert!(!genetics_profile(
            "http://hl7.org/fhir/StructureDefinition/vitalsigns"
        ));
        assert!(genetics_extension(
            "http://hl7.org/fhir/StructureDefinition/observation-geneticsGene"
        ));
        assert!(genetics_extension(
            "http://hl7.org/fhir/StructureDefinition/family-member-history-genetics-observation"
        ));
        assert!(!genetics_extension(
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
        ));
    }
}
