//! The CRD's CEL rules (`x-kubernetes-validations`) behave as the API server
//! will run them: every rule holds for the samples, and each invariant the
//! rules guard rejects the object that breaks it with its message.
//!
//! The rules are evaluated with the `cel` interpreter, walking the object
//! alongside the schema as the API server does (each rule sees `self` bound
//! to the node that declares it, property names that are CEL keywords
//! escaped as `__name__`).

use std::path::Path;

use serde_json::Value;
use weir_crds::crd::definition;

/// CEL's reserved words, which the API server escapes as `__word__`.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

fn escape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = if RESERVED.contains(&k.as_str()) {
                        format!("__{k}__")
                    } else {
                        k.clone()
                    };
                    (key, escape(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(escape).collect()),
        other => other.clone(),
    }
}

fn crd_schema() -> Value {
    let crd = definition();
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

/// Fills in the schema's defaults, as the API server does before it runs
/// the rules.
fn with_defaults(schema: &Value, object: &Value) -> Value {
    match object {
        Value::Object(fields) => {
            let mut fields = fields.clone();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, child_schema) in properties {
                    if !fields.contains_key(name)
                        && let Some(default) = child_schema.get("default")
                    {
                        fields.insert(name.clone(), default.clone());
                    }
                    if let Some(child) = fields.get(name) {
                        let filled = with_defaults(child_schema, child);
                        fields.insert(name.clone(), filled);
                    }
                }
            }
            Value::Object(fields)
        }
        Value::Array(items) => match schema.get("items") {
            Some(item_schema) => Value::Array(
                items
                    .iter()
                    .map(|i| with_defaults(item_schema, i))
                    .collect(),
            ),
            None => object.clone(),
        },
        other => other.clone(),
    }
}

/// Evaluates every rule that applies to `object` on create; returns the
/// messages of the rules that do not hold.
fn failed_rules(object: &Value) -> Vec<String> {
    let schema = crd_schema();
    let mut failures = Vec::new();
    walk(
        &schema,
        &with_defaults(&schema, object),
        None,
        &mut failures,
    );
    failures
}

/// Evaluates every rule that applies when `old` is updated to `new`
/// (transition rules with `oldSelf` included).
fn failed_update_rules(old: &Value, new: &Value) -> Vec<String> {
    let schema = crd_schema();
    let old = with_defaults(&schema, old);
    let mut failures = Vec::new();
    walk(
        &schema,
        &with_defaults(&schema, new),
        Some(&old),
        &mut failures,
    );
    failures
}

fn walk(schema: &Value, object: &Value, old: Option<&Value>, failures: &mut Vec<String>) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules {
            let source = rule["rule"].as_str().unwrap();
            // The API server runs transition rules only on updates of a node
            // that existed before.
            if source.contains("oldSelf") && old.is_none() {
                continue;
            }
            let program = cel::Program::compile(source)
                .unwrap_or_else(|e| panic!("rule {source:?} does not parse: {e:?}"));
            let mut context = cel::Context::default();
            context.add_variable_from_value("self", cel::to_value(escape(object)).unwrap());
            if let Some(old) = old {
                context.add_variable_from_value("oldSelf", cel::to_value(escape(old)).unwrap());
            }
            match program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    failures.push(rule["message"].as_str().unwrap().to_owned())
                }
                other => panic!("rule {source:?} on {object} gave {other:?}"),
            }
        }
    }
    match object {
        Value::Object(fields) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, child) in fields {
                    if let Some(child_schema) = properties.get(name) {
                        walk(child_schema, child, old.and_then(|o| o.get(name)), failures);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                // Items are matched to old values only in map-type lists;
                // no rule here needs that.
                for item in items {
                    walk(item_schema, item, None, failures);
                }
            }
        }
        _ => {}
    }
}

fn sample() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples/clickstream-counts.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn expect_rejected(edit: impl FnOnce(&mut Value), message: &str) {
    let mut object = sample();
    edit(&mut object);
    let failures = failed_rules(&object);
    assert!(
        failures.iter().any(|m| m == message),
        "expected {message:?}, got {failures:?}"
    );
}

#[test]
fn samples_pass_every_rule() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let object: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            failed_rules(&object),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn min_parallelism_above_max_is_rejected() {
    expect_rejected(
        |o| o["spec"]["autoscaler"]["minParallelism"] = 20.into(),
        "autoscaler.minParallelism must be less than or equal to autoscaler.maxParallelism",
    );
}

#[test]
fn sink_reading_its_own_output_is_rejected() {
    expect_rejected(
        |o| o["spec"]["sink"]["topic"] = "clicks".into(),
        "sink.topic must not be one of source.topics",
    );
}

fn window(object: &mut Value) -> &mut Value {
    &mut object["spec"]["pipeline"][2]["window"]
}

#[test]
fn window_rules() {
    expect_rejected(
        |o| window(o)["size"] = "0s".into(),
        "size must be greater than 0",
    );
    expect_rejected(
        |o| {
            window(o)["type"] = "sliding".into();
            window(o)["slide"] = "2m".into();
        },
        "a sliding window needs a slide no longer than its size",
    );
    expect_rejected(
        |o| window(o)["type"] = "sliding".into(),
        "a sliding window needs a slide no longer than its size",
    );
    expect_rejected(
        |o| window(o)["type"] = "session".into(),
        "a session window needs a gap",
    );
    expect_rejected(
        |o| {
            window(o).as_object_mut().unwrap().remove("size");
        },
        "tumbling and sliding windows need a size",
    );
    expect_rejected(
        |o| {
            window(o)["timeZone"] = "Europe/Berlin".into();
        },
        "a window with a timeZone lasts at least 1h",
    );
    expect_rejected(
        |o| {
            *window(o) =
                serde_json::json!({"type": "session", "gap": "1h", "timeZone": "Europe/Berlin"});
        },
        "timeZone applies to tumbling windows only",
    );
    expect_rejected(
        |o| {
            *window(o) = serde_json::json!({"type": "count"});
        },
        "a count window needs a count",
    );
    expect_rejected(
        |o| {
            *window(o) = serde_json::json!({"type": "count", "count": 10, "slideCount": 3});
        },
        "slideCount divides count, at most 1000 times",
    );
    expect_rejected(
        |o| {
            window(o)["count"] = 10.into();
        },
        "count and slideCount apply to count windows only",
    );
}

#[test]
fn a_step_with_two_operations_is_rejected() {
    expect_rejected(
        |o| {
            o["spec"]["pipeline"][0]["map"] =
                serde_json::json!({"fields": [{"name": "a", "expr": "record.a"}]})
        },
        "a step sets exactly one of filter, map, keyBy, window, aggregate, dedupe, pattern, join",
    );
    expect_rejected(
        |o| o["spec"]["pipeline"][0] = serde_json::json!({"name": "empty"}),
        "a step sets exactly one of filter, map, keyBy, window, aggregate, dedupe, pattern, join",
    );
}

#[test]
fn pattern_rules() {
    let with_pattern = |pattern: serde_json::Value| {
        move |o: &mut Value| {
            let steps = o["spec"]["pipeline"].as_array_mut().unwrap();
            steps.truncate(3);
            steps[2] = serde_json::json!({"pattern": pattern});
        }
    };
    expect_rejected(
        with_pattern(serde_json::json!({"sequence": [
            {"name": "a", "condition": "true"},
            {"name": "b", "condition": "true", "absent": true}]})),
        "an absent last stage needs within",
    );
    expect_rejected(
        with_pattern(serde_json::json!({"sequence": [
            {"name": "a", "condition": "true", "times": 2, "oneOrMore": true},
            {"name": "b", "condition": "true"}]})),
        "times and oneOrMore exclude each other",
    );
}

#[test]
fn join_rules() {
    let with_join = |join: serde_json::Value| {
        move |o: &mut Value| {
            let steps = o["spec"]["pipeline"].as_array_mut().unwrap();
            steps.truncate(3);
            steps[2] = serde_json::json!({"join": join});
        }
    };
    expect_rejected(
        with_join(serde_json::json!({"type": "interval", "topic": "p", "as": "p", "after": "1m"})),
        "an interval join needs before and after",
    );
    expect_rejected(
        with_join(serde_json::json!({"type": "table", "topic": "u", "as": "u", "before": "1m"})),
        "before and after apply to interval joins only",
    );
    expect_rejected(
        with_join(
            serde_json::json!({"type": "interval", "topic": "p", "as": "p",
            "before": "1m", "after": "1m", "mode": "left"}),
        ),
        "an interval join is inner and not temporal",
    );
    expect_rejected(
        with_join(serde_json::json!({"type": "table", "topic": "u", "as": "u", "history": 2})),
        "history applies to temporal table joins only",
    );
}

#[test]
fn aggregate_without_expr_is_rejected() {
    expect_rejected(
        |o| {
            o["spec"]["pipeline"][3]["aggregate"]["fields"][1]
                .as_object_mut()
                .unwrap()
                .remove("expr");
        },
        "every aggregate function but count needs an expr",
    );
}

#[test]
fn zero_durations_are_rejected() {
    expect_rejected(
        |o| o["spec"]["checkpoint"]["interval"] = "0s".into(),
        "interval must be greater than 0",
    );
    expect_rejected(
        |o| {
            o["spec"]["pipeline"].as_array_mut().unwrap().insert(
                0,
                serde_json::json!({"dedupe": {"key": "record.id", "ttl": "0s"}}),
            )
        },
        "ttl must be greater than 0",
    );
}

#[test]
fn durations_of_savepoints_and_the_autoscaler_must_be_positive() {
    expect_rejected(
        |o| o["spec"]["savepoint"] = serde_json::json!({"timeout": "0s"}),
        "timeout must be greater than 0",
    );
    expect_rejected(
        |o| o["spec"]["savepoint"] = serde_json::json!({"periodicInterval": "59s"}),
        "periodicInterval must be at least 1m",
    );
    expect_rejected(
        |o| o["spec"]["autoscaler"]["catchUpDuration"] = "0s".into(),
        "catchUpDuration must be greater than 0",
    );
    expect_rejected(
        |o| o["spec"]["autoscaler"]["metricsWindow"] = "0s".into(),
        "metricsWindow must be greater than 0",
    );
}

#[test]
fn the_state_volume_is_immutable() {
    const MESSAGE: &str = "state.volume cannot change once the job exists: a StatefulSet's volume claims are immutable (take a savepoint, delete the job and create it again with restoreFrom)";
    let with_volume = |size: &str| {
        let mut object = sample();
        object["spec"]["state"]["volume"] = serde_json::json!({"size": size});
        object
    };
    let without_volume = sample();
    assert!(failed_update_rules(&with_volume("10Gi"), &with_volume("10Gi")).is_empty());
    assert!(failed_update_rules(&without_volume, &without_volume).is_empty());
    for (old, new) in [
        (with_volume("10Gi"), with_volume("20Gi")),
        (without_volume.clone(), with_volume("10Gi")),
        (with_volume("10Gi"), without_volume.clone()),
    ] {
        assert_eq!(failed_update_rules(&old, &new), [MESSAGE]);
    }
    // Other fields may change, and a new job may have any volume.
    let mut scaled = without_volume.clone();
    scaled["spec"]["parallelism"] = 4.into();
    assert!(failed_update_rules(&without_volume, &scaled).is_empty());
    assert!(failed_rules(&with_volume("10Gi")).is_empty());
}
