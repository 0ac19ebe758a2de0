//! Every validation rule: one case that passes and one that fails with the
//! field path and reason a user sees from `weir validate`.

use serde_yaml::Value;
use weir_crds::validate::{Problem, parse_documents};

/// A valid job exercising most of the spec, as a user would write it.
const BASE: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamingJob
metadata:
  name: clicks
spec:
  kafka:
    bootstrapServers: kafka:9092
  source:
    topics: [clicks]
    eventTime:
      field: ts
  pipeline:
    - filter: record.amount > 0.0
    - keyBy:
        expr: record.user_id
    - window:
        type: tumbling
        size: 1m
        allowedLateness: 10s
    - aggregate:
        fields:
          - name: clicks
            function: count
          - name: revenue
            function: sum
            expr: record.amount
  sink:
    topic: clicks-per-minute
  deadLetter:
    topic: clicks-dead
  lateData:
    topic: clicks-late
  checkpoint:
    storage: s3://bucket/weir
  autoscaler:
    minParallelism: 1
    maxParallelism: 4
"#;

fn base() -> Value {
    serde_yaml::from_str(BASE).unwrap()
}

/// Sets the value at a dotted path (`spec.pipeline.2.window.size`), creating
/// mappings on the way; `None` removes the key.
fn set(doc: &mut Value, path: &str, value: Option<Value>) {
    let mut node = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        if let Ok(index) = part.parse::<usize>() {
            let seq = node.as_sequence_mut().expect("index into a sequence");
            if last {
                match value {
                    Some(v) => seq[index] = v,
                    None => {
                        seq.remove(index);
                    }
                }
                return;
            }
            node = &mut seq[index];
        } else {
            let map = node.as_mapping_mut().expect("key into a mapping");
            if last {
                match value {
                    Some(v) => {
                        map.insert(Value::from(*part), v);
                    }
                    None => {
                        map.remove(*part);
                    }
                }
                return;
            }
            node = map
                .entry(Value::from(*part))
                .or_insert_with(|| Value::Mapping(Default::default()));
        }
    }
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

fn problems_of(doc: &Value) -> Vec<Problem> {
    let text = serde_yaml::to_string(doc).unwrap();
    let documents = parse_documents(&text);
    assert_eq!(documents.len(), 1, "one document");
    documents.into_iter().next().unwrap().problems
}

/// Applies `edit` to the base job and expects exactly one problem at `path`
/// whose reason contains `reason`.
fn expect_problem(edit: impl FnOnce(&mut Value), path: &str, reason: &str) {
    let mut doc = base();
    edit(&mut doc);
    let problems = problems_of(&doc);
    assert!(
        problems
            .iter()
            .any(|p| p.path == path && p.message.contains(reason)),
        "expected `{path}: …{reason}…`, got {problems:#?}"
    );
}

/// Applies `edit` to the base job and expects no problem at all.
fn expect_valid(edit: impl FnOnce(&mut Value)) {
    let mut doc = base();
    edit(&mut doc);
    let problems = problems_of(&doc);
    assert!(problems.is_empty(), "expected valid, got {problems:#?}");
}

#[test]
fn base_job_is_valid_and_gets_defaults() {
    let documents = parse_documents(BASE);
    assert!(
        documents[0].problems.is_empty(),
        "{:?}",
        documents[0].problems
    );
    let job = documents[0].job.as_ref().unwrap();
    assert_eq!(job.spec.parallelism, 1);
    assert_eq!(job.spec.checkpoint.interval.to_string(), "10s");
    assert_eq!(job.spec.checkpoint.retain, 3);
    assert_eq!(
        job.spec.source.watermark.max_out_of_orderness.to_string(),
        "5s"
    );
    assert_eq!(
        job.spec.autoscaler.as_ref().unwrap().target_utilization,
        0.7
    );
    assert_eq!(job.spec.guarantee, weir_crds::job::Guarantee::ExactlyOnce);
}

#[test]
fn api_version_and_kind() {
    expect_problem(
        |d| set(d, "apiVersion", Some(yaml("weir.dev/v1"))),
        "apiVersion",
        "must be weir.dev/v1alpha1",
    );
    expect_problem(
        |d| set(d, "kind", Some(yaml("Job"))),
        "kind",
        "must be StreamingJob",
    );
    expect_problem(|d| set(d, "spec", None), "spec", "required");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    expect_problem(
        |d| set(d, "spec.pipeline.2.window.sise", Some(yaml("1m"))),
        "spec.pipeline[2].window.sise",
        "unknown field `sise`, expected one of `type`, `size`",
    );
    expect_problem(
        |d| set(d, "spec.paralelism", Some(yaml("3"))),
        "spec.paralelism",
        "unknown field `paralelism`",
    );
    expect_problem(
        |d| set(d, "extra", Some(yaml("1"))),
        "extra",
        "unknown field",
    );
}

#[test]
fn malformed_values_name_the_field() {
    expect_problem(
        |d| set(d, "spec.pipeline.2.window.size", Some(yaml("ten minutes"))),
        "spec.pipeline[2].window.size",
        "invalid duration",
    );
    expect_problem(
        |d| set(d, "spec.guarantee", Some(yaml("maybeOnce"))),
        "spec.guarantee",
        "unknown variant `maybeOnce`",
    );
    expect_problem(
        |d| set(d, "spec.parallelism", Some(yaml("two"))),
        "spec.parallelism",
        "invalid type",
    );
}

#[test]
fn job_name() {
    expect_valid(|d| set(d, "metadata.name", Some(yaml("clicks-2"))));
    expect_problem(
        |d| set(d, "metadata.name", Some(yaml("Clicks_2"))),
        "metadata.name",
        "lower-case letters",
    );
    expect_problem(
        |d| set(d, "metadata.name", Some(Value::from("a".repeat(53)))),
        "metadata.name",
        "at most 52 characters",
    );
}

#[test]
fn durations_must_be_positive() {
    expect_valid(|d| set(d, "spec.pipeline.2.window.size", Some(yaml("90s"))));
    expect_problem(
        |d| set(d, "spec.pipeline.2.window.size", Some(yaml("0s"))),
        "spec.pipeline[2].window.size",
        "must be greater than 0",
    );
    expect_problem(
        |d| set(d, "spec.checkpoint.interval", Some(yaml("0s"))),
        "spec.checkpoint.interval",
        "must be greater than 0",
    );
    expect_problem(
        |d| set(d, "spec.savepoint.timeout", Some(yaml("0s"))),
        "spec.savepoint.timeout",
        "must be greater than 0",
    );
    expect_problem(
        |d| set(d, "spec.autoscaler.catchUpDuration", Some(yaml("0s"))),
        "spec.autoscaler.catchUpDuration",
        "must be greater than 0",
    );
}

#[test]
fn window_shapes() {
    let sliding = |slide: &str| {
        let slide = slide.to_owned();
        move |d: &mut Value| {
            set(d, "spec.pipeline.2.window.type", Some(yaml("sliding")));
            set(d, "spec.pipeline.2.window.slide", Some(yaml(&slide)));
        }
    };
    expect_valid(sliding("20s"));
    expect_problem(
        sliding("2m"),
        "spec.pipeline[2].window.slide",
        "at most the window size",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.2.window.type", Some(yaml("sliding"))),
        "spec.pipeline[2].window.slide",
        "required for sliding windows",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.2.window.slide", Some(yaml("10s"))),
        "spec.pipeline[2].window.slide",
        "applies to sliding windows only",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.2.window.size", None),
        "spec.pipeline[2].window.size",
        "required for tumbling and sliding windows",
    );
    let session = |d: &mut Value| {
        set(
            d,
            "spec.pipeline.2.window",
            Some(yaml("{type: session, gap: 30s}")),
        );
    };
    expect_valid(session);
    expect_problem(
        |d| set(d, "spec.pipeline.2.window", Some(yaml("{type: session}"))),
        "spec.pipeline[2].window.gap",
        "required for session windows",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.pipeline.2.window",
                Some(yaml("{type: session, gap: 30s, size: 1m}")),
            )
        },
        "spec.pipeline[2].window.size",
        "applies to tumbling and sliding windows only",
    );
}

#[test]
fn count_windows() {
    // Without lateData, which only event-time windows can feed.
    let window = |window: &str| {
        let window = window.to_owned();
        move |d: &mut Value| {
            set(d, "spec.pipeline.2.window", Some(yaml(&window)));
            set(d, "spec.lateData", None);
        }
    };
    expect_valid(window("{type: count, count: 100}"));
    expect_valid(window("{type: count, count: 100, slideCount: 20}"));
    // Count windows need no event time.
    expect_valid(|d| {
        window("{type: count, count: 10}")(d);
        set(d, "spec.source.eventTime", None);
    });
    expect_problem(
        window("{type: count}"),
        "spec.pipeline[2].window.count",
        "required for count windows",
    );
    expect_problem(
        window("{type: count, count: 100, slideCount: 30}"),
        "spec.pipeline[2].window.slideCount",
        "must divide count (100)",
    );
    expect_problem(
        window("{type: count, count: 100000, slideCount: 1}"),
        "spec.pipeline[2].window.slideCount",
        "more than 1000 windows",
    );
    expect_problem(
        window("{type: count, count: 10, size: 1m}"),
        "spec.pipeline[2].window.size",
        "applies to tumbling and sliding windows only",
    );
    expect_problem(
        window("{type: count, count: 10, allowedLateness: 5s}"),
        "spec.pipeline[2].window.allowedLateness",
        "event-time windows only",
    );
    expect_problem(
        window("{type: tumbling, size: 1m, count: 10}"),
        "spec.pipeline[2].window.count",
        "applies to count windows only",
    );
    // lateData needs an event-time window: count windows have no late events.
    expect_problem(
        |d| {
            set(
                d,
                "spec.pipeline.2.window",
                Some(yaml("{type: count, count: 10}")),
            )
        },
        "spec.lateData",
        "no event-time window",
    );
}

#[test]
fn patterns() {
    // The base job's window and aggregate are replaced by a pattern.
    let pattern = |sequence: &str, extra: &str| {
        let text = format!("{{within: 10m, sequence: {sequence}{extra}}}");
        move |d: &mut Value| {
            let steps = d["spec"]["pipeline"].as_sequence_mut().unwrap();
            steps.truncate(2);
            steps.push(yaml(&format!("{{pattern: {text}}}")));
        }
    };
    let fraud = r#"[{name: failed, condition: 'record.type == "login_failed"', times: 3},
                    {name: changed, condition: 'record.type == "password_change"'}]"#;
    expect_valid(pattern(fraud, ""));
    expect_valid(pattern(fraud, ", contiguity: strict"));
    expect_valid(pattern(
        "[{name: spike, condition: 'record.t > 90.0'}, {name: alarm, condition: 'record.a', absent: true}]",
        "",
    ));
    expect_problem(
        pattern("[{name: a, condition: 'record.x >'}]", ""),
        "spec.pipeline[2].pattern.sequence[0].condition",
        "",
    );
    expect_problem(
        pattern(
            "[{name: a, condition: 'true'}, {name: a, condition: 'false'}]",
            "",
        ),
        "spec.pipeline[2].pattern.sequence[1].name",
        "names an earlier stage",
    );
    expect_problem(
        pattern("[{name: key, condition: 'true'}]", ""),
        "spec.pipeline[2].pattern.sequence[0].name",
        "reserved",
    );
    expect_problem(
        pattern("[{name: a, condition: 'true', oneOrMore: true}]", ""),
        "spec.pipeline[2].pattern.sequence[0].oneOrMore",
        "needs a next stage",
    );
    expect_problem(
        pattern(
            "[{name: a, condition: 'true', absent: true}, {name: b, condition: 'true'}]",
            "",
        ),
        "spec.pipeline[2].pattern.sequence[0].absent",
        "last stage only",
    );
    expect_problem(
        |d| {
            pattern(
                "[{name: a, condition: 'true'}, {name: b, condition: 'true', absent: true}]",
                "",
            )(d);
            set(d, "spec.pipeline.2.pattern.within", None);
        },
        "spec.pipeline[2].pattern.within",
        "required with an absent last stage",
    );
    expect_problem(
        |d| {
            pattern(fraud, "")(d);
            let steps = d["spec"]["pipeline"].as_sequence_mut().unwrap();
            steps.remove(1);
        },
        "spec.pipeline[1].pattern",
        "needs a keyBy step before it",
    );
    expect_problem(
        |d| {
            pattern(fraud, "")(d);
            let steps = d["spec"]["pipeline"].as_sequence_mut().unwrap();
            steps.push(yaml("{window: {type: tumbling, size: 1h}}"));
            steps.push(yaml(
                "{aggregate: {fields: [{name: alerts, function: count}]}}",
            ));
        },
        "spec.pipeline[3].window",
        "follows the pattern at spec.pipeline[2]",
    );
}

#[test]
fn joins() {
    // The base job's window and aggregate are replaced by a join.
    let join = |text: &str| {
        let text = text.to_owned();
        move |d: &mut Value| {
            let steps = d["spec"]["pipeline"].as_sequence_mut().unwrap();
            steps.truncate(2);
            steps.push(yaml(&format!("{{join: {text}}}")));
            set(d, "spec.lateData", None);
        }
    };
    expect_valid(join("{type: table, topic: users, as: user}"));
    expect_valid(join(
        "{type: table, topic: users, key: record.id, as: user, mode: left, temporal: true, history: 4}",
    ));
    expect_valid(join(
        "{type: interval, topic: payments, key: record.order_id, as: payment, before: 0s, after: 10m}",
    ));
    expect_problem(
        join("{type: table, topic: clicks, as: user}"),
        "spec.pipeline[2].join.topic",
        "is a source topic",
    );
    expect_problem(
        join("{type: table, topic: users, key: 'record.id +', as: user}"),
        "spec.pipeline[2].join.key",
        "",
    );
    expect_problem(
        join("{type: interval, topic: payments, as: payment, after: 10m}"),
        "spec.pipeline[2].join.before",
        "required for interval joins",
    );
    expect_problem(
        join("{type: interval, topic: payments, as: payment, before: 0s, after: 0s}"),
        "spec.pipeline[2].join.after",
        "both 0s",
    );
    expect_problem(
        join("{type: interval, topic: payments, as: p, before: 1m, after: 1m, mode: left}"),
        "spec.pipeline[2].join.mode",
        "table joins only",
    );
    expect_problem(
        join("{type: table, topic: users, as: user, after: 1m}"),
        "spec.pipeline[2].join.after",
        "interval joins only",
    );
    expect_problem(
        join("{type: table, topic: users, as: user, history: 3}"),
        "spec.pipeline[2].join.history",
        "temporal table joins only",
    );
    expect_problem(
        |d| {
            join("{type: table, topic: users, as: user, temporal: true}")(d);
            set(d, "spec.source.eventTime", None);
        },
        "spec.pipeline[2].join",
        "a temporal join needs event time",
    );
    expect_problem(
        |d| {
            join("{type: table, topic: users, as: user}")(d);
            d["spec"]["pipeline"]
                .as_sequence_mut()
                .unwrap()
                .push(yaml("{join: {type: table, topic: more, as: more}}"));
        },
        "spec.pipeline[3].join",
        "a pipeline has one join",
    );
    expect_problem(
        |d| {
            join("{type: table, topic: rates, as: rate, temporal: true}")(d);
            let steps = d["spec"]["pipeline"].as_sequence_mut().unwrap();
            steps.push(yaml("{window: {type: tumbling, size: 1m}}"));
            steps.push(yaml("{aggregate: {fields: [{name: n, function: count}]}}"));
        },
        "spec.pipeline[3].window",
        "follows the temporal join at spec.pipeline[2]",
    );
    expect_valid(|d| {
        join("{type: interval, topic: p, as: p, before: 1m, after: 1m}")(d);
        let steps = d["spec"]["pipeline"].as_sequence_mut().unwrap();
        steps.push(yaml("{window: {type: tumbling, size: 1m}}"));
        steps.push(yaml("{aggregate: {fields: [{name: n, function: count}]}}"));
    });
    expect_problem(
        |d| {
            join("{type: table, topic: users, as: user}")(d);
            d["spec"]["pipeline"].as_sequence_mut().unwrap().remove(1);
        },
        "spec.pipeline[1].join",
        "needs a keyBy step before it",
    );
}

#[test]
fn window_time_zones() {
    let zoned = |window: &str| {
        let window = window.to_owned();
        move |d: &mut Value| set(d, "spec.pipeline.2.window", Some(yaml(&window)))
    };
    expect_valid(zoned(
        "{type: tumbling, size: 24h, timeZone: Europe/Berlin}",
    ));
    expect_valid(zoned(
        "{type: tumbling, size: 6h, timeZone: America/New_York}",
    ));
    expect_problem(
        zoned("{type: tumbling, size: 24h, timeZone: Europe/Berlinn}"),
        "spec.pipeline[2].window.timeZone",
        "not an IANA time zone name",
    );
    expect_problem(
        zoned("{type: tumbling, size: 30m, timeZone: Europe/Berlin}"),
        "spec.pipeline[2].window.timeZone",
        "at least 1h",
    );
    expect_problem(
        zoned("{type: sliding, size: 24h, slide: 1h, timeZone: Europe/Berlin}"),
        "spec.pipeline[2].window.timeZone",
        "applies to tumbling windows only",
    );
}

#[test]
fn pipeline_order() {
    // A window needs event time.
    expect_problem(
        |d| set(d, "spec.source.eventTime", None),
        "spec.pipeline[2].window",
        "needs event time",
    );
    // The Kafka timestamp is event time too.
    expect_valid(|d| set(d, "spec.source.eventTime", Some(yaml("{}"))));
    // A window needs a key.
    expect_problem(
        |d| set(d, "spec.pipeline.1", None),
        "spec.pipeline[1].window",
        "needs a keyBy step before it",
    );
    // An aggregate needs a window or a key.
    expect_problem(
        |d| {
            set(d, "spec.pipeline.2", None);
            set(d, "spec.pipeline.1", None);
            set(d, "spec.lateData", None);
        },
        "spec.pipeline[1].aggregate",
        "needs a window or a keyBy step before it",
    );
    // A keyed aggregate without a window is a running aggregate.
    expect_valid(|d| {
        set(d, "spec.pipeline.2", None);
        set(d, "spec.lateData", None);
    });
    // A window must be followed by an aggregate.
    expect_problem(
        |d| set(d, "spec.pipeline.3", None),
        "spec.pipeline[2].window",
        "must be followed directly by an aggregate step",
    );
    expect_problem(
        |d| {
            let filter = yaml("{filter: 'record.amount > 1.0'}");
            d["spec"]["pipeline"]
                .as_sequence_mut()
                .unwrap()
                .insert(3, filter);
        },
        "spec.pipeline[2].window",
        "must be followed directly by an aggregate step, not by filter",
    );
    // Only filter and map after the aggregate.
    expect_valid(|d| {
        let filter = yaml("{filter: 'record.clicks > 10'}");
        d["spec"]["pipeline"]
            .as_sequence_mut()
            .unwrap()
            .push(filter);
    });
    expect_problem(
        |d| {
            let key_by = yaml("{keyBy: {expr: record.key}}");
            d["spec"]["pipeline"]
                .as_sequence_mut()
                .unwrap()
                .push(key_by);
        },
        "spec.pipeline[4].keyBy",
        "only filter and map may follow the aggregate",
    );
    // Keyed twice.
    expect_problem(
        |d| {
            let key_by = yaml("{keyBy: {expr: record.country}}");
            d["spec"]["pipeline"]
                .as_sequence_mut()
                .unwrap()
                .insert(1, key_by);
        },
        "spec.pipeline[2].keyBy",
        "already keyed by spec.pipeline[1]",
    );
}

#[test]
fn a_step_sets_exactly_one_operation() {
    expect_problem(
        |d| {
            set(
                d,
                "spec.pipeline.0.map",
                Some(yaml("{fields: [{name: a, expr: record.a}]}")),
            )
        },
        "spec.pipeline[0]",
        "sets filter and map",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.0", Some(yaml("{name: nothing}"))),
        "spec.pipeline[0]",
        "sets no operation",
    );
    expect_problem(
        |d| {
            set(d, "spec.pipeline.0.name", Some(yaml("step")));
            set(d, "spec.pipeline.1.name", Some(yaml("step")));
        },
        "spec.pipeline[1].name",
        "already the name of spec.pipeline[0]",
    );
}

#[test]
fn expressions_are_compiled() {
    expect_valid(|d| {
        set(
            d,
            "spec.pipeline.0.filter",
            Some(yaml(
                r#"'record.amount > 0.0 && record.country in ["DE", "FR"]'"#,
            )),
        )
    });
    expect_problem(
        |d| set(d, "spec.pipeline.0.filter", Some(yaml("'record.amount >'"))),
        "spec.pipeline[0].filter",
        "invalid expression",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.1.keyBy.expr", Some(yaml("user.id"))),
        "spec.pipeline[1].keyBy.expr",
        "invalid expression",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.pipeline.3.aggregate.fields.1.expr",
                Some(yaml("'lenght(record.x)'")),
            )
        },
        "spec.pipeline[3].aggregate.fields[1].expr",
        "invalid expression",
    );
    expect_problem(
        |d| {
            let map = yaml("{map: {fields: [{name: a, expr: 'record.a +'}]}}");
            set(d, "spec.pipeline.0", Some(map));
        },
        "spec.pipeline[0].map.fields[0].expr",
        "invalid expression",
    );
    expect_problem(
        |d| {
            let dedupe = yaml("{dedupe: {key: 'record.id ==', ttl: 1m}}");
            d["spec"]["pipeline"]
                .as_sequence_mut()
                .unwrap()
                .insert(0, dedupe);
        },
        "spec.pipeline[0].dedupe.key",
        "invalid expression",
    );
}

#[test]
fn map_and_aggregate_fields() {
    expect_problem(
        |d| {
            let map =
                yaml("{map: {fields: [{name: a, expr: record.a}, {name: a, expr: record.b}]}}");
            set(d, "spec.pipeline.0", Some(map));
        },
        "spec.pipeline[0].map.fields[1].name",
        "computed twice",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.3.aggregate.fields.1.expr", None),
        "spec.pipeline[3].aggregate.fields[1].expr",
        "required",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.pipeline.3.aggregate.fields.0.expr",
                Some(yaml("record.x")),
            )
        },
        "spec.pipeline[3].aggregate.fields[0].expr",
        "takes no expr",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.pipeline.3.aggregate.fields.0.name",
                Some(yaml("window_start")),
            )
        },
        "spec.pipeline[3].aggregate.fields[0].name",
        "reserved",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.pipeline.3.aggregate.fields.1.name",
                Some(yaml("clicks")),
            )
        },
        "spec.pipeline[3].aggregate.fields[1].name",
        "computed twice",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.3.aggregate.fields", Some(yaml("[]"))),
        "spec.pipeline[3].aggregate.fields",
        "must have at least 1 items",
    );
}

#[test]
fn dedupe_ttl() {
    let dedupe = |ttl: &str| {
        let step = yaml(&format!("{{dedupe: {{key: record.id, ttl: {ttl}}}}}"));
        move |d: &mut Value| {
            d["spec"]["pipeline"]
                .as_sequence_mut()
                .unwrap()
                .insert(0, step)
        }
    };
    expect_valid(dedupe("10m"));
    expect_problem(
        dedupe("0s"),
        "spec.pipeline[0].dedupe.ttl",
        "must be greater than 0",
    );
}

#[test]
fn topics() {
    expect_problem(
        |d| set(d, "spec.source.topics", Some(yaml("[]"))),
        "spec.source.topics",
        "must have at least 1 items",
    );
    expect_problem(
        |d| set(d, "spec.source.topics", Some(yaml("[a, b, a]"))),
        "spec.source.topics[2]",
        "listed twice",
    );
    expect_problem(
        |d| set(d, "spec.source.topics", Some(yaml("['bad topic']"))),
        "spec.source.topics[0]",
        "not a Kafka topic name",
    );
    expect_problem(
        |d| set(d, "spec.sink.topic", Some(yaml("clicks"))),
        "spec.sink.topic",
        "also a source topic",
    );
    expect_problem(
        |d| set(d, "spec.deadLetter.topic", Some(yaml("clicks-per-minute"))),
        "spec.deadLetter.topic",
        "already used by spec.sink.topic",
    );
    expect_problem(
        |d| {
            set(d, "spec.pipeline.2", None);
        },
        "spec.lateData",
        "no event-time window",
    );
}

#[test]
fn event_time() {
    expect_valid(|d| set(d, "spec.source.eventTime.format", Some(yaml("epochMillis"))));
    expect_problem(
        |d| set(d, "spec.source.eventTime", Some(yaml("{format: rfc3339}"))),
        "spec.source.eventTime.format",
        "applies to a field",
    );
    expect_problem(
        |d| set(d, "spec.source.eventTime.field", Some(yaml("' '"))),
        "spec.source.eventTime.field",
        "must not be empty",
    );
}

#[test]
fn kafka() {
    expect_valid(|d| {
        set(
            d,
            "spec.kafka.properties",
            Some(yaml("{compression.type: zstd}")),
        )
    });
    expect_problem(
        |d| set(d, "spec.kafka.properties", Some(yaml("{group.id: mine}"))),
        r#"spec.kafka.properties["group.id"]"#,
        "managed by Weir",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.kafka.properties",
                Some(yaml("{Compression Type: zstd}")),
            )
        },
        r#"spec.kafka.properties["Compression Type"]"#,
        "not a librdkafka property name",
    );
    expect_problem(
        |d| set(d, "spec.kafka.bootstrapServers", Some(yaml("kafka"))),
        "spec.kafka.bootstrapServers",
        "is not host:port",
    );
    expect_problem(
        |d| set(d, "spec.kafka.bootstrapServers", Some(yaml("' , '"))),
        "spec.kafka.bootstrapServers",
        "at least one host:port",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.kafka.credentialsSecret",
                Some(yaml("{name: kafka, certificateKey: tls.crt}")),
            )
        },
        "spec.kafka.credentialsSecret",
        "go together",
    );
}

#[test]
fn checkpoint_storage() {
    for url in ["gs://b/p", "az://c", "file:///var/weir", "memory://test"] {
        expect_valid(|d| set(d, "spec.checkpoint.storage", Some(Value::from(url))));
    }
    expect_problem(
        |d| set(d, "spec.checkpoint.storage", Some(yaml("ftp://host/x"))),
        "spec.checkpoint.storage",
        "unsupported scheme",
    );
    expect_problem(
        |d| set(d, "spec.checkpoint.storage", Some(yaml("/var/weir"))),
        "spec.checkpoint.storage",
        "is not a URL",
    );
    expect_problem(
        |d| set(d, "spec.checkpoint.storage", Some(yaml("file://relative"))),
        "spec.checkpoint.storage",
        "absolute path",
    );
    expect_problem(
        |d| set(d, "spec.checkpoint.storage", Some(yaml("s3:///prefix"))),
        "spec.checkpoint.storage",
        "no bucket",
    );
    expect_problem(
        |d| set(d, "spec.checkpoint.retain", Some(yaml("0"))),
        "spec.checkpoint.retain",
        "must be at least 1",
    );
}

#[test]
fn parallelism_and_autoscaler() {
    expect_problem(
        |d| set(d, "spec.parallelism", Some(yaml("0"))),
        "spec.parallelism",
        "must be at least 1",
    );
    expect_problem(
        |d| set(d, "spec.autoscaler.minParallelism", Some(yaml("5"))),
        "spec.autoscaler.minParallelism",
        "less than or equal to maxParallelism (4)",
    );
    expect_problem(
        |d| set(d, "spec.autoscaler.targetUtilization", Some(yaml("1.5"))),
        "spec.autoscaler.targetUtilization",
        "must be at most 1",
    );
    expect_problem(
        |d| set(d, "spec.autoscaler.lagThreshold", Some(yaml("0"))),
        "spec.autoscaler.lagThreshold",
        "must be at least 1",
    );
    expect_problem(
        |d| set(d, "spec.autoscaler.idleAfter", Some(yaml("0s"))),
        "spec.autoscaler.idleAfter",
        "greater than 0",
    );
}

#[test]
fn savepoints_and_restore() {
    expect_valid(|d| set(d, "spec.restoreFrom", Some(yaml("sp-2026.11.21_1"))));
    expect_problem(
        |d| set(d, "spec.restoreFrom", Some(yaml("../etc"))),
        "spec.restoreFrom",
        "does not match",
    );
    expect_problem(
        |d| set(d, "spec.savepoint.historyLimit", Some(yaml("0"))),
        "spec.savepoint.historyLimit",
        "must be at least 1",
    );
    expect_problem(
        |d| set(d, "spec.savepoint.periodicInterval", Some(yaml("30s"))),
        "spec.savepoint.periodicInterval",
        "must be at least 1m",
    );
    expect_valid(|d| set(d, "spec.savepoint.periodicInterval", Some(yaml("1m"))));
}

#[test]
fn pod_template_and_state() {
    expect_valid(|d| {
        set(
            d,
            "spec.podTemplate.env",
            Some(yaml("[{name: RUST_LOG, value: debug}]")),
        )
    });
    expect_problem(
        |d| {
            set(
                d,
                "spec.podTemplate.env",
                Some(yaml("[{name: WEIR_ORDINAL, value: '1'}]")),
            )
        },
        "spec.podTemplate.env[0].name",
        "reserved",
    );
    expect_valid(|d| set(d, "spec.state.blockCacheSize", Some(yaml("512Mi"))));
    expect_problem(
        |d| set(d, "spec.state.blockCacheSize", Some(yaml("lots"))),
        "spec.state.blockCacheSize",
        "invalid quantity",
    );
    expect_problem(
        |d| set(d, "spec.state.volume", Some(yaml("{size: 0Gi}"))),
        "spec.state.volume.size",
        "must be greater than 0",
    );
    expect_problem(
        |d| set(d, "spec.image", Some(yaml("' '"))),
        "spec.image",
        "must not be empty",
    );
}

#[test]
fn several_documents_per_file() {
    let text = format!(
        "{BASE}\n---\n{}\n---\n",
        BASE.replace("name: clicks", "name: Bad_Name")
    );
    let documents = parse_documents(&text);
    assert_eq!(documents.len(), 2);
    assert!(documents[0].problems.is_empty());
    assert_eq!(documents[1].index, 2);
    assert_eq!(documents[1].problems[0].path, "metadata.name");
}

#[test]
fn yaml_syntax_errors_are_reported_not_panicked() {
    let documents = parse_documents("apiVersion: [unclosed");
    assert_eq!(documents.len(), 1);
    assert!(documents[0].problems[0].message.starts_with("not YAML"));
}

#[test]
fn report_lines_name_file_path_and_reason() {
    let (lines, valid) = weir_crds::validate::report("job.yaml", BASE);
    assert!(valid);
    assert_eq!(lines, ["job.yaml: valid"]);

    let broken = BASE.replace("size: 1m", "size: 0s");
    let (lines, valid) = weir_crds::validate::report("job.yaml", &broken);
    assert!(!valid);
    assert_eq!(
        lines,
        ["job.yaml: spec.pipeline[2].window.size: must be greater than 0"]
    );

    let two = format!("{BASE}---\n{broken}");
    let (lines, valid) = weir_crds::validate::report("jobs.yaml", &two);
    assert!(!valid);
    assert_eq!(
        lines,
        ["jobs.yaml (document 2): spec.pipeline[2].window.size: must be greater than 0"]
    );

    let (lines, valid) = weir_crds::validate::report("empty.yaml", "---\n");
    assert!(!valid);
    assert_eq!(lines, ["empty.yaml: no StreamingJob in the file"]);
}

#[test]
fn schema_limits_match_the_crd() {
    // What the API server rejects, weir validate rejects with the same limit.
    expect_problem(
        |d| {
            let topics: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
            set(
                d,
                "spec.source.topics",
                Some(serde_yaml::to_value(topics).unwrap()),
            );
        },
        "spec.source.topics",
        "must have at most 16 items",
    );
    expect_problem(
        |d| set(d, "spec.autoscaler.targetUtilization", Some(yaml("0.01"))),
        "spec.autoscaler.targetUtilization",
        "must be at least 0.05",
    );
    expect_problem(
        |d| set(d, "spec.autoscaler.maxParallelism", Some(yaml("2000"))),
        "spec.autoscaler.maxParallelism",
        "must be at most 1024",
    );
    expect_problem(
        |d| {
            let steps = vec![yaml("{filter: 'record.a > 1'}"); 33];
            set(d, "spec.pipeline", Some(Value::Sequence(steps)));
            set(d, "spec.lateData", None);
        },
        "spec.pipeline",
        "must have at most 32 items",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.pipeline.0.filter",
                Some(Value::from(format!("record.a > {}", "1".repeat(5000)))),
            )
        },
        "spec.pipeline[0].filter",
        "must be at most 4096 characters",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.0", Some(yaml("{map: {fields: []}}"))),
        "spec.pipeline[0].map.fields",
        "must have at least 1 items",
    );
    expect_problem(
        |d| set(d, "spec.pipeline.0.name", Some(yaml("Upper_Case"))),
        "spec.pipeline[0].name",
        "does not match",
    );
}

#[test]
fn durations_the_crd_cannot_hold_are_rejected() {
    expect_valid(|d| set(d, "spec.savepoint.timeout", Some(yaml("'999999999h'"))));
    expect_problem(
        |d| {
            set(
                d,
                "spec.savepoint.timeout",
                Some(yaml("'99999999999999999999h'")),
            )
        },
        "spec.savepoint.timeout",
        "1 to 9 digits",
    );
    expect_problem(
        |d| set(d, "spec.autoscaler.metricsWindow", Some(yaml("0s"))),
        "spec.autoscaler.metricsWindow",
        "must be greater than 0",
    );
}

#[test]
fn pod_overrides() {
    expect_valid(|d| {
        set(
            d,
            "spec.podTemplate",
            Some(yaml(
                "{labels: {team: data, example.com/tier: gold}, annotations: {prometheus.io/scrape: 'true'}, nodeSelector: {kubernetes.io/arch: amd64}, serviceAccountName: weir-workers, priorityClassName: high}",
            )),
        )
    });
    expect_problem(
        |d| set(d, "spec.podTemplate.labels", Some(yaml("{'bad key!': x}"))),
        r#"spec.podTemplate.labels["bad key!"]"#,
        "is not a valid key",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.podTemplate.labels",
                Some(yaml("{team: 'not valid'}")),
            )
        },
        r#"spec.podTemplate.labels["team"]"#,
        "not a valid label value",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.podTemplate.annotations",
                Some(yaml("{'Example.com/x': y}")),
            )
        },
        r#"spec.podTemplate.annotations["Example.com/x"]"#,
        "is not a valid key",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.podTemplate.nodeSelector",
                Some(yaml("{zone: 'a b'}")),
            )
        },
        r#"spec.podTemplate.nodeSelector["zone"]"#,
        "not a valid label value",
    );
    expect_problem(
        |d| set(d, "spec.podTemplate.env", Some(yaml("[{name: '1BAD'}]"))),
        "spec.podTemplate.env[0].name",
        "not an environment variable name",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.podTemplate.serviceAccountName",
                Some(yaml("Weir_Workers")),
            )
        },
        "spec.podTemplate.serviceAccountName",
        "not a valid name",
    );
}

#[test]
fn resources() {
    expect_valid(|d| {
        set(
            d,
            "spec.resources",
            Some(yaml(
                "{requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: '2', memory: 1Gi}}",
            )),
        )
    });
    expect_problem(
        |d| {
            set(
                d,
                "spec.resources",
                Some(yaml("{requests: {memory: 2Gi}, limits: {memory: 1Gi}}")),
            )
        },
        r#"spec.resources.requests["memory"]"#,
        "2Gi is more than the limit 1Gi",
    );
    expect_problem(
        |d| set(d, "spec.resources", Some(yaml("{limits: {cpu: lots}}"))),
        r#"spec.resources.limits["cpu"]"#,
        "invalid quantity",
    );
}

#[test]
fn secret_names() {
    expect_problem(
        |d| {
            set(
                d,
                "spec.checkpoint.credentialsSecret",
                Some(yaml("{name: S3_Creds}")),
            )
        },
        "spec.checkpoint.credentialsSecret.name",
        "not a Secret name",
    );
    expect_problem(
        |d| {
            set(
                d,
                "spec.kafka.credentialsSecret",
                Some(yaml("{name: Kafka_Creds}")),
            )
        },
        "spec.kafka.credentialsSecret.name",
        "not a Secret name",
    );
}
