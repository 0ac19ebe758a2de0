//! The fast path of [`DecodePlan::decode_fields`](crate::engine::record::DecodePlan::decode_fields): one
//! pass over a flat JSON object, the shape nearly every event has, that
//! keeps the planned fields and checks the rest only as far as needed to
//! know they are valid.
//!
//! It answers only for records it can decode exactly as serde_json does:
//! strings of printable ASCII without escapes, integers of at most 18
//! digits, decimals of at most 15 digits without an exponent (which
//! serde_json and Rust's parser both round correctly), `true`, `false` and
//! `null`. On anything else (a nested value, an escape, a byte outside
//! ASCII, a longer or malformed number, bad syntax) it gives up, and the
//! caller decodes the record with serde_json, which also names the error of
//! an invalid one. So it never accepts a record serde_json refuses, and
//! decodes the ones it accepts to the same values.
//!
//! A task's records nearly always share one layout: the same keys in the
//! same order, written by the same producer. So the scanner remembers the
//! bytes between the values of the last record it read (a
//! [`RecordShape`]), and checks the next record against them a word at a
//! time before it scans keys: bytes equal to those of a record it read
//! hold the same keys, separators and spaces.

use weir_crds::expr::{Fields, MAX_FIELDS};

/// Decodes `bytes` into `fields` if it is a flat object of the simple
/// shape; `None` when it is not (`fields` may then hold some fields, and
/// must be started again). The record is first checked against `shape`,
/// the layout of the last record read with the same plan; when it is
/// scanned instead, its layout becomes the shape.
pub(super) fn decode_flat<'a>(
    fields: &mut Fields<'a>,
    keys: &KeyTable,
    shape: &mut RecordShape,
    bytes: &'a [u8],
) -> Option<()> {
    if !shape.members.is_empty() {
        if shape.read(fields, bytes).is_some() {
            return Some(());
        }
        fields.clear();
    }
    shape.members.clear();
    let learned = scan(fields, keys, shape, bytes);
    if learned != Some(true) {
        shape.members.clear();
    }
    learned.map(drop)
}

/// Scans `bytes` key by key (see [`decode_flat`]), learning their layout
/// into the emptied `shape`: `Some(true)` when all of it fits a shape.
fn scan<'a>(
    fields: &mut Fields<'a>,
    keys: &KeyTable,
    shape: &mut RecordShape,
    bytes: &'a [u8],
) -> Option<bool> {
    let mut s = Scanner { bytes, at: 0 };
    let mut learnable = true;
    // Where the bytes before the next value start: the end of the last
    // value, or of the record.
    let mut between = 0;
    s.skip_space();
    s.expect(b'{')?;
    s.skip_space();
    if s.peek()? == b'}' {
        s.at += 1;
        // An empty object has no member to check a record against.
        learnable = false;
    } else {
        loop {
            let position = s.key(fields, keys)?;
            s.skip_space();
            s.expect(b':')?;
            s.skip_space();
            learnable = learnable && shape.learn(&bytes[between..s.at], position);
            match position {
                Some(i) => s.value_into(fields, i)?,
                None => s.skip_value()?,
            }
            between = s.at;
            s.skip_space();
            match s.next()? {
                b',' => s.skip_space(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.skip_space();
    (s.at == bytes.len()).then_some(learnable)
}

/// The layout of the last record a task read with one plan: for each
/// member in order, the bytes from the end of the value before it (or the
/// start of the record) to its own value, and where the plan keeps it.
#[derive(Debug, Default)]
pub struct RecordShape {
    /// The members; none when there is no layout to check against.
    members: Vec<Member>,
}

/// One member of a [`RecordShape`].
#[derive(Clone, Copy, Debug)]
struct Member {
    /// The bytes before the value (at most [`Member::MAX_BYTES`]: the
    /// separator, the quoted key, the colon and any spaces) as two
    /// little-endian words, zero past their length.
    words: [u64; 2],
    /// The masks of those bytes in the words.
    masks: [u64; 2],
    /// How many bytes they are.
    len: usize,
    /// The position of the key among the kept names, if it is kept.
    position: Option<usize>,
}

impl Member {
    /// The most bytes before a value a shape holds: a key of up to twelve
    /// bytes, with its quotes, separator and colon.
    const MAX_BYTES: usize = 16;

    /// The bytes before the value, as they were read.
    fn bytes(&self) -> [u8; Member::MAX_BYTES] {
        let mut bytes = [0; Member::MAX_BYTES];
        bytes[..8].copy_from_slice(&self.words[0].to_le_bytes());
        bytes[8..].copy_from_slice(&self.words[1].to_le_bytes());
        bytes
    }
}

impl RecordShape {
    /// The most members a shape holds.
    const MAX_MEMBERS: usize = 32;

    /// Adds a member whose value follows `before`; false when the shape
    /// cannot hold it.
    fn learn(&mut self, before: &[u8], position: Option<usize>) -> bool {
        if before.len() > Member::MAX_BYTES || self.members.len() == RecordShape::MAX_MEMBERS {
            return false;
        }
        let mut bytes = [0_u8; Member::MAX_BYTES];
        bytes[..before.len()].copy_from_slice(before);
        let mask = |from: usize| match before.len().saturating_sub(from) {
            0 => 0,
            n if n >= 8 => u64::MAX,
            n => swar::first_bytes(n),
        };
        let word = |from: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[from..from + 8]);
            u64::from_le_bytes(word)
        };
        self.members.push(Member {
            words: [word(0), word(8)],
            masks: [mask(0), mask(8)],
            len: before.len(),
            position,
        });
        true
    }

    /// Decodes `bytes` if it has this layout: the same bytes before each
    /// value, values of the simple kinds, and nothing after the last but
    /// the closing brace (and spaces).
    #[inline(always)]
    fn read<'a>(&self, fields: &mut Fields<'a>, bytes: &'a [u8]) -> Option<()> {
        let mut s = Scanner { bytes, at: 0 };
        for member in &self.members {
            let same = match (s.word_at(s.at), s.word_at(s.at + 8)) {
                (Some(first), Some(second)) => {
                    first & member.masks[0] == member.words[0]
                        && second & member.masks[1] == member.words[1]
                }
                _ => bytes.get(s.at..s.at + member.len)? == &member.bytes()[..member.len],
            };
            if !same {
                return None;
            }
            s.at += member.len;
            match member.position {
                Some(i) => s.value_into(fields, i)?,
                None => s.skip_value()?,
            }
        }
        s.skip_space();
        s.expect(b'}')?;
        s.skip_space();
        (s.at == bytes.len()).then_some(())
    }
}

/// The kept names as the scanner matches keys of at most seven bytes: a
/// key's bytes as a little-endian word, the bytes after it zero, is the
/// word of the name it equals (keys hold no zero byte, so words of
/// different lengths differ; a name holding one, which no plain key
/// equals, has no word).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTable {
    /// The word of each name, at its position; [`NO_WORD`] for names of
    /// more than seven bytes (and the unused end).
    words: [u64; MAX_FIELDS],
    /// Whether a key of at most seven bytes that matches no word is none
    /// of the names (false when a name is empty, which no word stands
    /// for).
    complete: bool,
}

/// The word of no key: a key of at most seven bytes leaves its last byte
/// zero.
const NO_WORD: u64 = u64::MAX;

impl KeyTable {
    /// No names matched by word: every key is looked up by its bytes.
    pub const NONE: KeyTable = KeyTable {
        words: [NO_WORD; MAX_FIELDS],
        complete: false,
    };

    /// The table of `names` (the first [`MAX_FIELDS`], as [`Fields`]
    /// keeps).
    pub fn new(names: &[String]) -> KeyTable {
        let mut table = KeyTable {
            complete: true,
            ..KeyTable::NONE
        };
        for (word, name) in table.words.iter_mut().zip(names) {
            match name.len() {
                0 => table.complete = false,
                _ if name.as_bytes().contains(&0) => {}
                1..=7 => {
                    let mut bytes = [0_u8; 8];
                    bytes[..name.len()].copy_from_slice(name.as_bytes());
                    *word = u64::from_le_bytes(bytes);
                }
                _ => {}
            }
        }
        table
    }
}

/// A position in the record's bytes.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// A number the scanner read.
enum Number {
    Int(i64),
    Double(f64),
}

impl<'a> Scanner<'a> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline(always)]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    #[inline(always)]
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    #[inline(always)]
    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The eight bytes from `at`, as a little-endian word, if there are
    /// eight left.
    #[inline(always)]
    fn word_at(&self, at: usize) -> Option<u64> {
        let chunk = self.bytes.get(at..at + 8)?;
        chunk.try_into().ok().map(u64::from_le_bytes)
    }

    /// The bytes of a string of printable ASCII without escapes, borrowed:
    /// keys and skipped strings are only compared or checked, never read
    /// as text.
    #[inline(always)]
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        self.plain_string_and_word().map(|(text, _)| text)
    }

    /// [`Scanner::plain_string`], and its bytes as a word (see
    /// [`KeyTable`]) when it is at most seven bytes long and eight bytes
    /// follow its opening quote. Eight bytes are checked at a time while
    /// eight are left.
    #[inline(always)]
    fn plain_string_and_word(&mut self) -> Option<(&'a [u8], Option<u64>)> {
        self.expect(b'"')?;
        let start = self.at;
        let mut end = start;
        let mut short = None;
        loop {
            match self.word_at(end) {
                Some(word) => {
                    let stops = swar::string_stops(word);
                    if stops != 0 {
                        let len = swar::first_byte(stops);
                        if end == start {
                            short = Some(word & swar::first_bytes(len));
                        }
                        end += len;
                        break;
                    }
                    end += 8;
                }
                None => {
                    end += self.bytes[end..]
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))?;
                    break;
                }
            }
        }
        // The first byte that ends a plain string: anything but a quote
        // is given up on.
        self.at = end;
        self.expect(b'"')?;
        Some((&self.bytes[start..end], short))
    }

    /// The position among the kept names of the object key that starts
    /// here, `Some(None)` for a key that is none of them, the scanner then
    /// past its closing quote; `None` gives up. A key of at most seven
    /// bytes with eight bytes after its quote is matched by word, any
    /// other by its bytes.
    #[inline(always)]
    fn key(&mut self, fields: &Fields<'a>, keys: &KeyTable) -> Option<Option<usize>> {
        let (key, word) = self.plain_string_and_word()?;
        if let Some(word) = word {
            if let Some(position) = keys.words.iter().position(|w| *w == word) {
                return Some(Some(position));
            }
            if keys.complete {
                return Some(None);
            }
        }
        Some(fields.position_of_bytes(key))
    }

    /// A string of printable ASCII without escapes, borrowed.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        let bytes = self.plain_string()?;
        // SAFETY: `plain_string` ends a string at its first byte outside
        // 0x20..0x80 (`swar::string_stops` and the byte scan after it),
        // so every byte it returns is ASCII, which is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    }

    /// Decodes the value of a kept field into its slot, each variant
    /// written in place (see [`Fields::plain_slot`]).
    #[inline(always)]
    fn value_into(&mut self, fields: &mut Fields<'a>, position: usize) -> Option<()> {
        let slot = fields.plain_slot(position)?;
        match self.peek()? {
            b'"' => slot.str(self.string()?),
            b't' => {
                self.literal(b"true")?;
                slot.bool(true);
            }
            b'f' => {
                self.literal(b"false")?;
                slot.bool(false);
            }
            b'n' => {
                self.literal(b"null")?;
                slot.null();
            }
            _ => match self.number()? {
                Number::Int(i) => slot.int(i),
                Number::Double(d) => slot.double(d),
            },
        }
        Some(())
    }

    /// Checks a skipped value, without keeping it.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.plain_string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    #[inline(always)]
    fn literal(&mut self, text: &[u8]) -> Option<()> {
        let end = self.at + text.len();
        (self.bytes.get(self.at..end)? == text).then(|| self.at = end)
    }

    /// A number of the shape `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, with at most
    /// 18 integer digits, or 15 digits in all with a fraction. The integer
    /// part is read eight digits at a time while eight bytes are left.
    #[inline(always)]
    fn number(&mut self) -> Option<Number> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        let int_start = start + usize::from(negative);
        self.at = int_start;
        let mut magnitude = 0_u64;
        loop {
            let Some(word) = self.word_at(self.at) else {
                while let Some(digit) = self
                    .peek()
                    .map(|b| b.wrapping_sub(b'0'))
                    .filter(|d| *d <= 9)
                {
                    magnitude = magnitude.wrapping_mul(10).wrapping_add(u64::from(digit));
                    self.at += 1;
                }
                break;
            };
            let count = swar::leading_digits(word);
            if count > 0 {
                // More than 18 digits are given up on below: no overflow
                // that matters.
                magnitude = magnitude
                    .wrapping_mul(swar::POWERS_OF_TEN[count])
                    .wrapping_add(swar::digits_value(word, count));
                self.at += count;
            }
            if count < 8 || self.at - int_start > 18 {
                break;
            }
        }
        let int_digits = self.at - int_start;
        if int_digits == 0 || int_digits > 18 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return None;
        }
        match self.peek() {
            Some(b'.') => return self.fraction(start, int_digits),
            Some(b'e' | b'E') => return None,
            _ => {}
        }
        // 18 digits fit an i64.
        let magnitude = magnitude as i64;
        Some(match (negative, magnitude) {
            // serde_json reads "-0" as the double -0.0.
            (true, 0) => Number::Double(-0.0),
            (true, m) => Number::Int(-m),
            (false, m) => Number::Int(m),
        })
    }

    /// The rest of a number from its `.` on, `start` being where the number
    /// began: a double, which Rust's parser rounds as serde_json does
    /// within 15 digits.
    fn fraction(&mut self, start: usize, int_digits: usize) -> Option<Number> {
        self.at += 1;
        let frac_start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let frac_digits = self.at - frac_start;
        if frac_digits == 0
            || int_digits + frac_digits > 15
            || matches!(self.peek(), Some(b'e' | b'E'))
        {
            return None;
        }
        std::str::from_utf8(&self.bytes[start..self.at])
            .ok()?
            .parse()
            .ok()
            .map(Number::Double)
    }
}

/// Eight bytes at a time, as a little-endian word (the first byte lowest):
/// masks with the high bit of each byte that matches. Each mask is exact up
/// to its lowest set byte (a borrow or carry from a match may mark bytes
/// above it), which is the only one read.
mod swar {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;

    /// 10 to the power of the index, for 0 to 8 digits.
    pub(super) const POWERS_OF_TEN: [u64; 9] = [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
    ];

    /// The bytes below `n` (at most 0x80).
    #[inline(always)]
    fn below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
    }

    /// The bytes above `n` (below 0x80).
    #[inline(always)]
    fn above(word: u64, n: u8) -> u64 {
        (word.wrapping_add(ONES * u64::from(127 - n)) | word) & HIGHS
    }

    /// The bytes equal to `b`.
    #[inline(always)]
    fn equal(word: u64, b: u8) -> u64 {
        below(word ^ (ONES * u64::from(b)), 1)
    }

    /// The bytes that end a plain string: a quote, a backslash, a control
    /// byte or one outside ASCII.
    #[inline(always)]
    pub(super) fn string_stops(word: u64) -> u64 {
        equal(word, b'"') | equal(word, b'\\') | below(word, 0x20) | (word & HIGHS)
    }

    /// The index of the first byte set in a non-zero mask.
    #[inline(always)]
    pub(super) fn first_byte(mask: u64) -> usize {
        (mask.trailing_zeros() / 8) as usize
    }

    /// The mask of a word's first `count` bytes (at most seven).
    #[inline(always)]
    pub(super) fn first_bytes(count: usize) -> u64 {
        (1_u64 << (8 * count)) - 1
    }

    /// How many of the word's bytes are ASCII digits before the first
    /// that is not.
    #[inline(always)]
    pub(super) fn leading_digits(word: u64) -> usize {
        let others = below(word, b'0') | above(word, b'9');
        if others == 0 { 8 } else { first_byte(others) }
    }

    /// The value of the word's first `count` bytes (1 to 8), ASCII digits,
    /// the first the most significant.
    #[inline(always)]
    pub(super) fn digits_value(word: u64, count: usize) -> u64 {
        // Digit values, the ones not read cleared and shifted in as
        // leading zeros (the first byte is the most significant).
        let values = word.wrapping_sub(ONES * u64::from(b'0'));
        let values = if count == 8 {
            values
        } else {
            (values & ((1_u64 << (8 * count)) - 1)) << (8 * (8 - count))
        };
        let pairs = (values.wrapping_mul(10) + (values >> 8)) & 0x00FF_00FF_00FF_00FF;
        let quads = (pairs.wrapping_mul(100) + (pairs >> 16)) & 0x0000_FFFF_0000_FFFF;
        (quads.wrapping_mul(10_000) + (quads >> 32)) & 0xFFFF_FFFF
    }

    #[cfg(test)]
    mod tests {
        use proptest::prelude::*;

        use super::*;

        fn word(text: &[u8]) -> u64 {
            let mut bytes = [0_u8; 8];
            bytes.copy_from_slice(text);
            u64::from_le_bytes(bytes)
        }

        proptest! {
            /// The masks find the same first byte as a byte-by-byte scan,
            /// and eight digits read as their number.
            #[test]
            fn agree_with_a_byte_scan(text in prop::collection::vec(prop_oneof![
                3 => prop::sample::select(b"0123456789\"\\ \x1f\x7f\x80\xff/:.-e".to_vec()),
                1 => any::<u8>(),
            ], 8)) {
                let w = word(&text);
                let stop = text.iter().position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b));
                let stops = string_stops(w);
                prop_assert_eq!(stop, (stops != 0).then(|| first_byte(stops)));
                let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
                prop_assert_eq!(leading_digits(w), digits);
                if digits > 0 {
                    let expected: u64 = std::str::from_utf8(&text[..digits]).unwrap().parse().unwrap();
                    prop_assert_eq!(digits_value(w, digits), expected);
                }
            }
        }

        #[test]
        fn reads_digit_runs_of_every_length() {
            for count in 1..=8 {
                let text = &b"98765432"[..count];
                let mut padded = text.to_vec();
                padded.resize(8, b',');
                let expected: u64 = std::str::from_utf8(text).unwrap().parse().unwrap();
                assert_eq!(leading_digits(word(&padded)), count);
                assert_eq!(digits_value(word(&padded), count), expected);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;
    use serde_json::{Value, json};
    use weir_crds::expr::FieldValue;

    use super::*;
    use crate::engine::record::DecodePlan;

    fn names() -> Vec<String> {
        ["amount", "country", "ts", "user_id"]
            .map(str::to_owned)
            .to_vec()
    }

    #[test]
    fn decodes_a_flat_line_in_one_pass() {
        let names = names();
        let mut fields = Fields::new(&names);
        let line = br#" {"user_id":42, "amount":-12.25,"country":"DE","ts":1732176000000,"x":null,"y":[1]}"#;
        let mut shape = RecordShape::default();
        assert_eq!(
            decode_flat(&mut fields, &KeyTable::new(&names), &mut shape, line),
            None,
            "a nested value: serde_json's"
        );
        let line = br#" {"user_id":42, "amount":-12.25,"country":"DE","ts":1732176000000,"x":null, "y":true} "#;
        let mut fields = Fields::new(&names);
        assert_eq!(
            decode_flat(&mut fields, &KeyTable::new(&names), &mut shape, line),
            Some(())
        );
        assert_eq!(
            Value::Object(fields.to_json()),
            json!({"user_id": 42, "amount": -12.25, "country": "DE", "ts": 1732176000000_i64})
        );
        assert!(matches!(
            fields.get("country"),
            Some(FieldValue::Str(Cow::Borrowed("DE")))
        ));
    }

    /// Decodes `line` with `shape`, into the fields as JSON; whether the
    /// shape alone read it, the fields then, and after a full decode.
    fn read_with(shape: &mut RecordShape, line: &[u8]) -> (bool, Option<Value>) {
        let names = names();
        let mut fields = Fields::new(&names);
        let by_shape = shape.read(&mut fields, line).is_some();
        let mut fields = Fields::new(&names);
        let decoded = decode_flat(&mut fields, &KeyTable::new(&names), shape, line);
        (by_shape, decoded.map(|()| Value::Object(fields.to_json())))
    }

    #[test]
    fn reads_a_record_of_the_last_ones_layout_by_its_bytes() {
        let mut shape = RecordShape::default();
        let first = br#"{"user_id":42,"amount":7,"skip":"x","country":"DE","ts":1732176000000}"#;
        assert_eq!(
            read_with(&mut shape, first),
            (
                false,
                Some(json!({"user_id": 42, "amount": 7, "country": "DE", "ts": 1732176000000_i64}))
            ),
            "nothing learned yet: scanned"
        );
        let same_layout = br#"{"user_id":7,"amount":-3.5,"skip":null,"country":"FR","ts":1}"#;
        assert_eq!(
            read_with(&mut shape, same_layout),
            (
                true,
                Some(json!({"user_id": 7, "amount": -3.5, "country": "FR", "ts": 1}))
            )
        );
        // Another layout is scanned, and read by its bytes next time.
        let spaced = br#"{"amount": 1, "user_id": 2, "z": "a string of 20 bytes"}"#;
        assert_eq!(
            read_with(&mut shape, spaced),
            (false, Some(json!({"amount": 1, "user_id": 2})))
        );
        assert_eq!(
            read_with(
                &mut shape,
                br#"{"amount": 3, "user_id": 4, "z": "another"} "#
            ),
            (true, Some(json!({"amount": 3, "user_id": 4})))
        );
        // A record that differs anywhere is scanned: a missing member, one
        // more, other spaces, a key of the same length, a nested value.
        for (line, expected) in [
            (
                &br#"{"amount": 3, "z": "a string of 20 bytes"}"#[..],
                json!({"amount": 3}),
            ),
            (
                br#"{"amount": 3, "user_id": 4, "z": "a string of 20 bytes", "ts": 5}"#,
                json!({"amount": 3, "user_id": 4, "ts": 5}),
            ),
            (
                br#"{"amount":3, "user_id": 4, "z": "a string of 20 bytes"}"#,
                json!({"amount": 3, "user_id": 4}),
            ),
            (
                br#"{"amount": 3, "user_ix": 4, "z": "a string of 20 bytes"}"#,
                json!({"amount": 3}),
            ),
        ] {
            read_with(&mut shape, spaced);
            assert_eq!(
                read_with(&mut shape, line),
                (false, Some(expected)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        read_with(&mut shape, spaced);
        assert_eq!(
            read_with(
                &mut shape,
                br#"{"amount": 3, "user_id": [4], "z": "a string"}"#
            ),
            (false, None)
        );
        // Text before a value longer than a shape holds: nothing is learned.
        let long_key = br#"{"amount":1,"a_key_of_13_by":2}"#;
        read_with(&mut shape, long_key);
        assert_eq!(
            read_with(&mut shape, long_key),
            (false, Some(json!({"amount": 1})))
        );
        // Short records are checked byte by byte at their end.
        read_with(&mut shape, br#"{"ts":1}"#);
        assert_eq!(
            read_with(&mut shape, br#"{"ts":2}"#),
            (true, Some(json!({"ts": 2})))
        );
        assert_eq!(
            read_with(&mut shape, br#"{"tx":2}"#),
            (false, Some(json!({})))
        );
    }

    /// Values of every kind the fast path takes or gives up on, valid and
    /// not.
    const VALUES: &[&str] = &[
        "0",
        "-0",
        "01",
        "1.",
        "1.5",
        "-12.25",
        "1e5",
        "2E-3",
        "12345678",
        "123456789",
        "10000000000000000",
        "123456789012345678",
        "1234567890123456789",
        "-123456789012345678",
        "0.1234567890123456",
        "12345678901234.5",
        "true",
        "tru",
        "false",
        "null",
        "nulll",
        "\"s\"",
        "\"\\u00e9\"",
        "\"é\"",
        "\"a\tb\"",
        "[1]",
        "{}",
        "-",
        "- 1",
        "\"\"",
        ".5",
        "+1",
    ];
    const KEYS: &[&str] = &[
        "\"amount\"",
        "\"ts\"",
        "\"tsx\"",
        "\"user_id\"",
        "\"user_ix\"",
        "\"user_ids\"",
        "\"a_long_name\"",
        "\"other\"",
        "\"\"",
        "\"ts\\n\"",
        "\"t\u{e9}\"",
        "amount",
    ];

    /// The names a plan keeps: the workload's, and ones the key table
    /// cannot match by word (empty, longer than seven bytes, or holding a
    /// zero byte, which the word of a shorter key ends with).
    const NAME_SETS: &[&[&str]] = &[
        &["amount", "country", "ts", "user_id"],
        &["", "a_long_name", "ts", "user_ids"],
        &["\0", "amount", "ts\0", "tsx"],
    ];

    /// Mostly the valid choice, sometimes one of the others.
    fn mostly(valid: &'static str, others: &[&'static str]) -> BoxedStrategy<&'static str> {
        prop_oneof![4 => Just(valid), 1 => prop::sample::select(others.to_vec())].boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whenever the fast path answers, serde_json accepts the record
        /// and reads the same fields; records it gives up on are still
        /// decoded (or refused) by `decode_fields` as serde_json does. The
        /// records come in runs that share their keys but for one renamed
        /// at times, so that most are checked against the layout of the one
        /// before.
        #[test]
        fn answers_only_as_serde_json_would(
            members in proptest::collection::vec(
                (prop::sample::select(KEYS), mostly(":", &[" : ", ""])),
                0..5,
            ),
            records in proptest::collection::vec((
                proptest::collection::vec(prop_oneof![
                    3 => prop::sample::select(&["1", "-5", "12345678901", "1.5", "\"s\"", "\"a string of 20 bytes\"", "true", "null"][..]),
                    1 => prop::sample::select(VALUES),
                ], 5),
                mostly(",", &[", ", ",,", " "]),
                mostly("{", &[" {", "[", ""]),
                mostly("}", &["} ", "}x", "]", ""]),
                0..6_usize,
                proptest::option::of((0..5_usize, prop::sample::select(KEYS))),
            ), 1..4),
            names in prop::sample::select(NAME_SETS),
            by_word in any::<bool>(),
        ) {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let plan = DecodePlan::fields(names.clone());
            let keys = if by_word { KeyTable::new(&names) } else { KeyTable::NONE };
            let (mut flat_shape, mut plan_shape) = (RecordShape::default(), RecordShape::default());
            for (values, separator, open, close, count, renamed) in records {
                let body: Vec<String> = members.iter().zip(&values).take(count).enumerate()
                    .map(|(i, ((key, colon), v))| {
                        let key = renamed.filter(|(at, _)| *at == i).map_or(*key, |(_, other)| other);
                        format!("{key}{colon}{v}")
                    })
                    .collect();
                let text = format!("{open}{}{close}", body.join(separator));
                let serde = plan.decode(text.as_bytes());
                let mut flat = Fields::new(&names);
                if decode_flat(&mut flat, &keys, &mut flat_shape, text.as_bytes()).is_some() {
                    prop_assert!(serde.is_ok(), "the fast path took {} which serde_json refuses", text);
                    prop_assert_eq!(Value::Object(flat.to_json()), serde.as_ref().unwrap().clone(), "{}", text);
                }
                let mut fields = Fields::new(&names);
                let decoded = plan.decode_fields(&mut plan_shape, &mut fields, text.as_bytes());
                prop_assert_eq!(decoded.is_ok(), serde.is_ok(), "{}", text);
                if let Ok(value) = serde {
                    prop_assert_eq!(Value::Object(fields.to_json()), value, "{}", text);
                }
            }
        }
    }
}
