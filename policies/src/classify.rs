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

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::LazyLock;

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
}

impl System {
    fn from_table(name: &str) -> Option<System> {
        match name {
            "snomed" => Some(System::Snomed),
            "loinc" => Some(System::Loinc),
            "icd10" => Some(System::Icd10),
            "rxnorm" => Some(System::RxNorm),
            "actcode" => Some(System::ActCode),
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
            _ => None,
        }
    }

    /// ICD-10 codes are written with or without the dot ("F32.9" / "F329").
    fn normalize(self, code: &str) -> String {
        match self {
            System::Icd10 => code
                .chars()
                .filter(|c| *c != '.')
                .map(|c| c.to_ascii_uppercase())
                .collect(),
            _ => code.trim().to_owned(),
        }
    }
}

struct Table {
    exact: HashMap<(System, String), Category>,
    /// Prefix rules, longest first, so the most specific matches first.
    prefixes: Vec<(System, String, Category)>,
}

impl Table {
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
            let code = system.normalize(code);
            if code.is_empty() || code.contains('*') {
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
        Ok(Table { exact, prefixes })
    }

    fn lookup(&self, system_uri: &str, code: &str) -> Option<Category> {
        let system = System::from_uri(system_uri)?;
        let code = system.normalize(code);
        if let Some(category) = self.exact.get(&(system, code.clone())) {
            return Some(*category);
        }
        self.prefixes
            .iter()
            .find(|(s, prefix, _)| *s == system && code.starts_with(prefix.as_str()))
            .map(|(_, _, category)| *category)
    }
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
pub fn classify_fhir_bundle(bytes: &[u8]) -> Result<BundleFacts, ClassifyError> {
    let table = TABLE.as_ref().map_err(Clone::clone)?;
    let bundle: Value = serde_json::from_slice(bytes).map_err(|e| ClassifyError::NotJson {
        line: e.line(),
        column: e.column(),
    })?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ClassifyError::NotBundle);
    }
    let entries = match bundle.get("entry") {
        None => &[][..],
        Some(Value::Array(entries)) => entries.as_slice(),
        Some(_) => return Err(ClassifyError::BadEntries),
    };

    let mut facts = BundleFacts {
        patient_ids: BTreeSet::new(),
        resource_types: BTreeSet::new(),
        categories: BTreeSet::from([Category::General]),
        matched_codes: 0,
    };
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
}
