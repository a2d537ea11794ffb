//! What one JSON value means for the facts, by where it sits (its [`Role`]):
//! the FHIR logic of the two one-pass readers, [`super::scan`] (the byte-level
//! scanner the gateway runs) and [`super::stream`] (serde_json's tokenizer, its
//! fallback). Each reader tokenizes and checks the JSON its own way and calls
//! this module for every key and value, so the two differ only in how they
//! read JSON, which is what their equivalence tests compare.

use std::borrow::Cow;

use super::{genetics_extension, genetics_profile, FhirFacts};
use crate::classify::table::Table;
use crate::Category;

/// State of one one-pass classification that is not the tokenizer's.
pub(crate) struct Walk<'t, 'de> {
    table: &'t Table,
    pub(crate) facts: FhirFacts,
    /// `urn:` fullUrls of non-Patient entries, borrowed where possible.
    other_urns: Vec<Cow<'de, str>>,
}

impl<'t, 'de> Walk<'t, 'de> {
    pub(crate) fn new(table: &'t Table) -> Walk<'t, 'de> {
        Walk {
            table,
            facts: FhirFacts::new(),
            other_urns: Vec::new(),
        }
    }

    /// The facts, once the whole document is read.
    pub(crate) fn finish(self) -> FhirFacts {
        let mut facts = self.facts;
        facts.other_entries(self.other_urns.iter().map(|u| u.as_ref()));
        facts
    }

    /// What any object's `system` + `code` pair and `url` say: a coded category, a genetics
    /// extension.
    #[inline]
    fn coded(
        &mut self,
        system: &Option<Cow<'_, str>>,
        code: &Option<Cow<'_, str>>,
        url: &Option<Cow<'_, str>>,
    ) {
        if let (Some(system), Some(code)) = (system, code) {
            self.coding(system, code);
        }
        if url.as_deref().is_some_and(genetics_extension) {
            self.facts.signal(Category::Genetic);
        }
    }

    fn coding(&mut self, system: &str, code: &str) {
        if let Some(category) = self.table.coding(system, code) {
            if category.is_sensitive() {
                self.facts.matched_codes += 1;
            }
            self.facts.categories.insert(category);
        }
    }

    /// A string value in `role`, unescaped.
    pub(crate) fn string(&mut self, role: Role, capture: bool, value: Cow<'de, str>) -> Seen<'de> {
        if role == Role::Profile && genetics_profile(&value) {
            self.facts.signal(Category::Genetic);
        }
        if capture {
            Seen::Str(value)
        } else {
            Seen::Other
        }
    }
}

/// Where a JSON value sits, as far as the facts are concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
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

    /// The role of the elements of an array in this role (identifiers are
    /// collected by [`Identifiers`]).
    pub(crate) fn element(self) -> Role {
        match self {
            Role::Entries => Role::Entry,
            Role::Contained => Role::ContainedResource,
            Role::Profiles => Role::Profile,
            Role::Identifiers => Role::Identifier,
            _ => Role::Other,
        }
    }
}

/// What a value turned out to be, as far as its parent needs to know.
pub(crate) enum Seen<'de> {
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

/// The elements of an array in the [`Role::Identifiers`] role.
#[derive(Default)]
pub(crate) struct Identifiers(Vec<(Option<String>, String)>);

impl Identifiers {
    pub(crate) fn element(&mut self, seen: Seen<'_>) {
        if let Seen::Identifier(pair) = seen {
            let (system, value) = *pair;
            self.0
                .push((system.map(Cow::into_owned), value.into_owned()));
        }
    }

    pub(crate) fn end<'de>(self) -> Seen<'de> {
        Seen::Identifiers(self.0)
    }
}

/// What the keys of one JSON object have told so far; a reader calls
/// [`Members::child`] for each key, reads its value in that role, hands it to
/// [`Members::value`], and calls [`Members::end`] after the last one.
pub(crate) trait Members<'de> {
    /// The role of the value of key `k`, and whether its string is kept.
    fn child(&self, k: KeyKind) -> (Role, bool);
    /// The value of key `k`, read in the role [`Members::child`] gave it.
    fn value(&mut self, k: KeyKind, seen: Seen<'de>);
    /// The end of the object: its codings, signals, resource and patient
    /// facts go into `walk`; returns what the parent needs to know.
    fn end(self, walk: &mut Walk<'_, 'de>) -> Seen<'de>;
}

/// An object in the [`Role::Other`] role (a Coding, an extension, a
/// CodeableConcept, anything that is not a resource, entry, identifier,
/// reference or meta): only a coding (`system` + `code`) and an extension
/// `url` count there, and a patient reference inside it is read in its own
/// role. The most common object by far; [`Object`] with role `Other` gives
/// the same answers with seventeen fields to set and drop.
#[derive(Default)]
pub(crate) struct Plain<'de> {
    system: Option<Cow<'de, str>>,
    code: Option<Cow<'de, str>>,
    url: Option<Cow<'de, str>>,
}

impl<'de> Members<'de> for Plain<'de> {
    fn child(&self, k: KeyKind) -> (Role, bool) {
        match k {
            KeyKind::System | KeyKind::Code | KeyKind::Url => (Role::Other, true),
            KeyKind::PatientReference => (Role::PatientRef, false),
            _ => (Role::Other, false),
        }
    }

    fn value(&mut self, k: KeyKind, seen: Seen<'de>) {
        match k {
            KeyKind::System => self.system = seen.into_str(),
            KeyKind::Code => self.code = seen.into_str(),
            KeyKind::Url => self.url = seen.into_str(),
            // As in `Object::value`: skip the drop glue of what holds no heap.
            _ if matches!(seen, Seen::Other | Seen::Array) => std::mem::forget(seen),
            _ => {}
        }
    }

    fn end(self, walk: &mut Walk<'_, 'de>) -> Seen<'de> {
        walk.coded(&self.system, &self.code, &self.url);
        Seen::Other
    }
}

/// One JSON object being read in any role but [`Role::Other`] (there
/// [`Plain`] reads it, with the same answers).
pub(crate) struct Object<'de> {
    role: Role,
    system: Option<Cow<'de, str>>,
    code: Option<Cow<'de, str>>,
    url: Option<Cow<'de, str>>,
    resource_type: Option<Cow<'de, str>>,
    id: Option<Cow<'de, str>>,
    identifiers: Vec<(Option<String>, String)>,
    value: Option<Cow<'de, str>>,
    full_url: Option<Cow<'de, str>>,
    reference: Option<Cow<'de, str>>,
    reference_type: Option<Cow<'de, str>>,
    reference_identifier: Option<Seen<'de>>,
    entry_resource: Option<Seen<'de>>,
    text_only_code: bool,
    has_coding: bool,
    has_text: bool,
    bad_entries: bool,
}

impl<'de> Object<'de> {
    pub(crate) fn new(role: Role) -> Object<'de> {
        Object {
            role,
            system: None,
            code: None,
            url: None,
            resource_type: None,
            id: None,
            identifiers: Vec::new(),
            value: None,
            full_url: None,
            reference: None,
            reference_type: None,
            reference_identifier: None,
            entry_resource: None,
            text_only_code: false,
            has_coding: false,
            has_text: false,
            bad_entries: false,
        }
    }
}

impl<'de> Members<'de> for Object<'de> {
    fn child(&self, k: KeyKind) -> (Role, bool) {
        let resource = self.role.is_resource();
        match (self.role, k) {
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
                if resource && self.resource_type.as_deref().is_none_or(|k| k == "Patient") =>
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
        }
    }

    fn value(&mut self, k: KeyKind, seen: Seen<'de>) {
        let resource = self.role.is_resource();
        match (self.role, k) {
            // The common case. A value read in the Other role without capture is never a
            // heap-holding `Seen`; skipping its drop glue here is measurable on large records.
            (_, KeyKind::Other) if matches!(seen, Seen::Other | Seen::Array) => {
                std::mem::forget(seen);
            }
            (_, KeyKind::Other) => {}
            (_, KeyKind::Code) if resource => match seen {
                Seen::TextOnlyCode => self.text_only_code = true,
                seen => self.code = seen.into_str(),
            },
            (Role::ResourceCode, KeyKind::Coding) => self.has_coding = true,
            (Role::ResourceCode, KeyKind::Text) => self.has_text = true,
            (_, KeyKind::System) => self.system = seen.into_str(),
            (_, KeyKind::Code) => self.code = seen.into_str(),
            (_, KeyKind::Url) => self.url = seen.into_str(),
            (_, KeyKind::ResourceType) if resource => self.resource_type = seen.into_str(),
            (_, KeyKind::Id) if resource => self.id = seen.into_str(),
            (_, KeyKind::Entry) if resource => self.bad_entries = !matches!(seen, Seen::Array),
            (_, KeyKind::Identifier) if resource => {
                if let Seen::Identifiers(values) = seen {
                    self.identifiers = values;
                }
            }
            (Role::Entry, KeyKind::Resource) => self.entry_resource = Some(seen),
            (Role::Entry, KeyKind::FullUrl) => self.full_url = seen.into_str(),
            (Role::Identifier | Role::RefIdentifier, KeyKind::Value) => {
                self.value = seen.into_str()
            }
            (Role::PatientRef, KeyKind::Reference) => self.reference = seen.into_str(),
            (Role::PatientRef, KeyKind::Type) => self.reference_type = seen.into_str(),
            (Role::PatientRef, KeyKind::Identifier) => self.reference_identifier = Some(seen),
            _ => {}
        }
    }

    fn end(self, walk: &mut Walk<'_, 'de>) -> Seen<'de> {
        walk.coded(&self.system, &self.code, &self.url);
        let role = self.role;
        match role {
            Role::Root => {
                let resource_type = self.resource_type.as_deref();
                let is_bundle = resource_type == Some("Bundle");
                walk.facts.bad_entries = is_bundle && self.bad_entries;
                walk.facts.root_type = resource_type.map(str::to_owned);
                if let Some(kind) = resource_type.filter(|_| !is_bundle) {
                    walk.facts.resource(
                        kind,
                        self.id.as_deref(),
                        self.identifiers,
                        self.text_only_code,
                        false,
                    );
                }
            }
            Role::Resource | Role::ContainedResource => {
                if let Some(kind) = self.resource_type.as_deref() {
                    let patient = walk.facts.resource(
                        kind,
                        self.id.as_deref(),
                        self.identifiers,
                        self.text_only_code,
                        role == Role::ContainedResource,
                    );
                    return Seen::Resource { patient };
                }
            }
            Role::Entry => {
                if let Some(url) = self.full_url {
                    match self.entry_resource {
                        Some(Seen::Resource {
                            patient: Some(patient),
                        }) => walk.facts.patient_entry(&url, patient),
                        _ if url.starts_with("urn:") => walk.other_urns.push(url),
                        _ => {}
                    }
                }
            }
            Role::Identifier | Role::RefIdentifier => {
                if let Some(value) = self.value {
                    return Seen::Identifier(Box::new((self.system, value)));
                }
            }
            Role::ResourceCode if self.has_text && !self.has_coding => return Seen::TextOnlyCode,
            Role::PatientRef => {
                if let Some(reference) = self.reference {
                    walk.facts.reference(&reference);
                } else if let Some(Seen::Identifier(pair)) = self.reference_identifier {
                    let (system, value) = *pair;
                    if self
                        .reference_type
                        .as_deref()
                        .is_none_or(|t| t == "Patient")
                    {
                        walk.facts
                            .identifier_references
                            .insert((system.map(Cow::into_owned), value.into_owned()));
                    }
                }
            }
            _ => {}
        }
        Seen::Other
    }
}

/// The object keys the readers act on, recognised once per key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
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
    /// A bit of its own for each kind that is a single key name, for the
    /// repeated-key check; 0 for `Other` and `PatientReference` (several
    /// names), which are compared by name.
    pub(crate) fn bit(self) -> u32 {
        match self {
            KeyKind::Other | KeyKind::PatientReference => 0,
            k => 1 << (k as u32),
        }
    }

    /// The kind of an (unescaped) key.
    pub(crate) fn of(key: &[u8]) -> KeyKind {
        // By length, then as a fixed-size array: each comparison is one integer compare,
        // where comparing `&str`s calls memcmp. Most keys of a record are none of these.
        let b = key;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::fhir::PATIENT_REFERENCE_KEYS;

    #[test]
    fn key_kinds_by_length_match_the_names() {
        for key in PATIENT_REFERENCE_KEYS {
            assert!(
                KeyKind::of(key.as_bytes()) == KeyKind::PatientReference,
                "{key}"
            );
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
            assert!(KeyKind::of(key.as_bytes()) == kind, "{key}");
        }
        for other in ["", "ID", "codes", "display", "subjects", "resourcetype"] {
            assert!(KeyKind::of(other.as_bytes()) == KeyKind::Other, "{other}");
        }
    }
}
