//! Durations as the Kubernetes API writes them: Go duration strings such as
//! `500ms`, `30s`, `5m` or `1h30m`.
//!
//! The same format is what CEL's `duration()` accepts on the API server, so
//! the CRD's `x-kubernetes-validations` rules can compare durations
//! (`duration(self.slide) <= duration(self.size)`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression the CRD schema checks duration strings against.
/// Numbers have at most nine digits before and after the point, which keeps
/// every duration the pattern admits within what the parser represents (a
/// value the API server accepts but the operator cannot read would stop the
/// controller from listing any StreamingJob).
pub const DURATION_PATTERN: &str = r"^(0|([0-9]{1,9}(\.[0-9]{1,9})?(ns|us|µs|ms|s|m|h))+)$";

/// A non-negative span of time written as a Go duration string (`90s`, `1m30s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (expected a number and a unit such as 500ms, 30s, 5m or 1h30m)"
)]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    /// The duration as a standard library duration.
    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// The duration in whole milliseconds (saturating).
    pub fn as_millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether the duration is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Self(value)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(fail("empty"));
        }
        if input == "0" {
            return Ok(Self::default());
        }
        let mut rest = input;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| fail("missing unit"))?;
            if number_len == 0 {
                return Err(fail("expected a number"));
            }
            let digits = &rest[..number_len];
            let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
            if whole.is_empty()
                || whole.len() > 9
                || fraction.len() > 9
                || (digits.contains('.') && fraction.is_empty())
            {
                return Err(fail(
                    "numbers have 1 to 9 digits before and at most 9 after the point",
                ));
            }
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos_per_unit: u128 = match &rest[..unit_len] {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(fail("unknown unit (use ns, us, ms, s, m or h)")),
            };
            rest = &rest[unit_len..];
            // Integer arithmetic: 999999999h is exactly that many hours.
            let whole: u128 = whole.parse().map_err(|_| fail("malformed number"))?;
            let fraction_value: u128 = if fraction.is_empty() {
                0
            } else {
                fraction.parse().map_err(|_| fail("malformed number"))?
            };
            let scale = 10u128.pow(fraction.len() as u32);
            total_nanos += whole * nanos_per_unit + fraction_value * nanos_per_unit / scale;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| fail("too large"))?;
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Self(std::time::Duration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    /// Writes the Go-style form the CRD pattern admits: `1h30m`, `45s`,
    /// `1.5s`, `250ms`, `0s` (hours above 999999999 are written in several
    /// `h` parts, which Go and the parser add up).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        if total < 1_000_000_000 {
            return if total.is_multiple_of(1_000_000) {
                write!(f, "{}ms", total / 1_000_000)
            } else if total.is_multiple_of(1_000) {
                write!(f, "{}us", total / 1_000)
            } else {
                write!(f, "{total}ns")
            };
        }
        let secs = total / 1_000_000_000;
        let fraction = total % 1_000_000_000;
        let (mut h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        const MAX_PART: u128 = 999_999_999;
        while h > MAX_PART {
            write!(f, "{MAX_PART}h")?;
            h -= MAX_PART;
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if fraction > 0 {
            let digits = format!("{fraction:09}");
            write!(f, "{s}.{}s", digits.trim_end_matches('0'))?;
        } else if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("1.5s", 1_500),
            ("0s", 0),
            ("0", 0),
        ];
        for (text, millis) in cases {
            let parsed: Duration = text.parse().unwrap();
            assert_eq!(parsed.as_millis(), millis, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for text in [
            "",
            "10",
            "s",
            "10x",
            "-5s",
            "1h 30m",
            "ms10",
            "1234567890h",
            "1.s",
        ] {
            let error = text.parse::<Duration>().unwrap_err();
            assert!(error.to_string().contains("invalid duration"), "{text}");
        }
    }

    #[test]
    fn the_schema_pattern_and_the_parser_agree() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in [
            "0",
            "0s",
            "30s",
            "1h30m",
            "1.5s",
            "999999999h999999999m",
            "10",
            "1234567890h",
            "1.s",
            "-1s",
            "5d",
            "1h 2m",
            "",
            ".5s",
        ] {
            assert_eq!(
                pattern.is_match(text),
                text.parse::<Duration>().is_ok(),
                "{text:?}: the CRD pattern and the parser disagree"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "1h30m",
            "45s",
            "250ms",
            "0s",
            "2h",
            "1m1s",
            "1500us",
            "1.5s",
            "1h0.25s",
            "999999999h",
            "999999999h999999999h",
        ] {
            let parsed: Duration = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.to_string().parse::<Duration>().unwrap(), parsed);
        }
    }
}
