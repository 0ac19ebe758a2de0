//! The identity of a pipeline's state: which steps keep state, the stable
//! id and fingerprint each is recorded under in a checkpoint, and the
//! slots restored state binds them to.

use super::*;
use crate::checkpoint::compatibility::StateBinding;
use crate::checkpoint::manifest::StepState;

impl Pipeline {
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
}

/// The operation name stateful steps derive their state id from; `None`
/// for stateless operations.
pub(super) fn state_kind(operation: &Operation) -> Option<&'static str> {
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
        Operation::Aggregate { window, fields, .. } => {
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
