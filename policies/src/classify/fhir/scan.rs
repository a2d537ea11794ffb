//! The FHIR reader the gateway runs: one pass of the byte-level tokenizer
//! ([`super::json`]) over the document, the FHIR logic in [`super::walk`],
//! as [`super::stream`] runs it over serde_json's tokenizer.
//!
//! Why not serde_json: classifying the transfer benchmark's 92 KB Synthea
//! bundle cost 2.19 M instructions through it (callgrind, BENCHMARKS.md,
//! issue 17), nearly all of it serde_json's tokenizer and visitor machinery
//! (a `deserialize_any` and a `Seen` per value, every number converted, every
//! key through a seed); this reader validates what it does not look at
//! without converting it, decodes only the strings it looks at, reads the
//! most common object (a Coding, an extension: [`super::walk::Plain`]) with
//! three fields instead of seventeen, and checks repeated keys with a bit per
//! key name it knows. A hand-written tokenizer rather than a crate such as
//! jiter: what counts is accepting exactly what serde_json accepts (repeated
//! keys refused, its nesting limit, lone surrogates, out-of-range numbers),
//! which a general-purpose iterator decides its own way.
//!
//! Fail closed: whatever this reader cannot decide (anything serde_json would
//! refuse, and the few things left to it, see [`super::json`]) is read again
//! by [`super::stream`], whose answer (facts, or the error with its
//! position) is the answer. So an error costs two reads, and a decided
//! document is one serde_json would read to the same facts; the equivalence
//! tests check both on every shared record and mutations of them.

use super::json::{Cursor, Result, Undecided, MAX_DEPTH};
use super::walk::{Identifiers, KeyKind, Members, Object, Plain, Role, Seen, Walk};
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
        escaped_keys: Vec::new(),
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
    /// Keys of the objects being read whose kind has no bit of its own
    /// ([`KeyKind::bit`]), outermost first; each object checks its new keys
    /// against its own tail of this stack, and the others against a mask.
    keys: Vec<Key<'a>>,
    /// The unescaped text of escaped keys ([`Key::Escaped`] indexes it).
    escaped_keys: Vec<String>,
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
        let seen = if role == Role::Other {
            self.members(Plain::default())
        } else {
            self.members(Object::new(role))
        }?;
        self.depth -= 1;
        Ok(seen)
    }

    /// The members of an object, after its `{`.
    fn members<M: Members<'a>>(&mut self, mut object: M) -> Result<Seen<'a>> {
        if self.cursor.peek() == Some(b'}') {
            self.cursor.bump();
            return Ok(object.end(&mut self.walk));
        }
        let start = self.keys.len();
        let mut seen_kinds = 0u32;
        loop {
            if self.cursor.peek() != Some(b'"') {
                return Err(Undecided);
            }
            let raw = self.cursor.string()?;
            let (k, key) = match raw.plain() {
                Some(plain) => (KeyKind::of(plain), Key::Plain(plain)),
                None => {
                    let decoded = raw.decode()?.into_owned();
                    let k = KeyKind::of(decoded.as_bytes());
                    self.escaped_keys.push(decoded);
                    (k, Key::Escaped(self.escaped_keys.len() - 1))
                }
            };
            // A repeated key: the streaming reader refuses the document (RepeatedKey).
            let bit = k.bit();
            if bit != 0 {
                if seen_kinds & bit != 0 {
                    return Err(Undecided);
                }
                seen_kinds |= bit;
            } else {
                let name = self.name(key)?;
                for earlier in self.keys.get(start..).unwrap_or_default() {
                    if self.name(*earlier)? == name {
                        return Err(Undecided);
                    }
                }
                self.keys.push(key);
            }
            self.cursor.expect(b':')?;
            let (child, capture) = object.child(k);
            let seen = self.value(child, capture)?;
            object.value(k, seen);
            match self.cursor.peek() {
                Some(b',') => self.cursor.bump(),
                Some(b'}') => {
                    self.cursor.bump();
                    break;
                }
                _ => return Err(Undecided),
            }
        }
        self.keys.truncate(start);
        Ok(object.end(&mut self.walk))
    }

    /// A key's unescaped text, as bytes (compared with other keys only).
    fn name(&self, key: Key<'a>) -> Result<&[u8]> {
        match key {
            Key::Plain(name) => Ok(name),
            Key::Escaped(i) => self
                .escaped_keys
                .get(i)
                .map(String::as_bytes)
                .ok_or(Undecided),
        }
    }
}

/// An object key on the repeated-key stack.
#[derive(Clone, Copy)]
enum Key<'a> {
    /// Without escapes: the key as it stands in the document.
    Plain(&'a [u8]),
    /// With escapes: its unescaped text in `Scan::escaped_keys`.
    Escaped(usize),
}
