//! The on-disk encoding of every value: one version byte, then postcard. The version byte lets
//! a later release read old values (or refuse them loudly) instead of misparsing them.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// The only encoding version written today.
pub(crate) const VERSION: u8 = 1;

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
