//! Unit tests of the code table and the FHIR wrapper.

use std::collections::{BTreeSet, HashMap};

use super::table::{System, Table};
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
    let err = classify_fhir_bundle(b"{\"resourceType\":\"Patient\",\"id\":\"secret-id\"}").err();
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
