//! Reading a record's event time: from a top-level field (RFC 3339 or epoch
//! milliseconds or seconds) or from the Kafka record timestamp.
//!
//! Event times are epoch milliseconds and must lie between the years 0000
//! and 9999, which keeps all window arithmetic far from `i64` overflow.

use serde_json::Value;
use thiserror::Error;
use weir_crds::expr::{FieldValue, Record};
use weir_crds::job::{EventTimeSpec, TimestampFormat};

use crate::engine::record::DecodePlan;

/// Earliest accepted event time: 0000-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: i64 = -62_167_219_200_000;
/// Latest accepted event time: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME: i64 = 253_402_300_799_999;

/// Why a record has no usable event time.
#[derive(Debug, Error, PartialEq)]
pub enum EventTimeError {
    /// The event-time field is absent or null.
    #[error("event-time field {0:?} is missing")]
    Missing(String),
    /// The field holds a value of the wrong type for the format.
    #[error("event-time field {field:?} is not {expected}")]
    WrongType {
        /// The field name.
        field: String,
        /// What the format expects.
        expected: &'static str,
    },
    /// The string is not an RFC 3339 timestamp.
    #[error("event-time field {field:?} is not an RFC 3339 timestamp: {reason}")]
    BadTimestamp {
        /// The field name.
        field: String,
        /// The parser's message.
        reason: String,
    },
    /// The time is before year 0 or after year 9999.
    #[error("event time {0} ms is out of range")]
    OutOfRange(i64),
    /// The record has no Kafka timestamp and no event-time field is set.
    #[error("record has no Kafka timestamp")]
    NoKafkaTimestamp,
}

/// Where event times come from, compiled from the source spec.
#[derive(Clone, Debug, PartialEq)]
pub enum EventTimeSource {
    /// Records carry no event time (the source has no eventTime).
    None,
    /// The Kafka record timestamp.
    KafkaTimestamp,
    /// A top-level field of the record.
    Field {
        /// The field name.
        name: String,
        /// How it is written.
        format: TimestampFormat,
        /// Its position among the names the source records' decode plan
        /// keeps (see [`EventTimeSource::bind`]): read from that slot
        /// instead of looked up by name.
        slot: Option<usize>,
    },
}

impl EventTimeSource {
    /// The event-time source of `spec.source.eventTime`.
    pub fn from_spec(spec: Option<&EventTimeSpec>) -> EventTimeSource {
        match spec {
            None => EventTimeSource::None,
            Some(EventTimeSpec { field: None, .. }) => EventTimeSource::KafkaTimestamp,
            Some(EventTimeSpec {
                field: Some(name),
                format,
            }) => EventTimeSource::Field {
                name: name.clone(),
                format: *format,
                slot: None,
            },
        }
    }

    /// This source reading its field from its slot of `plan`, the decode
    /// plan of the records it reads.
    pub fn bind(mut self, plan: &DecodePlan) -> EventTimeSource {
        if let EventTimeSource::Field { name, slot, .. } = &mut self {
            *slot = plan.slot(name);
        }
        self
    }

    /// The record field this source reads, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            EventTimeSource::Field { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The event time of a record, `Ok(None)` when the source defines none.
    pub fn extract<'r>(
        &self,
        record: impl Into<Record<'r>>,
        kafka_timestamp_ms: Option<i64>,
    ) -> Result<Option<i64>, EventTimeError> {
        let ms = match self {
            EventTimeSource::None => return Ok(None),
            EventTimeSource::KafkaTimestamp => {
                kafka_timestamp_ms.ok_or(EventTimeError::NoKafkaTimestamp)?
            }
            EventTimeSource::Field { name, format, slot } => {
                let value = match record.into() {
                    Record::Json(json) => json.get(name).map(TimeField::of_json),
                    // The slot answers for records of the plan it was
                    // bound to; any other record's fields by name.
                    Record::Fields(fields) => slot
                        .and_then(|slot| fields.get_at(slot, name))
                        .or_else(|| fields.get(name))
                        .map(TimeField::of_field),
                };
                match value {
                    None | Some(TimeField::Null) => {
                        return Err(EventTimeError::Missing(name.clone()));
                    }
                    Some(v) => parse(name, v, *format)?,
                }
            }
        };
        if (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ms) {
            Ok(Some(ms))
        } else {
            Err(EventTimeError::OutOfRange(ms))
        }
    }
}

/// The value of an event-time field, as far as reading a time needs it.
#[derive(Clone, Copy)]
enum TimeField<'v> {
    Null,
    Str(&'v str),
    Int(i64),
    Double(f64),
    /// A bool, an array or an object.
    Other,
}

impl<'v> TimeField<'v> {
    fn of_json(value: &'v Value) -> TimeField<'v> {
        match value {
            Value::Null => TimeField::Null,
            Value::String(s) => TimeField::Str(s),
            Value::Number(n) => match n.as_i64() {
                Some(i) => TimeField::Int(i),
                None => TimeField::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => TimeField::Other,
        }
    }

    fn of_field(value: &'v FieldValue<'_>) -> TimeField<'v> {
        match value {
            FieldValue::Null => TimeField::Null,
            FieldValue::Str(s) => TimeField::Str(s),
            FieldValue::Int(i) => TimeField::Int(*i),
            FieldValue::Uint(u) => TimeField::Double(*u as f64),
            FieldValue::Double(d) => TimeField::Double(*d),
            FieldValue::Json(json) => TimeField::of_json(json),
            FieldValue::Bool(_) => TimeField::Other,
        }
    }
}

fn parse(
    field: &str,
    value: TimeField<'_>,
    format: TimestampFormat,
) -> Result<i64, EventTimeError> {
    let wrong = |expected| EventTimeError::WrongType {
        field: field.to_owned(),
        expected,
    };
    match (format, value) {
        (TimestampFormat::Auto | TimestampFormat::Rfc3339, TimeField::Str(s)) => rfc3339(field, s),
        (
            TimestampFormat::Auto | TimestampFormat::EpochMillis,
            TimeField::Int(_) | TimeField::Double(_),
        ) => number_ms(value, 1).ok_or(EventTimeError::OutOfRange(i64::MAX)),
        (TimestampFormat::EpochSeconds, TimeField::Int(_) | TimeField::Double(_)) => {
            number_ms(value, 1000).ok_or(EventTimeError::OutOfRange(i64::MAX))
        }
        (TimestampFormat::Auto, _) => Err(wrong("an RFC 3339 string or epoch milliseconds")),
        (TimestampFormat::Rfc3339, _) => Err(wrong("an RFC 3339 string")),
        (TimestampFormat::EpochMillis, _) => Err(wrong("a number of epoch milliseconds")),
        (TimestampFormat::EpochSeconds, _) => Err(wrong("a number of epoch seconds")),
    }
}

/// A JSON number times `scale` in whole milliseconds, `None` when it does
/// not fit (or is not a number).
fn number_ms(n: TimeField<'_>, scale: i64) -> Option<i64> {
    let f = match n {
        TimeField::Int(i) => return i.checked_mul(scale),
        TimeField::Double(d) => d * scale as f64,
        _ => return None,
    };
    // Anything beyond the accepted range is rejected by the caller anyway.
    if f.is_finite() && f.abs() < 1e17 {
        Some(f.floor() as i64)
    } else {
        None
    }
}

fn rfc3339(field: &str, s: &str) -> Result<i64, EventTimeError> {
    let ts: jiff::Timestamp = s
        .parse()
        .map_err(|e: jiff::Error| EventTimeError::BadTimestamp {
            field: field.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(ts.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn field(format: TimestampFormat) -> EventTimeSource {
        EventTimeSource::Field {
            name: "ts".into(),
            format,
            slot: None,
        }
    }

    #[test]
    fn auto_accepts_rfc3339_and_millis() {
        let src = field(TimestampFormat::Auto);
        assert_eq!(
            src.extract(&json!({"ts": "2024-11-21T08:00:00Z"}), None),
            Ok(Some(1_732_176_000_000))
        );
        assert_eq!(
            src.extract(&json!({"ts": "2024-11-21T09:00:00.5+01:00"}), None),
            Ok(Some(1_732_176_000_500))
        );
        assert_eq!(
            src.extract(&json!({"ts": 1_732_176_000_000i64}), None),
            Ok(Some(1_732_176_000_000))
        );
        assert!(matches!(
            src.extract(&json!({"ts": true}), None),
            Err(EventTimeError::WrongType { .. })
        ));
        assert!(matches!(
            src.extract(&json!({"ts": "yesterday"}), None),
            Err(EventTimeError::BadTimestamp { .. })
        ));
        assert_eq!(
            src.extract(&json!({}), None),
            Err(EventTimeError::Missing("ts".into()))
        );
    }

    #[test]
    fn seconds_and_strict_formats() {
        assert_eq!(
            field(TimestampFormat::EpochSeconds).extract(&json!({"ts": 1_732_176_000.25}), None),
            Ok(Some(1_732_176_000_250))
        );
        assert!(
            field(TimestampFormat::Rfc3339)
                .extract(&json!({"ts": 5}), None)
                .is_err()
        );
        assert!(
            field(TimestampFormat::EpochMillis)
                .extract(&json!({"ts": "2024-11-21T08:00:00Z"}), None)
                .is_err()
        );
        assert_eq!(
            field(TimestampFormat::EpochSeconds).extract(&json!({"ts": i64::MAX}), None),
            Err(EventTimeError::OutOfRange(i64::MAX))
        );
        assert_eq!(
            field(TimestampFormat::EpochMillis).extract(&json!({"ts": i64::MIN}), None),
            Err(EventTimeError::OutOfRange(i64::MIN))
        );
    }

    #[test]
    fn kafka_timestamp_and_none() {
        assert_eq!(
            EventTimeSource::KafkaTimestamp.extract(&json!({}), Some(42)),
            Ok(Some(42))
        );
        assert_eq!(
            EventTimeSource::KafkaTimestamp.extract(&json!({}), None),
            Err(EventTimeError::NoKafkaTimestamp)
        );
        assert_eq!(EventTimeSource::None.extract(&json!({}), None), Ok(None));
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_range(n in any::<f64>(), i in any::<i64>(), s in ".*") {
            for format in [
                TimestampFormat::Auto,
                TimestampFormat::Rfc3339,
                TimestampFormat::EpochMillis,
                TimestampFormat::EpochSeconds,
            ] {
                for v in [json!({"ts": n}), json!({"ts": i}), json!({"ts": s.clone()})] {
                    if let Ok(Some(ms)) = field(format).extract(&v, None) {
                        prop_assert!((MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ms));
                    }
                }
            }
        }
    }
}
