//! The on-disk encoding of every value: one version byte, then postcard. The version byte lets
//! a later release read old values (or refuse them loudly) instead of misparsing them.
//!
//! * Version 1: `0x01 || postcard(value)`, for values that hold no patient data (inbox entries,
//!   retention and time indexes, store metadata) and for audit entries, whose patient
//!   reference is sealed inside the entry (see the `audit` module).
//! * Version 2: `0x02 || nonce || AES-256-GCM(postcard(value)) || tag`, sealed under the
//!   store's sealing key with the tree and key as associated data (see the `protect`
//!   module): values that hold a patient reference or caller bytes that may (outbox entries,
//!   consent directives, pull requests, record bundles). A tree holds one version only; a
//!   value of the other is refused.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::protect::{aad, Keys};

/// The version of plain values.
pub(crate) const VERSION: u8 = 1;

/// The version of sealed values.
pub(crate) const SEALED: u8 = 2;

pub(crate) fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![VERSION]).map_err(|source| StoreError::Encode { what, source })
}

/// Strips and checks the version byte.
pub(crate) fn body<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a [u8], StoreError> {
    match bytes.split_first() {
        Some((&VERSION, body)) => Ok(body),
        Some((&version, _)) => Err(StoreError::UnsupportedVersion { what, version }),
        None => Err(StoreError::Corrupt {
            what,
            problem: "empty value",
        }),
    }
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    decode_body(what, body(what, bytes)?)
}

/// Decodes postcard bytes without a version byte, refusing trailing garbage.
pub(crate) fn decode_body<'a, T: Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(StoreError::Corrupt {
            what,
            problem: "trailing bytes",
        })
    }
}

/// `0x02 || seal(postcard(value))`, bound to `tree` and `key`.
pub(crate) fn encode_sealed<T: Serialize + ?Sized>(
    keys: &Keys,
    (tree, key): (&'static str, &[u8]),
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let plain =
        postcard::to_allocvec(value).map_err(|source| StoreError::Encode { what: tree, source })?;
    let mut out = vec![SEALED];
    keys.seal_into(&aad(tree, key), &plain, &mut out)?;
    Ok(out)
}

/// Opens and decodes a value written by [`encode_sealed`] under the same `tree` and `key`.
pub(crate) fn decode_sealed<T: serde::de::DeserializeOwned>(
    keys: &Keys,
    (tree, key): (&'static str, &[u8]),
    bytes: &[u8],
) -> Result<T, StoreError> {
    let sealed = match bytes.split_first() {
        Some((&SEALED, sealed)) => sealed,
        Some((&version, _)) => {
            return Err(StoreError::UnsupportedVersion {
                what: tree,
                version,
            })
        }
        None => {
            return Err(StoreError::Corrupt {
                what: tree,
                problem: "empty value",
            })
        }
    };
    let plain = keys.open(tree, &aad(tree, key), sealed)?;
    decode_body(tree, &plain)
}
