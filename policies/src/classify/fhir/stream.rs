//! The streaming FHIR reader: one pass over the JSON without building a tree.
//! Strings are borrowed from the input (copied only when escaped and of
//! interest). A repeated object key is refused: JSON parsers differ on which
//! value wins (a tree keeps the last), so a repeated `code` could otherwise
//! hide a sensitive code from this check while a downstream parser sees it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{genetics_extension, genetics_profile, FhirFacts};
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
        other_urns: Vec::new(),
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
    let mut facts = scan.facts;
    facts.other_entries(scan.other_urns.iter().map(|u| u.as_ref()));
    Ok(facts)
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
    /// `urn:` fullUrls of non-Patient entries, borrowed where possible.
    other_urns: Vec<Cow<'de, str>>,
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
    /// (system, value); boxed so that the common variants stay small: every
    /// JSON value returns a `Seen`.
    Identifier(Box<(Option<Cow<'de, str>>, Cow<'de, str>)>),
    Resource {
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
                    if let Seen::Identifier(pair) = seen {
                        let (system, value) = *pair;
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
        let mut entry_resource = None;
        let mut text_only_code = false;
        let mut has_coding = false;
        let mut has_text = false;
        let mut bad_entries = false;
        while let Some(key) = map.next_key_seed(Key)? {
            if scan.keys.iter().skip(start).any(|k| *k == key) {
                scan.duplicate_key = true;
                return Err(de::Error::custom("repeated object key"));
            }
            // One string match per key; everything after it matches on enums.
            let k = KeyKind::of(key.as_ref());
            let resource = role.is_resource();
            let (child, capture) = match (role, k) {
                (_, KeyKind::Other) => (Role::Other, false),
                (_, KeyKind::Code) if resource => (Role::ResourceCode, true),
                (_, KeyKind::System | KeyKind::Code | KeyKind::Url) => (Role::Other, true),
                (_, KeyKind::ResourceType | KeyKind::Id) if resource => (Role::Other, true),
                (_, KeyKind::Entry) if resource => (Role::Entries, false),
                (_, KeyKind::Contained) if resource => (Role::Contained, false),
                (_, KeyKind::Meta) if resource => (Role::Meta, false),
                // Identifiers matter only for a Patient; skip collecting them
                // when the resource type is already known to be another.
                (_, KeyKind::Identifier)
                    if resource && resource_type.as_deref().is_none_or(|k| k == "Patient") =>
                {
                    (Role::Identifiers, false)
                }
                (Role::Entry, KeyKind::Resource) => (Role::Resource, false),
                (Role::Entry, KeyKind::FullUrl) => (Role::Other, true),
                (Role::Meta, KeyKind::Profile) => (Role::Profiles, false),
                (Role::Identifier | Role::RefIdentifier, KeyKind::Value) => (Role::Other, true),
                (Role::PatientRef, KeyKind::Reference | KeyKind::Type) => (Role::Other, true),
                (Role::PatientRef, KeyKind::Identifier) => (Role::RefIdentifier, false),
                (_, KeyKind::PatientReference) => (Role::PatientRef, false),
                _ => (Role::Other, false),
            };
            let seen = map.next_value_seed(Node {
                scan: &mut *scan,
                role: child,
                capture,
            })?;
            match (role, k) {
                // The common case. A value read in the Other role without capture is never a
                // heap-holding `Seen`; skipping its drop glue here is measurable on large records.
                (_, KeyKind::Other) if matches!(seen, Seen::Other | Seen::Array) => {
                    std::mem::forget(seen);
                }
                (_, KeyKind::Other) => {}
                (_, KeyKind::Code) if resource => match seen {
                    Seen::TextOnlyCode => text_only_code = true,
                    seen => code = seen.into_str(),
                },
                (Role::ResourceCode, KeyKind::Coding) => has_coding = true,
                (Role::ResourceCode, KeyKind::Text) => has_text = true,
                (_, KeyKind::System) => system = seen.into_str(),
                (_, KeyKind::Code) => code = seen.into_str(),
                (_, KeyKind::Url) => url = seen.into_str(),
                (_, KeyKind::ResourceType) if resource => resource_type = seen.into_str(),
                (_, KeyKind::Id) if resource => id = seen.into_str(),
                (_, KeyKind::Entry) if resource => bad_entries = !matches!(seen, Seen::Array),
                (_, KeyKind::Identifier) if resource => {
                    if let Seen::Identifiers(values) = seen {
                        identifiers = values;
                    }
                }
                (Role::Entry, KeyKind::Resource) => entry_resource = Some(seen),
                (Role::Entry, KeyKind::FullUrl) => full_url = seen.into_str(),
                (Role::Identifier | Role::RefIdentifier, KeyKind::Value) => value = seen.into_str(),
                (Role::PatientRef, KeyKind::Reference) => reference = seen.into_str(),
                (Role::PatientRef, KeyKind::Type) => reference_type = seen.into_str(),
                (Role::PatientRef, KeyKind::Identifier) => reference_identifier = Some(seen),
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
                    return Ok(Seen::Resource { patient });
                }
            }
            Role::Entry => {
                if let Some(url) = full_url {
                    match entry_resource {
                        Some(Seen::Resource {
                            patient: Some(patient),
                        }) => scan.facts.patient_entry(&url, patient),
                        _ if url.starts_with("urn:") => scan.other_urns.push(url),
                        _ => {}
                    }
                }
            }
            Role::Identifier | Role::RefIdentifier => {
                if let Some(value) = value {
                    return Ok(Seen::Identifier(Box::new((system, value))));
                }
            }
            Role::ResourceCode if has_text && !has_coding => return Ok(Seen::TextOnlyCode),
            Role::PatientRef => {
                if let Some(reference) = reference {
                    scan.facts.reference(&reference);
                } else if let Some(Seen::Identifier(pair)) = reference_identifier {
                    let (system, value) = *pair;
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

/// The object keys the reader acts on, recognised once per key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    System,
    Code,
    Url,
    ResourceType,
    Id,
    Entry,
    Contained,
    Meta,
    Identifier,
    Resource,
    FullUrl,
    Profile,
    Value,
    Reference,
    Type,
    Coding,
    Text,
    /// `subject`, `patient`, `beneficiary`.
    PatientReference,
    Other,
}

impl KeyKind {
    fn of(key: &str) -> KeyKind {
        // By length, then as a fixed-size array: each comparison is one integer compare,
        // where comparing `&str`s calls memcmp. Most keys of a record are none of these.
        let b = key.as_bytes();
        fn is<const N: usize>(b: &[u8], name: &[u8; N]) -> bool {
            <&[u8; N]>::try_from(b).is_ok_and(|a| a == name)
        }
        match b.len() {
            2 if is(b, b"id") => KeyKind::Id,
            3 if is(b, b"url") => KeyKind::Url,
            4 if is(b, b"code") => KeyKind::Code,
            4 if is(b, b"meta") => KeyKind::Meta,
            4 if is(b, b"type") => KeyKind::Type,
            4 if is(b, b"text") => KeyKind::Text,
            5 if is(b, b"entry") => KeyKind::Entry,
            5 if is(b, b"value") => KeyKind::Value,
            6 if is(b, b"system") => KeyKind::System,
            6 if is(b, b"coding") => KeyKind::Coding,
            7 if is(b, b"fullUrl") => KeyKind::FullUrl,
            7 if is(b, b"profile") => KeyKind::Profile,
            7 if is(b, b"subject") || is(b, b"patient") => KeyKind::PatientReference,
            8 if is(b, b"resource") => KeyKind::Resource,
            9 if is(b, b"contained") => KeyKind::Contained,
            9 if is(b, b"reference") => KeyKind::Reference,
            10 if is(b, b"identifier") => KeyKind::Identifier,
            11 if is(b, b"beneficiary") => KeyKind::PatientReference,
            12 if is(b, b"resourceType") => KeyKind::ResourceType,
            _ => KeyKind::Other,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::fhir::PATIENT_REFERENCE_KEYS;

    #[test]
    fn key_kinds_by_length_match_the_names() {
        for key in PATIENT_REFERENCE_KEYS {
            assert!(KeyKind::of(key) == KeyKind::PatientReference, "{key}");
        }
        for (key, kind) in [
            ("id", KeyKind::Id),
            ("url", KeyKind::Url),
            ("code", KeyKind::Code),
            ("text", KeyKind::Text),
            ("value", KeyKind::Value),
            ("coding", KeyKind::Coding),
            ("profile", KeyKind::Profile),
            ("resource", KeyKind::Resource),
            ("reference", KeyKind::Reference),
            ("identifier", KeyKind::Identifier),
            ("resourceType", KeyKind::ResourceType),
        ] {
            assert!(KeyKind::of(key) == kind, "{key}");
        }
        for other in ["", "ID", "codes", "display", "subjects", "resourcetype"] {
            assert!(KeyKind::of(other) == KeyKind::Other, "{other}");
        }
    }
}
