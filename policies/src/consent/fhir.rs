//! Import of FHIR R4 Consent resources into [`ConsentDirective`]s.
//!
//! Rule of thumb: import only what the gateway can enforce exactly. A permit
//! carrying a restriction we cannot evaluate would grant more than the patient
//! agreed to, and a deny about an individual or a single record would, if
//! widened, block all care — both are refused with a reason, so a person
//! (not this code) decides. The only restriction dropped on import is the
//! custodian (`actor.role = CST`) of a deny: the directive is stored at the
//! custodian's node, so "deny my records held by the custodian" is what the
//! node enforces anyway.
//!
//! Effect: `provision.type` when present, otherwise the base policy
//! (`policyRule` OPTIN/OPTINR = permit, OPTOUT/OPTOUTE = deny), as R4 says the
//! root rule's action comes from the policy. Refusal reasons name FHIR
//! elements and codes, never the patient.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime};

use super::{ConsentDirective, Effect, Scope};
use crate::{Category, Purpose};

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const CONSENT_ACTION: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
const PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// Why a Consent resource was not imported. The reason is safe to show to an
/// operator: it names FHIR elements and codes, never patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consent not imported: {reason}")]
pub struct ImportRefusal {
    pub reason: String,
}

fn refuse<T>(reason: impl Into<String>) -> Result<T, ImportRefusal> {
    Err(ImportRefusal {
        reason: reason.into(),
    })
}

/// Echo at most a short, printable prefix of an input code in a reason.
fn code_for_reason(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect()
}

/// Maps one FHIR R4 Consent resource to directives (currently always one).
/// `recorded_by` is the operator or system importing it; `now_unix` becomes
/// `recorded_at`.
pub fn import_fhir_consent(
    json: &Value,
    recorded_by: &str,
    now_unix: i64,
) -> Result<Vec<ConsentDirective>, ImportRefusal> {
    if json.get("resourceType").and_then(Value::as_str) != Some("Consent") {
        return refuse("not a FHIR Consent resource");
    }
    if json.get("modifierExtension").is_some() {
        return refuse("modifierExtension present: it may change the meaning of the consent");
    }
    let Some(id) = json
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return refuse("Consent has no id (needed to trace the directive to its source)");
    };
    match json.get("status").and_then(Value::as_str) {
        Some("active") => {}
        Some(other) => return refuse(format!("status {} is not active", code_for_reason(other))),
        None => return refuse("Consent has no status"),
    }
    let scope_codes = codes(json.get("scope"), CONSENT_SCOPE);
    let research_scope = scope_codes.iter().any(|c| c == "research");
    if !(research_scope || scope_codes.iter().any(|c| c == "patient-privacy")) {
        return refuse("scope is not patient-privacy or research (treatment and advance-directive consents are not access rules)");
    }
    let patient = patient_id(json.get("patient"))?;
    let base = match codes(json.get("policyRule"), ACT_CODE)
        .first()
        .map(String::as_str)
    {
        Some("OPTIN" | "OPTINR") => Some(Effect::Permit),
        Some("OPTOUT" | "OPTOUTE") => Some(Effect::Deny),
        Some(other) => {
            return refuse(format!(
                "policyRule {} is not opt-in or opt-out",
                code_for_reason(other)
            ))
        }
        None => None,
    };
    let provision = json.get("provision");
    let emergency_only = json
        .get("category")
        .and_then(Value::as_array)
        .is_some_and(|cats| {
            cats.iter()
                .any(|c| codes(Some(c), ACT_CODE).iter().any(|x| x == "EMRGONLY"))
        });

    let mut directive = ConsentDirective {
        id: id.to_owned(),
        patient,
        effect: Effect::Deny,
        scope: Scope::AllFederation,
        purposes: Vec::new(),
        categories: Vec::new(),
        valid_from: None,
        valid_until: None,
        recorded_by: recorded_by.to_owned(),
        recorded_at: now_unix,
        revoked_at: None,
        source: Some(format!("fhir:Consent/{id}")),
        emergency_only,
    };

    if let Some(period) = provision.and_then(|p| p.get("period")) {
        let (from, until) = period_bounds(period)?;
        directive.valid_from = from;
        directive.valid_until = until;
    }

    if emergency_only {
        // Category EMRGONLY: "no disclosure except for emergency treatment".
        // Its exceptions are expressed as nested rules; the whole pattern maps
        // to a deny with the emergency flag, provided it names no recipients
        // other than the custodian.
        let mut stack: Vec<&Value> = provision.into_iter().collect();
        while let Some(p) = stack.pop() {
            for actor in array(p.get("actor")) {
                if actor_role(actor).as_deref() != Some("CST") {
                    return refuse("emergency-only consent names actors other than the custodian");
                }
            }
            stack.extend(array(p.get("provision")));
        }
        return Ok(vec![directive]);
    }

    let effect = match (
        provision
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str),
        base,
    ) {
        (Some("permit"), _) => Effect::Permit,
        (Some("deny"), _) => Effect::Deny,
        (Some(other), _) => {
            return refuse(format!(
                "provision.type {} is not permit or deny",
                code_for_reason(other)
            ))
        }
        (None, Some(base)) => base,
        (None, None) => return refuse("neither provision.type nor an opt-in/opt-out policyRule"),
    };
    directive.effect = effect;

    if let Some(p) = provision {
        map_provision(p, &mut directive)?;
    }
    if research_scope && directive.purposes.is_empty() {
        directive.purposes.push(Purpose::Research);
    }
    Ok(vec![directive])
}

/// Maps the root provision's conditions onto the directive, refusing any
/// condition the gateway cannot enforce exactly.
fn map_provision(p: &Value, d: &mut ConsentDirective) -> Result<(), ImportRefusal> {
    if p.get("data").is_some() {
        return refuse(
            "restriction to specific records (provision.data) cannot be enforced by the gateway",
        );
    }
    if p.get("class").is_some() {
        return refuse("restriction by resource type or document class (provision.class) cannot be enforced by the gateway");
    }
    if p.get("code").is_some() {
        return refuse(
            "restriction by document code (provision.code) cannot be enforced by the gateway",
        );
    }
    if p.get("dataPeriod").is_some() {
        return refuse(
            "restriction by record date (provision.dataPeriod) cannot be enforced by the gateway",
        );
    }

    let mut facilities = Vec::new();
    for actor in array(p.get("actor")) {
        let role = actor_role(actor);
        let reference = actor
            .get("reference")
            .and_then(|r| r.get("reference"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let (kind, target) = split_reference(reference);
        match role.as_deref() {
            Some("CST") if d.effect == Effect::Deny => {
                // The custodian holds the records; the directive lives at its
                // node. Denying "records held by the custodian" = denying.
            }
            Some("CST") => {
                return refuse("a permit restricted to records of a custodian or author organisation (actor role CST) cannot be enforced by the gateway");
            }
            Some("PRCP" | "IRCP") => {
                if kind != "Organization" || target.is_empty() {
                    let kind = if kind.is_empty() {
                        "non-resource"
                    } else {
                        kind
                    };
                    return refuse(format!(
                        "actor is a {}, not a facility: the federation authorizes facilities, not individuals",
                        code_for_reason(kind)
                    ));
                }
                facilities.push(target.to_owned());
            }
            Some(other) => {
                return refuse(format!(
                    "actor role {} is not supported (only recipient PRCP/IRCP and custodian CST)",
                    code_for_reason(other)
                ))
            }
            None => return refuse("actor without a v3-ParticipationType role"),
        }
    }
    if !facilities.is_empty() {
        d.scope = Scope::Facilities(facilities);
    }

    for action in array(p.get("action")) {
        for code in codes(Some(action), CONSENT_ACTION) {
            if !matches!(
                code.as_str(),
                "collect" | "access" | "use" | "disclose" | "correct"
            ) {
                return refuse(format!(
                    "action {} is not supported",
                    code_for_reason(&code)
                ));
            }
        }
    }

    for purpose in array(p.get("purpose")) {
        let system = purpose.get("system").and_then(Value::as_str).unwrap_or("");
        let code = purpose.get("code").and_then(Value::as_str).unwrap_or("");
        let mapped = match (system, code) {
            (ACT_REASON, "TREAT" | "ETREAT" | "POPHLTH" | "CAREMGT") => Purpose::Treatment,
            (ACT_REASON, "HPAYMT" | "CLMATTCH" | "COVAUTH" | "COVERAGE" | "ELIGDTRM") => {
                Purpose::Payment
            }
            (ACT_REASON, "HOPERAT") => Purpose::Operations,
            (ACT_REASON, "HRESCH" | "CLINTRCH") => Purpose::Research,
            (ACT_REASON, "PUBHLTH") => Purpose::PublicHealth,
            _ => {
                return refuse(format!(
                    "purpose {} cannot be mapped to a federation purpose",
                    code_for_reason(code)
                ))
            }
        };
        if !d.purposes.contains(&mapped) {
            d.purposes.push(mapped);
        }
    }

    for label in array(p.get("securityLabel")) {
        let system = label.get("system").and_then(Value::as_str).unwrap_or("");
        let code = label.get("code").and_then(Value::as_str).unwrap_or("");
        let mapped = match (system, code) {
            (ACT_CODE, "HIV" | "STD") => Category::HivSti,
            (ACT_CODE, "PSY" | "PSYTHPN" | "BH" | "MH") => Category::MentalHealth,
            (ACT_CODE, "ETH" | "SUD") => Category::SubstanceUse,
            (ACT_CODE, "SEX") => Category::ReproductiveHealth,
            (ACT_CODE, "GDIS") => Category::Genetic,
            (ACT_CODE, "SDV") => Category::AbuseViolence,
            _ => {
                return refuse(format!(
                    "security label {} cannot be mapped to a data category",
                    code_for_reason(code)
                ))
            }
        };
        if !d.categories.contains(&mapped) {
            d.categories.push(mapped);
        }
    }

    if !array(p.get("provision")).is_empty() {
        return refuse("nested provisions (exceptions to the base rule) are not supported");
    }
    Ok(())
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Codes of a CodeableConcept (or a bare Coding) in `system`.
fn codes(concept: Option<&Value>, system: &str) -> Vec<String> {
    let Some(concept) = concept else {
        return Vec::new();
    };
    let codings: Vec<&Value> = match concept.get("coding").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![concept],
    };
    codings
        .into_iter()
        .filter(|c| c.get("system").and_then(Value::as_str) == Some(system))
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

fn actor_role(actor: &Value) -> Option<String> {
    codes(actor.get("role"), PARTICIPATION_TYPE)
        .into_iter()
        .next()
}

/// "Organization/f001" or "https://x/fhir/Organization/f001" → ("Organization", "f001").
fn split_reference(reference: &str) -> (&str, &str) {
    let mut parts = reference.rsplit('/');
    let id = parts.next().unwrap_or("");
    let kind = parts.next().unwrap_or("");
    (kind, id)
}

fn patient_id(patient: Option<&Value>) -> Result<String, ImportRefusal> {
    let Some(patient) = patient else {
        return refuse("Consent has no patient");
    };
    if let Some(reference) = patient.get("reference").and_then(Value::as_str) {
        let (kind, id) = split_reference(reference);
        if kind == "Patient" && !id.is_empty() {
            return Ok(id.to_owned());
        }
        return refuse("patient reference is not a Patient/<id> reference");
    }
    match patient
        .get("identifier")
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str)
    {
        Some(value) if !value.is_empty() => Ok(value.to_owned()),
        _ => refuse("patient has neither a reference nor an identifier value"),
    }
}

/// A FHIR Period as (inclusive start, exclusive end) in Unix seconds.
fn period_bounds(period: &Value) -> Result<(Option<i64>, Option<i64>), ImportRefusal> {
    let bound = |key: &str, end: bool| -> Result<Option<i64>, ImportRefusal> {
        match period.get(key) {
            None => Ok(None),
            Some(v) => match v.as_str().and_then(|s| fhir_instant(s, end)) {
                Some(t) => Ok(Some(t)),
                None => refuse(format!(
                    "provision.period.{key} is not a FHIR date or dateTime"
                )),
            },
        }
    };
    let from = bound("start", false)?;
    let until = bound("end", true)?;
    if let (Some(from), Some(until)) = (from, until) {
        if until <= from {
            return refuse("provision.period ends before it starts");
        }
    }
    Ok((from, until))
}

/// Parses a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD, read as UTC) or dateTime.
/// A partial date as an `end` covers its whole year/month/day, so the
/// exclusive end is the start of the next one.
fn fhir_instant(s: &str, end: bool) -> Option<i64> {
    if s.contains('T') {
        return OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .map(OffsetDateTime::unix_timestamp);
    }
    let mut parts = s.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: Option<u8> = parts.next().map(str::parse).transpose().ok()?;
    let day: Option<u8> = parts.next().map(str::parse).transpose().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let start = Date::from_calendar_date(
        year,
        Month::try_from(month.unwrap_or(1)).ok()?,
        day.unwrap_or(1),
    )
    .ok()?;
    let date = match (end, month, day) {
        (false, _, _) => start,
        (true, _, Some(_)) => start.next_day()?,
        (true, Some(m), None) => {
            let next = Month::try_from(m).ok()?.next();
            let year = if next == Month::January {
                year + 1
            } else {
                year
            };
            Date::from_calendar_date(year, next, 1).ok()?
        }
        (true, None, None) => Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
    };
    Some(date.midnight().assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_dates() {
        assert_eq!(fhir_instant("1970-01-01", false), Some(0));
        assert_eq!(fhir_instant("1970-01-01", true), Some(86_400));
        assert_eq!(fhir_instant("1970-01", true), Some(31 * 86_400));
        assert_eq!(fhir_instant("1970", true), Some(365 * 86_400));
        assert_eq!(fhir_instant("1970-12", true), Some(365 * 86_400));
        assert_eq!(
            fhir_instant("2016-06-23T17:02:33+10:00", false),
            Some(1_466_665_353)
        );
        assert_eq!(fhir_instant("2016-13-01", false), None);
        assert_eq!(fhir_instant("yesterday", false), None);
        assert_eq!(fhir_instant("2016-01-01-01", false), None);
    }

    #[test]
    fn references() {
        assert_eq!(
            split_reference("Organization/f001"),
            ("Organization", "f001")
        );
        assert_eq!(
            split_reference("https://h.example/fhir/Patient/p1"),
            ("Patient", "p1")
        );
        assert_eq!(split_reference("f001"), ("", "f001"));
    }
}
