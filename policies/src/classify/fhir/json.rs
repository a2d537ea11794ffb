//! A byte-level JSON tokenizer over a `&str` (the document, checked as UTF-8
//! once): whitespace, strings (validated, unescaped only on demand), numbers
//! (checked against JSON's grammar, never converted), literals.
//!
//! It accepts a subset of what serde_json accepts, never more: whatever
//! serde_json refuses (bad syntax, a raw control character or a bad escape in
//! a string, a lone UTF-16 surrogate in `\u` escapes, a leading zero, a number
//! an `f64` cannot hold, nesting past its limit, anything after the value) it
//! answers with [`Undecided`], and so does it for a few things serde_json
//! accepts but this tokenizer leaves to it (numbers whose magnitude comes
//! near `f64::MAX`). The reader on top then asks serde_json, which gives the
//! exact answer and error position.

use std::borrow::Cow;

/// The tokenizer could not decide: the document is not JSON as serde_json
/// reads it, or holds something left to the full reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Undecided;

pub(crate) type Result<T> = std::result::Result<T, Undecided>;

/// serde_json's nesting limit: it refuses the 128th array or object opened
/// inside each other (its `remaining_depth` of 128 reaches zero).
pub(crate) const MAX_DEPTH: usize = 127;

/// A number whose integer digits plus positive exponent exceed this may not
/// fit an `f64` (serde_json refuses those, `NumberOutOfRange`): left to it.
/// `f64::MAX` is about 1.8e308; below 10^300 nothing overflows.
const MAX_DECIMAL_MAGNITUDE: i64 = 300;

/// One pass over a JSON document.
pub(crate) struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

/// A JSON string as it stands in the document: its content between the
/// quotes, escapes still escaped (they have been checked).
#[derive(Clone, Copy)]
pub(crate) struct RawStr<'a> {
    /// The document, and where the content is in it: made a `&str` only
    /// when it is looked at.
    text: &'a str,
    start: usize,
    end: usize,
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// The content's bytes, if it has no escapes (then they are the string
    /// itself).
    pub(crate) fn plain(self) -> Option<&'a [u8]> {
        let bytes = self.text.as_bytes().get(self.start..self.end)?;
        (!self.escaped).then_some(bytes)
    }

    /// The string, unescaped: borrowed unless it has escapes.
    pub(crate) fn decode(self) -> Result<Cow<'a, str>> {
        // Both ends are next to a quote, so on character boundaries.
        let raw = self.text.get(self.start..self.end).ok_or(Undecided)?;
        if !self.escaped {
            return Ok(Cow::Borrowed(raw));
        }
        let bytes = raw.as_bytes();
        let mut out = String::with_capacity(raw.len());
        let mut run = 0;
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'\\' {
                out.push_str(raw.get(run..i).ok_or(Undecided)?);
                i = escape(bytes, i, Some(&mut out))?;
                run = i;
            } else {
                i += 1;
            }
        }
        out.push_str(raw.get(run..).ok_or(Undecided)?);
        Ok(Cow::Owned(out))
    }
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    /// The next byte that is not JSON whitespace (the cursor moves to it).
    #[inline(always)]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        // JSON whitespace is at most b' ': anything above is the next token.
        match self.bytes.get(self.pos) {
            Some(&b) if b > b' ' => Some(b),
            _ => self.skip_whitespace(),
        }
    }

    fn skip_whitespace(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// Steps over the byte [`Cursor::peek`] returned.
    pub(crate) fn bump(&mut self) {
        self.pos += 1;
    }

    /// Steps over `b`, the next byte after whitespace, or fails.
    pub(crate) fn expect(&mut self, b: u8) -> Result<()> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Undecided)
        }
    }

    /// Nothing but whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// A string; the cursor is at its opening quote.
    #[inline(always)]
    pub(crate) fn string(&mut self) -> Result<RawStr<'a>> {
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos = next_special(self.bytes, self.pos);
            match self.bytes.get(self.pos) {
                Some(b'"') => {
                    let end = self.pos;
                    self.pos += 1;
                    return Ok(RawStr {
                        text: self.text,
                        start,
                        end,
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.pos = escape(self.bytes, self.pos, None)?;
                }
                // A raw control character, or the end of the document.
                _ => return Err(Undecided),
            }
        }
    }

    /// A number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`); the cursor
    /// is at its first byte.
    pub(crate) fn number(&mut self) -> Result<()> {
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let int_digits = match self.bytes.get(self.pos) {
            Some(b'0') => {
                self.pos += 1;
                // serde_json refuses a leading zero ("01").
                if self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    return Err(Undecided);
                }
                1
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Undecided),
        };
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Undecided);
            }
        }
        let mut exponent: i64 = 0;
        if matches!(self.bytes.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            let negative = match self.bytes.get(self.pos) {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            let start = self.pos;
            while let Some(d) = self.bytes.get(self.pos).filter(|b| b.is_ascii_digit()) {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i64::from(d - b'0'));
                self.pos += 1;
            }
            if self.pos == start {
                return Err(Undecided);
            }
            if negative {
                exponent = -exponent;
            }
        }
        let magnitude = i64::try_from(int_digits)
            .unwrap_or(i64::MAX)
            .saturating_add(exponent);
        if magnitude > MAX_DECIMAL_MAGNITUDE {
            return Err(Undecided);
        }
        Ok(())
    }

    /// Steps over ASCII digits; returns how many.
    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `word` (`true`, `false`, `null`); the cursor is at its first byte.
    pub(crate) fn literal(&mut self, word: &[u8]) -> Result<()> {
        let end = self.pos + word.len();
        if self.bytes.get(self.pos..end) == Some(word) {
            self.pos = end;
            Ok(())
        } else {
            Err(Undecided)
        }
    }
}

/// The position of the first `"`, `\` or control character at or after `i`
/// (`bytes.len()` if none): eight bytes at a time, as serde_json does.
#[inline(always)]
fn next_special(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_ne_bytes([0x20; 8]);
    while let Some(chunk) = bytes.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*chunk);
        // A byte's high bit is set in each term where that byte is (for the lowest such byte
        // exactly; higher ones may be borrow artefacts, which trailing_zeros never reaches).
        let quote = (w ^ QUOTES).wrapping_sub(ONES) & !(w ^ QUOTES);
        let backslash = (w ^ BACKSLASHES).wrapping_sub(ONES) & !(w ^ BACKSLASHES);
        let control = w.wrapping_sub(SPACES) & !w;
        let found = (quote | backslash | control) & HIGHS;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// One escape sequence at `i` (a backslash), checked as serde_json checks it
/// (a `\u` surrogate must be a leading one followed by `\u` and a trailing
/// one); appended to `out` if given. Returns the position after it.
fn escape(bytes: &[u8], i: usize, out: Option<&mut String>) -> Result<usize> {
    let simple = match bytes.get(i + 1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => {
            let n = hex4(bytes, i + 2)?;
            let (c, next) = match n {
                0xDC00..=0xDFFF => return Err(Undecided),
                0xD800..=0xDBFF => {
                    if bytes.get(i + 6..i + 8) != Some(b"\\u") {
                        return Err(Undecided);
                    }
                    let low = hex4(bytes, i + 8)?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return Err(Undecided);
                    }
                    let c = 0x1_0000 + (((n - 0xD800) << 10) | (low - 0xDC00));
                    (c, i + 12)
                }
                n => (n, i + 6),
            };
            if let Some(out) = out {
                out.push(char::from_u32(c).ok_or(Undecided)?);
            }
            return Ok(next);
        }
        _ => return Err(Undecided),
    };
    if let Some(out) = out {
        out.push(simple);
    }
    Ok(i + 2)
}

/// Four hex digits at `i`.
fn hex4(bytes: &[u8], i: usize) -> Result<u32> {
    let digits = bytes.get(i..i + 4).ok_or(Undecided)?;
    let mut n = 0;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(Undecided),
        };
        n = (n << 4) | u32::from(v);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(json: &str) -> Result<String> {
        let mut c = Cursor::new(json);
        let s = c.string()?;
        if !c.at_end() {
            return Err(Undecided);
        }
        s.decode().map(Cow::into_owned)
    }

    #[test]
    fn strings_decode_as_serde_json_does() {
        for json in [
            r#""""#,
            r#""plain""#,
            r#""a\"b\\c\/d\b\f\n\r\t""#,
            r#""\u0063ode \u00e9 \u20AC \ud83d\ude00 é""#,
            r#""twelve bytes and then some\n""#,
        ] {
            let want: String = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(string(json), Ok(want), "{json}");
        }
        for bad in [
            r#""unterminated"#,
            r#""\q""#,
            r#""\u12""#,
            r#""\u12g4""#,
            r#""\ud800""#,
            r#""\ud800\u0041""#,
            r#""\udc00\ud800""#,
            r#""\ud800x""#,
            "\"raw\u{1}control\"",
            "\"raw\ttab in a long string\"",
        ] {
            assert!(serde_json::from_str::<String>(bad).is_err(), "{bad}");
            assert_eq!(string(bad), Err(Undecided), "{bad}");
        }
    }

    #[test]
    fn specials_are_found_in_every_lane() {
        for at in 0..20 {
            for special in [b'"', b'\\', 0x1f, 0x00] {
                let mut bytes = vec![b'a'; 20];
                // Bytes at and above 0x80 and just above the control range are not special.
                bytes[(at + 1) % 20] = 0xc3;
                if let Some(b) = bytes.get_mut(at) {
                    *b = special;
                }
                let first = bytes
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                    .unwrap_or(20);
                assert_eq!(next_special(&bytes, 0), first, "{at} {special}");
            }
        }
        assert_eq!(next_special(b" !#[]~\x7f\xff\x80 ", 0), 10);
    }

    #[test]
    fn numbers_follow_the_grammar() {
        for good in [
            "0", "-0", "1", "-12", "1.5", "0.25e-3", "1E5", "1e+5", "9e299", "1e-400",
        ] {
            let mut c = Cursor::new(good);
            assert_eq!(c.number(), Ok(()), "{good}");
            assert!(c.at_end(), "{good}");
            assert!(serde_json::from_str::<serde_json::Value>(good).is_ok());
        }
        for left in ["01", "-", "1.", ".5", "1e", "1e+", "-a", "1e400", "1e301"] {
            let mut c = Cursor::new(left);
            assert!(c.number().is_err() || !c.at_end(), "{left}");
        }
    }
}
