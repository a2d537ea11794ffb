//! Opaque keyed collections whose meaning belongs to other crates: consent directives (the
//! policies crate), pull requests and the EMR's record source tree (the gateway).
//!
//! Trees (values sealed, codec version 2, see the `protect` module):
//! * `consents`: directive id → sealed `(patient, bytes)`; the directive bytes are the
//!   caller's encoding of the directive, which names the patient.
//! * `consents_by_patient`: `HMAC(index key, patient) || directive id`, empty values; the tag
//!   has a fixed length, so the prefix scan of one patient never reaches another's keys.
//! * `requests`: id → sealed bytes (a pull request's state names its patient).
//! * `records`: `HMAC(index key, patient)` → sealed bytes (the patient's record bundle).
//!
//! Directive and request ids are keys in clear: the gateway draws them at random.

use sled::transaction::ConflictableTransactionError;

use crate::codec::{decode_sealed, encode_sealed};
use crate::error::StoreError;
use crate::protect::{Keys, PatientTag, TAG_LEN};
use crate::types::{AuditEntry, AuditRecord};
use crate::Store;

pub(crate) const CONSENTS: &str = "consents";
pub(crate) const REQUESTS: &str = "requests";
pub(crate) const RECORDS: &str = "records";

impl Store {
    /// Stores (or replaces) a consent directive for `patient`. Replacing a directive that was
    /// filed under another patient moves it.
    pub fn consent_put(
        &self,
        patient: &str,
        directive_id: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.consent_put_audited(patient, directive_id, bytes, Vec::new())
            .map(|_| ())
    }

    /// [`Store::consent_put`] that appends `records` to the audit log in the same transaction:
    /// a consent change and its audit entry become durable together or not at all.
    pub fn consent_put_audited(
        &self,
        patient: &str,
        directive_id: &str,
        bytes: &[u8],
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let keys = self.keys();
        let value = encode_sealed(keys, (CONSENTS, directive_id.as_bytes()), &(patient, bytes))?;
        let index_key = consent_index_key(&keys.tag(patient), directive_id);
        let t = self.trees();
        let ((), entries) = self.write_audited(
            "store consent directive",
            [&t.consents, &t.consents_by_patient],
            |[consents, by_patient]| {
                if let Some(old) = consents.get(directive_id)? {
                    let (old_patient, _): (String, Vec<u8>) =
                        decode_consent(keys, directive_id, &old)
                            .map_err(ConflictableTransactionError::Abort)?;
                    if old_patient != patient {
                        by_patient
                            .remove(consent_index_key(&keys.tag(&old_patient), directive_id))?;
                    }
                }
                consents.insert(directive_id.as_bytes(), value.as_slice())?;
                by_patient.insert(index_key.as_slice(), &[][..])?;
                Ok(((), records.clone()))
            },
        )?;
        Ok(entries)
    }

    /// The directives filed for `patient`, as (directive id, bytes), ordered by directive id.
    pub fn consent_list(&self, patient: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = self.trees();
        let prefix = self.keys().tag(patient);
        let mut out = Vec::new();
        for item in t.consents_by_patient.scan_prefix(prefix) {
            let (key, _) = item.map_err(StoreError::sled("list consent directives"))?;
            let id = key
                .get(TAG_LEN..)
                .and_then(|id| std::str::from_utf8(id).ok())
                .ok_or(StoreError::Corrupt {
                    what: "consent index",
                    problem: "malformed key",
                })?;
            if let Some((_, bytes)) = self.consent_get(id)? {
                out.push((id.to_owned(), bytes));
            }
        }
        Ok(out)
    }

    /// A directive by id, with the patient it is filed under.
    pub fn consent_get(&self, directive_id: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.trees()
            .consents
            .get(directive_id)
            .map_err(StoreError::sled("read consent directive"))?
            .map(|v| decode_consent(self.keys(), directive_id, &v))
            .transpose()
    }

    /// Stores (or replaces) the state of a pull request.
    pub fn request_put(&self, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let value = encode_sealed(self.keys(), (REQUESTS, id.as_bytes()), bytes)?;
        self.trees()
            .requests
            .insert(id, value)
            .map_err(StoreError::sled("store request"))?;
        Ok(())
    }

    /// Stores `bytes` under `id` only if nothing is stored there; returns whether it did. The
    /// check and the write are one atomic step, so of two concurrent callers one wins.
    pub fn request_put_new(&self, id: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let value = encode_sealed(self.keys(), (REQUESTS, id.as_bytes()), bytes)?;
        let swapped = self
            .trees()
            .requests
            .compare_and_swap(id, None::<&[u8]>, Some(value))
            .map_err(StoreError::sled("store request"))?;
        Ok(swapped.is_ok())
    }

    /// Removes the entries whose ids sort in `from..to`; returns how many.
    pub fn request_remove_range(&self, from: &str, to: &str) -> Result<usize, StoreError> {
        let tree = &self.trees().requests;
        let mut removed = 0;
        for item in tree.range(from.as_bytes()..to.as_bytes()) {
            let (key, _) = item.map_err(StoreError::sled("list requests"))?;
            tree.remove(key)
                .map_err(StoreError::sled("remove request"))?;
            removed += 1;
        }
        Ok(removed)
    }

    pub fn request_get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.trees()
            .requests
            .get(id)
            .map_err(StoreError::sled("read request"))?
            .map(|v| decode_sealed(self.keys(), (REQUESTS, id.as_bytes()), &v))
            .transpose()
    }

    /// Every request as (id, bytes), ordered by id.
    pub fn request_list(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees().requests.iter() {
            let (key, value) = item.map_err(StoreError::sled("list requests"))?;
            let bytes = decode_sealed(self.keys(), (REQUESTS, &key), &value)?;
            let id = String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt {
                what: "request",
                problem: "key is not UTF-8",
            })?;
            out.push((id, bytes));
        }
        Ok(out)
    }

    /// Stores (or replaces) the EMR's record bundle for `patient`.
    pub fn record_put(&self, patient: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.record_put_audited(patient, bytes, Vec::new())
            .map(|_| ())
    }

    /// [`Store::record_put`] with its audit `records` in the same transaction.
    pub fn record_put_audited(
        &self,
        patient: &str,
        bytes: &[u8],
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let keys = self.keys();
        let key = keys.tag(patient);
        let value = encode_sealed(keys, (RECORDS, &key), bytes)?;
        let t = self.trees();
        let ((), entries) = self.write_audited("store record", [&t.records], |[tree]| {
            tree.insert(&key[..], value.as_slice())?;
            Ok(((), records.clone()))
        })?;
        Ok(entries)
    }

    pub fn record_get(&self, patient: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let keys = self.keys();
        let key = keys.tag(patient);
        self.trees()
            .records
            .get(key)
            .map_err(StoreError::sled("read record"))?
            .map(|v| decode_sealed(keys, (RECORDS, &key), &v))
            .transpose()
    }
}

fn decode_consent(
    keys: &Keys,
    directive_id: &str,
    value: &[u8],
) -> Result<(String, Vec<u8>), StoreError> {
    decode_sealed(keys, (CONSENTS, directive_id.as_bytes()), value)
}

/// `tag || directive id`.
pub(crate) fn consent_index_key(tag: &PatientTag, directive_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(TAG_LEN + directive_id.len());
    key.extend_from_slice(tag);
    key.extend_from_slice(directive_id.as_bytes());
    key
}
