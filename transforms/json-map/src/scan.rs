//! One hand-written pass over a JSON object: finds the wanted top-level
//! members (as their raw text) and checks that the whole document is JSON,
//! without serde's visitor calls or a UTF-8 check per key and per value
//! (calls cost more in Wasm than natively: each one checks the deadline).
//!
//! It accepts only what the general path (a full parse into a
//! `serde_json::Value`) surely accepts, and reports `None` for everything
//! else, including some valid JSON it does not bother with: member names
//! with escapes, numbers with an exponent or longer than 64 bytes, nesting
//! deeper than 64, `\u` escapes of a lone surrogate. `None` sends the record
//! down the general path, which then gives its own result or error message.

/// How deep objects and arrays may nest here (serde_json stops at 128).
const MAX_DEPTH: usize = 64;
/// The longest number taken here (serde_json reads any length; a long one
/// may be out of `f64`'s range, which the general path reports).
const MAX_NUMBER: usize = 64;

/// Scans `doc`, which must be one JSON object (with whitespace around),
/// storing in `found[i]` the raw text of the last member named `wanted[i]`.
/// Returns the number of members, or `None` (see the module's comment).
pub(crate) fn object<'d>(
    doc: &'d [u8],
    wanted: &[String],
    found: &mut [Option<&'d [u8]>],
) -> Option<usize> {
    let mut s = Scan { b: doc, i: 0 };
    s.ws();
    if s.peek()? != b'{' {
        return None;
    }
    s.i += 1;
    s.ws();
    let mut members = 0;
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        loop {
            if s.peek()? != b'"' {
                return None;
            }
            let (key, escaped) = s.string()?;
            if escaped {
                return None;
            }
            s.ws();
            if s.peek()? != b':' {
                return None;
            }
            s.i += 1;
            s.ws();
            let start = s.i;
            s.scalar_or_value(1)?;
            members += 1;
            if let Some(at) = wanted.iter().position(|w| same(w.as_bytes(), key)) {
                found[at] = Some(&doc[start..s.i]);
            }
            s.ws();
            match s.peek()? {
                b',' => {
                    s.i += 1;
                    s.ws();
                }
                b'}' => {
                    s.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    s.ws();
    (s.i == doc.len()).then_some(members)
}

/// Byte equality, 8 bytes at a time, without a call to `memcmp` (in Wasm a
/// byte loop behind a call; member names are short).
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        if word(x) != word(y) {
            return false;
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .all(|(x, y)| x == y)
}

/// Whether `text` holds a `\`, 8 bytes at a time (a Wasm `memchr` reads 4).
#[inline]
pub(crate) fn has_backslash(text: &[u8]) -> bool {
    let mut chunks = text.chunks_exact(8);
    for c in &mut chunks {
        if zero_byte(word(c) ^ (ONES * u64::from(b'\\'))) {
            return true;
        }
    }
    chunks.remainder().contains(&b'\\')
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether a byte of `x` is zero (exact: no false positives).
#[inline]
fn zero_byte(x: u64) -> bool {
    zeros(x) != 0
}

/// Eight bytes as a word (`c` is a chunk of exactly 8).
#[inline]
fn word(c: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(c);
    u64::from_le_bytes(w)
}

/// Where the 8 bytes of `w` hold a `"`, a `\\`, a control character or a
/// byte of a non-ASCII character (the bytes a string scan must look at):
/// the lowest set bit is the high bit of the first such byte (the bits
/// above it may be wrong), 0 if there is none.
#[inline]
fn special(w: u64) -> u64 {
    // Bytes below 0x20: subtracting 0x20 borrows into the high bit (for
    // bytes below 0x80; bytes from 0x80 have their high bit set anyway).
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    control
        | (w & HIGHS)
        | zeros(w ^ (ONES * u64::from(b'"')))
        | zeros(w ^ (ONES * u64::from(b'\\')))
}

/// The high bit of each zero byte of `x` (exact up to the first one).
#[inline]
fn zeros(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The bytes [`special`] finds, one by one.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i == b'"' as usize || i == b'\\' as usize || i < 0x20 || i >= 0x80;
        i += 1;
    }
    t
};

struct Scan<'d> {
    b: &'d [u8],
    i: usize,
}

impl<'d> Scan<'d> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// [`Scan::value`], with strings and numbers scanned in place (a
    /// call costs more in Wasm than natively: each one checks the deadline
    /// and saves registers).
    #[inline(always)]
    fn scalar_or_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'-' | b'0'..=b'9' => self.number(),
            _ => self.value(depth),
        }
    }

    /// One value at `self.i` (after whitespace), leaving `self.i` after it.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, text: &[u8]) -> Option<()> {
        let end = self.i.checked_add(text.len())?;
        (self.b.get(self.i..end)? == text).then(|| self.i = end)
    }

    /// An object (`keyed`) or an array, at its opening bracket.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            if keyed {
                if self.peek()? != b'"' {
                    return None;
                }
                self.string()?;
                self.ws();
                if self.peek()? != b':' {
                    return None;
                }
                self.i += 1;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A number without an exponent: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`.
    #[inline(always)]
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E' | b'0'..=b'9')) {
            return None;
        }
        (self.i - start <= MAX_NUMBER).then_some(())
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    /// A string at its opening quote: its content (between the quotes) and
    /// whether it has escapes. `None` for a control character, a bad escape,
    /// an escaped lone surrogate, invalid UTF-8 or no closing quote.
    #[inline(always)]
    fn string(&mut self) -> Option<(&'d [u8], bool)> {
        let b = self.b;
        let start = self.i + 1;
        let mut j = start;
        let mut escaped = false;
        let mut ascii = true;
        loop {
            // To the next byte to look at: 8 bytes at a time, the first
            // such byte in a word found from its bit; byte by byte only
            // in the document's last 7 bytes.
            match b.get(j..j + 8) {
                Some(chunk) => {
                    let m = special(word(chunk));
                    if m == 0 {
                        j += 8;
                        continue;
                    }
                    j += (m.trailing_zeros() / 8) as usize;
                }
                None => {
                    while let Some(&c) = b.get(j) {
                        if SPECIAL[usize::from(c)] {
                            break;
                        }
                        j += 1;
                    }
                }
            }
            match *b.get(j)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    j = escape(b, j)?;
                }
                0..=0x1f => return None,
                _ => {
                    ascii = false;
                    j += 1;
                }
            }
        }
        let content = &b[start..j];
        if !ascii && std::str::from_utf8(content).is_err() {
            return None;
        }
        self.i = j + 1;
        Some((content, escaped))
    }
}

/// The escape at `b[j]` (a `\`): the index after it.
fn escape(b: &[u8], j: usize) -> Option<usize> {
    match *b.get(j + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(j + 2),
        b'u' => {
            let unit = hex4(b, j + 2)?;
            match unit {
                0xD800..=0xDBFF => {
                    // A leading surrogate must be followed by a trailing one.
                    if b.get(j + 6..j + 8)? != b"\\u" {
                        return None;
                    }
                    (0xDC00..=0xDFFF)
                        .contains(&hex4(b, j + 8)?)
                        .then_some(j + 12)
                }
                0xDC00..=0xDFFF => None,
                _ => Some(j + 6),
            }
        }
        _ => None,
    }
}

/// Four hex digits at `b[at..]`.
fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let digits = b.get(at..at.checked_add(4)?)?;
    let mut n = 0u16;
    for &d in digits {
        n = n * 16 + u16::try_from((d as char).to_digit(16)?).ok()?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(doc: &str, wanted: &[&str]) -> Option<(usize, Vec<Option<String>>)> {
        let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
        let mut found = vec![None; wanted.len()];
        let n = object(doc.as_bytes(), &wanted, &mut found)?;
        Some((
            n,
            found
                .into_iter()
                .map(|f| f.map(|t| String::from_utf8_lossy(t).into_owned()))
                .collect(),
        ))
    }

    #[test]
    fn finds_members_as_raw_text() {
        let doc = r#" { "a" : 1.5 , "b":{"x":[1,"\"",true,null]}, "c":"é\n", "a": -0 } "#;
        let (n, found) = scan(doc, &["a", "b", "c", "d"]).expect("scanned");
        assert_eq!(n, 4);
        assert_eq!(found[0].as_deref(), Some("-0"));
        assert_eq!(found[1].as_deref(), Some(r#"{"x":[1,"\"",true,null]}"#));
        assert_eq!(found[2].as_deref(), Some(r#""é\n""#));
        assert_eq!(found[3], None);
        assert_eq!(scan("{}", &["a"]).map(|s| s.0), Some(0));
    }

    #[test]
    fn leaves_what_it_does_not_take_to_the_general_path() {
        for doc in [
            "",
            "[]",
            "{",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":-}",
            "{\"a\":1e5}",
            "{\"a\":tru}",
            "{\"a\":\"x\u{1}\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"\\u0061\":1}",
            "{\"a\" 1}",
            "{\"a\":[1 2]}",
            "{\"a\":{\"b\"}}",
            "{\"a\":\"unterminated}",
        ] {
            assert_eq!(scan(doc, &["a"]), None, "{doc:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(70), "]".repeat(70));
        assert_eq!(scan(&deep, &["a"]), None);
        let mut bad = br#"{"a":"xx"}"#.to_vec();
        bad[6] = 0xff;
        assert_eq!(
            object(&bad, &["a".to_string()], &mut [None]),
            None,
            "invalid UTF-8"
        );
        assert!(scan(r#"{"a":"\ud83d\ude00 \u00e9"}"#, &["a"]).is_some());
    }

    #[test]
    fn word_wise_equality_and_backslash_search() {
        let texts: [&[u8]; 9] = [
            b"",
            b"a",
            b"txn_id",
            b"txn_ie",
            b"customer_id",
            b"customer_ie",
            b"abcdefgh",
            b"abcdefgi",
            b"\"2026-11-18T14:00:07Z\"",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(same(a, b), a == b, "{a:?} {b:?}");
            }
        }
        for len in 0..24 {
            let mut t = vec![b'a'; len];
            assert!(!has_backslash(&t));
            for at in 0..len {
                t[at] = b'\\';
                assert!(has_backslash(&t), "{len} {at}");
                t[at] = 0xdc; // 0x5c with the high bit set: not a backslash
                assert!(!has_backslash(&t), "{len} {at}");
                t[at] = b'a';
            }
        }
    }

    proptest::proptest! {
        /// The lowest bit of the word test marks the first byte a string
        /// scan must look at, whatever the bytes after it.
        #[test]
        fn the_word_test_finds_the_first_byte_to_look_at(
            w in proptest::array::uniform8(proptest::sample::select(
                b"\"\\\x00\x1f\x20\x21\x5b\x5c\x5d\x7f\x80\xdc\xffaZ09".to_vec(),
            )),
        ) {
            let first = w.iter().position(|&c| SPECIAL[usize::from(c)]);
            let m = special(u64::from_le_bytes(w));
            let found = (m != 0).then(|| (m.trailing_zeros() / 8) as usize);
            proptest::prop_assert_eq!(found, first);
        }
    }

    #[test]
    fn the_word_test_finds_every_byte_a_string_scan_must_see() {
        for at in 0..8 {
            for byte in 0..=255u8 {
                let mut w = [b'a'; 8];
                w[at] = byte;
                let must = byte == b'"' || byte == b'\\' || !(0x20..0x80).contains(&byte);
                assert_eq!(
                    special(u64::from_le_bytes(w)) != 0,
                    must,
                    "{byte:#x} at {at}"
                );
                assert_eq!(SPECIAL[usize::from(byte)], must, "{byte:#x}");
            }
        }
    }
}
