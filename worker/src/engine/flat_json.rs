//! The fast path of [`decode_fields`](crate::engine::record::decode_fields): one
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

use std::borrow::Cow;

use weir_crds::expr::{FieldValue, Fields};

/// Decodes `bytes` into `fields` if it is a flat object of the simple
/// shape; `None` when it is not (`fields` may then hold some fields, and
/// must be started again).
pub(super) fn decode_flat<'a>(fields: &mut Fields<'a>, bytes: &'a [u8]) -> Option<()> {
    let mut s = Scanner { bytes, at: 0 };
    s.skip_space();
    s.expect(b'{')?;
    s.skip_space();
    if s.peek()? == b'}' {
        s.at += 1;
    } else {
        loop {
            let key = s.plain_string()?;
            s.skip_space();
            s.expect(b':')?;
            s.skip_space();
            match fields.position_of_bytes(key) {
                Some(i) => fields.set(i, s.value()?),
                None => s.skip_value()?,
            }
            s.skip_space();
            match s.next()? {
                b',' => s.skip_space(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.skip_space();
    (s.at == bytes.len()).then_some(())
}

/// A position in the record's bytes.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The bytes of a string of printable ASCII without escapes, borrowed:
    /// keys and skipped strings are only compared or checked, never read
    /// as text.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        let len = self.bytes[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))?;
        self.at = start + len;
        self.expect(b'"')?;
        Some(&self.bytes[start..start + len])
    }

    /// A string of printable ASCII without escapes, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        // Printable ASCII is UTF-8.
        std::str::from_utf8(self.plain_string()?).ok()
    }

    /// The value of a kept field.
    fn value(&mut self) -> Option<FieldValue<'a>> {
        Some(match self.peek()? {
            b'"' => FieldValue::Str(Cow::Borrowed(self.string()?)),
            b't' => self.literal(b"true", FieldValue::Bool(true))?,
            b'f' => self.literal(b"false", FieldValue::Bool(false))?,
            b'n' => self.literal(b"null", FieldValue::Null)?,
            _ => self.number()?,
        })
    }

    /// Checks a skipped value, without decoding it.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.plain_string().map(drop),
            b't' | b'f' | b'n' => self.value().map(drop),
            _ => self.number_text().map(drop),
        }
    }

    fn literal(&mut self, text: &[u8], value: FieldValue<'a>) -> Option<FieldValue<'a>> {
        let end = self.at + text.len();
        (self.bytes.get(self.at..end)? == text).then(|| {
            self.at = end;
            value
        })
    }

    /// A number of the shape `-?(0|[1-9][0-9]*)(\.[0-9]+)?` within the
    /// digit limits: its text, and whether it has a fraction.
    fn number_text(&mut self) -> Option<(&'a [u8], bool)> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let int_start = self.at;
        self.digits();
        let int_digits = self.at - int_start;
        if int_digits == 0 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return None;
        }
        let mut frac_digits = 0;
        if self.peek() == Some(b'.') {
            self.at += 1;
            let frac_start = self.at;
            self.digits();
            frac_digits = self.at - frac_start;
            if frac_digits == 0 || int_digits + frac_digits > 15 {
                return None;
            }
        }
        if int_digits > 18 || self.exponent_follows() {
            return None;
        }
        Some((&self.bytes[start..self.at], frac_digits > 0))
    }

    /// The value of a number (see [`Scanner::number_text`]).
    fn number(&mut self) -> Option<FieldValue<'a>> {
        let (text, fraction) = self.number_text()?;
        if fraction {
            return std::str::from_utf8(text)
                .ok()?
                .parse()
                .ok()
                .map(FieldValue::Double);
        }
        let (negative, digits) = match text.split_first() {
            Some((b'-', digits)) => (true, digits),
            _ => (false, text),
        };
        let magnitude = digits
            .iter()
            .fold(0_i64, |n, d| n * 10 + i64::from(d - b'0'));
        Some(match (negative, magnitude) {
            // serde_json reads "-0" as the double -0.0.
            (true, 0) => FieldValue::Double(-0.0),
            (true, m) => FieldValue::Int(-m),
            (false, m) => FieldValue::Int(m),
        })
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn exponent_follows(&self) -> bool {
        matches!(self.peek(), Some(b'e' | b'E'))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

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
        assert_eq!(
            decode_flat(&mut fields, line),
            None,
            "a nested value: serde_json's"
        );
        let line = br#" {"user_id":42, "amount":-12.25,"country":"DE","ts":1732176000000,"x":null, "y":true} "#;
        let mut fields = Fields::new(&names);
        assert_eq!(decode_flat(&mut fields, line), Some(()));
        assert_eq!(
            Value::Object(fields.to_json()),
            json!({"user_id": 42, "amount": -12.25, "country": "DE", "ts": 1732176000000_i64})
        );
        assert!(matches!(
            fields.get("country"),
            Some(FieldValue::Str(Cow::Borrowed("DE")))
        ));
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
        "\"other\"",
        "\"\"",
        "\"ts\\n\"",
        "amount",
    ];

    /// Mostly the valid choice, sometimes one of the others.
    fn mostly(valid: &'static str, others: &[&'static str]) -> BoxedStrategy<&'static str> {
        prop_oneof![4 => Just(valid), 1 => prop::sample::select(others.to_vec())].boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whenever the fast path answers, serde_json accepts the record
        /// and reads the same fields; records it gives up on are still
        /// decoded (or refused) by `decode_fields` as serde_json does.
        #[test]
        fn answers_only_as_serde_json_would(
            members in proptest::collection::vec(
                (prop::sample::select(KEYS), prop::sample::select(VALUES), mostly(":", &[" : ", ""])),
                0..4,
            ),
            separator in mostly(",", &[", ", ",,", " "]),
            open in mostly("{", &[" {", "[", ""]),
            close in mostly("}", &["} ", "}x", "]", ""]),
        ) {
            let body: Vec<String> = members.iter().map(|(k, v, colon)| format!("{k}{colon}{v}")).collect();
            let text = format!("{open}{}{close}", body.join(separator));
            let names = names();
            let serde = DecodePlan::Fields(names.clone()).decode(text.as_bytes());
            let mut flat = Fields::new(&names);
            if decode_flat(&mut flat, text.as_bytes()).is_some() {
                prop_assert!(serde.is_ok(), "the fast path took {} which serde_json refuses", text);
                prop_assert_eq!(Value::Object(flat.to_json()), serde.as_ref().unwrap().clone(), "{}", text);
            }
            let mut fields = Fields::new(&names);
            let decoded = crate::engine::record::decode_fields(&mut fields, text.as_bytes());
            prop_assert_eq!(decoded.is_ok(), serde.is_ok(), "{}", text);
            if let Ok(value) = serde {
                prop_assert_eq!(Value::Object(fields.to_json()), value, "{}", text);
            }
        }
    }
}
