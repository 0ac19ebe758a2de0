//! The checks of the pipeline: the order of its steps and each step's
//! fields (expressions, windows, aggregates, patterns).

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// What a step that needs event time is told when the source has none.
const NEEDS_EVENT_TIME: &str =
    "needs event time: set spec.source.eventTime (a field, or {} for the Kafka timestamp)";

/// The operation a pipeline step performs, for ordering checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Filter,
    Map,
    KeyBy,
    Window,
    Aggregate,
    Dedupe,
    Pattern,
    Join,
}

impl Operation {
    fn field(self) -> &'static str {
        match self {
            Operation::Filter => "filter",
            Operation::Map => "map",
            Operation::KeyBy => "keyBy",
            Operation::Window => "window",
            Operation::Aggregate => "aggregate",
            Operation::Dedupe => "dedupe",
            Operation::Pattern => "pattern",
            Operation::Join => "join",
        }
    }
}

/// The operations a step sets, in field order.
fn operations(step: &Step) -> Vec<Operation> {
    [
        (step.filter.is_some(), Operation::Filter),
        (step.map.is_some(), Operation::Map),
        (step.key_by.is_some(), Operation::KeyBy),
        (step.window.is_some(), Operation::Window),
        (step.aggregate.is_some(), Operation::Aggregate),
        (step.dedupe.is_some(), Operation::Dedupe),
        (step.pattern.is_some(), Operation::Pattern),
        (step.join.is_some(), Operation::Join),
    ]
    .into_iter()
    .filter_map(|(set, operation)| set.then_some(operation))
    .collect()
}

impl Checks {
    /// Checks every step and the order of steps; returns whether the
    /// pipeline has a window.
    pub(super) fn pipeline(&mut self, spec: &StreamingJobSpec) -> bool {
        let steps = &spec.pipeline;
        let mut names = BTreeMap::new();
        let mut keyed_at: Option<usize> = None;
        let mut window_at: Option<usize> = None;
        let mut aggregate_at: Option<usize> = None;
        let mut join_at: Option<usize> = None;
        // A pattern or temporal join emits records once the watermark has
        // passed them: an event-time step after it would find them late.
        let mut behind_watermark: Option<(usize, &str)> = None;
        for (i, step) in steps.iter().enumerate() {
            let path = format!("spec.pipeline[{i}]");
            if let Some(name) = &step.name
                && let Some(first) = names.insert(name.clone(), i)
            {
                self.add(
                    format!("{path}.name"),
                    format!("{name:?} is already the name of spec.pipeline[{first}]"),
                );
            }
            let operations = operations(step);
            let operation = match operations.as_slice() {
                [operation] => *operation,
                [] => {
                    self.add(
                        path,
                        "sets no operation: set exactly one of filter, map, keyBy, window, aggregate, dedupe, pattern, join",
                    );
                    continue;
                }
                several => {
                    let names: Vec<&str> = several.iter().map(|o| o.field()).collect();
                    self.add(
                        path,
                        format!(
                            "sets {}: a step sets exactly one of filter, map, keyBy, window, aggregate, dedupe, pattern, join",
                            names.join(" and ")
                        ),
                    );
                    continue;
                }
            };
            let op_path = format!("{path}.{}", operation.field());
            let timed_window = step.window.as_ref().is_some_and(WindowStep::is_event_time);
            if let Some((at, what)) = behind_watermark
                && (timed_window || matches!(operation, Operation::Pattern | Operation::Join))
            {
                self.add(
                    &op_path,
                    format!(
                        "follows the {what} at spec.pipeline[{at}], which emits records once the watermark has passed them: every one would be late here"
                    ),
                );
            }
            if let Some(aggregate) = aggregate_at
                && matches!(
                    operation,
                    Operation::KeyBy
                        | Operation::Window
                        | Operation::Aggregate
                        | Operation::Dedupe
                        | Operation::Join
                )
            {
                self.add(
                    &op_path,
                    format!(
                        "only filter and map may follow the aggregate at spec.pipeline[{aggregate}]"
                    ),
                );
            }
            if let Some(window) = window_at
                && aggregate_at.is_none()
                && operation != Operation::Aggregate
            {
                self.add(
                    format!("spec.pipeline[{window}].window"),
                    format!(
                        "must be followed directly by an aggregate step, not by {}",
                        operation.field()
                    ),
                );
                window_at = None;
            }
            match operation {
                Operation::Filter => {
                    if let Some(filter) = &step.filter {
                        self.expression(op_path, filter);
                    }
                }
                Operation::Map => {
                    if let Some(map) = &step.map {
                        self.map_fields(&op_path, map);
                    }
                }
                Operation::KeyBy => {
                    if let Some(previous) = keyed_at {
                        self.add(
                            &op_path,
                            format!("the records are already keyed by spec.pipeline[{previous}]"),
                        );
                    }
                    if let Some(key_by) = &step.key_by {
                        self.expression(format!("{op_path}.expr"), &key_by.expr);
                    }
                    keyed_at = Some(i);
                }
                Operation::Window => {
                    if spec.source.event_time.is_none() && timed_window {
                        self.add(&op_path, NEEDS_EVENT_TIME);
                    }
                    if keyed_at.is_none() {
                        self.add(
                            &op_path,
                            "needs a keyBy step before it (key by a constant such as '\"all\"' for one global window)",
                        );
                    }
                    if let Some(window) = &step.window {
                        self.window(&op_path, window);
                    }
                    window_at = Some(i);
                }
                Operation::Aggregate => {
                    if window_at.is_none() && keyed_at.is_none() {
                        self.add(&op_path, "needs a window or a keyBy step before it");
                    }
                    if let Some(aggregate) = &step.aggregate {
                        self.aggregate(&op_path, aggregate);
                    }
                    aggregate_at = Some(i);
                }
                Operation::Dedupe => {
                    if let Some(dedupe) = &step.dedupe {
                        self.expression(format!("{op_path}.key"), &dedupe.key);
                        self.positive(&format!("{op_path}.ttl"), dedupe.ttl);
                    }
                }
                Operation::Pattern => {
                    if spec.source.event_time.is_none() {
                        self.add(&op_path, NEEDS_EVENT_TIME);
                    }
                    if keyed_at.is_none() {
                        self.add(
                            &op_path,
                            "needs a keyBy step before it (key by a constant such as '\"all\"' to match across all events)",
                        );
                    }
                    if let Some(pattern) = &step.pattern {
                        self.pattern(&op_path, pattern);
                    }
                    behind_watermark = Some((i, "pattern"));
                }
                Operation::Join => {
                    if keyed_at.is_none() {
                        self.add(
                            &op_path,
                            "needs a keyBy step before it: records join on the keyBy key",
                        );
                    }
                    if let Some(first) = join_at {
                        self.add(
                            &op_path,
                            format!("a pipeline has one join, and spec.pipeline[{first}] is one"),
                        );
                    }
                    if let Some(join) = &step.join {
                        self.join(&op_path, spec, join);
                        if join.temporal {
                            behind_watermark = Some((i, "temporal join"));
                        }
                    }
                    join_at = Some(i);
                }
            }
        }
        if let Some(window) = window_at
            && aggregate_at.is_none()
        {
            self.add(
                format!("spec.pipeline[{window}].window"),
                "must be followed directly by an aggregate step",
            );
        }
        // Only event-time windows, patterns and timed joins make events late.
        steps.iter().any(|step| {
            step.pattern.is_some()
                || step.join.as_ref().is_some_and(JoinStep::is_timed)
                || step.window.as_ref().is_some_and(WindowStep::is_event_time)
        })
    }

    fn map_fields(&mut self, path: &str, map: &crate::job::MapStep) {
        let mut seen = BTreeSet::new();
        for (j, field) in map.fields.iter().enumerate() {
            if field.name.is_empty() {
                self.add(format!("{path}.fields[{j}].name"), "must not be empty");
            } else if !seen.insert(field.name.as_str()) {
                self.add(
                    format!("{path}.fields[{j}].name"),
                    format!("{:?} is computed twice", field.name),
                );
            }
            self.expression(format!("{path}.fields[{j}].expr"), &field.expr);
        }
    }

    fn window(&mut self, path: &str, window: &WindowStep) {
        let sized = matches!(window.kind, WindowKind::Tumbling | WindowKind::Sliding);
        match (sized, window.size) {
            (true, None) => self.add(
                format!("{path}.size"),
                "required for tumbling and sliding windows",
            ),
            (true, Some(size)) => self.positive(&format!("{path}.size"), size),
            (false, Some(_)) => self.add(
                format!("{path}.size"),
                "applies to tumbling and sliding windows only",
            ),
            (false, None) => {}
        }
        match (window.kind, window.slide) {
            (WindowKind::Sliding, None) => {
                self.add(format!("{path}.slide"), "required for sliding windows")
            }
            (WindowKind::Sliding, Some(slide)) => {
                self.positive(&format!("{path}.slide"), slide);
                if let Some(size) = window.size
                    && slide > size
                {
                    self.add(
                        format!("{path}.slide"),
                        format!("must be at most the window size ({size})"),
                    );
                }
            }
            (_, Some(_)) => self.add(format!("{path}.slide"), "applies to sliding windows only"),
            (_, None) => {}
        }
        match (window.kind, window.gap) {
            (WindowKind::Session, None) => {
                self.add(format!("{path}.gap"), "required for session windows")
            }
            (WindowKind::Session, Some(gap)) => self.positive(&format!("{path}.gap"), gap),
            (_, Some(_)) => self.add(format!("{path}.gap"), "applies to session windows only"),
            (_, None) => {}
        }
        self.count_window(path, window);
        if let Some(zone) = &window.time_zone {
            let zone_path = format!("{path}.timeZone");
            if window.kind != WindowKind::Tumbling {
                self.add(&zone_path, "applies to tumbling windows only");
            } else if window
                .size
                .is_some_and(|size| size.as_millis() < MIN_ZONED_WINDOW_MS)
            {
                self.add(
                    &zone_path,
                    "needs a window of at least 1h (shorter windows fall alike in every zone)",
                );
            }
            if jiff::tz::TimeZoneDatabase::bundled().get(zone).is_err() {
                self.add(
                    &zone_path,
                    format!("{zone:?} is not an IANA time zone name such as Europe/Berlin"),
                );
            }
        }
    }

    /// The stages of a pattern: names, conditions, quantifiers, where an
    /// absence may stand, and the bound it needs.
    fn pattern(&mut self, path: &str, pattern: &PatternStep) {
        if let Some(within) = pattern.within {
            self.positive(&format!("{path}.within"), within);
        }
        let last = pattern.sequence.len().saturating_sub(1);
        let mut names = BTreeSet::new();
        for (j, stage) in pattern.sequence.iter().enumerate() {
            let stage_path = format!("{path}.sequence[{j}]");
            if PATTERN_RESERVED_FIELDS.contains(&stage.name.as_str()) {
                self.add(
                    format!("{stage_path}.name"),
                    format!(
                        "{:?} is reserved: every match carries key, match_start and match_end",
                        stage.name
                    ),
                );
            } else if !names.insert(stage.name.as_str()) {
                self.add(
                    format!("{stage_path}.name"),
                    format!("{:?} names an earlier stage too", stage.name),
                );
            }
            self.expression(format!("{stage_path}.condition"), &stage.condition);
            if stage.one_or_more {
                if stage.times.is_some() {
                    self.add(
                        format!("{stage_path}.oneOrMore"),
                        "excludes times: a stage takes either exactly times events or one or more",
                    );
                }
                let next_absent = pattern.sequence.get(j + 1).is_some_and(|s| s.absent);
                if j == last || next_absent {
                    self.add(
                        format!("{stage_path}.oneOrMore"),
                        "needs a next stage that is not absent: it ends when an event meets that stage's condition",
                    );
                }
            }
            if stage.absent {
                if j != last || j == 0 {
                    self.add(
                        format!("{stage_path}.absent"),
                        "applies to the last stage only, after at least one other",
                    );
                }
                if stage.times.is_some_and(|t| t != 1) || stage.one_or_more {
                    self.add(
                        format!("{stage_path}.absent"),
                        "an absent stage takes no times or oneOrMore",
                    );
                }
                if pattern.within.is_none() {
                    self.add(
                        format!("{path}.within"),
                        "required with an absent last stage: the absence is confirmed within after the first event",
                    );
                }
            }
        }
    }

    /// The fields of a join for its type, its topic and key, and the event
    /// time a temporal or interval join needs.
    fn join(&mut self, path: &str, spec: &StreamingJobSpec, join: &JoinStep) {
        if spec.source.topics.contains(&join.topic) {
            self.add(
                format!("{path}.topic"),
                format!(
                    "{:?} is a source topic: a join reads another topic",
                    join.topic
                ),
            );
        }
        if let Some(key) = &join.key {
            self.expression(format!("{path}.key"), key);
        }
        let timed = join.is_timed();
        if timed && spec.source.event_time.is_none() {
            let what = if join.temporal {
                "a temporal join"
            } else {
                "an interval join"
            };
            self.add(path, format!("{what} {NEEDS_EVENT_TIME}"));
        }
        let interval = join.kind == JoinKind::Interval;
        for (field, bound) in [("before", join.before), ("after", join.after)] {
            match (interval, bound.is_some()) {
                (true, false) => self.add(
                    format!("{path}.{field}"),
                    "required for interval joins: how far apart the two event times may be",
                ),
                (false, true) => {
                    self.add(format!("{path}.{field}"), "applies to interval joins only");
                }
                _ => {}
            }
        }
        if interval {
            if join
                .before
                .zip(join.after)
                .is_some_and(|(b, a)| b.as_millis() == 0 && a.as_millis() == 0)
            {
                self.add(
                    format!("{path}.after"),
                    "before and after are both 0s: only equal event times would pair; give the interval a length",
                );
            }
            if join.mode == JoinMode::Left {
                self.add(
                    format!("{path}.mode"),
                    "applies to table joins only: an interval join emits pairs",
                );
            }
            if join.temporal {
                self.add(format!("{path}.temporal"), "applies to table joins only");
            }
        }
        if join.history.is_some() && !join.temporal {
            self.add(
                format!("{path}.history"),
                "applies to temporal table joins only: a table join keeps the latest row",
            );
        }
    }

    /// The fields of a count window, and the time-window fields it refuses.
    fn count_window(&mut self, path: &str, window: &WindowStep) {
        if window.kind != WindowKind::Count {
            if window.count.is_some() {
                self.add(format!("{path}.count"), "applies to count windows only");
            }
            if window.slide_count.is_some() {
                self.add(
                    format!("{path}.slideCount"),
                    "applies to count windows only",
                );
            }
            return;
        }
        if window.allowed_lateness.as_millis() != 0 {
            self.add(
                format!("{path}.allowedLateness"),
                "applies to event-time windows only: a count window takes every event",
            );
        }
        let Some(count) = window.count else {
            self.add(format!("{path}.count"), "required for count windows");
            return;
        };
        if let Some(slide) = window.slide_count {
            if slide == 0 || !count.is_multiple_of(slide) {
                self.add(
                    format!("{path}.slideCount"),
                    format!("must divide count ({count})"),
                );
            } else if count / slide > MAX_COUNT_PANES {
                self.add(
                    format!("{path}.slideCount"),
                    format!("puts each event in more than {MAX_COUNT_PANES} windows: at least count / {MAX_COUNT_PANES}"),
                );
            }
        }
    }

    fn aggregate(&mut self, path: &str, aggregate: &AggregateStep) {
        let mut seen = BTreeSet::new();
        for (j, field) in aggregate.fields.iter().enumerate() {
            let field_path = format!("{path}.fields[{j}]");
            if field.name.is_empty() {
                self.add(format!("{field_path}.name"), "must not be empty");
            } else if AGGREGATE_RESERVED_FIELDS.contains(&field.name.as_str()) {
                self.add(
                    format!("{field_path}.name"),
                    format!("{:?} is reserved: aggregate outputs carry key, window_start, window_end and window_seq", field.name),
                );
            } else if !seen.insert(field.name.as_str()) {
                self.add(
                    format!("{field_path}.name"),
                    format!("{:?} is computed twice", field.name),
                );
            }
            match (field.function, &field.expr) {
                (AggregateFunction::Count, Some(_)) => self.add(
                    format!("{field_path}.expr"),
                    "count counts records and takes no expr",
                ),
                (AggregateFunction::Count, None) => {}
                (_, None) => self.add(
                    format!("{field_path}.expr"),
                    "required: the value to aggregate",
                ),
                (_, Some(source)) => self.expression(format!("{field_path}.expr"), source),
            }
        }
    }
}
