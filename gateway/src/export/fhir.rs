//! Audit entries as FHIR R4 `AuditEvent` resources following IHE Basic Audit Log Patterns
//! (BALP 1.1): a transfer sent is a Privacy Disclosure at the Source (DICOM 110106 Export), a
//! transfer received one at the Recipient (110107 Import), a policy decision an authorization
//! decision (110113 Security Alert, AuthZ-Consent), reads and writes through the local API
//! RESTful events, refusals of identity node-authentication alerts. The table, code by code,
//! is in docs/audit-export.md; keep the two in step.

use serde_json::{json, Map, Value};

use super::{instant, ExportEntry};
use crate::audit::event;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";
const LIFECYCLE: &str = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle";
const AUTHZ: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";
const BALP_PROFILE: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";
/// The gateway's own event name, kept as one more subtype so nothing is lost in the mapping.
pub const GATEWAY_EVENT: &str = "urn:healthfed:audit-event";
/// The role of a peer facility where BALP names none (a policy decision, a refusal).
const GATEWAY_AGENT: &str = "urn:healthfed:agent-role";

/// Which BALP pattern an entry follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// This node disclosed (or tried to disclose) a record to the peer.
    DisclosureSource,
    /// The peer disclosed a record to this node.
    DisclosureRecipient,
    /// An authorization decision (Cedar policies and consent).
    AuthZ,
    /// A RESTful interaction on this node's local API (or a pull request to or from a peer):
    /// the interaction code, the action, and whether this node is the client.
    Rest(&'static str, &'static str, bool),
    /// A security alert, with an optional DICOM subtype.
    Alert(Option<(&'static str, &'static str)>),
    /// Anything else the node records.
    Activity,
}

fn pattern(e: &ExportEntry) -> Pattern {
    match e.event.as_str() {
        event::SUBMITTED
        | event::SENT
        | event::DELIVERED
        | event::RECEIPT_VERIFIED
        | event::RETRY
        | event::FAILED
        | event::CANCELLED
        | event::REQUEUED => Pattern::DisclosureSource,
        event::RECEIVED => Pattern::DisclosureRecipient,
        event::DECISION => Pattern::AuthZ,
        event::FETCHED | event::METADATA_READ => Pattern::Rest("read", "R", false),
        event::ACKED => Pattern::Rest("update", "U", false),
        event::RECORD_STORED | event::CONSENT => Pattern::Rest("create", "C", false),
        event::ENVELOPE_REMOVED => Pattern::Rest("delete", "D", false),
        event::AUDIT_READ | event::REQUEST_RECEIVED | event::REQUEST_ANSWERED => {
            Pattern::Rest("search-type", "E", false)
        }
        event::REQUEST_SENT => Pattern::Rest("search-type", "E", true),
        event::REJECTED if e.outcome == "connection-refused" => {
            Pattern::Alert(Some(("110126", "Node Authentication")))
        }
        event::REJECTED | event::WITNESS_CONFLICT => Pattern::Alert(None),
        "trust-freshness" => Pattern::Alert(Some(("110129", "Security Configuration"))),
        _ => Pattern::Activity,
    }
}

/// The AuditEvent outcome: 0 success, 4 minor failure (refused, denied: nothing broke), 8
/// serious failure (a transfer given up), 12 major failure (a witnessed log forked).
fn outcome_code(e: &ExportEntry) -> &'static str {
    if e.event == event::WITNESS_CONFLICT {
        return "12";
    }
    match e.outcome.as_str() {
        "failed" => "8",
        "deny" | "refused" | "connection-refused" | "duplicate" | "rejected" => "4",
        _ => "0",
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [coding(system, code, display)] })
}

/// A facility as an agent's `who` and the source's `observer` (the same reference, as BALP's
/// val-audit-source asks of the source agent).
fn facility_ref(id: &str) -> Value {
    json!({
        "identifier": { "system": "urn:healthfed:facility", "value": id },
        "display": id,
    })
}

/// A facility agent; its network address is the URI its certificate carries.
fn facility_agent(id: &str, role: Value, requestor: bool) -> Value {
    json!({
        "type": role,
        "who": facility_ref(id),
        "requestor": requestor,
        "network": { "address": format!("urn:healthfed:facility:{id}"), "type": "5" },
    })
}

fn purpose_of_use(purpose: &str) -> Value {
    let code = match purpose {
        "treatment" => Some(("TREAT", "treatment")),
        "payment" => Some(("HPAYMT", "healthcare payment")),
        "operations" => Some(("HOPERAT", "healthcare operations")),
        "research" => Some(("HRESCH", "healthcare research")),
        "public-health" => Some(("PUBHLTH", "public health")),
        _ => None,
    };
    match code {
        Some((code, display)) => {
            json!({ "coding": [coding(ACT_REASON, code, display)], "text": purpose })
        }
        None => json!({ "text": purpose }),
    }
}

/// The `AuditEvent` for entry `e` of facility `facility`'s log.
pub fn audit_event(facility: &str, e: &ExportEntry) -> Value {
    let pattern = pattern(e);
    let source_role = || concept(DCM, "110153", "Source Role ID");
    let destination_role = || concept(DCM, "110152", "Destination Role ID");
    let peer_role = || concept(GATEWAY_AGENT, "peer-facility", "peer facility");
    let has_user = e.clinician.is_some();

    let (type_coding, mut subtypes, action, profile) = match pattern {
        Pattern::DisclosureSource => (
            coding(DCM, "110106", "Export"),
            vec![coding(
                LIFECYCLE,
                "disclose",
                "Disclose Record Lifecycle Event",
            )],
            "R",
            Some("IHE.BasicAudit.PrivacyDisclosure.Source"),
        ),
        Pattern::DisclosureRecipient => (
            coding(DCM, "110107", "Import"),
            vec![coding(
                LIFECYCLE,
                "disclose",
                "Disclose Record Lifecycle Event",
            )],
            "C",
            Some("IHE.BasicAudit.PrivacyDisclosure.Recipient"),
        ),
        Pattern::AuthZ => (
            coding(DCM, "110113", "Security Alert"),
            vec![coding(
                AUTHZ,
                "AuthZ-Consent",
                "Authorization Decision using Roles and Consent",
            )],
            "E",
            None,
        ),
        Pattern::Rest(interaction, action, _) => (
            coding(EVENT_TYPE, "rest", "RESTful Operation"),
            vec![coding(RESTFUL, interaction, interaction)],
            action,
            None,
        ),
        Pattern::Alert(subtype) => (
            coding(DCM, "110113", "Security Alert"),
            subtype
                .map(|(code, display)| coding(DCM, code, display))
                .into_iter()
                .collect(),
            "E",
            None,
        ),
        Pattern::Activity => (
            coding(DCM, "110100", "Application Activity"),
            Vec::new(),
            "E",
            None,
        ),
    };
    if e.break_glass {
        subtypes.push(coding(DCM, "110127", "Emergency Override Started"));
    }
    subtypes.push(coding(GATEWAY_EVENT, &e.event, &e.event));

    let mut agents = Vec::new();
    match (pattern, e.peer.as_deref()) {
        (Pattern::DisclosureSource, peer) => {
            agents.push(facility_agent(facility, source_role(), !has_user));
            if let Some(peer) = peer {
                agents.push(facility_agent(peer, destination_role(), false));
            }
        }
        (Pattern::DisclosureRecipient, peer) => {
            if let Some(peer) = peer {
                agents.push(facility_agent(peer, source_role(), !has_user));
            }
            agents.push(facility_agent(facility, destination_role(), false));
        }
        (Pattern::Rest(_, _, true), peer) => {
            agents.push(facility_agent(facility, source_role(), !has_user));
            if let Some(peer) = peer {
                agents.push(facility_agent(peer, destination_role(), false));
            }
        }
        (Pattern::Rest(_, _, false), peer) => {
            // The client is the peer (a pull request) or the facility's own EMR or officer
            // on the local API.
            match peer {
                Some(peer) => agents.push(facility_agent(peer, source_role(), !has_user)),
                None => agents.push(json!({
                    "type": source_role(),
                    "who": { "display": "local API client" },
                    "requestor": !has_user,
                })),
            }
            agents.push(facility_agent(facility, destination_role(), false));
        }
        (_, peer) => {
            agents.push(facility_agent(
                facility,
                concept(DCM, "110150", "Application"),
                false,
            ));
            if let Some(peer) = peer {
                // A refused connection was asked for by the peer; a decision was about it.
                let asked = e.event == event::REJECTED;
                agents.push(facility_agent(peer, peer_role(), asked));
            }
        }
    }
    if let Some(clinician) = &e.clinician {
        agents.push(json!({
            "type": concept(ROLE_CLASS, "PROV", "healthcare provider"),
            "who": { "identifier": { "value": clinician } },
            "requestor": true,
        }));
    }

    let mut entities = Vec::new();
    if let Some(patient) = &e.patient {
        entities.push(json!({
            "what": { "identifier": { "value": patient } },
            "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    if let Some(transfer) = &e.transfer_id {
        entities.push(json!({
            "what": { "identifier": { "system": "urn:healthfed:transfer", "value": transfer } },
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
            "description": "transfer",
        }));
    }
    let mut details = vec![json!({ "type": "chain-hash", "valueString": e.hash })];
    details.extend(
        e.policy_ids
            .iter()
            .map(|p| json!({ "type": "policy-id", "valueString": p })),
    );
    entities.push(json!({
        "what": { "identifier": {
            "system": format!("urn:healthfed:audit:{facility}"),
            "value": e.seq.to_string(),
        } },
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "13", "Security Resource"),
        "description": "audit log entry",
        "detail": details,
    }));

    let mut purposes = Vec::new();
    if let Some(purpose) = &e.purpose {
        purposes.push(purpose_of_use(purpose));
    }
    if e.break_glass {
        purposes.push(concept(ACT_REASON, "BTG", "break the glass"));
    }

    let mut r = Map::new();
    r.insert("resourceType".into(), json!("AuditEvent"));
    // The chain hash: 64 hex digits, a valid FHIR id, unique across every facility's log.
    r.insert("id".into(), json!(e.hash));
    // The profile is claimed only where the entry has what it requires (a patient).
    if let (Some(profile), Some(_)) = (profile, &e.patient) {
        r.insert(
            "meta".into(),
            json!({ "profile": [format!("{BALP_PROFILE}{profile}")] }),
        );
    }
    r.insert("type".into(), type_coding);
    r.insert("subtype".into(), Value::Array(subtypes));
    r.insert("action".into(), json!(action));
    r.insert("recorded".into(), json!(instant(e.time_ms)));
    r.insert("outcome".into(), json!(outcome_code(e)));
    r.insert(
        "outcomeDesc".into(),
        json!(match &e.reason {
            Some(reason) => format!("{}: {reason}", e.outcome),
            None => e.outcome.clone(),
        }),
    );
    if !purposes.is_empty() {
        r.insert("purposeOfEvent".into(), Value::Array(purposes));
    }
    r.insert("agent".into(), Value::Array(agents));
    r.insert(
        "source".into(),
        json!({
            "site": facility,
            "observer": facility_ref(facility),
            "type": [coding(SOURCE_TYPE, "4", "Application Server")],
        }),
    );
    r.insert("entity".into(), Value::Array(entities));
    Value::Object(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: &str, outcome: &str) -> ExportEntry {
        ExportEntry {
            seq: 7,
            time_ms: 1_796_278_778_123,
            event: event.to_owned(),
            transfer_id: Some("00112233445566778899aabbccddeeff".to_owned()),
            peer: Some("clinic-b".to_owned()),
            patient: Some("pat-1".to_owned()),
            purpose: Some("treatment".to_owned()),
            clinician: None,
            outcome: outcome.to_owned(),
            reason: None,
            policy_ids: vec!["permit-treatment".to_owned()],
            break_glass: false,
            hash: "ab".repeat(32),
        }
    }

    fn codes(v: &Value, field: &str) -> Vec<String> {
        v[field]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{}#{}", c["system"].as_str().unwrap_or(""), c["code"]))
            .collect()
    }

    #[test]
    fn a_sent_transfer_is_a_disclosure_at_the_source() {
        let v = audit_event("hosp-a", &entry(event::DELIVERED, "delivered"));
        assert_eq!(v["type"]["code"], "110106");
        assert_eq!(v["action"], "R");
        assert_eq!(v["outcome"], "0");
        assert_eq!(v["agent"][0]["type"]["coding"][0]["code"], "110153");
        assert_eq!(v["agent"][0]["who"], v["source"]["observer"]);
        assert_eq!(v["agent"][1]["type"]["coding"][0]["code"], "110152");
        assert_eq!(v["agent"][1]["who"]["identifier"]["value"], "clinic-b");
        assert_eq!(v["entity"][0]["role"]["code"], "1");
        assert_eq!(v["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert!(v["meta"]["profile"][0]
            .as_str()
            .unwrap()
            .ends_with("PrivacyDisclosure.Source"));
    }

    #[test]
    fn a_received_transfer_has_the_peer_as_source_and_this_node_as_recipient() {
        let v = audit_event("hosp-a", &entry(event::RECEIVED, "stored"));
        assert_eq!(v["type"]["code"], "110107");
        assert_eq!(v["agent"][0]["who"]["identifier"]["value"], "clinic-b");
        assert_eq!(v["agent"][1]["who"], v["source"]["observer"]);
    }

    #[test]
    fn refusals_break_glass_and_forks_map_to_alerts_and_outcomes() {
        let deny = audit_event("hosp-a", &entry(event::DECISION, "deny"));
        assert_eq!(deny["outcome"], "4");
        assert!(codes(&deny, "subtype").contains(&format!("{AUTHZ}#\"AuthZ-Consent\"")));
        let refused = audit_event("hosp-a", &entry(event::REJECTED, "connection-refused"));
        assert!(codes(&refused, "subtype").contains(&format!("{DCM}#\"110126\"")));
        let mut bg = entry(event::SENT, "attempt");
        bg.break_glass = true;
        let v = audit_event("hosp-a", &bg);
        assert!(codes(&v, "subtype").contains(&format!("{DCM}#\"110127\"")));
        assert_eq!(v["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
        let fork = audit_event("hosp-a", &entry(event::WITNESS_CONFLICT, "refused"));
        assert_eq!(fork["outcome"], "12");
        assert_eq!(
            audit_event("hosp-a", &entry(event::FAILED, "failed"))["outcome"],
            "8"
        );
    }
}
