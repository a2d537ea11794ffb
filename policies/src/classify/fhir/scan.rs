//! The FHIR reader the gateway runs: one pass of the byte-level tokenizer
//! ([`super::json`]) over the document, the FHIR logic in [`super::walk`],
//! as [`super::stream`] runs it over serde_json's tokenizer.
//!
//! Why not serde_json: its visitor machinery (a `deserialize_any` and a
//! `Seen` per value, every number converted, every key through a seed) was
//! ~2.2 M of the ~2.2 M instructions a 92 KB Synthea bundle costs to classify;
//! this reader only validates what it does not look at and decodes only the
//! strings it looks at. A hand-written tokenizer rather than a crate such as
//! jiter: what counts is accepting exactly what serde_json accepts (duplicate
//! keys, its nesting limit, lone surrogates, out-of-range numbers), which a
//! general-purpose iterator decides differently.
//!
//! Fail closed: whatever this reader cannot decide (anything serde_json would
//! refuse, and the few things left to it, see [`super::json`]) is read again
//! by [`super::stream`], whose answer (facts, or the error with its
//! position) is the answer. So an error costs two reads, and a decided
//! document is one serde_json would read to the same facts; the equivalence
//! tests check both on every shared record and mutations of them.

use std::borrow::Cow;

use super::json::{Cursor, Result, Undecided, MAX_DEPTH};
use super::walk::{Identifiers, KeyKind, Object, Role, Seen, Walk};
use super::{stream, FhirFacts};
use crate::classify::table::Table;
use crate::classify::ClassifyError;

/// Reads one FHIR JSON document (BOM already stripped): this reader, or the
/// streaming one where this one cannot decide.
pub(crate) fn read(table: &Table, bytes: &[u8]) -> std::result::Result<FhirFacts, ClassifyError> {
    match decide(table, bytes) {
        Ok(facts) => Ok(facts),
        Err(Undecided) => stream::read(table, bytes),
    }
}

/// This reader alone: the facts, or [`Undecided`].
pub(crate) fn decide(table: &Table, bytes: &[u8]) -> Result<FhirFacts> {
    // One check of the whole document, as the streaming reader does; strings are then
    // sliced out of the `&str` without another.
    let text = std::str::from_utf8(bytes).map_err(|_| Undecided)?;
    let mut scan = Scan {
        cursor: Cursor::new(text),
        walk: Walk::new(table),
        keys: Vec::new(),
        depth: 0,
    };
    scan.value(Role::Root, false)?;
    if !scan.cursor.at_end() {
        return Err(Undecided);
    }
    Ok(scan.walk.finish())
}

struct Scan<'t, 'a> {
    cursor: Cursor<'a>,
    walk: Walk<'t, 'a>,
    /// Keys of the objects being read, outermost first, unescaped; each
    /// object checks its new keys against its own tail of this stack.
    keys: Vec<Cow<'a, str>>,
    /// Arrays and objects open around the cursor.
    depth: usize,
}

impl<'a> Scan<'_, 'a> {
    /// One value in `role`; `capture` keeps a string value.
    fn value(&mut self, role: Role, capture: bool) -> Result<Seen<'a>> {
        match self.cursor.peek() {
            Some(b'{') => self.object(role),
            Some(b'[') => self.array(role),
            Some(b'"') => {
                let s = self.cursor.string()?;
                if capture || role == Role::Profile {
                    Ok(self.walk.string(role, capture, s.decode()?))
                } else {
                    Ok(Seen::Other)
                }
            }
            Some(b'-' | b'0'..=b'9') => self.cursor.number().map(|()| Seen::Other),
            Some(b't') => self.cursor.literal(b"true").map(|()| Seen::Other),
            Some(b'f') => self.cursor.literal(b"false").map(|()| Seen::Other),
            Some(b'n') => self.cursor.literal(b"null").map(|()| Seen::Other),
            _ => Err(Undecided),
        }
    }

    fn open(&mut self) -> Result<()> {
        self.cursor.bump();
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Undecided);
        }
        Ok(())
    }

    fn array(&mut self, role: Role) -> Result<Seen<'a>> {
        self.open()?;
        let element = role.element();
        let mut identifiers = (role == Role::Identifiers).then(Identifiers::default);
        if self.cursor.peek() == Some(b']') {
            self.cursor.bump();
        } else {
            loop {
                let seen = self.value(element, false)?;
                match &mut identifiers {
                    Some(values) => values.element(seen),
                    None => drop(seen),
                }
                match self.cursor.peek() {
                    Some(b',') => self.cursor.bump(),
                    Some(b']') => {
                        self.cursor.bump();
                        break;
                    }
                    _ => return Err(Undecided),
                }
            }
        }
        self.depth -= 1;
        Ok(identifiers.map_or(Seen::Array, Identifiers::end))
    }

    fn object(&mut self, role: Role) -> Result<Seen<'a>> {
        self.open()?;
        let start = self.keys.len();
        let mut object = Object::new(role);
        if self.cursor.peek() == Some(b'}') {
            self.cursor.bump();
        } else {
            loop {
                if self.cursor.peek() != Some(b'"') {
                    return Err(Undecided);
                }
                let raw = self.cursor.string()?;
                let key = match raw.plain() {
                    Some(plain) => Cow::Borrowed(plain),
                    None => raw.decode()?,
                };
                // A repeated key: the streaming reader refuses the document (RepeatedKey).
                if self.keys.iter().skip(start).any(|k| *k == key) {
                    return Err(Undecided);
                }
                let k = KeyKind::of(key.as_bytes());
                self.cursor.expect(b':')?;
                let (child, capture) = object.child(k);
                let seen = self.value(child, capture)?;
                object.value(k, seen);
                self.keys.push(key);
                match self.cursor.peek() {
                    Some(b',') => self.cursor.bump(),
                    Some(b'}') => {
                        self.cursor.bump();
                        break;
                    }
                    _ => return Err(Undecided),
                }
            }
        }
        self.keys.truncate(start);
        self.depth -= 1;
        Ok(object.end(&mut self.walk))
    }
}
