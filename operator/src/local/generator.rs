//! Realistic keyed JSON events for a job's source, shaped by what its
//! pipeline reads: every `record.<field>` its expressions use before the
//! first map (the source's fields), each with a type and values that make
//! its filters pass most of the time.
//!
//! The shape is inferred from the expressions' text (pure): a field compared
//! with string literals takes the first most of the time and the others
//! now and then, a field
//! compared with `1.5` is a double, with `100` an integer, a field summed or
//! averaged, multiplied by or compared with another field is a double, the
//! keyBy field is a key from a skewed pool (an id counting up with an
//! interval join, whose two streams then pair record by record), the
//! dedupe key an id that repeats now and then, and the event-time field is
//! the wall clock in the job's format. Other fields are strings picked by
//! their name (`country`, `email`, `page`, ...). A join's topic gets the
//! fields the steps after the join read of the joined record
//! ([`EventShape::infer_join`]).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use rand::Rng;
use rand::rngs::StdRng;
use regex::Regex;
use serde_json::{Map, Number, Value};
use weir_crds::job::{AggregateFunction, StreamingJobSpec, TimestampFormat};

/// Distinct keys of the keyBy field.
pub const DEFAULT_KEYS: u32 = 10_000;
/// Share of events that repeat an earlier dedupe id.
const REPEAT_SHARE: f64 = 0.02;

/// What values a field takes.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldKind {
    /// A key from a pool of `keys` (`<prefix><n>`), skewed so a few are
    /// hot.
    Key {
        /// Prefix of every key.
        prefix: String,
        /// Pool size.
        keys: u32,
    },
    /// A unique id (`<prefix><n>`) that repeats an earlier one now and
    /// then (for dedupe).
    Id {
        /// Prefix of every id.
        prefix: String,
    },
    /// The event time, now, in this format.
    Time(TimestampFormat),
    /// An integer in `[low, high]`.
    Int {
        /// Lowest value.
        low: i64,
        /// Highest value.
        high: i64,
    },
    /// A double in `[low, high)`, with two decimals.
    Double {
        /// Lowest value.
        low: f64,
        /// Highest value.
        high: f64,
    },
    /// One of these strings, the first taken most often.
    Text(Vec<String>),
}

/// The fields of the generated events.
#[derive(Clone, Debug, PartialEq)]
pub struct EventShape {
    /// Every field, by name.
    pub fields: BTreeMap<String, FieldKind>,
}

static FIELD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"record\.([A-Za-z_][A-Za-z0-9_]*)").expect("valid regex"));
static STRING_COMPARED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"record\.([A-Za-z_][A-Za-z0-9_]*)\s*(?:==|!=)\s*"([^"]*)""#).expect("valid regex")
});
static NUMBER_COMPARED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"record\.([A-Za-z_][A-Za-z0-9_]*)\s*(?:==|!=|>=|<=|>|<|\+|-|\*|/)\s*(-?[0-9]+(?:\.[0-9]+)?)")
        .expect("valid regex")
});
static NUMBER_COMPARED_BEFORE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(-?[0-9]+(?:\.[0-9]+)?)\s*(?:==|!=|>=|<=|>|<|\+|-|\*|/)\s*record\.([A-Za-z_][A-Za-z0-9_]*)")
        .expect("valid regex")
});
static FIELDS_COMBINED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"record\.([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z_][A-Za-z0-9_]*)?\s*(?:\*|/|>=|<=|>|<)\s*record\.([A-Za-z_][A-Za-z0-9_]*)")
        .expect("valid regex")
});
static CONVERTED_TO_DOUBLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"double\(\s*record\.([A-Za-z_][A-Za-z0-9_]*)\s*\)").expect("valid regex")
});
static STRING_METHOD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"record\.([A-Za-z_][A-Za-z0-9_]*)\.(?:upperAscii|lowerAscii|endsWith|startsWith|contains|matches)\(")
        .expect("valid regex")
});

/// The expressions over source fields: every step's up to the first map
/// that drops its input (later steps read the map's fields).
fn source_expressions(spec: &StreamingJobSpec) -> Vec<String> {
    let mut exprs = Vec::new();
    for step in &spec.pipeline {
        exprs.extend(step.filter.clone());
        if let Some(key_by) = &step.key_by {
            exprs.push(key_by.expr.clone());
        }
        if let Some(dedupe) = &step.dedupe {
            exprs.push(dedupe.key.clone());
        }
        if let Some(aggregate) = &step.aggregate {
            exprs.extend(aggregate.fields.iter().filter_map(|f| f.expr.clone()));
        }
        if let Some(pattern) = &step.pattern {
            exprs.extend(pattern.sequence.iter().map(|s| s.condition.clone()));
        }
        if let Some(map) = &step.map {
            exprs.extend(map.fields.iter().map(|f| f.expr.clone()));
            if !map.keep_input {
                break;
            }
        }
    }
    exprs
}

/// The values of the keyBy field `field` (and of a join's key, drawn from
/// the same pool): keys from a skewed pool, or, with an interval join,
/// ids counting up, so that both streams pair record by record rather than
/// every record of a hot key with every other.
fn key_kind(spec: &StreamingJobSpec, field: &str, keys: u32) -> FieldKind {
    let prefix = prefix_of(field);
    if spec
        .join()
        .is_some_and(|join| join.kind == weir_crds::job::JoinKind::Interval)
    {
        FieldKind::Id { prefix }
    } else {
        FieldKind::Key {
            prefix,
            keys: keys.max(1),
        }
    }
}

fn prefix_of(field: &str) -> String {
    field
        .chars()
        .next()
        .map_or_else(|| "k".to_owned(), |c| c.to_ascii_lowercase().to_string())
        + "-"
}

/// Strings a field of this name plausibly holds.
fn vocabulary(field: &str) -> Vec<String> {
    let name = field.to_ascii_lowercase();
    let words: &[&str] = if name.contains("country") {
        &["de", "us", "fr", "jp", "br", "in", "gb", "es"]
    } else if name.contains("email") {
        &[
            "ana@example.com",
            "li@mail.test",
            "sam@example.com",
            "kim@mail.test",
        ]
    } else if name.contains("page") || name.contains("url") || name.contains("path") {
        &[
            "/",
            "/cart",
            "/search",
            "/product/1",
            "/product/2",
            "/checkout",
        ]
    } else if name.contains("site") || name.contains("region") {
        &["plant-1", "plant-2", "plant-3"]
    } else if name.contains("status") || name.contains("state") {
        &["PAID", "PENDING", "CANCELLED"]
    } else {
        &["alpha", "beta", "gamma", "delta"]
    };
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// A numeric range plausible for a field of this name.
fn number_range(field: &str) -> (f64, f64) {
    let name = field.to_ascii_lowercase();
    if name.contains("temp") {
        (-10.0, 40.0)
    } else if name.contains("cents") {
        (50.0, 20_000.0)
    } else if name.contains("amount") || name.contains("price") || name.contains("total") {
        (1.0, 200.0)
    } else {
        (0.0, 1000.0)
    }
}

impl EventShape {
    /// The shape of the events `spec`'s pipeline reads, with `keys`
    /// distinct keys.
    pub fn infer(spec: &StreamingJobSpec, keys: u32) -> EventShape {
        let exprs = source_expressions(spec);
        let mut fields = std::collections::BTreeSet::new();
        for expr in &exprs {
            for cap in FIELD.captures_iter(expr) {
                fields.insert(cap[1].to_owned());
            }
        }
        let mut kinds: BTreeMap<String, FieldKind> = BTreeMap::new();
        let mut set = |name: &str, kind: FieldKind| {
            kinds.entry(name.to_owned()).or_insert(kind);
        };
        if let Some(field) = spec
            .source
            .event_time
            .as_ref()
            .and_then(|t| t.field.clone())
        {
            let format = spec
                .source
                .event_time
                .as_ref()
                .map(|t| t.format)
                .unwrap_or_default();
            set(&field, FieldKind::Time(format));
        }
        for step in &spec.pipeline {
            if let Some(key_by) = &step.key_by {
                for cap in FIELD.captures_iter(&key_by.expr) {
                    set(&cap[1], key_kind(spec, &cap[1], keys));
                }
            }
            if let Some(dedupe) = &step.dedupe {
                for cap in FIELD.captures_iter(&dedupe.key) {
                    set(
                        &cap[1],
                        FieldKind::Id {
                            prefix: prefix_of(&cap[1]),
                        },
                    );
                }
            }
        }
        // Every literal a field is compared with, in order: the first is
        // drawn most often, the others (a pattern's later stages) too.
        let mut literals: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for cap in exprs.iter().flat_map(|e| STRING_COMPARED.captures_iter(e)) {
            let words = literals.entry(cap[1].to_owned()).or_default();
            if !words.iter().any(|w| *w == cap[2]) {
                words.push(cap[2].to_owned());
            }
        }
        for (field, mut words) in literals {
            let others: Vec<String> = vocabulary(&field)
                .into_iter()
                .filter(|w| !words.contains(w))
                .collect();
            words.extend(others);
            set(&field, FieldKind::Text(words));
        }
        for expr in &exprs {
            let numbers = NUMBER_COMPARED
                .captures_iter(expr)
                .map(|c| (c[1].to_owned(), c[2].to_owned()))
                .chain(
                    NUMBER_COMPARED_BEFORE
                        .captures_iter(expr)
                        .map(|c| (c[2].to_owned(), c[1].to_owned())),
                )
                .collect::<Vec<_>>();
            for (name, literal) in numbers {
                let (low, high) = number_range(&name);
                if literal.contains('.') {
                    set(&name, FieldKind::Double { low, high });
                } else {
                    set(
                        &name,
                        FieldKind::Int {
                            low: low as i64,
                            high: high as i64,
                        },
                    );
                }
            }
            for cap in FIELDS_COMBINED.captures_iter(expr) {
                for name in [&cap[1], &cap[2]] {
                    let (low, high) = number_range(name);
                    set(name, FieldKind::Double { low, high });
                }
            }
            for cap in CONVERTED_TO_DOUBLE.captures_iter(expr) {
                let (low, high) = number_range(&cap[1]);
                set(
                    &cap[1],
                    FieldKind::Int {
                        low: low as i64,
                        high: high as i64,
                    },
                );
            }
            for cap in STRING_METHOD.captures_iter(expr) {
                set(&cap[1], FieldKind::Text(vocabulary(&cap[1])));
            }
        }
        for step in &spec.pipeline {
            let Some(aggregate) = &step.aggregate else {
                continue;
            };
            for field in &aggregate.fields {
                let numeric = matches!(
                    field.function,
                    AggregateFunction::Sum
                        | AggregateFunction::Avg
                        | AggregateFunction::Min
                        | AggregateFunction::Max
                );
                if let Some(expr) = field.expr.as_deref().filter(|_| numeric) {
                    for cap in FIELD.captures_iter(expr) {
                        let (low, high) = number_range(&cap[1]);
                        set(&cap[1], FieldKind::Double { low, high });
                    }
                }
            }
        }
        for name in &fields {
            set(name, FieldKind::Text(vocabulary(name)));
        }
        // The joined record's field is the join's to fill.
        if let Some(join) = spec.join() {
            kinds.remove(&join.as_field);
        }
        EventShape { fields: kinds }
    }

    /// The shape of the records of the job's join topic, if it has a join:
    /// the join key (the Kafka key when `join.key` is unset) drawn from the
    /// same pool as the keyBy field, so that rows and records meet; the
    /// event-time field; and the fields the steps after the join read of
    /// the joined record (`record.<as>.<field>`), typed as [`Self::infer`]
    /// types source fields.
    pub fn infer_join(spec: &StreamingJobSpec, keys: u32) -> Option<EventShape> {
        let at = spec.pipeline.iter().position(|s| s.join.is_some())?;
        let join = spec.pipeline[at].join.as_ref()?;
        let main_key = spec.pipeline[..at]
            .iter()
            .filter_map(|s| s.key_by.as_ref())
            .find_map(|k| FIELD.captures(&k.expr).map(|c| c[1].to_owned()))?;
        let key_field = join
            .key
            .as_deref()
            .and_then(|k| FIELD.captures(k).map(|c| c[1].to_owned()))
            .unwrap_or_else(|| main_key.clone());
        // The later steps as if they read the joined record itself.
        let nested = format!("record.{}.", join.as_field);
        let nested_field = Regex::new(&format!(
            r"record\.{}\.([A-Za-z_][A-Za-z0-9_]*)",
            regex::escape(&join.as_field)
        ))
        .ok()?;
        let mut read = std::collections::BTreeSet::new();
        let mut later = spec.clone();
        later.pipeline = Vec::new();
        for step in &spec.pipeline[at + 1..] {
            let text = serde_json::to_string(step).ok()?;
            read.extend(nested_field.captures_iter(&text).map(|c| c[1].to_owned()));
            later
                .pipeline
                .push(serde_json::from_str(&text.replace(&nested, "record.")).ok()?);
        }
        let mut shape = EventShape::infer(&later, keys);
        let time = spec
            .source
            .event_time
            .as_ref()
            .and_then(|t| t.field.clone());
        shape
            .fields
            .retain(|name, _| read.contains(name) || Some(name) == time.as_ref());
        shape
            .fields
            .insert(key_field, key_kind(spec, &main_key, keys));
        Some(shape)
    }

    /// The field the events are keyed by, if any (the Kafka record key).
    pub fn key_field(&self) -> Option<&str> {
        self.fields
            .iter()
            .find(|(_, kind)| matches!(kind, FieldKind::Key { .. }))
            .map(|(name, _)| name.as_str())
    }
}

/// Draws events of a shape.
#[derive(Debug)]
pub struct EventSource {
    shape: EventShape,
    rng: StdRng,
    /// Ids issued so far.
    ids: u64,
}

/// One generated event.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedEvent {
    /// The Kafka record key: the key field's value, if the shape has one.
    pub key: Option<String>,
    /// The JSON object.
    pub value: Vec<u8>,
}

impl EventSource {
    /// A source of events of `shape`, seeded.
    pub fn new(shape: EventShape, seed: u64) -> EventSource {
        EventSource {
            shape,
            rng: rand::SeedableRng::seed_from_u64(seed),
            ids: 0,
        }
    }

    /// The next event, stamped `now_ms`.
    pub fn next_event(&mut self, now_ms: i64) -> GeneratedEvent {
        let mut object = Map::new();
        let mut key = None;
        for (name, kind) in &self.shape.fields {
            let value = match kind {
                FieldKind::Key { prefix, keys } => {
                    // Skewed: a square makes low numbers hot.
                    let u: f64 = self.rng.random();
                    let n = ((u * u) * f64::from(*keys)) as u32;
                    let k = format!("{prefix}{n}");
                    key = Some(k.clone());
                    Value::String(k)
                }
                FieldKind::Id { prefix } => {
                    let n = if self.ids > 0 && self.rng.random_bool(REPEAT_SHARE) {
                        self.ids - 1 - self.rng.random_range(0..self.ids.min(100))
                    } else {
                        self.ids += 1;
                        self.ids - 1
                    };
                    Value::String(format!("{prefix}{n}"))
                }
                FieldKind::Time(format) => match format {
                    TimestampFormat::EpochMillis => Value::from(now_ms),
                    TimestampFormat::EpochSeconds => Value::from(now_ms / 1000),
                    TimestampFormat::Auto | TimestampFormat::Rfc3339 => Value::String(
                        jiff::Timestamp::from_millisecond(now_ms)
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                    ),
                },
                FieldKind::Int { low, high } => {
                    Value::from(self.rng.random_range(*low..=(*high).max(*low)))
                }
                FieldKind::Double { low, high } => {
                    let x: f64 = self.rng.random_range(*low..(*high).max(*low + 0.01));
                    // Two decimals, and always a fraction, so JSON keeps it
                    // a double.
                    let x = (x * 100.0).round() / 100.0 + 0.001;
                    Number::from_f64(x).map_or(Value::Null, Value::Number)
                }
                FieldKind::Text(words) => {
                    let i = if self.rng.random_bool(0.8) {
                        0
                    } else {
                        self.rng.random_range(0..words.len())
                    };
                    Value::String(words.get(i).cloned().unwrap_or_default())
                }
            };
            object.insert(name.clone(), value);
        }
        GeneratedEvent {
            key,
            value: serde_json::to_vec(&Value::Object(object)).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::model::Model;

    fn sample(name: &str) -> StreamingJobSpec {
        let path = format!("{}/../config/samples/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        weir_worker::config::parse_job(&text).unwrap().spec
    }

    #[test]
    fn the_shapes_of_the_samples_follow_their_expressions() {
        let clicks = EventShape::infer(&sample("clickstream-counts.yaml"), 100);
        assert_eq!(clicks.key_field(), Some("user_id"));
        assert!(matches!(clicks.fields["amount"], FieldKind::Double { .. }));
        assert!(matches!(
            clicks.fields["ts"],
            FieldKind::Time(TimestampFormat::Auto)
        ));
        assert!(matches!(clicks.fields["page"], FieldKind::Text(_)));
        let orders = EventShape::infer(&sample("orders-filter-enrich.yaml"), 100);
        assert_eq!(
            orders.fields["status"],
            FieldKind::Text(vec!["PAID".into(), "PENDING".into(), "CANCELLED".into()])
        );
        assert!(matches!(
            orders.fields["amount_cents"],
            FieldKind::Int { .. }
        ));
        let auth = EventShape::infer(&sample("account-takeover.yaml"), 100);
        let FieldKind::Text(types) = &auth.fields["type"] else {
            panic!("type is text: {auth:?}");
        };
        assert_eq!(
            types[..2],
            ["login_failed", "password_change"],
            "both stages' literals"
        );
        let sensors = EventShape::infer(&sample("iot-sensor-averages.yaml"), 100);
        assert!(matches!(sensors.fields["reading_id"], FieldKind::Id { .. }));
        assert!(matches!(
            sensors.fields["time"],
            FieldKind::Time(TimestampFormat::EpochMillis)
        ));
        assert!(matches!(
            sensors.fields["temperature_c"],
            FieldKind::Double { .. }
        ));
    }

    #[test]
    fn join_topics_get_the_fields_the_join_reads_keyed_like_the_stream() {
        let spec = sample("clicks-enriched-with-users.yaml");
        let clicks = EventShape::infer(&spec, 100);
        assert!(!clicks.fields.contains_key("user"), "the join fills user");
        let users = EventShape::infer_join(&spec, 100).unwrap();
        assert_eq!(users.key_field(), Some("user_id"), "the Kafka key");
        assert_eq!(users.fields["user_id"], clicks.fields["user_id"]);
        assert!(matches!(users.fields["country"], FieldKind::Text(_)));
        assert!(matches!(users.fields["tier"], FieldKind::Text(_)));
        assert!(!users.fields.contains_key("page"), "{users:?}");

        let spec = sample("orders-with-payments.yaml");
        let orders = EventShape::infer(&spec, 100);
        let payments = EventShape::infer_join(&spec, 100).unwrap();
        assert!(matches!(orders.fields["order_id"], FieldKind::Id { .. }));
        assert_eq!(payments.fields["order_id"], orders.fields["order_id"]);
        assert!(matches!(orders.fields["amount"], FieldKind::Double { .. }));
        assert!(matches!(payments.fields["paid"], FieldKind::Double { .. }));

        let spec = sample("orders-in-euros.yaml");
        let rates = EventShape::infer_join(&spec, 100).unwrap();
        assert!(matches!(rates.fields["currency"], FieldKind::Key { .. }));
        assert!(matches!(rates.fields["eur"], FieldKind::Double { .. }));
        assert!(matches!(rates.fields["ts"], FieldKind::Time(_)));
    }

    /// Every sample's generated events decode and evaluate without a dead
    /// letter, and its filters let most of them through.
    #[test]
    fn generated_events_are_valid_input_for_every_sample() {
        for name in [
            "clickstream-counts.yaml",
            "iot-sensor-averages.yaml",
            "orders-filter-enrich.yaml",
            "vibration-count-windows.yaml",
            "clicks-enriched-with-users.yaml",
            "orders-with-payments.yaml",
            "orders-in-euros.yaml",
            "account-takeover.yaml",
        ] {
            let spec = sample(name);
            let dir = tempfile::tempdir().unwrap();
            let mut model = Model::new(&spec, 4, dir.path(), None).unwrap();
            let mut source = EventSource::new(EventShape::infer(&spec, 50), 7);
            let mut joined = EventShape::infer_join(&spec, 50).map(|shape| {
                (
                    spec.join().unwrap().topic.clone(),
                    EventSource::new(shape, 8),
                )
            });
            let start = k8s_openapi::jiff::Timestamp::now().as_millisecond();
            let mut feed = |topic: &str, event: GeneratedEvent, i: i64, now: i64| {
                model
                    .feed(
                        topic,
                        (i % 4) as i32,
                        event.key.as_deref().map(str::as_bytes),
                        &event.value,
                        now,
                    )
                    .unwrap();
            };
            for i in 0..2000 {
                let now = start + i * 100;
                if let Some((topic, rows)) = &mut joined {
                    feed(topic, rows.next_event(now), i, now);
                }
                feed(&spec.source.topics[0], source.next_event(now), i, now);
            }
            assert_eq!(model.dead_letters(), 0, "{name}");
            assert_eq!(model.late(), 0, "{name}");
            // 200 s of event time: windowed samples closed some windows,
            // the stateless one passed most events.
            let outputs: u64 = model.expected().values().sum();
            assert!(outputs > 0, "{name}: no output");
            if name == "orders-filter-enrich.yaml" {
                assert!(outputs > 1000, "{name}: only {outputs} of 2000 passed");
            }
        }
    }
}
