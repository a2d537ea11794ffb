//! Data-category classification of FHIR records from the codes they contain.
//!
//! The code → category table is the reviewable data file
//! `data/category-codes.tsv` (sources cited in its header), embedded at build
//! time. Rules are exact codes or prefixes (`F1*`); the most specific rule
//! wins, so an exact or longer-prefix entry with category `general` carves an
//! exception out of a prefix rule.
//!
//! Results always contain [`Category::General`]: every record carries general
//! data (demographics, encounters), and sensitive categories are added on top.
//! The gateway unions these with the categories the sender declared; the
//! stricter (the union) wins.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::LazyLock;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::Category;

/// The embedded code table.
pub const CATEGORY_CODES_TSV: &str = include_str!("../data/category-codes.tsv");

/// Errors classifying a record. Never contains record content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("peer record is not JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("peer record is not a FHIR R4 Bundle")]
    NotBundle,
    #[error("peer record: Bundle.entry is not an array")]
    BadEntries,
    /// JSON parsers disagree on repeated properties (most keep the last), so a repeated
    /// `code` could hide a sensitive one from this check; FHIR forbids repeats anyway.
    #[error("peer record repeats a JSON property within one object (FHIR forbids this)")]
    RepeatedKey,
    #[error("category code table line {line}: {problem}")]
    Table { line: usize, problem: String },
}

/// What the gateway needs to know about a FHIR bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleFacts {
    /// Ids of the Patient resources in the bundle and their identifiers' values.
    pub patient_ids: BTreeSet<String>,
    /// Resource types of the bundle entries.
    pub resource_types: BTreeSet<String>,
    /// Always contains `General`, plus every sensitive category found.
    pub categories: BTreeSet<Category>,
    /// Number of codings that matched a sensitive entry of the table.
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

/// Code systems the table knows, by the short name used in the TSV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum System {
    Snomed,
    Loinc,
    Icd10,
    RxNorm,
    ActCode,
    /// WHO Anatomical Therapeutic Chemical classification (medication classes).
    Atc,
    /// HUGO Gene Nomenclature Committee gene symbols and ids.
    Hgnc,
}

impl System {
    fn from_table(name: &str) -> Option<System> {
        match name {
            "snomed" => Some(System::Snomed),
            "loinc" => Some(System::Loinc),
            "icd10" => Some(System::Icd10),
            "rxnorm" => Some(System::RxNorm),
            "actcode" => Some(System::ActCode),
            "atc" => Some(System::Atc),
            "hgnc" => Some(System::Hgnc),
            _ => None,
        }
    }

    /// FHIR system URIs (and HL7 OIDs) for each code system.
    fn from_uri(uri: &str) -> Option<System> {
        match uri {
            "http://snomed.info/sct" | "urn:oid:2.16.840.1.113883.6.96" => Some(System::Snomed),
            "http://loinc.org" | "urn:oid:2.16.840.1.113883.6.1" => Some(System::Loinc),
            "http://hl7.org/fhir/sid/icd-10"
            | "http://hl7.org/fhir/sid/icd-10-cm"
            | "urn:oid:2.16.840.1.113883.6.3"
            | "urn:oid:2.16.840.1.113883.6.90" => Some(System::Icd10),
            "http://www.nlm.nih.gov/research/umls/rxnorm" | "urn:oid:2.16.840.1.113883.6.88" => {
                Some(System::RxNorm)
            }
            "http://terminology.hl7.org/CodeSystem/v3-ActCode"
            | "http://hl7.org/fhir/v3/ActCode"
            | "urn:oid:2.16.840.1.113883.5.4" => Some(System::ActCode),
            "http://www.whocc.no/atc" | "urn:oid:2.16.840.1.113883.6.73" => Some(System::Atc),
            "http://www.genenames.org"
            | "http://www.genenames.org/geneId"
            | "urn:oid:2.16.840.1.113883.6.281" => Some(System::Hgnc),
            _ => None,
        }
    }

    /// ICD-10 codes are written with or without the dot ("F32.9" / "F329").
    /// Borrows when the code is already normal (the common case), so a lookup
    /// does not allocate.
    fn normalize(self, code: &str) -> Cow<'_, str> {
        match self {
            System::Icd10 => {
                if code.bytes().any(|b| b == b'.' || b.is_ascii_lowercase()) {
                    Cow::Owned(
                        code.chars()
                            .filter(|c| *c != '.')
                            .map(|c| c.to_ascii_uppercase())
                            .collect(),
                    )
                } else {
                    Cow::Borrowed(code)
                }
            }
            _ => Cow::Borrowed(code.trim()),
        }
    }
}

/// The rules of one code system.
#[derive(Default)]
struct Rules {
    exact: HashMap<String, Category>,
    /// Prefix rules, longest first, so the most specific matches first.
    prefixes: Vec<(String, Category)>,
}

/// Rules split by system, so a lookup hashes a borrowed `&str` and scans only
/// its own system's prefixes.
#[derive(Default)]
struct Table {
    snomed: Rules,
    loinc: Rules,
    icd10: Rules,
    rxnorm: Rules,
    actcode: Rules,
    atc: Rules,
    hgnc: Rules,
}

impl Table {
    fn rules(&self, system: System) -> &Rules {
        match system {
            System::Snomed => &self.snomed,
            System::Loinc => &self.loinc,
            System::Icd10 => &self.icd10,
            System::RxNorm => &self.rxnorm,
            System::ActCode => &self.actcode,
            System::Atc => &self.atc,
            System::Hgnc => &self.hgnc,
        }
    }

    fn rules_mut(&mut self, system: System) -> &mut Rules {
        match system {
            System::Snomed => &mut self.snomed,
            System::Loinc => &mut self.loinc,
            System::Icd10 => &mut self.icd10,
            System::RxNorm => &mut self.rxnorm,
            System::ActCode => &mut self.actcode,
            System::Atc => &mut self.atc,
            System::Hgnc => &mut self.hgnc,
        }
    }

    fn parse(src: &str) -> Result<Table, ClassifyError> {
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        let mut seen_prefix: HashMap<(System, String), Category> = HashMap::new();
        for (index, raw) in src.lines().enumerate() {
            let line = index + 1;
            let problem = |problem: String| ClassifyError::Table { line, problem };
            if raw.trim().is_empty() || raw.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = raw.split('\t').collect();
            let [system, code, category, _display, source] = fields.as_slice() else {
                return Err(problem(format!(
                    "expected 5 tab-separated fields, found {}",
                    fields.len()
                )));
            };
            if *system == "system" {
                continue; // header row
            }
            let system = System::from_table(system)
                .ok_or_else(|| problem(format!("unknown system {system:?}")))?;
            let category: Category = category.parse().map_err(|e| problem(format!("{e}")))?;
            if source.trim().is_empty() {
                return Err(problem("missing source".to_owned()));
            }
            let (code, is_prefix) = match code.strip_suffix('*') {
                Some(prefix) => (prefix, true),
                None => (*code, false),
            };
            let code = system.normalize(code).into_owned();
            // `*` alone is "any code of this system" (an empty prefix, tried last): every HGNC
            // gene code is genetic information, whatever the gene.
            let any_code = is_prefix && code.is_empty() && raw_code_is_star(&fields);
            if (code.is_empty() && !any_code) || code.contains('*') {
                return Err(problem("empty code or misplaced '*'".to_owned()));
            }
            let map = if is_prefix {
                &mut seen_prefix
            } else {
                &mut exact
            };
            if let Some(previous) = map.insert((system, code.clone()), category) {
                if previous != category {
                    return Err(problem(format!(
                        "code listed twice with categories {previous} and {category}"
                    )));
                }
            }
        }
        for ((system, code), category) in seen_prefix {
            prefixes.push((system, code, category));
        }
        prefixes.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.1.cmp(&b.1)));
        let mut table = Table::default();
        for ((system, code), category) in exact {
            table.rules_mut(system).exact.insert(code, category);
        }
        // Pushed in global order, so each system's list stays longest first.
        for (system, code, category) in prefixes {
            table.rules_mut(system).prefixes.push((code, category));
        }
        Ok(table)
    }

    fn lookup(&self, system_uri: &str, code: &str) -> Option<Category> {
        let system = System::from_uri(system_uri)?;
        let rules = self.rules(system);
        let code = system.normalize(code);
        if let Some(category) = rules.exact.get(code.as_ref()) {
            return Some(*category);
        }
        rules
            .prefixes
            .iter()
            .find(|(prefix, _)| code.starts_with(prefix.as_str()))
            .map(|(_, category)| *category)
    }
}

/// The code field of a table line is exactly `*` (after trimming).
fn raw_code_is_star(fields: &[&str]) -> bool {
    fields.get(1).is_some_and(|code| code.trim() == "*")
}

static TABLE: LazyLock<Result<Table, ClassifyError>> =
    LazyLock::new(|| Table::parse(CATEGORY_CODES_TSV));

/// Checks that the embedded table parses (the engine refuses to start if not).
pub fn check_table() -> Result<(), ClassifyError> {
    TABLE.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Categories of a set of codings `(system URI, code)`. Always contains
/// `General`. Fails closed: if the embedded table were broken, every category
/// is returned.
pub fn classify_codes<'a>(codings: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeSet<Category> {
    let mut categories = BTreeSet::from([Category::General]);
    match TABLE.as_ref() {
        Ok(table) => {
            for (system, code) in codings {
                if let Some(category) = table.lookup(system, code) {
                    categories.insert(category);
                }
            }
        }
        Err(_) => categories.extend(Category::ALL),
    }
    categories
}

/// Classifies a FHIR R4 Bundle (JSON). Every coding anywhere in the bundle
/// counts (code, category, reasonCode, value, meta.security, contained
/// resources …), because a sensitive code is sensitive wherever it appears.
///
/// Reads the JSON in one pass without building a tree: strings are borrowed
/// from `bytes` (copied only when escaped and of interest). Results are those
/// of [`classify_fhir_bundle_reference`], the tree-based original, except that a
/// document with a repeated object key is refused: JSON parsers differ on which
/// value wins (a tree keeps the last), so a repeated `code` could otherwise hide
/// a sensitive code from this check while a downstream parser sees it.
pub fn classify_fhir_bundle(bytes: &[u8]) -> Result<BundleFacts, ClassifyError> {
    let table = TABLE.as_ref().map_err(Clone::clone)?;
    let mut scan = Scan {
        table,
        facts: BundleFacts::empty(),
        keys: Vec::new(),
        duplicate_key: false,
        root: None,
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
    match scan.root {
        Some(Root {
            is_bundle: true,
            entry,
        }) => match entry {
            EntryShape::NotArray => Err(ClassifyError::BadEntries),
            EntryShape::Missing | EntryShape::Array => Ok(scan.facts),
        },
        _ => Err(ClassifyError::NotBundle),
    }
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

/// The original tree-based classifier, kept as the reference the streaming
/// one is tested and benchmarked against, and as its fallback for repeated
/// keys. Not part of the API.
#[doc(hidden)]
pub fn classify_fhir_bundle_reference(bytes: &[u8]) -> Result<BundleFacts, ClassifyError> {
    let table = TABLE.as_ref().map_err(Clone::clone)?;
    classify_with_tree(table, bytes)
}

fn not_json(e: &serde_json::Error) -> ClassifyError {
    ClassifyError::NotJson {
        line: e.line(),
        column: e.column(),
    }
}

impl BundleFacts {
    fn empty() -> BundleFacts {
        BundleFacts {
            patient_ids: BTreeSet::new(),
            resource_types: BTreeSet::new(),
            categories: BTreeSet::from([Category::General]),
            matched_codes: 0,
        }
    }
}

/// State of one streaming classification.
struct Scan<'t, 'de> {
    table: &'t Table,
    facts: BundleFacts,
    /// Keys of the objects being read, outermost first; each object checks
    /// its new keys against its own tail of this stack.
    keys: Vec<Cow<'de, str>>,
    /// Set (and the parse aborted) on a repeated key: the tree semantics
    /// (last value wins, earlier values vanish) need the tree.
    duplicate_key: bool,
    /// What the top-level object said; `None` if the document is no object.
    root: Option<Root>,
}

impl Scan<'_, '_> {
    fn coding(&mut self, system: &str, code: &str) {
        if let Some(category) = self.table.lookup(system, code) {
            if category.is_sensitive() {
                self.facts.matched_codes += 1;
            }
            self.facts.categories.insert(category);
        }
    }
}

fn insert_str(set: &mut BTreeSet<String>, value: &str) {
    // Most resource types repeat: look up before allocating.
    if !set.contains(value) {
        set.insert(value.to_owned());
    }
}

struct Root {
    is_bundle: bool,
    entry: EntryShape,
}

enum EntryShape {
    Missing,
    Array,
    NotArray,
}

/// Where a JSON value sits, as far as [`BundleFacts`] is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The document.
    Root,
    /// `Bundle.entry`.
    Entries,
    /// `Bundle.entry[i]`.
    Entry,
    /// `Bundle.entry[i].resource`.
    Resource,
    /// `Bundle.entry[i].resource.identifier` (of a Patient, or not yet known).
    Identifiers,
    /// `Bundle.entry[i].resource.identifier[j]`.
    Identifier,
    /// Anywhere else: only codings matter.
    Other,
}

/// What a value turned out to be, as far as its parent needs to know.
enum Seen<'de> {
    /// A string its parent asked for (`capture`).
    Str(Cow<'de, str>),
    Array,
    /// The string `value`s of an `Identifiers` array.
    Identifiers(Vec<Cow<'de, str>>),
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

/// Reads one JSON value of any shape.
struct Node<'a, 't, 'de> {
    scan: &'a mut Scan<'t, 'de>,
    role: Role,
    /// Whether the parent wants this value if it is a string.
    capture: bool,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, 'de> {
    type Value = Seen<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Seen<'de>, D::Error> {
        // `deserialize_any`, as `Value` does: same syntax checks, number
        // parsing, nesting limit and error positions.
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, 'de> {
    type Value = Seen<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
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

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Seen<'de>, E> {
        Ok(if self.capture {
            Seen::Str(Cow::Borrowed(v))
        } else {
            Seen::Other
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Seen<'de>, E> {
        // Escaped string, unescaped into the parser's scratch buffer.
        Ok(if self.capture {
            Seen::Str(Cow::Owned(v.to_owned()))
        } else {
            Seen::Other
        })
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Seen<'de>, E> {
        Ok(if self.capture {
            Seen::Str(Cow::Owned(v))
        } else {
            Seen::Other
        })
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
                    if let Seen::Str(value) = seen {
                        values.push(value);
                    }
                }
                Ok(Seen::Identifiers(values))
            }
            role => {
                let role = if role == Role::Entries {
                    Role::Entry
                } else {
                    Role::Other
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
        let mut resource_type: Option<Cow<'de, str>> = None;
        let mut id = None;
        let mut identifiers = None;
        let mut value = None;
        let mut entry = EntryShape::Missing;
        while let Some(key) = map.next_key_seed(Key)? {
            if scan.keys.iter().skip(start).any(|k| *k == key) {
                scan.duplicate_key = true;
                return Err(de::Error::custom("repeated object key"));
            }
            let (child, capture) = match (role, key.as_ref()) {
                (_, "system" | "code") => (Role::Other, true),
                (Role::Root | Role::Resource, "resourceType") => (Role::Other, true),
                (Role::Root, "entry") => (Role::Entries, false),
                (Role::Entry, "resource") => (Role::Resource, false),
                (Role::Resource, "id") => (Role::Other, true),
                // Identifiers matter only for a Patient; skip collecting them
                // when the resource type is already known to be another.
                (Role::Resource, "identifier")
                    if resource_type.as_deref().is_none_or(|k| k == "Patient") =>
                {
                    (Role::Identifiers, false)
                }
                (Role::Identifier, "value") => (Role::Other, true),
                _ => (Role::Other, false),
            };
            let seen = map.next_value_seed(Node {
                scan: &mut *scan,
                role: child,
                capture,
            })?;
            match (role, key.as_ref()) {
                (_, "system") => system = seen.into_str(),
                (_, "code") => code = seen.into_str(),
                (Role::Root | Role::Resource, "resourceType") => resource_type = seen.into_str(),
                (Role::Root, "entry") => {
                    entry = match seen {
                        Seen::Array => EntryShape::Array,
                        _ => EntryShape::NotArray,
                    }
                }
                (Role::Resource, "id") => id = seen.into_str(),
                (Role::Resource, "identifier") => {
                    identifiers = match seen {
                        Seen::Identifiers(values) => Some(values),
                        _ => None,
                    }
                }
                (Role::Identifier, "value") => value = seen.into_str(),
                _ => {}
            }
            scan.keys.push(key);
        }
        scan.keys.truncate(start);

        if let (Some(system), Some(code)) = (system, code) {
            scan.coding(&system, &code);
        }
        match role {
            Role::Root => {
                scan.root = Some(Root {
                    is_bundle: resource_type.as_deref() == Some("Bundle"),
                    entry,
                });
            }
            Role::Resource => {
                if let Some(kind) = resource_type {
                    insert_str(&mut scan.facts.resource_types, &kind);
                    if kind == "Patient" {
                        for patient_id in id.into_iter().chain(identifiers.into_iter().flatten()) {
                            insert_str(&mut scan.facts.patient_ids, &patient_id);
                        }
                    }
                }
            }
            Role::Identifier => return Ok(value.map_or(Seen::Other, Seen::Str)),
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

/// The original implementation: parse into a `Value` tree, then walk it.
fn classify_with_tree(table: &Table, bytes: &[u8]) -> Result<BundleFacts, ClassifyError> {
    let bundle: Value = serde_json::from_slice(bytes).map_err(|e| not_json(&e))?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ClassifyError::NotBundle);
    }
    let entries = match bundle.get("entry") {
        None => &[][..],
        Some(Value::Array(entries)) => entries.as_slice(),
        Some(_) => return Err(ClassifyError::BadEntries),
    };

    let mut facts = BundleFacts::empty();
    for resource in entries.iter().filter_map(|e| e.get("resource")) {
        let Some(kind) = resource.get("resourceType").and_then(Value::as_str) else {
            continue;
        };
        facts.resource_types.insert(kind.to_owned());
        if kind == "Patient" {
            if let Some(id) = resource.get("id").and_then(Value::as_str) {
                facts.patient_ids.insert(id.to_owned());
            }
            for identifier in resource
                .get("identifier")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(value) = identifier.get("value").and_then(Value::as_str) {
                    facts.patient_ids.insert(value.to_owned());
                }
            }
        }
    }
    // serde_json caps nesting at 128 levels, which bounds this walk's depth.
    visit_codings(&bundle, &mut |system, code| {
        if let Some(category) = table.lookup(system, code) {
            if category.is_sensitive() {
                facts.matched_codes += 1;
            }
            facts.categories.insert(category);
        }
    });
    Ok(facts)
}

/// Calls `f(system, code)` for every object with string `system` and `code`
/// members (a FHIR Coding, wherever it sits).
fn visit_codings(value: &Value, f: &mut impl FnMut(&str, &str)) {
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(system)), Some(Value::String(code))) =
                (map.get("system"), map.get("code"))
            {
                f(system, code);
            }
            for v in map.values() {
                visit_codings(v, f);
            }
        }
        Value::Array(items) => {
            for v in items {
                visit_codings(v, f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNOMED: &str = "http://snomed.info/sct";
    const ICD10: &str = "http://hl7.org/fhir/sid/icd-10-cm";

    #[test]
    fn embedded_table_parses() {
        assert_eq!(check_table(), Ok(()));
    }

    #[test]
    fn prefix_and_exception_rules() {
        let one =
            |system: &'static str, code: &'static str| classify_codes([(system, code)].into_iter());
        assert!(one(ICD10, "F10.20").contains(&Category::SubstanceUse));
        assert!(one(ICD10, "F1020").contains(&Category::SubstanceUse));
        assert!(one(ICD10, "F32.9").contains(&Category::MentalHealth));
        assert!(one(ICD10, "B20").contains(&Category::HivSti));
        assert!(one(ICD10, "A54.0").contains(&Category::HivSti));
        assert!(one(ICD10, "O04.5").contains(&Category::ReproductiveHealth));
        // Nicotine dependence is carved out of the F1* substance-use rule.
        assert_eq!(one(ICD10, "F17.210"), BTreeSet::from([Category::General]));
        // O09 (supervision of high-risk pregnancy) is not in O00-O08.
        assert_eq!(one(ICD10, "O09.90"), BTreeSet::from([Category::General]));
        // Unknown systems never match, even with a listed code.
        assert_eq!(
            one("http://example.org/codes", "47505003"),
            BTreeSet::from([Category::General])
        );
        assert!(one(SNOMED, "47505003").contains(&Category::MentalHealth));
    }

    #[test]
    fn table_errors_name_the_line() {
        let bad = "system\tcode\tcategory\tdisplay\tsource\nsnomed\t1\tnope\tx\ty\n";
        let err = Table::parse(bad).err();
        assert!(
            matches!(err, Some(ClassifyError::Table { line: 2, .. })),
            "{err:?}"
        );
        let short = "# c\nloinc\t1-1\tgeneral\n";
        assert!(matches!(
            Table::parse(short).err(),
            Some(ClassifyError::Table { line: 2, .. })
        ));
        let clash = "loinc\t1-1\tgeneral\td\ts\nloinc\t1-1\tgenetic\td\ts\n";
        assert!(matches!(
            Table::parse(clash).err(),
            Some(ClassifyError::Table { line: 2, .. })
        ));
    }

    #[test]
    fn rejects_non_bundles_without_echoing_content() {
        let err =
            classify_fhir_bundle(b"{\"resourceType\":\"Patient\",\"id\":\"secret-id\"}").err();
        assert_eq!(err, Some(ClassifyError::NotBundle));
        let err = classify_fhir_bundle(b"secret-id not json").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("not JSON"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        let err = classify_fhir_bundle(b"{\"resourceType\":\"Bundle\",\"entry\":{}}").err();
        assert_eq!(err, Some(ClassifyError::BadEntries));
    }

    #[test]
    fn atc_hgnc_systems_and_any_code_rule() {
        let src = "hgnc\t*\tgenetic\tany gene\tHGNC\n\
                   atc\tJ05AR*\thiv-sti\tantiretroviral combinations\tWHO ATC\n\
                   actcode\tSDV\tabuse-violence\tsexual and domestic violence\tHL7 v3 ActCode\n";
        let table = Table::parse(src).unwrap();
        for uri in [
            "http://www.genenames.org",
            "http://www.genenames.org/geneId",
            "urn:oid:2.16.840.1.113883.6.281",
        ] {
            assert_eq!(
                table.lookup(uri, "HGNC:1100"),
                Some(Category::Genetic),
                "{uri}"
            );
        }
        for uri in ["http://www.whocc.no/atc", "urn:oid:2.16.840.1.113883.6.73"] {
            assert_eq!(
                table.lookup(uri, "J05AR03"),
                Some(Category::HivSti),
                "{uri}"
            );
            assert_eq!(table.lookup(uri, "J05AB01"), None, "{uri}");
        }
        assert_eq!(
            table.lookup("http://terminology.hl7.org/CodeSystem/v3-ActCode", "SDV"),
            Some(Category::AbuseViolence)
        );
        // `*` is only allowed alone; an empty code or a `*` inside a code is still an error.
        for bad in [
            "hgnc\t\tgenetic\td\ts\n",
            "hgnc\t**\tgenetic\td\ts\n",
            "atc\tJ*5\tgenetic\td\ts\n",
        ] {
            assert!(
                matches!(
                    Table::parse(bad).err(),
                    Some(ClassifyError::Table { line: 1, .. })
                ),
                "{bad:?}"
            );
        }
    }

    /// The table as it was before it was split by system (owned normalization,
    /// one global prefix list), for comparison. Built once: re-reading the table
    /// for every lookup made the comparison quadratic in the table's size.
    struct BeforeSplit {
        exact: HashMap<(System, String), Category>,
        prefixes: Vec<(System, String, Category)>,
    }

    fn normalize_before_split(system: System, code: &str) -> String {
        match system {
            System::Icd10 => code
                .chars()
                .filter(|c| *c != '.')
                .map(|c| c.to_ascii_uppercase())
                .collect(),
            _ => code.trim().to_owned(),
        }
    }

    impl BeforeSplit {
        fn parse(src: &str) -> BeforeSplit {
            let mut exact = HashMap::new();
            let mut prefixes = Vec::new();
            for line in src
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            {
                let fields: Vec<&str> = line.split('\t').collect();
                let Some(system) = System::from_table(fields[0]) else {
                    continue; // header
                };
                let category: Category = fields[2].parse().unwrap();
                match fields[1].strip_suffix('*') {
                    Some(p) => prefixes.push((system, normalize_before_split(system, p), category)),
                    None => {
                        exact.insert(
                            (system, normalize_before_split(system, fields[1])),
                            category,
                        );
                    }
                }
            }
            prefixes.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.1.cmp(&b.1)));
            BeforeSplit { exact, prefixes }
        }

        fn lookup(&self, system_uri: &str, code: &str) -> Option<Category> {
            let system = System::from_uri(system_uri)?;
            let code = normalize_before_split(system, code);
            if let Some(category) = self.exact.get(&(system, code.clone())) {
                return Some(*category);
            }
            self.prefixes
                .iter()
                .find(|(s, prefix, _)| *s == system && code.starts_with(prefix.as_str()))
                .map(|(_, _, category)| *category)
        }
    }

    #[test]
    fn split_table_lookup_matches_the_global_one() {
        let table = Table::parse(CATEGORY_CODES_TSV).unwrap();
        let before = BeforeSplit::parse(CATEGORY_CODES_TSV);
        let uris = [
            SNOMED,
            ICD10,
            "http://hl7.org/fhir/sid/icd-10",
            "urn:oid:2.16.840.1.113883.6.90",
            "http://loinc.org",
            "http://www.nlm.nih.gov/research/umls/rxnorm",
            "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "http://example.org/codes",
        ];
        let mut codes: Vec<String> = Vec::new();
        for line in CATEGORY_CODES_TSV.lines().filter(|l| !l.starts_with('#')) {
            let Some(code) = line.split('\t').nth(1) else {
                continue;
            };
            let code = code.trim_end_matches('*');
            if code.is_empty() {
                continue; // `*`: any code of the system, checked in its own test
            }
            for variant in [
                code.to_owned(),
                code.to_lowercase(),
                format!(" {code} "),
                format!("{code}.1"),
                format!("{code}9"),
                code.chars().take(code.len().saturating_sub(1)).collect(),
                code.replacen('.', "", 1),
                format!("{}.{}", &code[..1], &code[1..]),
            ] {
                codes.push(variant);
            }
        }
        codes.extend(["", " ", ".", "f17.210", "F17.2", "O09.90", "O0"].map(String::from));
        let mut matched = 0;
        for uri in uris {
            for code in &codes {
                let want = before.lookup(uri, code);
                assert_eq!(table.lookup(uri, code), want, "{uri} {code:?}");
                matched += usize::from(want.is_some());
            }
        }
        assert!(matched > 200, "{matched}");
    }
}
