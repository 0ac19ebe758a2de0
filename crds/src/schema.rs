//! Checks a value against the CRD's OpenAPI schema as the API server does
//! (types, enums, patterns, lengths, ranges, item counts, required fields),
//! so that `weir validate` rejects exactly what `kubectl apply` would, with
//! the same limits, and never says "valid" for an object the API server
//! refuses.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use serde_json::Value;

use crate::validate::Problem;

/// The OpenAPI schema of `spec`, generated once from the types.
pub fn spec_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = crate::crd::definition();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_default();
        schema["properties"]["spec"].clone()
    })
}

/// Every place where `value` breaks `schema`, with paths under `path`.
pub fn check(schema: &Value, value: &Value, path: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    walk(schema, value, path, &mut problems);
    problems
}

fn pattern(source: &str) -> Option<Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(source.to_owned())
        .or_insert_with(|| Regex::new(source).ok())
        .clone()
}

fn walk(schema: &Value, value: &Value, path: &str, problems: &mut Vec<Problem>) {
    let mut add = |message: String| problems.push(Problem::new(path, message));
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            add("must not be null".into());
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        _ if int_or_string => value.is_string() || value.is_i64() || value.is_u64(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        let expected = if int_or_string {
            "an integer or a string"
        } else {
            schema.get("type").and_then(Value::as_str).unwrap_or("?")
        };
        add(format!("must be of type {expected}"));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        add(format!("must be one of {}", names.join(", ")));
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && length < min
        {
            add(format!("must be at least {min} characters"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length > max
        {
            add(format!("must be at most {max} characters"));
        }
        if let Some(source) = schema.get("pattern").and_then(Value::as_str)
            && pattern(source).is_some_and(|regex| !regex.is_match(text))
        {
            add(format!("{text:?} does not match {source}"));
        }
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && number < min
        {
            add(format!("must be at least {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && number > max
        {
            add(format!("must be at most {max}"));
        }
    }
    if let Some(items) = value.as_array() {
        let count = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && count < min
        {
            add(format!("must have at least {min} items"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && count > max
        {
            add(format!("must have at most {max} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                walk(item_schema, item, &format!("{path}[{i}]"), problems);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    problems.push(Problem::new(format!("{path}.{name}"), "required"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties").filter(|a| a.is_object());
        for (name, child) in fields {
            let child_path = format!("{path}.{name}");
            match (properties.and_then(|p| p.get(name)), additional) {
                (Some(child_schema), _) => walk(child_schema, child, &child_path, problems),
                (None, Some(child_schema)) => {
                    walk(child_schema, child, &format!("{path}[{name:?}]"), problems)
                }
                (None, None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_each_kind_of_violation_with_its_path() {
        let schema = json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": 3, "pattern": "^[a-z]+$"},
                "count": {"type": "integer", "minimum": 1, "maximum": 5},
                "kind": {"type": "string", "enum": ["a", "b"]},
                "tags": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 2}},
                "size": {"x-kubernetes-int-or-string": true}
            }
        });
        let value = json!({
            "count": 9, "kind": "c", "tags": ["x", 1], "labels": {"k": "long"}, "size": true
        });
        let problems: Vec<String> = check(&schema, &value, "spec")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "spec.name: required",
                "spec.count: must be at most 5",
                "spec.kind: must be one of \"a\", \"b\"",
                "spec.labels[\"k\"]: must be at most 2 characters",
                "spec.size: must be of type an integer or a string",
                "spec.tags: must have at most 1 items",
                "spec.tags[1]: must be of type string",
            ]
        );
        let good = json!({"name": "abc", "count": 2, "kind": "a", "size": "1Gi"});
        assert!(check(&schema, &good, "spec").is_empty());
        let bad_pattern = json!({"name": "A1"});
        assert_eq!(
            check(&schema, &bad_pattern, "spec")[0].to_string(),
            "spec.name: \"A1\" does not match ^[a-z]+$"
        );
    }
}
