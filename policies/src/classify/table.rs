//! The code → category table (`data/category-codes.tsv`) and the few fixed
//! signals that are not codes of a table system.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use super::{ClassifyError, CATEGORY_CODES_TSV};
use crate::Category;

/// HL7 v3 Confidentiality (FHIR URI and OID, with and without `urn:oid:`).
const CONFIDENTIALITY: [&str; 4] = [
    "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
    "http://hl7.org/fhir/v3/Confidentiality",
    "urn:oid:2.16.840.1.113883.5.25",
    "2.16.840.1.113883.5.25",
];

/// HL7 v2 table 0074 (diagnostic service section), whose `GE` is "Genetics".
const V2_0074: [&str; 3] = [
    "http://terminology.hl7.org/CodeSystem/v2-0074",
    "urn:oid:2.16.840.1.113883.12.74",
    "2.16.840.1.113883.12.74",
];

/// Codings that carry a category although their system is not a table system:
/// confidentiality `R` (restricted) and `V` (very restricted) say the source
/// restricts the record without saying why, so the gateway cannot know what
/// consent covers it (unclassified); diagnostic service section `GE` is a
/// genetics report or observation. Checked before the table, so a table line
/// cannot weaken them.
pub(crate) fn fixed_signal(system: &str, code: &str) -> Option<Category> {
    match code {
        "R" | "V" if CONFIDENTIALITY.contains(&system) => Some(Category::Unclassified),
        "GE" if V2_0074.contains(&system) => Some(Category::Genetic),
        _ => None,
    }
}

/// Code systems the table knows, by the short name used in the TSV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum System {
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
    pub(crate) fn from_table(name: &str) -> Option<System> {
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
    pub(crate) fn from_uri(uri: &str) -> Option<System> {
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

    /// HL7 OIDs, as CDA writes them in `codeSystem` (no `urn:oid:` prefix).
    pub(crate) fn from_oid(oid: &str) -> Option<System> {
        match oid {
            "2.16.840.1.113883.6.96" => Some(System::Snomed),
            "2.16.840.1.113883.6.1" => Some(System::Loinc),
            "2.16.840.1.113883.6.3" | "2.16.840.1.113883.6.90" => Some(System::Icd10),
            "2.16.840.1.113883.6.88" => Some(System::RxNorm),
            "2.16.840.1.113883.5.4" => Some(System::ActCode),
            "2.16.840.1.113883.6.73" => Some(System::Atc),
            "2.16.840.1.113883.6.281" => Some(System::Hgnc),
            _ => None,
        }
    }

    /// ICD-10 codes are written with or without the dot ("F32.9" / "F329").
    /// Borrows when the code is already normal (the common case), so a lookup
    /// does not allocate.
    pub(crate) fn normalize(self, code: &str) -> Cow<'_, str> {
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
pub(crate) struct Table {
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

    pub(crate) fn parse(src: &str) -> Result<Table, ClassifyError> {
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

    /// The category a coding signals: a fixed signal, else the table's rule.
    pub(crate) fn coding(&self, system_uri: &str, code: &str) -> Option<Category> {
        fixed_signal(system_uri, code).or_else(|| self.lookup(system_uri, code))
    }

    /// The category of `code` in the system named by a FHIR system URI (or `urn:oid:`).
    pub(crate) fn lookup(&self, system_uri: &str, code: &str) -> Option<Category> {
        self.lookup_in(System::from_uri(system_uri)?, code)
    }

    /// The category of `code` in `system`.
    pub(crate) fn lookup_in(&self, system: System, code: &str) -> Option<Category> {
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

pub(crate) static TABLE: LazyLock<Result<Table, ClassifyError>> =
    LazyLock::new(|| Table::parse(CATEGORY_CODES_TSV));
