//! The reference FHIR reader: parse into a `serde_json::Value` tree, then
//! walk it. Slower than [`super::stream`] and kept only as the independent
//! implementation the streaming one is tested and benchmarked against (on a
//! repeated key the tree keeps the last value, where the stream refuses).

use serde_json::{Map, Value};

use super::{genetics_extension, genetics_profile, FhirFacts, PATIENT_REFERENCE_KEYS};
use crate::classify::table::Table;
use crate::classify::{not_json, ClassifyError};
use crate::Category;

/// Reads one FHIR JSON document (BOM already stripped).
pub(crate) fn read(table: &Table, bytes: &[u8]) -> Result<FhirFacts, ClassifyError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| not_json(&e))?;
    let mut facts = FhirFacts::new();
    // serde_json caps nesting at 128 levels, which bounds this walk's depth.
    codings(table, &doc, &mut facts);
    let mut other_urns = Vec::new();
    if let Value::Object(map) = &doc {
        let kind = map.get("resourceType").and_then(Value::as_str);
        facts.root_type = kind.map(str::to_owned);
        let is_bundle = kind == Some("Bundle");
        facts.bad_entries = is_bundle && map.get("entry").is_some_and(|e| !e.is_array());
        // The document's own Bundle is not one of the record's resources.
        resource(map, false, !is_bundle, &mut facts, &mut other_urns);
    }
    facts.other_entries(other_urns.into_iter());
    Ok(facts)
}

/// Every coding, genetics extension URL and patient reference, anywhere.
fn codings(table: &Table, value: &Value, facts: &mut FhirFacts) {
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(system)), Some(Value::String(code))) =
                (map.get("system"), map.get("code"))
            {
                if let Some(category) = table.coding(system, code) {
                    if category.is_sensitive() {
                        facts.matched_codes += 1;
                    }
                    facts.categories.insert(category);
                }
            }
            if let Some(Value::String(url)) = map.get("url") {
                if genetics_extension(url) {
                    facts.signal(Category::Genetic);
                }
            }
            for key in PATIENT_REFERENCE_KEYS {
                if let Some(Value::Object(reference)) = map.get(key) {
                    patient_reference(reference, facts);
                }
            }
            for v in map.values() {
                codings(table, v, facts);
            }
        }
        Value::Array(items) => {
            for v in items {
                codings(table, v, facts);
            }
        }
        _ => {}
    }
}

fn patient_reference(reference: &Map<String, Value>, facts: &mut FhirFacts) {
    if let Some(Value::String(r)) = reference.get("reference") {
        facts.reference(r);
        return;
    }
    let kind = reference.get("type").and_then(Value::as_str);
    if let Some(Value::Object(identifier)) = reference.get("identifier") {
        if let Some(value) = identifier.get("value").and_then(Value::as_str) {
            if kind.is_none_or(|t| t == "Patient") {
                let system = identifier.get("system").and_then(Value::as_str);
                facts
                    .identifier_references
                    .insert((system.map(str::to_owned), value.to_owned()));
            }
        }
    }
}

/// The entries of a Bundle (the document or a nested one). `urn:` fullUrls of
/// entries that are not Patients go to `other_urns`.
fn bundle<'v>(map: &'v Map<String, Value>, facts: &mut FhirFacts, other_urns: &mut Vec<&'v str>) {
    let Some(Value::Array(entries)) = map.get("entry") else {
        return;
    };
    for entry in entries {
        let Value::Object(entry) = entry else {
            continue;
        };
        let patient = match entry.get("resource") {
            Some(Value::Object(r)) => resource(r, false, true, facts, other_urns).flatten(),
            _ => None,
        };
        if let Some(Value::String(url)) = entry.get("fullUrl") {
            match patient {
                Some(patient) => facts.patient_entry(url, patient),
                None if url.starts_with("urn:") => other_urns.push(url),
                None => {}
            }
        }
    }
}

/// One resource; `None` if it has no resource type (or is not `register`ed,
/// the document's own Bundle), else its Patient record if it is a Patient.
fn resource<'v>(
    map: &'v Map<String, Value>,
    contained: bool,
    register: bool,
    facts: &mut FhirFacts,
    other_urns: &mut Vec<&'v str>,
) -> Option<Option<usize>> {
    if let Some(Value::Array(profiles)) = map.get("meta").and_then(|m| m.get("profile")) {
        for profile in profiles.iter().filter_map(Value::as_str) {
            if genetics_profile(profile) {
                facts.signal(Category::Genetic);
            }
        }
    }
    if let Some(Value::Array(items)) = map.get("contained") {
        for item in items {
            if let Value::Object(r) = item {
                resource(r, true, true, facts, other_urns);
            }
        }
    }
    // Any resource's `entry` is read as a Bundle's, as the streaming reader does.
    bundle(map, facts, other_urns);
    let kind = map.get("resourceType").and_then(Value::as_str)?;
    if !register {
        return None;
    }
    let text_only_code = map.get("code").is_some_and(|c| {
        c.as_object()
            .is_some_and(|c| c.contains_key("text") && !c.contains_key("coding"))
    });
    let identifiers = if kind == "Patient" {
        map.get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let value = i.get("value").and_then(Value::as_str)?;
                let system = i.get("system").and_then(Value::as_str);
                Some((system.map(str::to_owned), value.to_owned()))
            })
            .collect()
    } else {
        Vec::new()
    };
    let id = map.get("id").and_then(Value::as_str);
    let patient = facts.resource(kind, id, identifiers, text_only_code, contained);
    Some(patient)
}
