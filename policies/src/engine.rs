//! The Cedar policy engine: loading, strict validation and fail-closed
//! authorization.
//!
//! Cedar skips a policy whose evaluation errors, so a `forbid` that errors
//! would silently vanish and could turn a Deny into an Allow. [`PolicyEngine::authorize`]
//! therefore turns any evaluation error into a Deny that names the erroring
//! policies.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};

use crate::consent::ConsentState;
use crate::{classify, Action, Category, Purpose};

/// The shipped schema, embedded so a node works with no policy directory.
pub const DEFAULT_SCHEMA: &str = include_str!("../cedar/schema.cedarschema");
/// The shipped federation policies.
pub const DEFAULT_POLICIES: &str = include_str!("../cedar/federation.cedar");

/// File name of the schema inside a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// Annotation holding the policy id reported in decisions.
const ID_ANNOTATION: &str = "id";
/// Annotation holding the text shown to a refused requester.
const REASON_ANNOTATION: &str = "reason";
/// Fixed id of the record entity: patient identifiers never enter Cedar, so no
/// Cedar error or diagnostic can carry one.
const RECORD_ENTITY_ID: &str = "record";

/// Errors loading or validating policies. Each names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy directory {dir}: {source}")]
    Dir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy directory {dir}: missing {SCHEMA_FILE}")]
    MissingSchema { dir: String },
    #[error("policy directory {dir}: no *.cedar policy files")]
    NoPolicies { dir: String },
    #[error("schema file {file}: {problem}")]
    Schema { file: String, problem: String },
    #[error("policy file {file}: {problem}")]
    Parse { file: String, problem: String },
    #[error("policy file {file}: policy id {id:?} is also used in {other}")]
    DuplicateId {
        file: String,
        id: String,
        other: String,
    },
    #[error("policy file {file}: templates are not supported (policy {id})")]
    Template { file: String, id: String },
    /// Strict validation against the schema failed; every problem is listed.
    #[error("policy validation failed: {}", .problems.join("; "))]
    Validation { problems: Vec<String> },
    #[error("category code table: {0}")]
    CategoryTable(#[from] classify::ClassifyError),
}

/// A facility as listed in the federation directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FacilityInfo {
    pub id: String,
    /// Directory kind: hospital, clinic, lab or payer.
    pub kind: String,
    pub active: bool,
}

/// One authorization question.
#[derive(Clone)]
pub struct AccessRequest {
    pub action: Action,
    /// The other facility: recipient for send, sender for receive, requester
    /// for request and break-glass.
    pub counterparty: FacilityInfo,
    /// This node's facility.
    pub local: FacilityInfo,
    /// e.g. "physician", "emergency-physician", "nurse", "billing".
    pub clinician_role: Option<String>,
    /// Patient identifier. Never passed to Cedar, never logged.
    pub patient: String,
    /// Data categories of the record. Must not be empty (an empty set is a Deny).
    pub categories: BTreeSet<Category>,
    pub content_type: String,
    pub purpose: Purpose,
    pub break_glass: bool,
    /// Computed by [`crate::consent::evaluate`] for the facility that would
    /// receive the data.
    pub consent: ConsentState,
    pub now_unix: i64,
}

impl fmt::Debug for AccessRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessRequest")
            .field("action", &self.action)
            .field("counterparty", &self.counterparty)
            .field("local", &self.local)
            .field("clinician_role", &self.clinician_role)
            .field("patient", &"<redacted>")
            .field("categories", &self.categories)
            .field("content_type", &self.content_type)
            .field("purpose", &self.purpose)
            .field("break_glass", &self.break_glass)
            .field("consent", &self.consent)
            .field("now_unix", &self.now_unix)
            .finish()
    }
}

impl AccessRequest {
    /// The facility that would end up holding the data (Cedar principal).
    pub fn recipient(&self) -> &FacilityInfo {
        match self.action {
            Action::Receive => &self.local,
            Action::Send | Action::Request | Action::BreakGlass => &self.counterparty,
        }
    }

    /// The facility the data comes from (Cedar `resource.sender`).
    pub fn sender(&self) -> &FacilityInfo {
        match self.action {
            Action::Receive => &self.counterparty,
            Action::Send | Action::Request | Action::BreakGlass => &self.local,
        }
    }
}

/// The outcome of one authorization, ready for the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// The policies that determined the decision: the matching permits for an
    /// Allow, the matching forbids for a Deny, the erroring policies for a
    /// Deny caused by evaluation errors; empty for a default Deny (no permit
    /// matched).
    pub policy_ids: Vec<String>,
    /// Evaluation errors (any error makes the decision a Deny).
    pub errors: Vec<String>,
    /// Actionable, non-revealing text for the requester.
    pub reason: String,
}

impl Decision {
    fn deny_error(errors: Vec<String>, policy_ids: Vec<String>) -> Decision {
        Decision {
            allowed: false,
            policy_ids,
            errors,
            reason: "policy evaluation error (denied)".to_owned(),
        }
    }
}

/// A loaded, validated policy set. Cloning is cheap (shared), so the gateway
/// can swap engines on reload and keep the old one when the reload fails.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<Inner>,
}

struct Inner {
    schema: Schema,
    policies: PolicySet,
    authorizer: Authorizer,
    /// Policy ids in load order (files sorted by name, then source order).
    order: Vec<String>,
    /// Refusal text per forbid policy (its `@reason` annotation).
    reasons: HashMap<String, String>,
    facility_type: EntityTypeName,
    record_type: EntityTypeName,
    action_type: EntityTypeName,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.inner.order)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// The shipped schema and federation policies (embedded at build time).
    pub fn embedded_defaults() -> Result<PolicyEngine, PolicyError> {
        Self::from_sources(
            (SCHEMA_FILE, DEFAULT_SCHEMA),
            &[("federation.cedar", DEFAULT_POLICIES)],
        )
    }

    /// Loads `schema.cedarschema` and every `*.cedar` file in `dir` (sorted by
    /// name) and validates them in strict mode. This is also what a reload
    /// calls: on error the caller keeps its old engine.
    pub fn load_dir(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let dir_name = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Dir {
            dir: dir_name.clone(),
            source,
        })?;
        let mut policy_paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PolicyError::Dir {
                dir: dir_name.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
                policy_paths.push(path);
            }
        }
        policy_paths.sort();
        let schema_path = dir.join(SCHEMA_FILE);
        if !schema_path.is_file() {
            return Err(PolicyError::MissingSchema { dir: dir_name });
        }
        if policy_paths.is_empty() {
            return Err(PolicyError::NoPolicies { dir: dir_name });
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
                file: path.display().to_string(),
                source,
            })
        };
        let schema_src = read(&schema_path)?;
        let mut files = Vec::with_capacity(policy_paths.len());
        for path in &policy_paths {
            files.push((path.display().to_string(), read(path)?));
        }
        let schema_name = schema_path.display().to_string();
        let borrowed: Vec<(&str, &str)> = files
            .iter()
            .map(|(name, src)| (name.as_str(), src.as_str()))
            .collect();
        Self::from_sources((&schema_name, &schema_src), &borrowed)
    }

    /// Builds an engine from in-memory sources: `(file name, text)` pairs. The
    /// file names only label errors.
    pub fn from_sources(
        schema: (&str, &str),
        policy_files: &[(&str, &str)],
    ) -> Result<PolicyEngine, PolicyError> {
        // A node must not start with a broken category table: classification
        // would otherwise fail closed on every record.
        classify::check_table()?;

        let (schema_file, schema_src) = schema;
        let (schema, _warnings) =
            Schema::from_cedarschema_str(schema_src).map_err(|e| PolicyError::Schema {
                file: schema_file.to_owned(),
                problem: e.to_string(),
            })?;

        let mut policies = PolicySet::new();
        let mut order = Vec::new();
        let mut reasons = HashMap::new();
        let mut file_of: HashMap<String, String> = HashMap::new();
        for (file, src) in policy_files {
            let parsed = PolicySet::from_str(src).map_err(|e| PolicyError::Parse {
                file: (*file).to_owned(),
                problem: e.to_string(),
            })?;
            if let Some(t) = parsed.templates().next() {
                return Err(PolicyError::Template {
                    file: (*file).to_owned(),
                    id: t.id().to_string(),
                });
            }
            let stem = Path::new(file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            // PolicySet iteration order is not source order; sort by source
            // position so decisions list policies the way the file reads.
            let mut in_file: Vec<_> = parsed.policies().collect();
            in_file.sort_by_key(|p| policy_position(p.id()));
            for policy in in_file {
                let id = match policy.annotation(ID_ANNOTATION) {
                    Some(id) => id.to_owned(),
                    // Fall back to Cedar's generated id, qualified by the file
                    // so ids stay unique across files.
                    None => format!("{stem}.{}", policy.id()),
                };
                if let Some(other) = file_of.get(&id) {
                    return Err(PolicyError::DuplicateId {
                        file: (*file).to_owned(),
                        id,
                        other: other.clone(),
                    });
                }
                if let Some(reason) = policy.annotation(REASON_ANNOTATION) {
                    reasons.insert(id.clone(), reason.to_owned());
                }
                let renamed = policy.new_id(PolicyId::new(&id));
                policies.add(renamed).map_err(|e| PolicyError::Parse {
                    file: (*file).to_owned(),
                    problem: e.to_string(),
                })?;
                file_of.insert(id.clone(), (*file).to_owned());
                order.push(id);
            }
        }

        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        let problems: Vec<String> = validation
            .validation_errors()
            .map(|e| {
                let id = e.policy_id().to_string();
                let file = file_of.get(&id).map(String::as_str).unwrap_or("?");
                format!("{file}: policy {id}: {e}")
            })
            .collect();
        if !problems.is_empty() {
            return Err(PolicyError::Validation { problems });
        }

        let parse_type = |name: &str| {
            EntityTypeName::from_str(name).map_err(|e| PolicyError::Schema {
                file: schema_file.to_owned(),
                problem: format!("entity type {name}: {e}"),
            })
        };
        Ok(PolicyEngine {
            inner: Arc::new(Inner {
                facility_type: parse_type("Facility")?,
                record_type: parse_type("Record")?,
                action_type: parse_type("Action")?,
                schema,
                policies,
                authorizer: Authorizer::new(),
                order,
                reasons,
            }),
        })
    }

    /// Ids of every loaded policy, in load order.
    pub fn policy_ids(&self) -> Vec<String> {
        self.inner.order.clone()
    }

    /// Decides one request. Never panics; any error (building the request,
    /// evaluating a policy) is a Deny that records the error.
    pub fn authorize(&self, req: &AccessRequest) -> Decision {
        if req.categories.is_empty() {
            return Decision::deny_error(
                vec!["request has no data categories (classify the record first)".to_owned()],
                Vec::new(),
            );
        }
        let (request, entities) = match self.build(req) {
            Ok(built) => built,
            Err(error) => return Decision::deny_error(vec![error], Vec::new()),
        };
        let response =
            self.inner
                .authorizer
                .is_authorized(&request, &self.inner.policies, &entities);
        let diagnostics = response.diagnostics();

        let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            let erroring: HashSet<String> = diagnostics
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                        e.policy_id().to_string()
                    }
                })
                .collect();
            return Decision::deny_error(errors, self.in_order(&erroring));
        }

        let determining: HashSet<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        let policy_ids = self.in_order(&determining);
        match response.decision() {
            cedar_policy::Decision::Allow => Decision {
                allowed: true,
                policy_ids,
                errors: Vec::new(),
                reason: "permitted".to_owned(),
            },
            cedar_policy::Decision::Deny => {
                let reason = policy_ids
                    .iter()
                    .find_map(|id| self.inner.reasons.get(id).cloned())
                    .unwrap_or_else(|| {
                        if policy_ids.is_empty() {
                            format!("no policy permits purpose {} for this request", req.purpose)
                        } else {
                            "denied by federation policy".to_owned()
                        }
                    });
                Decision {
                    allowed: false,
                    policy_ids,
                    errors: Vec::new(),
                    reason,
                }
            }
        }
    }

    /// Policy ids from `set`, in load order (deterministic audit records).
    fn in_order(&self, set: &HashSet<String>) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .order
            .iter()
            .filter(|id| set.contains(*id))
            .cloned()
            .collect();
        // Ids Cedar reported that we do not know (should not happen) are kept,
        // sorted, rather than dropped from the audit record.
        let mut unknown: Vec<String> = set
            .iter()
            .filter(|id| !self.inner.order.contains(id))
            .cloned()
            .collect();
        unknown.sort();
        ids.extend(unknown);
        ids
    }

    /// Builds the Cedar request and entities. Errors are returned as text for
    /// the audit record; they contain facility ids but never patient data.
    fn build(&self, req: &AccessRequest) -> Result<(Request, Entities), String> {
        let inner = &self.inner;
        let recipient = req.recipient();
        let sender = req.sender();
        let facility_uid = |id: &str| {
            EntityUid::from_type_name_and_id(inner.facility_type.clone(), EntityId::new(id))
        };
        let facility_entity = |f: &FacilityInfo| {
            Entity::new(
                facility_uid(&f.id),
                HashMap::from([
                    (
                        "kind".to_owned(),
                        RestrictedExpression::new_string(f.kind.clone()),
                    ),
                    (
                        "active".to_owned(),
                        RestrictedExpression::new_bool(f.active),
                    ),
                ]),
                HashSet::new(),
            )
            .map_err(|e| format!("facility entity: {e}"))
        };
        let mut entities = vec![facility_entity(recipient)?];
        if sender.id != recipient.id {
            entities.push(facility_entity(sender)?);
        } else if sender != recipient {
            return Err("local and peer facility share an id but differ".to_owned());
        }

        let categories = RestrictedExpression::new_set(
            req.categories
                .iter()
                .map(|c| RestrictedExpression::new_string(c.as_str().to_owned())),
        );
        let record_uid = EntityUid::from_type_name_and_id(
            inner.record_type.clone(),
            EntityId::new(RECORD_ENTITY_ID),
        );
        entities.push(
            Entity::new(
                record_uid.clone(),
                HashMap::from([
                    ("categories".to_owned(), categories),
                    (
                        "contentType".to_owned(),
                        RestrictedExpression::new_string(req.content_type.clone()),
                    ),
                    (
                        "sender".to_owned(),
                        RestrictedExpression::new_entity_uid(facility_uid(&sender.id)),
                    ),
                ]),
                HashSet::new(),
            )
            .map_err(|e| format!("record entity: {e}"))?,
        );
        // Not validated against the schema per request: these entities come from this
        // function alone, with fixed attribute types, and schema validation was a quarter of
        // a decision's cost. `built_entities_conform_to_the_schema` checks them against it.
        let entities =
            Entities::from_entities(entities, None).map_err(|e| format!("entities: {e}"))?;

        let consent = RestrictedExpression::new_record([
            (
                "denyApplies".to_owned(),
                RestrictedExpression::new_bool(req.consent.deny_applies),
            ),
            (
                "permittedCategories".to_owned(),
                RestrictedExpression::new_set(
                    req.consent
                        .permitted_categories
                        .iter()
                        .map(|c| RestrictedExpression::new_string(c.as_str().to_owned())),
                ),
            ),
            (
                "researchPermit".to_owned(),
                RestrictedExpression::new_bool(req.consent.research_permit),
            ),
        ])
        .map_err(|e| format!("consent context: {e}"))?;
        // The Action variant and the flag mean the same thing: a break-glass
        // action is always evaluated with breakGlass = true.
        let break_glass = req.break_glass || req.action == Action::BreakGlass;
        let mut context = vec![
            (
                "purpose".to_owned(),
                RestrictedExpression::new_string(req.purpose.as_str().to_owned()),
            ),
            (
                "breakGlass".to_owned(),
                RestrictedExpression::new_bool(break_glass),
            ),
            ("consent".to_owned(), consent),
            (
                "now".to_owned(),
                RestrictedExpression::new_long(req.now_unix),
            ),
        ];
        if let Some(role) = &req.clinician_role {
            context.push((
                "clinicianRole".to_owned(),
                RestrictedExpression::new_string(role.clone()),
            ));
        }
        let context = Context::from_pairs(context).map_err(|e| format!("context: {e}"))?;

        let action = EntityUid::from_type_name_and_id(
            inner.action_type.clone(),
            EntityId::new(req.action.cedar_id()),
        );
        let request = Request::new(
            facility_uid(&recipient.id),
            action,
            record_uid,
            context,
            Some(&inner.schema),
        )
        .map_err(|e| format!("request: {e}"))?;
        Ok((request, entities))
    }
}

/// Source position of a policy Cedar parsed from one file: Cedar names them
/// `policy0`, `policy1`, … in source order.
fn policy_position(id: &PolicyId) -> usize {
    id.to_string()
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cedar_policy::Entities;

    use super::*;
    use crate::consent::ConsentState;

    fn facility(id: &str, kind: &str, active: bool) -> FacilityInfo {
        FacilityInfo {
            id: id.to_owned(),
            kind: kind.to_owned(),
            active,
        }
    }

    /// `build` skips schema validation of its entities at run time; here they are validated,
    /// and the decision with validated entities must equal `authorize`'s, for every action,
    /// purpose, facility kind and a spread of categories and consent states.
    #[test]
    fn built_entities_conform_to_the_schema() {
        let engine = PolicyEngine::embedded_defaults().expect("embedded defaults");
        let inner = &engine.inner;
        let category_sets: Vec<BTreeSet<Category>> = vec![
            BTreeSet::from([Category::General]),
            BTreeSet::from([Category::General, Category::MentalHealth]),
            Category::ALL.into_iter().collect(),
        ];
        let mut checked = 0;
        let mut allowed = 0;
        for action in [
            Action::Send,
            Action::Receive,
            Action::Request,
            Action::BreakGlass,
        ] {
            for purpose in Purpose::ALL {
                for kind in ["hospital", "clinic", "payer"] {
                    for categories in &category_sets {
                        for (deny_applies, permitted) in [
                            (false, BTreeSet::new()),
                            (false, categories.clone()),
                            (true, BTreeSet::new()),
                        ] {
                            let req = AccessRequest {
                                action,
                                counterparty: facility("peer-1", kind, true),
                                local: facility("local-1", "hospital", true),
                                clinician_role: Some("emergency-physician".to_owned()),
                                patient: "p".to_owned(),
                                categories: categories.clone(),
                                content_type: "application/fhir+json".to_owned(),
                                purpose,
                                break_glass: action == Action::BreakGlass,
                                consent: ConsentState {
                                    deny_applies,
                                    permitted_categories: permitted,
                                    research_permit: false,
                                    directive_ids: Vec::new(),
                                },
                                now_unix: 1_764_000_000,
                            };
                            let (request, built) = engine.build(&req).expect("build");
                            let validated =
                                Entities::from_entities(built.iter().cloned(), Some(&inner.schema))
                                    .unwrap_or_else(|e| panic!("{req:?}: {e}"));
                            let with_schema = inner.authorizer.is_authorized(
                                &request,
                                &inner.policies,
                                &validated,
                            );
                            let decision = engine.authorize(&req);
                            assert_eq!(
                                decision.allowed,
                                with_schema.decision() == cedar_policy::Decision::Allow,
                                "{req:?}"
                            );
                            checked += 1;
                            allowed += usize::from(decision.allowed);
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 5 * 3 * 3 * 3);
        // Both outcomes occur, so the comparison above is not vacuous.
        assert!(allowed > 0 && allowed < checked, "{allowed} of {checked}");
    }
}
