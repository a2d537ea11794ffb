//! The patients a record is about: each distinct patient is a set of aliases
//! (ids, references, identifiers), so the gateway can count them and check a
//! declared patient against the one patient of a record.
//!
//! Aliases come in two strengths. *Keys* identify a patient within the record
//! and merge two sightings into one patient: a Patient's `fullUrl`,
//! `Patient/<id>`, a system-qualified identifier `system|value`, a CDA
//! `urn:oid:<root>|<extension>`. *Aliases* are everything a declared patient
//! id may be compared with: the keys plus the bare id and bare identifier
//! values. Bare values never merge patients: two hospitals' MRN "12345" are
//! not the same person.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// The distinct patients found in a record.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Patients {
    /// One alias set per distinct patient, sorted.
    groups: Vec<BTreeSet<String>>,
}

/// Why a record does not belong to exactly the declared patient. Carries no
/// patient identifier, so it can go into a refusal text as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatientProblem {
    #[error("the record names no patient")]
    NoPatient,
    #[error("the record's patient is not the declared patient")]
    Mismatch,
    #[error("the record holds data of {0} patients (one patient per transfer)")]
    Multiple(usize),
}

impl Patients {
    /// Number of distinct patients.
    pub fn count(&self) -> usize {
        self.groups.len()
    }

    /// Checks that the record is about exactly one patient and that `declared`
    /// is one of that patient's aliases (exact match).
    pub fn single_patient_matches(&self, declared: &str) -> Result<(), PatientProblem> {
        match self.groups.as_slice() {
            [] => Err(PatientProblem::NoPatient),
            [one] if one.contains(declared) => Ok(()),
            [_] => Err(PatientProblem::Mismatch),
            many => Err(PatientProblem::Multiple(many.len())),
        }
    }

    /// Is `alias` an alias of any patient of the record?
    pub fn mentions(&self, alias: &str) -> bool {
        self.groups.iter().any(|g| g.contains(alias))
    }

    /// The alias sets, one per patient. Patient data: reveal only to check or
    /// store it under protection, never to log it.
    pub fn alias_sets(&self) -> &[BTreeSet<String>] {
        &self.groups
    }
}

impl fmt::Debug for Patients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Patients(<{} redacted>)", self.groups.len())
    }
}

/// Collects sightings of patients and merges those that share a key.
#[derive(Default)]
pub(crate) struct PatientsBuilder {
    sightings: Vec<(Vec<String>, Vec<String>)>,
}

impl PatientsBuilder {
    /// One sighting: `keys` merge it with other sightings, `aliases` only
    /// match a declared id (keys are aliases too).
    pub(crate) fn add(&mut self, keys: Vec<String>, aliases: Vec<String>) {
        self.sightings.push((keys, aliases));
    }

    pub(crate) fn build(self) -> Patients {
        let n = self.sightings.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while let Some(&p) = parent.get(i) {
                if p == i {
                    break;
                }
                // Path halving keeps the trees flat.
                let grand = parent.get(p).copied().unwrap_or(p);
                if let Some(slot) = parent.get_mut(i) {
                    *slot = grand;
                }
                i = p;
            }
            i
        }
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (i, (keys, _)) in self.sightings.iter().enumerate() {
            for key in keys {
                match owner.get(key.as_str()) {
                    Some(&j) => {
                        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                        if a != b {
                            let (low, high) = (a.min(b), a.max(b));
                            if let Some(slot) = parent.get_mut(high) {
                                *slot = low;
                            }
                        }
                    }
                    None => {
                        owner.insert(key, i);
                    }
                }
            }
        }
        let mut index_of_root: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<BTreeSet<String>> = Vec::new();
        let roots: Vec<usize> = (0..n).map(|i| root(&mut parent, i)).collect();
        for ((keys, aliases), r) in self.sightings.into_iter().zip(roots) {
            let index = *index_of_root.entry(r).or_insert_with(|| {
                groups.push(BTreeSet::new());
                groups.len() - 1
            });
            if let Some(group) = groups.get_mut(index) {
                group.extend(keys);
                group.extend(aliases);
            }
        }
        groups.retain(|g| !g.is_empty());
        // A stable order, whatever order the record listed them in.
        groups.sort();
        Patients { groups }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn sightings_sharing_a_key_are_one_patient() {
        let mut b = PatientsBuilder::default();
        b.add(s(&["Patient/a", "urn:uuid:1"]), s(&["a", "mrn-1"]));
        b.add(s(&["urn:uuid:1"]), s(&[]));
        b.add(s(&["Patient/b"]), s(&["b"]));
        b.add(s(&["Patient/a"]), s(&[]));
        let p = b.build();
        assert_eq!(p.count(), 2);
        assert_eq!(
            p.single_patient_matches("a"),
            Err(PatientProblem::Multiple(2))
        );
        assert!(p.mentions("mrn-1") && p.mentions("b"));

        let mut b = PatientsBuilder::default();
        b.add(s(&["Patient/a"]), s(&["a", "mrn-1"]));
        b.add(s(&["Patient/a"]), s(&[]));
        let p = b.build();
        assert_eq!(p.single_patient_matches("mrn-1"), Ok(()));
        assert_eq!(p.single_patient_matches("Patient/a"), Ok(()));
        assert_eq!(
            p.single_patient_matches("wrong"),
            Err(PatientProblem::Mismatch)
        );
        assert_eq!(format!("{p:?}"), "Patients(<1 redacted>)");
        assert_eq!(
            PatientsBuilder::default()
                .build()
                .single_patient_matches("a"),
            Err(PatientProblem::NoPatient)
        );
    }

    #[test]
    fn chains_of_shared_keys_merge_transitively() {
        let mut b = PatientsBuilder::default();
        b.add(s(&["k1"]), s(&[]));
        b.add(s(&["k2"]), s(&[]));
        b.add(s(&["k3"]), s(&[]));
        b.add(s(&["k3", "k1"]), s(&[]));
        b.add(s(&["k2", "k3"]), s(&[]));
        assert_eq!(b.build().count(), 1);
    }
}
