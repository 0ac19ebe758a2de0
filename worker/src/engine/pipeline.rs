//! A job's pipeline compiled once at start-up: CEL expressions compiled,
//! windows resolved into assigners, and the decode plan (which top-level
//! fields of the input records any step reads) worked out.
//!
//! # Keys and repartitioning
//!
//! Keyed steps (a window's aggregate, an aggregate, dedupe) after a `keyBy`
//! need every record of a key in one task. When the `keyBy` says
//! `sourcePartitioned`, each task processes its records end to end. When it
//! does not, the pipeline is cut at the `keyBy` ([`Pipeline::repartition_step`]):
//! a task runs the steps before it, then sends the record keyed by the key's
//! bytes to the job's repartition topic (murmur2-partitioned like the Java
//! client, with the event time as the Kafka timestamp), and the task owning
//! that partition reads it back and runs the steps after the `keyBy`
//! ([`Pipeline::repartitioned_decode_plan`] decodes it). Validation allows
//! one `keyBy` per pipeline, so there is at most one cut.

use thiserror::Error;
use weir_crds::StreamingJobSpec;
use weir_crds::expr::{self, CompileError, Expression};
use weir_crds::job::{AggregateFunction, Step, WindowKind};

use crate::checkpoint::compatibility::StateBinding;
use crate::checkpoint::manifest::StepState;
use crate::engine::event_time::EventTimeSource;
use crate::engine::join::{Join, JoinKind};
use crate::engine::pattern::{Contiguity, Pattern, Quantifier, Stage};
use crate::engine::record::DecodePlan;
use crate::engine::window::{WindowAssigner, WindowError};

/// Why a pipeline does not compile.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// A CEL expression does not compile.
    #[error("{step}: {field}: {source}")]
    Expression {
        /// The step's name.
        step: String,
        /// Which expression of the step.
        field: String,
        /// The compiler's error.
        source: CompileError,
    },
    /// A step sets no operation or more than one.
    #[error(
        "{step}: a step sets exactly one of filter, map, keyBy, window, aggregate, dedupe, pattern"
    )]
    Operation {
        /// The step's name.
        step: String,
    },
    /// A window step is not usable.
    #[error("{step}: {source}")]
    Window {
        /// The step's name.
        step: String,
        /// What is wrong with it.
        source: WindowError,
    },
    /// A window is not followed by an aggregate.
    #[error("{step}: a window must be followed by an aggregate")]
    WindowWithoutAggregate {
        /// The step's name.
        step: String,
    },
    /// A pattern over records without event time.
    #[error("{step}: a pattern needs source.eventTime")]
    PatternWithoutEventTime {
        /// The step's name.
        step: String,
    },
    /// A temporal or interval join over records without event time.
    #[error("{step}: a temporal or interval join needs source.eventTime")]
    JoinWithoutEventTime {
        /// The step's name.
        step: String,
    },
    /// A window over records without event time.
    #[error("{step}: a window needs source.eventTime")]
    WindowWithoutEventTime {
        /// The step's name.
        step: String,
    },
    /// An aggregate function other than count has no expression.
    #[error("{step}: aggregate field {field} needs an expr")]
    MissingExpr {
        /// The step's name.
        step: String,
        /// The output field.
        field: String,
    },
    /// A dedupe TTL of zero.
    #[error("{step}: dedupe ttl must be greater than 0")]
    ZeroTtl {
        /// The step's name.
        step: String,
    },
    /// More aggregate fields than stored accumulators can hold.
    #[error("{step}: {count} aggregate fields, more than 255")]
    TooManyFields {
        /// The step's name.
        step: String,
        /// How many fields it has.
        count: usize,
    },
    /// More steps than state keys can tell apart.
    #[error("the pipeline has {0} steps, more than 255")]
    TooManySteps(usize),
}

/// A compiled `map` output field.
#[derive(Clone, Debug)]
pub struct MapField {
    /// Output field name.
    pub name: String,
    /// Its expression.
    pub expr: Expression,
}

/// A compiled aggregate output field.
#[derive(Clone, Debug)]
pub struct AggregateField {
    /// Output field name.
    pub name: String,
    /// The function.
    pub function: AggregateFunction,
    /// The aggregated expression (`None` for count).
    pub expr: Option<Expression>,
}

/// The window of an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowOp {
    /// How events map to windows.
    pub assigner: WindowAssigner,
    /// How long after firing a window still takes (and re-emits) events,
    /// in milliseconds.
    pub allowed_lateness: i64,
}

/// What a compiled step does.
#[derive(Clone, Debug)]
pub enum Operation {
    /// Keeps records for which the expression is true.
    Filter(Expression),
    /// Replaces (or extends) the record with computed fields.
    Map {
        /// The computed fields, in order.
        fields: Vec<MapField>,
        /// Whether the input's fields are kept.
        keep_input: bool,
    },
    /// Sets the key of the following keyed steps.
    KeyBy {
        /// The key expression.
        expr: Expression,
        /// Whether the source is already partitioned by this key.
        source_partitioned: bool,
    },
    /// Aggregates per key (and window). A window step of the spec and the
    /// aggregate after it compile into one operation.
    Aggregate {
        /// The window, `None` for a running (changelog) aggregate.
        window: Option<WindowOp>,
        /// The output fields.
        fields: Vec<AggregateField>,
    },
    /// Drops records whose key was seen within the TTL.
    Dedupe {
        /// The duplicate key.
        key: Expression,
        /// How long a key is remembered, in milliseconds.
        ttl: i64,
    },
    /// Detects sequences of each key's events.
    Pattern(Pattern),
    /// Joins records with those of another topic with the same key.
    Join(Join),
}

/// One compiled step.
#[derive(Clone, Debug)]
pub struct CompiledStep {
    /// The step's name (the spec's or `<operation>-<index>`).
    pub name: String,
    /// The slot the step's state keys and timers are stored under: its
    /// index in the spec, unless restored state assigned another (see
    /// [`Pipeline::bind_state`]). Unique among the steps.
    pub id: u8,
    /// The stable id of a stateful step's state: its `name`, or
    /// `<operation>#<n>`, n being its rank among the steps of that operation;
    /// `None` for stateless steps.
    pub state_id: Option<String>,
    /// What it does.
    pub operation: Operation,
}

/// A compiled pipeline, shared by the tasks of a worker.
#[derive(Clone, Debug)]
pub struct Pipeline {
    steps: Vec<CompiledStep>,
    event_time: EventTimeSource,
    max_out_of_orderness: i64,
    idle_timeout: i64,
    decode: DecodePlan,
    passthrough: bool,
    /// The decode plan of records read back from the repartition topic.
    repartitioned_decode: DecodePlan,
    /// Index of the join step.
    join: Option<usize>,
}

/// The operation name stateful steps derive their state id from; `None`
/// for stateless operations.
fn state_kind(operation: &Operation) -> Option<&'static str> {
    match operation {
        Operation::Aggregate { .. } => Some("aggregate"),
        Operation::Dedupe { .. } => Some("dedupe"),
        Operation::Pattern(_) => Some("pattern"),
        Operation::Join(_) => Some("join"),
        Operation::Filter(_) | Operation::Map { .. } | Operation::KeyBy { .. } => None,
    }
}

/// What a stateful step's state depends on: what it is keyed by (the
/// preceding keyBy's expression, or the dedupe key), the window assigner
/// and the accumulator functions in order; not the aggregated expressions,
/// the lateness or the TTL, which change what is computed, not what is
/// stored. Two unnamed steps that swap ranks are told apart by it unless
/// they are identical.
fn fingerprint(operation: &Operation, key: Option<&str>) -> Option<String> {
    match operation {
        Operation::Aggregate { window, fields } => {
            let window = match window.as_ref().map(|w| &w.assigner) {
                None => "running".to_owned(),
                Some(WindowAssigner::Tumbling { size, zone: None }) => format!("tumbling {size}ms"),
                Some(WindowAssigner::Tumbling {
                    size,
                    zone: Some(zone),
                }) => format!("tumbling {size}ms in {}", zone.name()),
                Some(WindowAssigner::Sliding { size, slide }) => {
                    format!("sliding {size}ms every {slide}ms")
                }
                Some(WindowAssigner::Session { gap }) => format!("session gap {gap}ms"),
                Some(WindowAssigner::Count { size, slide }) => {
                    format!("count {size} every {slide}")
                }
            };
            let functions: Vec<String> = fields
                .iter()
                .map(|f| format!("{:?}", f.function).to_lowercase())
                .collect();
            let key = key.unwrap_or("nothing");
            Some(format!(
                "aggregate(by {key}; {window}; {})",
                functions.join(",")
            ))
        }
        Operation::Dedupe { key, .. } => Some(format!("dedupe({})", key.source())),
        Operation::Pattern(pattern) => {
            let stages: Vec<String> = pattern
                .stages
                .iter()
                .map(|s| {
                    let quantifier = match s.quantifier {
                        Quantifier::Times(n) => format!("x{n}"),
                        Quantifier::OneOrMore => "+".to_owned(),
                    };
                    let absent = if s.absent { "!" } else { "" };
                    format!("{absent}{}{quantifier}", s.name)
                })
                .collect();
            Some(format!(
                "pattern(by {}; {})",
                key.unwrap_or("nothing"),
                stages.join(",")
            ))
        }
        Operation::Join(join) => {
            let kind = match join.kind {
                JoinKind::Table { history: None, .. } => "table",
                JoinKind::Table {
                    history: Some(_), ..
                } => "temporal table",
                JoinKind::Interval { .. } => "interval",
            };
            let other_key = join.key.as_ref().map_or("the Kafka key", |k| k.source());
            Some(format!(
                "join(by {}; {kind} {} by {other_key})",
                key.unwrap_or("nothing"),
                join.topic
            ))
        }
        Operation::Filter(_) | Operation::Map { .. } | Operation::KeyBy { .. } => None,
    }
}

fn compile_expr(step: &str, field: &str, source: &str) -> Result<Expression, PipelineError> {
    expr::compile(source).map_err(|source| PipelineError::Expression {
        step: step.to_owned(),
        field: field.to_owned(),
        source,
    })
}

fn step_name(step: &Step, index: usize) -> String {
    if let Some(name) = &step.name {
        return name.clone();
    }
    let op = if step.filter.is_some() {
        "filter"
    } else if step.map.is_some() {
        "map"
    } else if step.key_by.is_some() {
        "keyBy"
    } else if step.window.is_some() {
        "window"
    } else if step.aggregate.is_some() {
        "aggregate"
    } else if step.dedupe.is_some() {
        "dedupe"
    } else if step.pattern.is_some() {
        "pattern"
    } else if step.join.is_some() {
        "join"
    } else {
        "step"
    };
    format!("{op}-{index}")
}

impl Pipeline {
    /// Compiles the pipeline of a job spec.
    pub fn compile(spec: &StreamingJobSpec) -> Result<Pipeline, PipelineError> {
        if spec.pipeline.len() > 255 {
            return Err(PipelineError::TooManySteps(spec.pipeline.len()));
        }
        let event_time = EventTimeSource::from_spec(spec.source.event_time.as_ref());
        let mut steps = Vec::new();
        let mut pending_window: Option<(String, WindowOp)> = None;
        let mut unnamed: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut window_name: Option<&String> = None;
        for (index, step) in spec.pipeline.iter().enumerate() {
            let name = step_name(step, index);
            // A window and its aggregate are one stateful step, named by
            // either.
            let named = step.name.as_ref().or(window_name.take());
            let set = [
                step.filter.is_some(),
                step.map.is_some(),
                step.key_by.is_some(),
                step.window.is_some(),
                step.aggregate.is_some(),
                step.dedupe.is_some(),
                step.pattern.is_some(),
                step.join.is_some(),
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err(PipelineError::Operation { step: name });
            }
            if let Some((window_step, _)) = &pending_window
                && step.aggregate.is_none()
            {
                return Err(PipelineError::WindowWithoutAggregate {
                    step: window_step.clone(),
                });
            }
            let operation = if let Some(filter) = &step.filter {
                Operation::Filter(compile_expr(&name, "filter", filter)?)
            } else if let Some(map) = &step.map {
                let fields = map
                    .fields
                    .iter()
                    .map(|f| {
                        Ok(MapField {
                            name: f.name.clone(),
                            expr: compile_expr(&name, &format!("map.fields[{}]", f.name), &f.expr)?,
                        })
                    })
                    .collect::<Result<_, PipelineError>>()?;
                Operation::Map {
                    fields,
                    keep_input: map.keep_input,
                }
            } else if let Some(key_by) = &step.key_by {
                Operation::KeyBy {
                    expr: compile_expr(&name, "keyBy", &key_by.expr)?,
                    source_partitioned: key_by.source_partitioned,
                }
            } else if let Some(window) = &step.window {
                if event_time == EventTimeSource::None && window.kind != WindowKind::Count {
                    return Err(PipelineError::WindowWithoutEventTime { step: name });
                }
                let assigner =
                    WindowAssigner::from_spec(window).map_err(|source| PipelineError::Window {
                        step: name.clone(),
                        source,
                    })?;
                let op = WindowOp {
                    assigner,
                    allowed_lateness: window.allowed_lateness.as_millis(),
                };
                pending_window = Some((name, op));
                window_name = step.name.as_ref();
                continue;
            } else if let Some(aggregate) = &step.aggregate {
                if aggregate.fields.len() > 255 {
                    return Err(PipelineError::TooManyFields {
                        step: name,
                        count: aggregate.fields.len(),
                    });
                }
                let fields = aggregate
                    .fields
                    .iter()
                    .map(|f| {
                        let expr = match (&f.expr, f.function) {
                            (Some(source), _) => Some(compile_expr(
                                &name,
                                &format!("aggregate.fields[{}]", f.name),
                                source,
                            )?),
                            (None, AggregateFunction::Count) => None,
                            (None, _) => {
                                return Err(PipelineError::MissingExpr {
                                    step: name.clone(),
                                    field: f.name.clone(),
                                });
                            }
                        };
                        Ok(AggregateField {
                            name: f.name.clone(),
                            function: f.function,
                            expr: if f.function == AggregateFunction::Count {
                                None
                            } else {
                                expr
                            },
                        })
                    })
                    .collect::<Result<_, PipelineError>>()?;
                Operation::Aggregate {
                    window: pending_window.take().map(|(_, op)| op),
                    fields,
                }
            } else if let Some(dedupe) = &step.dedupe {
                let ttl = dedupe.ttl.as_millis();
                if ttl <= 0 {
                    return Err(PipelineError::ZeroTtl { step: name });
                }
                Operation::Dedupe {
                    key: compile_expr(&name, "dedupe.key", &dedupe.key)?,
                    ttl,
                }
            } else if let Some(spec) = &step.pattern {
                if event_time == EventTimeSource::None {
                    return Err(PipelineError::PatternWithoutEventTime { step: name });
                }
                let stages = spec
                    .sequence
                    .iter()
                    .enumerate()
                    .map(|(j, stage)| {
                        Ok(Stage {
                            name: stage.name.clone(),
                            condition: compile_expr(
                                &name,
                                &format!("pattern.sequence[{j}].condition"),
                                &stage.condition,
                            )?,
                            quantifier: if stage.one_or_more {
                                Quantifier::OneOrMore
                            } else {
                                Quantifier::Times(stage.times.unwrap_or(1).max(1))
                            },
                            absent: stage.absent,
                        })
                    })
                    .collect::<Result<Vec<_>, PipelineError>>()?;
                Operation::Pattern(Pattern {
                    stages,
                    within: spec.within.map(|w| w.as_millis()),
                    contiguity: match spec.contiguity {
                        weir_crds::job::Contiguity::Relaxed => Contiguity::Relaxed,
                        weir_crds::job::Contiguity::Strict => Contiguity::Strict,
                    },
                })
            } else if let Some(spec) = &step.join {
                let join = compile_join(&name, spec)?;
                if join.is_timed() && event_time == EventTimeSource::None {
                    return Err(PipelineError::JoinWithoutEventTime { step: name });
                }
                Operation::Join(join)
            } else {
                return Err(PipelineError::Operation { step: name });
            };
            let state_id = state_kind(&operation).map(|kind| {
                let nth = unnamed.entry(kind).or_insert(0usize);
                let id = match named {
                    Some(name) => name.clone(),
                    None => format!("{kind}#{nth}"),
                };
                *nth += 1;
                id
            });
            steps.push(CompiledStep {
                name,
                id: index as u8,
                state_id,
                operation,
            });
        }
        if let Some((step, _)) = pending_window {
            return Err(PipelineError::WindowWithoutAggregate { step });
        }
        let (decode, passthrough) = decode_plan(&steps, &event_time);
        let after_cut = cut(&steps).map_or(steps.len(), |r| r + 1);
        let (repartitioned_decode, _) = decode_plan(&steps[after_cut..], &EventTimeSource::None);
        let join = steps
            .iter()
            .position(|s| matches!(s.operation, Operation::Join(_)));
        Ok(Pipeline {
            join,
            steps,
            max_out_of_orderness: spec.source.watermark.max_out_of_orderness.as_millis(),
            idle_timeout: spec.source.watermark.idle_timeout.as_millis(),
            event_time,
            decode,
            passthrough,
            repartitioned_decode,
        })
    }

    /// The state of every stateful step, with the slot it uses now.
    pub fn step_states(&self) -> Vec<StepState> {
        let mut key = None;
        self.steps
            .iter()
            .filter_map(|step| {
                if let Operation::KeyBy { expr, .. } = &step.operation {
                    key = Some(expr.source());
                }
                Some(StepState {
                    id: step.state_id.clone()?,
                    slot: step.id,
                    fingerprint: fingerprint(&step.operation, key)?,
                })
            })
            .collect()
    }

    /// Moves every stateful step onto the slot `binding` gives it (the one
    /// its restored state uses) and the other steps onto slots no stateful
    /// step uses, so that slots stay unique.
    pub fn bind_state(&mut self, binding: &StateBinding) {
        let mut taken: std::collections::BTreeSet<u8> = binding.slots.values().copied().collect();
        taken.extend(binding.dropped.iter().copied());
        for step in &mut self.steps {
            if let Some(slot) = step.state_id.as_ref().and_then(|id| binding.slots.get(id)) {
                step.id = *slot;
            }
        }
        for step in self.steps.iter_mut().filter(|s| s.state_id.is_none()) {
            if let Some(free) = (0..=u8::MAX).find(|s| !taken.contains(s)) {
                step.id = free;
                taken.insert(free);
            }
        }
    }

    /// The compiled steps, in order.
    pub fn steps(&self) -> &[CompiledStep] {
        &self.steps
    }

    /// Where event times come from.
    pub fn event_time(&self) -> &EventTimeSource {
        &self.event_time
    }

    /// The watermark's `maxOutOfOrderness` in milliseconds.
    pub fn max_out_of_orderness(&self) -> i64 {
        self.max_out_of_orderness
    }

    /// The partition idle timeout in milliseconds (0: never idle).
    pub fn idle_timeout(&self) -> i64 {
        self.idle_timeout
    }

    /// Which fields of the input records are decoded.
    pub fn decode_plan(&self) -> &DecodePlan {
        &self.decode
    }

    /// Whether outputs are the unchanged input values (no map, no
    /// aggregate), written from the source bytes without re-encoding.
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// Index (in [`Pipeline::steps`]) of the first `keyBy` that is not
    /// source-partitioned: records go through the repartition topic there.
    pub fn repartition_step(&self) -> Option<usize> {
        cut(&self.steps)
    }

    /// Which fields of the records read back from the repartition topic are
    /// decoded: those the steps after the cut read.
    pub fn repartitioned_decode_plan(&self) -> &DecodePlan {
        &self.repartitioned_decode
    }

    /// The join step reading `topic`: its index and the join.
    pub fn join_of(&self, topic: &str) -> Option<(usize, &Join)> {
        let index = self.join?;
        match &self.steps[index].operation {
            Operation::Join(join) if join.topic == topic => Some((index, join)),
            _ => None,
        }
    }

    /// The join step, if the pipeline has one: its index and the join.
    pub fn join(&self) -> Option<(usize, &Join)> {
        let index = self.join?;
        match &self.steps[index].operation {
            Operation::Join(join) => Some((index, join)),
            _ => None,
        }
    }
}

/// Compiles the join step `name`.
fn compile_join(name: &str, spec: &weir_crds::job::JoinStep) -> Result<Join, PipelineError> {
    let key = spec
        .key
        .as_ref()
        .map(|source| compile_expr(name, "join.key", source))
        .transpose()?;
    let kind = match spec.kind {
        weir_crds::job::JoinKind::Table => JoinKind::Table {
            left: spec.mode == weir_crds::job::JoinMode::Left,
            history: spec.temporal.then(|| {
                spec.history
                    .unwrap_or(weir_crds::validate::DEFAULT_JOIN_HISTORY)
                    .max(1) as usize
            }),
        },
        weir_crds::job::JoinKind::Interval => JoinKind::Interval {
            before: spec.before.map_or(0, |d| d.as_millis()),
            after: spec.after.map_or(0, |d| d.as_millis()),
        },
    };
    Ok(Join {
        topic: spec.topic.clone(),
        key,
        field: spec.as_field.clone(),
        kind,
    })
}

/// Index of the first `keyBy` that is not source-partitioned.
fn cut(steps: &[CompiledStep]) -> Option<usize> {
    steps.iter().position(|s| {
        matches!(
            s.operation,
            Operation::KeyBy {
                source_partitioned: false,
                ..
            }
        )
    })
}

/// The fields of the input that the steps up to the first one replacing the
/// record (a map or an aggregate) read, and whether the output is the input.
fn decode_plan(steps: &[CompiledStep], event_time: &EventTimeSource) -> (DecodePlan, bool) {
    let mut fields: Vec<String> = event_time.field().map(str::to_owned).into_iter().collect();
    let mut whole = false;
    let mut replaced = false;
    let mut read = |e: &Expression, fields: &mut Vec<String>| {
        whole |= e.reads_whole_record();
        fields.extend(e.fields().iter().cloned());
    };
    for step in steps {
        match &step.operation {
            Operation::Filter(e) => read(e, &mut fields),
            Operation::KeyBy { expr, .. } => read(expr, &mut fields),
            Operation::Dedupe { key, .. } => read(key, &mut fields),
            Operation::Map {
                fields: map,
                keep_input,
            } => {
                for f in map {
                    read(&f.expr, &mut fields);
                }
                if *keep_input {
                    // The kept input is re-encoded, so it must be whole.
                    fields.clear();
                    return (DecodePlan::All, false);
                }
                replaced = true;
                break;
            }
            Operation::Aggregate { fields: aggs, .. } => {
                for f in aggs {
                    if let Some(e) = &f.expr {
                        read(e, &mut fields);
                    }
                }
                replaced = true;
                break;
            }
            // A match carries its records whole, and so does a join.
            Operation::Pattern(_) | Operation::Join(_) => return (DecodePlan::All, false),
        }
    }
    if whole {
        return (DecodePlan::All, !replaced);
    }
    fields.sort();
    fields.dedup();
    (DecodePlan::Fields(fields), !replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source_extra: &str, pipeline: &str) -> StreamingJobSpec {
        let yaml = format!(
            r#"
kafka: {{bootstrapServers: "k:9092"}}
source: {{topics: [in]{source_extra}}}
sink: {{topic: out}}
checkpoint: {{storage: "memory://"}}
pipeline: {pipeline}
"#
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    #[test]
    fn compiles_and_plans_decoding() {
        let p = Pipeline::compile(&spec(
            ", eventTime: {field: ts}",
            r#"[{filter: "record.amount > 0.0"}, {keyBy: {expr: "record.user_id", sourcePartitioned: true}},
                {window: {type: tumbling, size: 60s}}, {aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}},
                {filter: "record.n > 1"}]"#,
        ))
        .unwrap();
        assert_eq!(p.steps().len(), 4);
        assert_eq!(
            p.decode_plan(),
            &DecodePlan::Fields(vec!["amount".into(), "ts".into(), "user_id".into()])
        );
        assert!(!p.is_passthrough());
        assert_eq!(p.repartition_step(), None);
        assert!(matches!(
            p.steps()[2].operation,
            Operation::Aggregate {
                window: Some(WindowOp {
                    assigner: WindowAssigner::Tumbling {
                        size: 60_000,
                        zone: None,
                    },
                    allowed_lateness: 0
                }),
                ..
            }
        ));
        assert_eq!(p.steps()[2].id, 3);
    }

    #[test]
    fn stateful_steps_have_stable_ids_and_fingerprints() {
        let p = Pipeline::compile(&spec(
            ", eventTime: {field: ts}",
            r#"[{filter: "true"}, {keyBy: {expr: record.user, sourcePartitioned: true}},
                {name: per-minute, window: {type: tumbling, size: 60s}},
                {aggregate: {fields: [{name: n, function: count}, {name: s, function: sum, expr: record.x}]}},
                {dedupe: {key: record.id, ttl: 1m}},
                {name: seen, dedupe: {key: record.id, ttl: 1m}},
                {dedupe: {key: record.id, ttl: 1m}}]"#,
        ))
        .unwrap();
        let states: Vec<(String, u8, String)> = p
            .step_states()
            .into_iter()
            .map(|s| (s.id, s.slot, s.fingerprint))
            .collect();
        assert_eq!(
            states,
            vec![
                (
                    "per-minute".into(),
                    3,
                    "aggregate(by record.user; tumbling 60000ms; count,sum)".into()
                ),
                ("dedupe#0".into(), 4, "dedupe(record.id)".into()),
                ("seen".into(), 5, "dedupe(record.id)".into()),
                ("dedupe#2".into(), 6, "dedupe(record.id)".into()),
            ]
        );
        // Moving every step down by one keeps the ids: state follows.
        let moved = Pipeline::compile(&spec(
            ", eventTime: {field: ts}",
            r#"[{filter: "true"}, {filter: "true"}, {keyBy: {expr: record.user, sourcePartitioned: true}},
                {name: per-minute, window: {type: tumbling, size: 60s}},
                {aggregate: {fields: [{name: n, function: count}, {name: s, function: sum, expr: record.x}]}}]"#,
        ))
        .unwrap();
        assert_eq!(moved.step_states()[0].id, "per-minute");
        assert_eq!(moved.step_states()[0].slot, 4);
    }

    #[test]
    fn bound_slots_stay_unique() {
        let mut p = Pipeline::compile(&spec(
            "",
            r#"[{filter: "true"}, {dedupe: {key: record.id, ttl: 1m}}, {map: {fields: [{name: a, expr: "1"}]}}]"#,
        ))
        .unwrap();
        let binding = crate::checkpoint::compatibility::StateBinding {
            slots: [("dedupe#0".to_owned(), 0u8)].into_iter().collect(),
            dropped: vec![2],
        };
        p.bind_state(&binding);
        let slots: Vec<u8> = p.steps().iter().map(|s| s.id).collect();
        assert_eq!(slots[1], 0);
        let mut unique = slots.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), slots.len(), "{slots:?}");
        assert!(!slots.contains(&2), "a dropped slot was reused: {slots:?}");
    }

    #[test]
    fn passthrough_and_repartition() {
        let p = Pipeline::compile(&spec(
            "",
            r#"[{filter: "record.a == 1"}, {keyBy: {expr: "record.k"}}]"#,
        ))
        .unwrap();
        assert!(p.is_passthrough());
        assert_eq!(p.repartition_step(), Some(1));
        let p = Pipeline::compile(&spec(
            ", eventTime: {field: ts}",
            r#"[{filter: "record.a == 1"}, {keyBy: {expr: "record.k"}},
                {window: {type: tumbling, size: 1m}},
                {aggregate: {fields: [{name: s, function: sum, expr: record.amount}]}}]"#,
        ))
        .unwrap();
        assert_eq!(p.repartition_step(), Some(1));
        assert_eq!(
            p.decode_plan(),
            &DecodePlan::Fields(vec!["a".into(), "amount".into(), "k".into(), "ts".into()])
        );
        assert_eq!(
            p.repartitioned_decode_plan(),
            &DecodePlan::Fields(vec!["amount".into()]),
            "after the cut, event time is the Kafka timestamp and the key is the Kafka key"
        );
        let p = Pipeline::compile(&spec(
            "",
            r#"[{map: {keepInput: true, fields: [{name: x, expr: "1"}]}}]"#,
        ))
        .unwrap();
        assert_eq!(p.decode_plan(), &DecodePlan::All);
    }

    #[test]
    fn rejects_bad_pipelines() {
        let cases = [
            ("", r#"[{filter: "record.a +"}]"#, "filter-0: filter"),
            (
                "",
                r#"[{window: {type: tumbling, size: 1s}}, {aggregate: {fields: [{name: n, function: count}]}}]"#,
                "needs source.eventTime",
            ),
            (
                ", eventTime: {}",
                r#"[{window: {type: tumbling, size: 1s}}]"#,
                "must be followed",
            ),
            (
                ", eventTime: {}",
                r#"[{window: {type: tumbling, size: 1s}}, {filter: "true"}]"#,
                "must be followed",
            ),
            (
                "",
                r#"[{aggregate: {fields: [{name: s, function: sum}]}}]"#,
                "needs an expr",
            ),
            ("", r#"[{}]"#, "exactly one"),
            ("", r#"[{dedupe: {key: record.id, ttl: 0s}}]"#, "ttl"),
        ];
        for (source, pipeline, expected) in cases {
            let err = Pipeline::compile(&spec(source, pipeline))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{pipeline}: {err}");
        }
    }

    #[test]
    fn every_sample_job_compiles_and_keyed_samples_repartition() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
        let mut compiled = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let job: weir_crds::StreamingJob = serde_yaml::from_str(&text).unwrap();
            let p =
                Pipeline::compile(&job.spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let repartitions = job
                .spec
                .pipeline
                .iter()
                .any(|s| s.key_by.as_ref().is_some_and(|k| !k.source_partitioned));
            assert_eq!(
                p.repartition_step().is_some(),
                repartitions,
                "{}",
                path.display()
            );
            compiled += 1;
        }
        assert_eq!(compiled, 9, "the samples in {}", dir.display());
    }
}
