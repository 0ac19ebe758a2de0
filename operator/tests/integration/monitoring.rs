//! The monitoring a user installs queries only what Weir exports.
//!
//! Every metric named by the Grafana dashboard (`config/grafana/weir.json`:
//! panels, annotations and template variables) and by the chart's alert
//! rules (`charts/weir-operator/files/prometheus-rules.yaml`, the file the
//! PrometheusRule template renders) must be exported by the workers
//! (`WorkerMetrics`) or the operator (`Metrics`), every label a query selects
//! or groups on must be one the series carry (their own, or a target label
//! of the scrape), and equality matchers must name values the exporters use
//! (a phase, an outcome). Renaming a metric, a label or a phase in Rust
//! without updating the dashboard and the alerts fails these tests.
//!
//! The rules are rendered here as Helm renders them with the chart's default
//! values, then checked for the Prometheus rule-group structure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use weir_crds::status::Phase;
use weir_operator::metrics::{COMPLETED, DECISIONS, FAILED, JobGauges, Metrics};
use weir_worker::control::metrics::WorkerMetrics;

/// Labels Prometheus gives every scraped series of a Weir pod: the target
/// labels of a PodMonitor or ServiceMonitor (`job` is the StreamingJob's
/// name through the PodMonitor's jobLabel, and the operator's per-job
/// series carry their own `namespace` and `job`, kept by honorLabels).
const TARGET_LABELS: [&str; 6] = [
    "namespace",
    "job",
    "pod",
    "instance",
    "container",
    "endpoint",
];

/// Exported series: metric name -> label name -> values seen.
type Catalog = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate is in the workspace")
        .to_path_buf()
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Adds the series of a Prometheus text exposition to `catalog`.
fn add_exposition(catalog: &mut Catalog, text: &str) {
    let label = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)""#).unwrap();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = catalog.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let close = line.rfind('}').expect("a closing brace");
            for c in label.captures_iter(&line[end..close]) {
                labels
                    .entry(c[1].to_owned())
                    .or_default()
                    .insert(c[2].to_owned());
            }
        }
    }
}

/// Every series the workers and the operator export, with every labelled
/// family touched once (a family without children is not exported at all)
/// and every value of the operator's enumerated labels.
fn exported() -> Catalog {
    let worker = WorkerMetrics::new().unwrap();
    worker.task(0).records_in.inc();
    worker.set_partition("orders", 0, 10, Some(3));
    worker.set_watermark(0, 1_000);

    let operator = Metrics::new().unwrap();
    operator.observe_job(
        "streams",
        "clicks",
        &JobGauges {
            lag: Some(1),
            phase: Some(Phase::Running),
            last_savepoint_age: Some(1.0),
            ..JobGauges::default()
        },
    );
    for outcome in [COMPLETED, FAILED] {
        operator.count_rescale("streams", "clicks", outcome);
        operator.count_savepoint("streams", "clicks", outcome);
    }
    for decision in DECISIONS {
        operator.count_decision("streams", "clicks", decision);
    }
    operator.reconciled(Instant::now(), Some("kube_apply"));
    operator.set_leader(true);

    let mut catalog = Catalog::new();
    add_exposition(&mut catalog, &worker.render());
    add_exposition(&mut catalog, &operator.render());
    // Target labels are every series' own, with values only a cluster knows.
    for labels in catalog.values_mut() {
        for target in TARGET_LABELS {
            labels.insert(target.to_owned(), BTreeSet::new());
        }
    }
    catalog
}

/// A label matcher of a selector.
#[derive(Debug, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// A series selector of a PromQL expression.
#[derive(Debug, PartialEq)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// What a PromQL expression reads: its selectors and the labels of its
/// `by`, `without`, `on`, `ignoring`, `group_left` and `group_right` lists.
#[derive(Debug, Default, PartialEq)]
struct Query {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

/// PromQL keywords that are neither metrics nor functions.
const OPERATOR_KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];
/// Aggregation operators, which may take `by (...)` before their argument.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const GROUPING_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Extracts what `expr` (PromQL with Grafana variables such as `$job` and
/// `[$__rate_interval]`) reads. Identifiers followed by `(` are functions or
/// aggregations; every other identifier outside strings, brackets and
/// label lists is a metric name.
fn parse_query(expr: &str) -> Result<Query, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut query = Query::default();
    let mut i = 0;
    // The selector a following `{...}` belongs to.
    let mut after_metric = false;
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let ident_end = |mut i: usize| {
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        i
    };
    let string_end = |i: usize| -> Result<usize, String> {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        if j >= chars.len() {
            return Err(format!("unterminated string in {expr}"));
        }
        Ok(j + 1)
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let was_after_metric = std::mem::take(&mut after_metric);
        match c {
            '"' | '\'' | '`' => i = string_end(i)?,
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    i = ident_end(i);
                }
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '{' => {
                if !was_after_metric {
                    return Err(format!("a selector without a metric name in {expr}"));
                }
                let selector = query.selectors.last_mut().expect("after a metric");
                i += 1;
                loop {
                    i = skip_ws(i);
                    match chars.get(i) {
                        None => return Err(format!("unterminated selector in {expr}")),
                        Some('}') => break,
                        Some(',') => {
                            i += 1;
                            continue;
                        }
                        Some(_) => {}
                    }
                    let end = ident_end(i);
                    let label: String = chars[i..end].iter().collect();
                    i = skip_ws(end);
                    let op_end = i + chars[i..]
                        .iter()
                        .take_while(|c| matches!(c, '=' | '!' | '~'))
                        .count();
                    let op: String = chars[i..op_end].iter().collect();
                    i = skip_ws(op_end);
                    if label.is_empty() || !["=", "!=", "=~", "!~"].contains(&op.as_str()) {
                        return Err(format!("bad label matcher in {expr}"));
                    }
                    if !matches!(chars.get(i), Some('"' | '\'' | '`')) {
                        return Err(format!("label {label} without a quoted value in {expr}"));
                    }
                    let end = string_end(i)?;
                    let value = chars[i + 1..end - 1].iter().collect();
                    i = end;
                    selector.matchers.push(Matcher { label, op, value });
                }
                i += 1;
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // Numbers and durations (`0.5`, `1e3`, `15m`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let end = ident_end(i);
                let word: String = chars[i..end].iter().collect();
                let next = skip_ws(end);
                i = end;
                if GROUPING_KEYWORDS.contains(&word.as_str()) {
                    if chars.get(next) == Some(&'(') {
                        let close = next
                            + chars[next..]
                                .iter()
                                .position(|&c| c == ')')
                                .ok_or_else(|| format!("unclosed label list in {expr}"))?;
                        let list: String = chars[next + 1..close].iter().collect();
                        query.grouping.extend(
                            list.split(',')
                                .map(str::trim)
                                .filter(|l| !l.is_empty())
                                .map(str::to_owned),
                        );
                        i = close + 1;
                    }
                } else if OPERATOR_KEYWORDS.contains(&word.as_str())
                    || AGGREGATIONS.contains(&word.as_str())
                    || chars.get(next) == Some(&'(')
                {
                    // An operator, an aggregation or a function.
                } else {
                    query.selectors.push(Selector {
                        metric: word,
                        matchers: Vec::new(),
                    });
                    after_metric = true;
                }
            }
            _ => i += 1,
        }
    }
    Ok(query)
}

/// Where each query comes from, and the query.
type Queries = Vec<(String, String)>;

/// Every PromQL expression of the dashboard: panel targets (rows included),
/// annotations, and the selector of each `label_values(...)` variable with
/// the label it reads, returned apart.
fn dashboard_queries(dashboard: &Json) -> (Queries, Vec<(String, String)>) {
    fn panels<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            panels(&panel["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut queries = Queries::new();
    for panel in all {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {} has a target without expr", panel["title"]));
            queries.push((format!("panel {}", panel["title"]), expr.to_owned()));
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            queries.push((
                format!("annotation {}", annotation["name"]),
                expr.to_owned(),
            ));
        }
    }
    let label_values =
        regex::Regex::new(r"^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$").unwrap();
    let mut variable_labels = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = format!("variable {}", variable["name"]);
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_else(|| panic!("{name} has no query"));
        let c = label_values.captures(query).unwrap_or_else(|| {
            panic!("{name}: expected label_values(selector, label), got {query}")
        });
        queries.push((name.clone(), c[1].to_owned()));
        variable_labels.push((name, c[2].to_owned()));
    }
    (queries, variable_labels)
}

/// Checks every query against the exported series; returns the problems.
fn check_queries(catalog: &Catalog, queries: &Queries) -> Vec<String> {
    let plain_alternatives = regex::Regex::new(r"^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$").unwrap();
    let mut problems = Vec::new();
    for (place, expr) in queries {
        let query = match parse_query(expr) {
            Ok(query) => query,
            Err(e) => {
                problems.push(format!("{place}: {e}"));
                continue;
            }
        };
        if query.selectors.is_empty() {
            problems.push(format!("{place}: no metric in {expr}"));
        }
        let mut carried = BTreeSet::new();
        for selector in &query.selectors {
            let Some(labels) = catalog.get(&selector.metric) else {
                problems.push(format!(
                    "{place}: {} is exported by neither the worker nor the operator",
                    selector.metric
                ));
                continue;
            };
            carried.extend(labels.keys().cloned());
            for m in &selector.matchers {
                let Some(values) = labels.get(&m.label) else {
                    problems.push(format!(
                        "{place}: {} has no label {}",
                        selector.metric, m.label
                    ));
                    continue;
                };
                // Values of the exporters' own labels (target labels have
                // none recorded; Grafana variables are the user's choice).
                let wanted: Vec<&str> = match m.op.as_str() {
                    "=" | "!=" => vec![m.value.as_str()],
                    _ if plain_alternatives.is_match(&m.value) => m.value.split('|').collect(),
                    _ => Vec::new(),
                };
                for value in wanted {
                    if !values.is_empty() && !value.contains('$') && !values.contains(value) {
                        problems.push(format!(
                            "{place}: {} never has {}=\"{value}\" (exported: {values:?})",
                            selector.metric, m.label
                        ));
                    }
                }
            }
        }
        for label in &query.grouping {
            if !carried.contains(label) {
                problems.push(format!(
                    "{place}: groups by {label}, which none of its series carries"
                ));
            }
        }
    }
    problems
}

/// Renders a chart file as Helm's `tpl` does, for the two kinds of action
/// the rules file may hold: `{{ .Values.a.b }}` (from the chart's default
/// values) and a raw string `{{`...`}}` (printed as is).
fn render_with_defaults(template: &str, values: &Yaml) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let action = rest[start + 2..].trim_start();
        if let Some(raw) = action.strip_prefix('`') {
            let end = raw.find('`').ok_or("unterminated raw string")?;
            out.push_str(&raw[..end]);
            rest = raw[end + 1..]
                .trim_start()
                .strip_prefix("}}")
                .ok_or("a raw string action must end after the string")?;
        } else if let Some(path) = action.strip_prefix(".Values.") {
            let end = path.find("}}").ok_or("unterminated action")?;
            let mut value = values;
            for key in path[..end].trim().split('.') {
                value = value.get(key).ok_or_else(|| {
                    format!(".Values.{} is not in values.yaml", path[..end].trim())
                })?;
            }
            match value {
                Yaml::String(s) => out.push_str(s),
                Yaml::Number(n) => out.push_str(&n.to_string()),
                Yaml::Bool(b) => out.push_str(&b.to_string()),
                other => {
                    return Err(format!(
                        ".Values.{} is not a scalar: {other:?}",
                        path[..end].trim()
                    ));
                }
            }
            rest = &path[end + 2..];
        } else {
            return Err(format!(
                "unsupported action {{{{{}",
                &action[..action.len().min(40)]
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The alert rules as the chart renders them with its default values.
fn rendered_rules() -> Yaml {
    let template = read("charts/weir-operator/templates/prometheusrule.yaml");
    assert!(
        template.contains(r#"tpl (.Files.Get "files/prometheus-rules.yaml") ."#),
        "the PrometheusRule template no longer renders files/prometheus-rules.yaml:\n{template}"
    );
    let values: Yaml = serde_yaml::from_str(&read("charts/weir-operator/values.yaml")).unwrap();
    let rendered = render_with_defaults(
        &read("charts/weir-operator/files/prometheus-rules.yaml"),
        &values,
    )
    .unwrap();
    serde_yaml::from_str(&rendered)
        .unwrap_or_else(|e| panic!("the rendered rules are not YAML: {e}\n{rendered}"))
}

fn rule_queries(rules: &Yaml) -> Queries {
    let mut queries = Queries::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"].as_str().unwrap_or_default();
            queries.push((
                format!("alert {name}"),
                rule["expr"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    queries
}

fn metrics_of(queries: &Queries) -> BTreeSet<String> {
    queries
        .iter()
        .filter_map(|(_, expr)| parse_query(expr).ok())
        .flat_map(|q| q.selectors.into_iter().map(|s| s.metric))
        .collect()
}

#[test]
fn the_query_parser_finds_metrics_matchers_and_grouping_labels() {
    let query = parse_query(
        r#"histogram_quantile(0.99, sum by (job, le) (rate(weir_a_bucket{namespace=~"$namespace", phase="Running"}[$__rate_interval])))
           unless on (namespace) weir_b offset 5m > 1e3 and count_over_time((max(weir_c) == 1)[${__range}:15s])"#,
    )
    .unwrap();
    let metrics: Vec<&str> = query.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["weir_a_bucket", "weir_b", "weir_c"]);
    assert_eq!(
        query.selectors[0].matchers,
        [
            Matcher {
                label: "namespace".into(),
                op: "=~".into(),
                value: "$namespace".into()
            },
            Matcher {
                label: "phase".into(),
                op: "=".into(),
                value: "Running".into()
            },
        ]
    );
    assert_eq!(query.grouping, ["job", "le", "namespace"]);
    assert!(parse_query(r#"{__name__="weir_a"}"#).is_err());
}

#[test]
fn a_renamed_metric_label_or_value_is_reported() {
    let catalog = exported();
    let queries = vec![
        (
            "ok".to_owned(),
            r#"sum by (job, task) (rate(weir_records_in_total{job="x"}[5m]))"#.to_owned(),
        ),
        ("metric".to_owned(), "weir_records_input_total".to_owned()),
        (
            "label".to_owned(),
            r#"weir_partition_lag{partition_id="1"}"#.to_owned(),
        ),
        (
            "grouping".to_owned(),
            "sum by (outcome) (weir_busy_ratio)".to_owned(),
        ),
        (
            "value".to_owned(),
            r#"weir_job_phase{phase=~"Running|Broken"}"#.to_owned(),
        ),
    ];
    let problems = check_queries(&catalog, &queries);
    let places: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    assert_eq!(
        places,
        ["metric", "label", "grouping", "value"],
        "{problems:#?}"
    );
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let dashboard: Json = serde_json::from_str(&read("config/grafana/weir.json"))
        .expect("config/grafana/weir.json is JSON");
    let (queries, variable_labels) = dashboard_queries(&dashboard);
    let catalog = exported();
    let problems = check_queries(&catalog, &queries);
    assert!(
        problems.is_empty(),
        "the dashboard drifted from the exported metrics:\n{}",
        problems.join("\n")
    );
    for (place, label) in variable_labels {
        assert!(
            TARGET_LABELS.contains(&label.as_str()),
            "{place} reads label {label}, not a label every Weir series carries"
        );
    }

    // What the issue asks the job overview to show.
    let used = metrics_of(&queries);
    for metric in [
        "weir_records_in_total",
        "weir_records_out_total",
        "weir_partition_lag",
        "weir_job_lag",
        "weir_job_parallelism",
        "weir_job_phase",
        "weir_checkpoint_duration_seconds_bucket",
        "weir_checkpoint_size_bytes",
        "weir_job_savepoints_total",
        "weir_job_rescales_total",
        "weir_restore_duration_seconds",
        "weir_records_dead_lettered_total",
        "weir_records_late_total",
        "weir_busy_ratio",
    ] {
        assert!(used.contains(metric), "the dashboard shows no {metric}");
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_filtered_by_namespace_and_job() {
    let dashboard: Json = serde_json::from_str(&read("config/grafana/weir.json")).unwrap();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("namespace")["type"], "query");
    assert_eq!(variable("job")["type"], "query");

    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "panel id {} twice",
            panel["id"]
        );
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "panel {} has no gridPos",
            panel["title"]
        );
        let Some(targets) = panel["targets"].as_array() else {
            assert_eq!(
                panel["type"], "row",
                "panel {} has no targets",
                panel["title"]
            );
            continue;
        };
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {}",
            panel["title"]
        );
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {}",
                panel["title"]
            );
            for selector in parse_query(target["expr"].as_str().unwrap())
                .unwrap()
                .selectors
            {
                for (label, variable) in [("namespace", "$namespace"), ("job", "$job")] {
                    assert!(
                        selector
                            .matchers
                            .iter()
                            .any(|m| m.label == label && m.op == "=~" && m.value == variable),
                        "panel {}: {} is not filtered by {label}=~\"{variable}\"",
                        panel["title"],
                        selector.metric
                    );
                }
            }
        }
    }
}

#[test]
fn the_alert_rules_query_only_exported_metrics() {
    let queries = rule_queries(&rendered_rules());
    let problems = check_queries(&exported(), &queries);
    assert!(
        problems.is_empty(),
        "the alert rules drifted from the exported metrics:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_alert_rules_are_prometheus_rule_groups() {
    let rules = rendered_rules();
    let top = rules.as_mapping().expect("a mapping");
    assert_eq!(
        top.keys().collect::<Vec<_>>(),
        [&Yaml::from("groups")],
        "only `groups` at the top"
    );
    let duration = regex::Regex::new(r"^([0-9]+(ms|s|m|h|d|w|y))+$").unwrap();
    let mut alerts = BTreeSet::new();
    let groups = rules["groups"].as_sequence().expect("groups is a list");
    assert!(!groups.is_empty());
    for group in groups {
        let name = group["name"].as_str().expect("a group name");
        let rules = group["rules"]
            .as_sequence()
            .unwrap_or_else(|| panic!("group {name} has no rules"));
        assert!(!rules.is_empty(), "group {name} is empty");
        for rule in rules {
            let alert = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("a rule of {name} without alert: {rule:?}"));
            assert!(alerts.insert(alert.to_owned()), "alert {alert} twice");
            for key in rule.as_mapping().unwrap().keys() {
                let key = key.as_str().unwrap_or_default();
                assert!(
                    ["alert", "expr", "for", "labels", "annotations"].contains(&key),
                    "{alert}: unknown field {key}"
                );
            }
            assert!(
                rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{alert} has no expr"
            );
            if let Some(for_) = rule.get("for") {
                let for_ = for_
                    .as_str()
                    .unwrap_or_else(|| panic!("{alert}: for is not a string"));
                assert!(
                    duration.is_match(for_),
                    "{alert}: for {for_} is not a Prometheus duration"
                );
            }
            let severity = rule["labels"]["severity"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has no severity"));
            assert!(
                ["warning", "critical"].contains(&severity),
                "{alert}: severity {severity}"
            );
            for annotation in ["summary", "description"] {
                let text = rule["annotations"][annotation]
                    .as_str()
                    .unwrap_or_else(|| panic!("{alert} has no {annotation}"));
                assert!(
                    !text.contains("{{ .") && !text.contains('`'),
                    "{alert}: {annotation} left a Helm action: {text}"
                );
            }
        }
    }
    // What the issue asks for.
    for alert in [
        "WeirJobLagGrowing",
        "WeirCheckpointsStalled",
        "WeirSavepointFailed",
        "WeirDeadLetterRateHigh",
        "WeirJobFailed",
    ] {
        assert!(alerts.contains(alert), "no alert {alert} in {alerts:?}");
    }
}

#[test]
fn thresholds_come_from_the_values() {
    let rules = rendered_rules();
    let rule = |name: &str| {
        rules["groups"][0]["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    let values: Yaml = serde_yaml::from_str(&read("charts/weir-operator/values.yaml")).unwrap();
    let rule_values = &values["monitoring"]["prometheusRule"];
    assert_eq!(
        rule("WeirJobLagGrowing")["for"],
        rule_values["lagGrowing"]["for"]
    );
    let min_lag = rule_values["lagGrowing"]["minLag"].as_u64().unwrap();
    assert!(
        rule("WeirJobLagGrowing")["expr"]
            .as_str()
            .unwrap()
            .contains(&format!("> {min_lag}"))
    );
    let rate = serde_yaml::to_string(&rule_values["deadLetters"]["ratePerSecond"]).unwrap();
    assert!(
        rule("WeirDeadLetterRateHigh")["expr"]
            .as_str()
            .unwrap()
            .contains(&format!("> {}", rate.trim()))
    );
    assert!(render_with_defaults("{{ .Values.monitoring.nothing }}", &values).is_err());
    assert!(render_with_defaults("{{ include \"x\" . }}", &values).is_err());
}

#[test]
fn the_pod_monitor_scrapes_the_workers_the_operator_builds() {
    use weir_operator::builders::{
        HTTP_PORT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGER, WORKER_APP,
    };
    let template = read("charts/weir-operator/templates/podmonitor.yaml");
    // A StatefulSet as the builders make it (the snapshot tests keep it so).
    let statefulset: Yaml = serde_yaml::from_str(&read(
        "operator/tests/snapshots/shop-orders-filter-enrich/statefulset.yaml",
    ))
    .unwrap();
    let pod = &statefulset["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels[LABEL_NAME], WORKER_APP);
    assert_eq!(labels[LABEL_MANAGED_BY], MANAGER);
    // jobLabel turns this label into `job`: it must hold the job's name.
    assert_eq!(labels[LABEL_INSTANCE], statefulset["metadata"]["name"]);
    for line in [
        format!("jobLabel: {LABEL_INSTANCE}"),
        format!("{LABEL_NAME}: {WORKER_APP}"),
        format!("{LABEL_MANAGED_BY}: {MANAGER}"),
        "path: /metrics".to_owned(),
    ] {
        assert!(
            template.contains(&line),
            "the PodMonitor lacks `{line}`:\n{template}"
        );
    }
    let port = pod["spec"]["containers"][0]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"].as_i64() == Some(i64::from(HTTP_PORT)))
        .expect("the worker's HTTP port");
    let name = port["name"].as_str().expect("a named port");
    assert!(
        template.contains(&format!("- port: {name}\n")),
        "the PodMonitor does not scrape the port {name}:\n{template}"
    );
}
