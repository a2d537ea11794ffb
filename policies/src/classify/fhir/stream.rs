//! The serde_json FHIR reader: one pass over the JSON through serde_json's
//! tokenizer, without building a tree, the FHIR logic in [`super::walk`].
//! Strings are borrowed from the input (copied only when escaped). A repeated
//! object key is refused: JSON parsers differ on which value wins (a tree
//! keeps the last), so a repeated `code` could otherwise hide a sensitive code
//! from this check while a downstream parser sees it.
//!
//! The gateway ran this reader until the byte-level [`super::scan`] replaced
//! it; it stays as the scanner's fallback (whatever the scanner cannot decide,
//! this reader answers, errors and their positions included) and as the
//! reference the scanner is tested against.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::walk::{Identifiers, KeyKind, Members, Object, Role, Seen, Walk};
use super::FhirFacts;
use crate::classify::table::Table;
use crate::classify::{not_json, ClassifyError};

/// Reads one FHIR JSON document (BOM already stripped).
pub(crate) fn read(table: &Table, bytes: &[u8]) -> Result<FhirFacts, ClassifyError> {
    let mut scan = Scan {
        walk: Walk::new(table),
        keys: Vec::new(),
        duplicate_key: false,
    };
    // One UTF-8 check of the whole document is much cheaper than serde_json's check of every
    // string it reads from a byte slice. Invalid UTF-8 goes through the slice reader, which
    // reports where it is.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => scan_document(&mut scan, serde_json::Deserializer::from_str(text)),
        Err(_) => scan_document(&mut scan, serde_json::Deserializer::from_slice(bytes)),
    };
    if let Err(e) = parsed {
        if scan.duplicate_key {
            return Err(ClassifyError::RepeatedKey);
        }
        return Err(not_json(&e));
    }
    Ok(scan.walk.finish())
}

/// Runs the scan over one JSON document and checks nothing follows it.
fn scan_document<'de, R: serde_json::de::Read<'de>>(
    scan: &mut Scan<'_, 'de>,
    mut de: serde_json::Deserializer<R>,
) -> Result<(), serde_json::Error> {
    Node {
        scan,
        role: Role::Root,
        capture: false,
    }
    .deserialize(&mut de)?;
    de.end()
}

/// State of one streaming classification.
struct Scan<'t, 'de> {
    walk: Walk<'t, 'de>,
    /// Keys of the objects being read, outermost first; each object checks
    /// its new keys against its own tail of this stack.
    keys: Vec<Cow<'de, str>>,
    /// Set (and the parse aborted) on a repeated key.
    duplicate_key: bool,
}

/// Reads one value in a role; `capture` keeps a string value.
struct Node<'s, 't, 'de> {
    scan: &'s mut Scan<'t, 'de>,
    role: Role,
    capture: bool,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, 'de> {
    type Value = Seen<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Seen<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, 'de> {
    type Value = Seen<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Seen<'de>, E> {
        Ok(self
            .scan
            .walk
            .string(self.role, self.capture, Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Seen<'de>, E> {
        // Escaped string, unescaped into the parser's scratch buffer: copied only if kept.
        let v = if self.capture || self.role == Role::Profile {
            Cow::Owned(v.to_owned())
        } else {
            Cow::Borrowed("")
        };
        Ok(self.scan.walk.string(self.role, self.capture, v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Seen<'de>, E> {
        self.visit_str(&v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen<'de>, A::Error> {
        let scan = self.scan;
        let role = self.role.element();
        if self.role == Role::Identifiers {
            let mut values = Identifiers::default();
            while let Some(seen) = seq.next_element_seed(Node {
                scan: &mut *scan,
                role,
                capture: false,
            })? {
                values.element(seen);
            }
            return Ok(values.end());
        }
        while seq
            .next_element_seed(Node {
                scan: &mut *scan,
                role,
                capture: false,
            })?
            .is_some()
        {}
        Ok(Seen::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen<'de>, A::Error> {
        let scan = self.scan;
        let start = scan.keys.len();
        let mut object = Object::new(self.role);
        while let Some(key) = map.next_key_seed(Key)? {
            if scan.keys.iter().skip(start).any(|k| *k == key) {
                scan.duplicate_key = true;
                return Err(de::Error::custom("repeated object key"));
            }
            // One string match per key; everything after it matches on enums.
            let k = KeyKind::of(key.as_bytes());
            let (role, capture) = object.child(k);
            let seen = map.next_value_seed(Node {
                scan: &mut *scan,
                role,
                capture,
            })?;
            object.value(k, seen);
            scan.keys.push(key);
        }
        scan.keys.truncate(start);
        Ok(object.end(&mut scan.walk))
    }
}

/// Reads an object key, borrowed unless escaped.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}
