//! The streaming FHIR reader: one pass over the JSON without building a tree.
//! Strings are borrowed from the input (copied only when escaped and of
//! interest). A repeated object key is refused: JSON parsers differ on which
//! value wins (a tree keeps the last), so a repeated `code` could otherwise
//! hide a sensitive code from this check while a downstream parser sees it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{genetics_extension, genetics_profile, FhirFacts, PATIENT_REFERENCE_KEYS};
use crate::classify::table::Table;
use crate::classify::{not_json, ClassifyError};
use crate::Category;

/// Reads one FHIR JSON document (BOM already stripped).
pub(crate) fn read(table: &Table, bytes: &[u8]) -> Result<FhirFacts, ClassifyError> {
    let mut scan = Scan {
        table,
        facts: FhirFacts::new(),
        keys: Vec::new(),
        duplicate_key: false,
    };
    // One UTF-8 check of the whole document is much cheaper than serde_json's check of every
    // string it reads from a byte slice. Invalid UTF-8 goes through the slice reader, which
    // reports where it is.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => scan_document(&mut scan, serde_json::Deserializer::from_str(text)),
        Err(_) => scan_document(&mut scan, serde_json::Deserializer::from_slice(bytes)),
    };
    if let Err(e) = parsed {
        if scan.duplicate_key {
            return Err(ClassifyError::RepeatedKey);
        }
        return Err(not_json(&e));
    }
    Ok(scan.facts)
}

/// Runs the scan over one JSON document and checks nothing follows it.
fn scan_document<'de, R: serde_json::de::Read<'de>>(
    scan: &mut Scan<'_, 'de>,
    mut de: serde_json::Deserializer<R>,
) -> Result<(), serde_json::Error> {
    Node {
        scan,
        role: Role::Root,
        capture: false,
    }
    .deserialize(&mut de)?;
    de.end()
}

/// State of one streaming classification.
struct Scan<'t, 'de> {
    table: &'t Table,
    facts: FhirFacts,
    /// Keys of the objects being read, outermost first; each object checks
    /// its new keys against its own tail of this stack.
    keys: Vec<Cow<'de, str>>,
    /// Set (and the parse aborted) on a repeated key.
    duplicate_key: bool,
}

impl Scan<'_, '_> {
    fn coding(&mut self, system: &str, code: &str) {
        if let Some(category) = self.table.coding(system, code) {
            if category.is_sensitive() {
                self.facts.matched_codes += 1;
            }
            self.facts.categories.insert(category);
        }
    }
}

/// Where a JSON value sits, as far as the facts are concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The document (a Bundle or a single resource).
    Root,
    /// `entry` of a Bundle (the document or a nested one).
    Entries,
    /// One entry.
    Entry,
    /// `entry[i].resource`.
    Resource,
    /// `contained` of a resource.
    Contained,
    /// One contained resource.
    ContainedResource,
    /// `identifier` of a resource (of a Patient, or not yet known).
    Identifiers,
    /// One of those identifiers.
    Identifier,
    /// `meta` of a resource.
    Meta,
    /// `meta.profile`.
    Profiles,
    /// One of those profiles.
    Profile,
    /// `code` of a resource.
    ResourceCode,
    /// A `subject` / `patient` / `beneficiary` Reference.
    PatientRef,
    /// `identifier` of such a Reference.
    RefIdentifier,
    Other,
}

impl Role {
    fn is_resource(self) -> bool {
        matches!(self, Role::Root | Role::Resource | Role::ContainedResource)
    }
}

/// What a value turned out to be, as far as its parent needs to know.
enum Seen<'de> {
    Str(Cow<'de, str>),
    Array,
    Identifiers(Vec<(Option<String>, String)>),
    Identifier(Option<Cow<'de, str>>, Cow<'de, str>),
    Resource {
        is_patient: bool,
        patient: Option<usize>,
    },
    TextOnlyCode,
    Other,
}

impl<'de> Seen<'de> {
    fn into_str(self) -> Option<Cow<'de, str>> {
        match self {
            Seen::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Reads one value in a role; `capture` keeps a string value.
struct Node<'s, 't, 'de> {
    scan: &'s mut Scan<'t, 'de>,
    role: Role,
    capture: bool,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, 'de> {
    type Value = Seen<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Seen<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, 'de> {
    type Value = Seen<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Seen<'de>, E> {
        if self.role == Role::Profile && genetics_profile(v) {
            self.scan.facts.signal(Category::Genetic);
        }
        Ok(if self.capture {
            Seen::Str(Cow::Borrowed(v))
        } else {
            Seen::Other
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Seen<'de>, E> {
        // Escaped string, unescaped into the parser's scratch buffer.
        if self.role == Role::Profile && genetics_profile(v) {
            self.scan.facts.signal(Category::Genetic);
        }
        Ok(if self.capture {
            Seen::Str(Cow::Owned(v.to_owned()))
        } else {
            Seen::Other
        })
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Seen<'de>, E> {
        self.visit_str(&v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen<'de>, A::Error> {
        let scan = self.scan;
        match self.role {
            Role::Identifiers => {
                let mut values = Vec::new();
                while let Some(seen) = seq.next_element_seed(Node {
                    scan: &mut *scan,
                    role: Role::Identifier,
                    capture: false,
                })? {
                    if let Seen::Identifier(system, value) = seen {
                        values.push((system.map(Cow::into_owned), value.into_owned()));
                    }
                }
                Ok(Seen::Identifiers(values))
            }
            role => {
                let role = match role {
                    Role::Entries => Role::Entry,
                    Role::Contained => Role::ContainedResource,
                    Role::Profiles => Role::Profile,
                    _ => Role::Other,
                };
                while seq
                    .next_element_seed(Node {
                        scan: &mut *scan,
                        role,
                        capture: false,
                    })?
                    .is_some()
                {}
                Ok(Seen::Array)
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen<'de>, A::Error> {
        let scan = self.scan;
        let role = self.role;
        let start = scan.keys.len();
        let mut system = None;
        let mut code = None;
        let mut url = None;
        let mut resource_type: Option<Cow<'de, str>> = None;
        let mut id = None;
        let mut identifiers = Vec::new();
        let mut value = None;
        let mut full_url = None;
        let mut reference = None;
        let mut reference_type = None;
        let mut reference_identifier = None;
        let mut resource = None;
        let mut text_only_code = false;
        let mut has_coding = false;
        let mut has_text = false;
        let mut bad_entries = false;
        while let Some(key) = map.next_key_seed(Key)? {
            if scan.keys.iter().skip(start).any(|k| *k == key) {
                scan.duplicate_key = true;
                return Err(de::Error::custom("repeated object key"));
            }
            let k = key.as_ref();
            let (child, capture) = match (role, k) {
                (r, "code") if r.is_resource() => (Role::ResourceCode, true),
                (_, "system" | "code" | "url") => (Role::Other, true),
                (r, "resourceType" | "id") if r.is_resource() => (Role::Other, true),
                (r, "entry") if r.is_resource() => (Role::Entries, false),
                (r, "contained") if r.is_resource() => (Role::Contained, false),
                (r, "meta") if r.is_resource() => (Role::Meta, false),
                // Identifiers matter only for a Patient; skip collecting them
                // when the resource type is already known to be another.
                (r, "identifier")
                    if r.is_resource()
                        && resource_type.as_deref().is_none_or(|k| k == "Patient") =>
                {
                    (Role::Identifiers, false)
                }
                (Role::Entry, "resource") => (Role::Resource, false),
                (Role::Entry, "fullUrl") => (Role::Other, true),
                (Role::Meta, "profile") => (Role::Profiles, false),
                (Role::Identifier | Role::RefIdentifier, "value") => (Role::Other, true),
                (Role::PatientRef, "reference" | "type") => (Role::Other, true),
                (Role::PatientRef, "identifier") => (Role::RefIdentifier, false),
                (_, k) if PATIENT_REFERENCE_KEYS.contains(&k) => (Role::PatientRef, false),
                _ => (Role::Other, false),
            };
            let seen = map.next_value_seed(Node {
                scan: &mut *scan,
                role: child,
                capture,
            })?;
            match (role, k) {
                (r, "code") if r.is_resource() => match seen {
                    Seen::TextOnlyCode => text_only_code = true,
                    seen => code = seen.into_str(),
                },
                (Role::ResourceCode, "coding") => {
                    has_coding = true;
                }
                (Role::ResourceCode, "text") => has_text = true,
                (_, "system") => system = seen.into_str(),
                (_, "code") => code = seen.into_str(),
                (_, "url") => url = seen.into_str(),
                (r, "resourceType") if r.is_resource() => resource_type = seen.into_str(),
                (r, "id") if r.is_resource() => id = seen.into_str(),
                (r, "entry") if r.is_resource() => bad_entries = !matches!(seen, Seen::Array),
                (r, "identifier") if r.is_resource() => {
                    if let Seen::Identifiers(values) = seen {
                        identifiers = values;
                    }
                }
                (Role::Entry, "resource") => resource = Some(seen),
                (Role::Entry, "fullUrl") => full_url = seen.into_str(),
                (Role::Identifier | Role::RefIdentifier, "value") => value = seen.into_str(),
                (Role::PatientRef, "reference") => reference = seen.into_str(),
                (Role::PatientRef, "type") => reference_type = seen.into_str(),
                (Role::PatientRef, "identifier") => reference_identifier = Some(seen),
                _ => {}
            }
            scan.keys.push(key);
        }
        scan.keys.truncate(start);

        if let (Some(system), Some(code)) = (&system, &code) {
            scan.coding(system, code);
        }
        if url.as_deref().is_some_and(genetics_extension) {
            scan.facts.signal(Category::Genetic);
        }
        match role {
            Role::Root => {
                let is_bundle = resource_type.as_deref() == Some("Bundle");
                scan.facts.bad_entries = is_bundle && bad_entries;
                scan.facts.root_type = resource_type.as_deref().map(str::to_owned);
                if let Some(kind) = resource_type.as_deref().filter(|_| !is_bundle) {
                    scan.facts
                        .resource(kind, id.as_deref(), identifiers, text_only_code, false);
                }
            }
            Role::Resource | Role::ContainedResource => {
                if let Some(kind) = resource_type.as_deref() {
                    let patient = scan.facts.resource(
                        kind,
                        id.as_deref(),
                        identifiers,
                        text_only_code,
                        role == Role::ContainedResource,
                    );
                    return Ok(Seen::Resource {
                        is_patient: kind == "Patient",
                        patient,
                    });
                }
            }
            Role::Entry => {
                if let Some(url) = full_url {
                    let (is_patient, patient) = match resource {
                        Some(Seen::Resource {
                            is_patient,
                            patient,
                        }) => (is_patient, patient),
                        _ => (false, None),
                    };
                    scan.facts.entry(&url, is_patient, patient);
                }
            }
            Role::Identifier | Role::RefIdentifier => {
                if let Some(value) = value {
                    return Ok(Seen::Identifier(system, value));
                }
            }
            Role::ResourceCode if has_text && !has_coding => return Ok(Seen::TextOnlyCode),
            Role::PatientRef => {
                if let Some(reference) = reference {
                    scan.facts.reference(&reference);
                } else if let Some(Seen::Identifier(system, value)) = reference_identifier {
                    if reference_type.as_deref().is_none_or(|t| t == "Patient") {
                        scan.facts
                            .identifier_references
                            .insert((system.map(Cow::into_owned), value.into_owned()));
                    }
                }
            }
            _ => {}
        }
        Ok(Seen::Other)
    }
}

/// Reads an object key, borrowed unless escaped.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}
