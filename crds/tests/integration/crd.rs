//! The checked-in CRD matches the types, and its schema is structural.

use std::path::Path;

use weir_crds::crd::{definition, definition_yaml, structural_violations};

fn repository_file(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

#[test]
fn checked_in_crd_matches_weir_crd() {
    let path = repository_file("crds/streamingjob.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == definition_yaml(),
        "{} is out of date: regenerate it with `cargo run -q -p weir-operator -- crd > crds/streamingjob.yaml`",
        path.display()
    );
}

fn schema() -> serde_json::Value {
    let crd = definition();
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

#[test]
fn schema_is_structural() {
    let violations = structural_violations(&schema());
    assert!(
        violations.is_empty(),
        "non-structural nodes:\n{}",
        violations.join("\n")
    );
}

#[test]
fn structural_check_catches_untyped_and_free_form_nodes() {
    // The checker itself must reject what the API server rejects.
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "union": {"type": "object", "oneOf": [{"type": "string"}, {"properties": {"x": {"type": "string"}}}]},
            "loose_enum": {"enum": ["a", "b"]}
        }
    });
    let violations = structural_violations(&bad);
    for expected in [
        ".untyped: no type",
        ".free: x-kubernetes-preserve-unknown-fields",
        ".union.oneOf[0]: type inside oneOf",
        "property \"x\" not declared",
        ".loose_enum: enum",
    ] {
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "missing {expected:?} in {violations:#?}"
        );
    }
}

#[test]
fn api_surface() {
    let crd = definition();
    assert_eq!(crd.spec.group, "weir.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["sj".to_owned()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let subresources = version.subresources.as_ref().unwrap();
    assert!(subresources.status.is_some());
    let scale = subresources.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.parallelism");
    assert_eq!(scale.status_replicas_path, ".status.parallelism");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Parallelism", "Phase", "Lag", "Last Savepoint", "Age"]
    );
}

/// Every object node of the spec has a description: `kubectl explain` text.
#[test]
fn every_spec_field_is_documented() {
    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(properties) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in properties {
                let child_path = format!("{path}.{name}");
                if child.get("description").is_none() {
                    missing.push(child_path.clone());
                }
                walk(child, &child_path, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    let schema = schema();
    let mut missing = Vec::new();
    walk(&schema["properties"]["spec"], "spec", &mut missing);
    walk(&schema["properties"]["status"], "status", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// The invariants the API server can check itself are CEL rules.
#[test]
fn cel_rules_guard_cross_field_invariants() {
    let text = serde_json::to_string(&schema()).unwrap();
    for rule in [
        "self.autoscaler.minParallelism <= self.autoscaler.maxParallelism",
        "duration(self.slide) <= duration(self.size)",
        "duration(self.interval) > duration('0s')",
        "duration(self.ttl) > duration('0s')",
        "filter(x, x).size() == 1",
        "self.__function__ == 'count' || has(self.expr)",
    ] {
        assert!(text.contains(rule), "CRD lacks the rule {rule:?}");
    }
}

/// Status histories are bounded in the schema by the limits the operator
/// trims them to, so a status patch can never be rejected for its size.
#[test]
fn status_histories_are_bounded() {
    use weir_crds::status::{MAX_SAVEPOINT_HISTORY, MAX_SCALING_HISTORY};
    let schema = schema();
    let status = &schema["properties"]["status"]["properties"];
    assert_eq!(
        status["savepointHistory"]["maxItems"],
        MAX_SAVEPOINT_HISTORY
    );
    assert_eq!(status["scalingHistory"]["maxItems"], MAX_SCALING_HISTORY);
}
