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
use weir_crds::expr::{self, CompileError, Condition, Expression, Record};
use weir_crds::job::{AggregateFunction, Step};

use crate::engine::event_time::EventTimeSource;
use crate::engine::join::{Join, JoinKind};
use crate::engine::pattern::{Contiguity, Pattern, Quantifier, Stage};
use crate::engine::record::DecodePlan;
use crate::engine::result_text::{self, ResultText};
use crate::engine::window::{WindowAssigner, WindowError};
use state_ids::state_kind;

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
    /// The name's JSON text and a colon (`"name":`), as an output object
    /// writes it before the value.
    pub json_key: Box<[u8]>,
    /// Its expression.
    pub expr: Expression,
    /// Its place among the step's fields as declared: when several fail
    /// on a record, the first declared one is reported.
    pub declared: usize,
    /// When the expression is a field of the record, the field's position
    /// among the names the step's records are decoded into, to read it
    /// from its slot (see [`MapField::write_from_slot`]).
    pub slot: Option<usize>,
}

impl MapField {
    /// Appends the value of a field-only expression read from its slot of
    /// `record`; `false` (nothing written) when the expression is another,
    /// or the record has no such slot, or the field cannot be written: the
    /// expression is then evaluated.
    #[inline]
    pub fn write_from_slot(&self, record: Record<'_>, out: &mut Vec<u8>) -> bool {
        let (Some(slot), Record::Fields(fields), Some(name)) =
            (self.slot, record, self.expr.record_field())
        else {
            return false;
        };
        fields
            .get_at(slot, name)
            .is_some_and(|value| value.write_json(out).is_ok())
    }
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
    /// Keeps records for which the condition is true.
    Filter(Condition),
    /// Replaces (or extends) the record with computed fields.
    Map {
        /// The computed fields, in name order (that of the output object).
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
        /// The layout of its results' JSON text when no step follows.
        text: ResultText,
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
    /// No step keeps state (asked for every record).
    stateless: bool,
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
                Operation::Filter(Condition::bind(
                    compile_expr(&name, "filter", filter)?,
                    None,
                ))
            } else if let Some(map) = &step.map {
                let mut fields = map
                    .fields
                    .iter()
                    .enumerate()
                    .map(|(declared, f)| {
                        Ok(MapField {
                            name: f.name.clone(),
                            json_key: json_key(&f.name),
                            expr: compile_expr(&name, &format!("map.fields[{}]", f.name), &f.expr)?,
                            declared,
                            slot: None,
                        })
                    })
                    .collect::<Result<Vec<_>, PipelineError>>()?;
                // In the order of a JSON object's keys, which the output has.
                fields.sort_by(|a, b| a.name.cmp(&b.name));
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
                if event_time == EventTimeSource::None && window.is_event_time() {
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
                    .collect::<Result<Vec<AggregateField>, PipelineError>>()?;
                let window = pending_window.take().map(|(_, op)| op);
                let text = ResultText::new(
                    result_text::columns(window.as_ref()),
                    fields.iter().map(|f| f.name.as_str()),
                );
                Operation::Aggregate {
                    window,
                    fields,
                    text,
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
        // Filters and a map's field-only expressions read their fields from
        // the slots of the records' plan.
        for (index, step) in steps.iter_mut().enumerate() {
            let plan = if index < after_cut {
                &decode
            } else {
                &repartitioned_decode
            };
            match &mut step.operation {
                Operation::Filter(condition) => {
                    *condition =
                        Condition::bind(condition.expression().clone(), plan.field_names());
                }
                Operation::Map { fields, .. } => {
                    for field in fields {
                        field.slot = field.expr.record_field().and_then(|name| plan.slot(name));
                    }
                }
                _ => {}
            }
        }
        let event_time = event_time.bind(&decode);
        let stateless = steps.iter().all(|s| s.state_id.is_none());
        let join = steps
            .iter()
            .position(|s| matches!(s.operation, Operation::Join(_)));
        Ok(Pipeline {
            join,
            steps,
            max_out_of_orderness: spec.source.watermark.max_out_of_orderness.as_millis(),
            idle_timeout: spec.source.watermark.idle_timeout.as_millis(),
            event_time,
            stateless,
            decode,
            passthrough,
            repartitioned_decode,
        })
    }

    /// The compiled steps, in order.
    pub fn steps(&self) -> &[CompiledStep] {
        &self.steps
    }

    /// Whether no step keeps state: then none registers timers either.
    pub fn is_stateless(&self) -> bool {
        self.stateless
    }

    /// Whether the step at `index` is the last: its results go to the sink.
    pub fn is_last(&self, index: usize) -> bool {
        index + 1 == self.steps.len()
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
        self.join().filter(|(_, join)| join.topic == topic)
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

/// `"name":`, the JSON text of an object key and its colon.
fn json_key(name: &str) -> Box<[u8]> {
    let mut key = serde_json::to_vec(name).unwrap_or_default();
    key.push(b':');
    key.into()
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
            Operation::Filter(c) => read(c.expression(), &mut fields),
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
    (DecodePlan::fields(fields), !replaced)
}

mod state_ids;
#[cfg(test)]
mod tests;
