//! Opaque keyed collections whose meaning belongs to other crates: consent directives (the
//! policies crate), pull requests and the EMR's record source tree (the gateway).
//! Trees: `consents` (directive id → (patient, bytes)), `consents_by_patient`
//! (`len_u32_be(patient) || patient || directive id`; the length prefix makes the prefix
//! scan exact for any patient string), `requests` (id → bytes), `records` (patient → bytes).

use sled::transaction::{ConflictableTransactionError, Transactional};

use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::{tx_err, Store};

impl Store {
    /// Stores (or replaces) a consent directive for `patient`. Replacing a directive that was
    /// filed under another patient moves it.
    pub fn consent_put(
        &self,
        patient: &str,
        directive_id: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let value = encode("consent", &(patient, bytes))?;
        let index_key = consent_index_key(patient, directive_id)?;
        let t = self.trees();
        (&t.consents, &t.consents_by_patient)
            .transaction(|(consents, by_patient)| {
                if let Some(old) = consents.get(directive_id)? {
                    let (old_patient, _): (String, Vec<u8>) =
                        decode("consent", &old).map_err(ConflictableTransactionError::Abort)?;
                    if old_patient != patient {
                        let old_key = consent_index_key(&old_patient, directive_id)
                            .map_err(ConflictableTransactionError::Abort)?;
                        by_patient.remove(old_key)?;
                    }
                }
                consents.insert(directive_id.as_bytes(), value.as_slice())?;
                by_patient.insert(index_key.as_slice(), &[][..])?;
                Ok(())
            })
            .map_err(tx_err("store consent directive"))
    }

    /// The directives filed for `patient`, as (directive id, bytes), ordered by directive id.
    pub fn consent_list(&self, patient: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = self.trees();
        let prefix = consent_index_key(patient, "")?;
        let mut out = Vec::new();
        for item in t.consents_by_patient.scan_prefix(&prefix) {
            let (key, _) = item.map_err(StoreError::sled("list consent directives"))?;
            let id = key
                .get(prefix.len()..)
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
            .map(|v| decode("consent", &v))
            .transpose()
    }

    /// Stores (or replaces) the state of a pull request.
    pub fn request_put(&self, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let value = encode("request", bytes)?;
        self.trees()
            .requests
            .insert(id, value)
            .map_err(StoreError::sled("store request"))?;
        Ok(())
    }

    pub fn request_get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.trees()
            .requests
            .get(id)
            .map_err(StoreError::sled("read request"))?
            .map(|v| decode("request", &v))
            .transpose()
    }

    /// Every request as (id, bytes), ordered by id.
    pub fn request_list(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees().requests.iter() {
            let (key, value) = item.map_err(StoreError::sled("list requests"))?;
            let id = String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt {
                what: "request",
                problem: "key is not UTF-8",
            })?;
            out.push((id, decode("request", &value)?));
        }
        Ok(out)
    }

    /// Stores (or replaces) the EMR's record bundle for `patient`.
    pub fn record_put(&self, patient: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let value = encode("record", bytes)?;
        self.trees()
            .records
            .insert(patient, value)
            .map_err(StoreError::sled("store record"))?;
        Ok(())
    }

    pub fn record_get(&self, patient: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.trees()
            .records
            .get(patient)
            .map_err(StoreError::sled("read record"))?
            .map(|v| decode("record", &v))
            .transpose()
    }
}

fn consent_index_key(patient: &str, directive_id: &str) -> Result<Vec<u8>, StoreError> {
    let len = u32::try_from(patient.len()).map_err(|_| StoreError::InvalidKey {
        what: "patient reference",
        problem: "longer than 4 GiB",
    })?;
    let mut key = Vec::with_capacity(4 + patient.len() + directive_id.len());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(patient.as_bytes());
    key.extend_from_slice(directive_id.as_bytes());
    Ok(key)
}
