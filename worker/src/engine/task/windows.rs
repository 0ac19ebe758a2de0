//! The keyed windows of a task: aggregates (running, tumbling, sliding
//! and session windows) and the event-time timers that fire, clean up and
//! expire them, drained in bounded chunks.

use super::*;
use weir_crds::expr::write_json_string;

use crate::engine::result_text::{Member, ResultText, TIME_WINDOW_COLUMNS};

impl TaskProcessor {
    /// The aggregate step at `index`; whatever it emits continues after it.
    pub(super) fn aggregate(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        window: Option<&WindowOp>,
        fields: &[AggregateField],
        flow: Flow<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        // The vectors of inputs and results are reused from record to
        // record; an aggregate after this one, run from within, takes new
        // ones meanwhile.
        let mut inputs = std::mem::take(&mut self.record_inputs);
        let mut emitted = std::mem::take(&mut self.emitted);
        let applied = match self.inputs(fields, flow.record(), &mut inputs) {
            Ok(()) => self.aggregate_inputs(
                pipeline,
                index,
                window,
                fields,
                (&inputs, &mut emitted),
                flow,
                out,
            ),
            Err(reason) => {
                let step = &pipeline.steps()[index];
                dead_letter_reason(&flow, format!("{}: {reason}", step.name), out);
                Ok(())
            }
        };
        inputs.clear();
        emitted.clear();
        self.record_inputs = inputs;
        self.emitted = emitted;
        applied
    }

    /// The aggregate step at `index` with what the record contributes to
    /// each field; its results go through `emitted` (empty) on to the next
    /// step.
    #[allow(clippy::too_many_arguments)]
    fn aggregate_inputs(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        window: Option<&WindowOp>,
        fields: &[AggregateField],
        (inputs, emitted): (&[Input], &mut Vec<(Emitted, Option<i64>)>),
        flow: Flow<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let step = &pipeline.steps()[index];
        let key = state_key_of(&flow);
        let time = flow.time.unwrap_or(i64::MIN);
        let form = Form {
            keyed: flow.keyed,
            text: Form::text_of(pipeline, index),
        };
        match window {
            None => {
                self.payload.clear();
                keyed_payload(&mut self.payload, key, None);
                state_key(&mut self.scratch, step.id, &self.payload);
                let slot = self.state.get_mut(&self.scratch)?;
                let accs = accumulators(slot, fields);
                update(accs, inputs, time);
                emitted.push((result(form, key, &[], accs, fields), flow.time));
            }
            Some(WindowOp {
                assigner: WindowAssigner::Count { size, slide },
                ..
            }) => self.count_update(
                step.id,
                key,
                form,
                (*size, *slide),
                fields,
                inputs,
                flow.time,
                emitted,
            )?,
            Some(op) => {
                let Some(t) = flow.time else {
                    dead_letter_reason(
                        &flow,
                        format!("{}: record has no event time", step.name),
                        out,
                    );
                    return Ok(());
                };
                let clock = self.clock(index);
                let accepted = if let WindowAssigner::Session { gap } = op.assigner {
                    self.session_update(
                        clock, step.id, key, form, t, gap, op, fields, inputs, emitted,
                    )?
                } else {
                    self.window_update(clock, step.id, key, form, t, op, fields, inputs, emitted)?
                };
                if !accepted {
                    late(&flow, out);
                    return Ok(());
                }
            }
        }
        for (record, time) in emitted.drain(..) {
            let Some(value) = value_or_sent(record, form, key, out) else {
                continue;
            };
            let next = Flow {
                value: Doc::Json(value),
                modified: true,
                key: flow.keyed.then(|| key.to_vec()),
                keyed: flow.keyed,
                time,
                source: flow.source,
            };
            self.run(pipeline, index + 1, next, out)?;
        }
        Ok(())
    }

    /// Appends to `inputs` what the record contributes to each aggregate
    /// field.
    fn inputs(
        &mut self,
        fields: &[AggregateField],
        record: Record<'_>,
        inputs: &mut Vec<Input>,
    ) -> Result<(), String> {
        for f in fields {
            let fail = |e: weir_crds::expr::EvalError| format!("{}: {e}", f.name);
            let input = match (&f.expr, f.function) {
                (None, _) | (Some(_), AggregateFunction::Count) => Input::Unit,
                (Some(expr), AggregateFunction::ApproxDistinct) => {
                    self.key_buf.clear();
                    expr.eval_key(record, &mut self.key_buf).map_err(fail)?;
                    Input::Hash(hash64(&self.key_buf))
                }
                (Some(expr), AggregateFunction::First | AggregateFunction::Last) => {
                    Input::Value(expr.eval(record).map_err(fail)?)
                }
                (
                    Some(expr),
                    AggregateFunction::Sum
                    | AggregateFunction::Min
                    | AggregateFunction::Max
                    | AggregateFunction::Avg,
                ) => {
                    let v = expr.eval(record).map_err(fail)?;
                    Input::Number(Num::from_json(&v).ok_or_else(|| {
                        format!("{}: the expression must be a number, not {v}", f.name)
                    })?)
                }
            };
            inputs.push(input);
        }
        Ok(())
    }

    /// Adds a record at `t` to its tumbling or sliding windows; `false` when
    /// every window was already closed (the record is late).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn window_update(
        &mut self,
        clock: Clock,
        step: u8,
        key: &[u8],
        form: Form,
        t: i64,
        op: &WindowOp,
        fields: &[AggregateField],
        inputs: &[Input],
        emitted: &mut Vec<(Emitted, Option<i64>)>,
    ) -> Result<bool, TaskError> {
        let watermark = clock.watermark;
        let mut windows = std::mem::take(&mut self.windows);
        windows.clear();
        op.assigner.assign(t, &mut windows);
        let mut accepted = false;
        for w in &windows {
            let last = w.end - 1;
            let cleanup = last.saturating_add(op.allowed_lateness);
            if watermark.is_some_and(|wm| cleanup <= wm) {
                continue;
            }
            accepted = true;
            let fired = watermark.is_some_and(|wm| last <= wm);
            self.payload.clear();
            keyed_payload(&mut self.payload, key, Some(w.start));
            state_key(&mut self.scratch, step, &self.payload);
            let slot = self.state.get_mut(&self.scratch)?;
            let created = slot.is_none();
            let accs = accumulators(slot, fields);
            update(accs, inputs, t);
            if fired {
                emitted.push((
                    result(form, key, &window_columns(*w), accs, fields),
                    Some(last),
                ));
            }
            if created {
                if !fired {
                    self.state
                        .register_timer(clock.domain, last, step, FIRE, &self.payload)?;
                }
                if op.allowed_lateness > 0 {
                    self.state.register_timer(
                        clock.domain,
                        cleanup,
                        step,
                        CLEANUP,
                        &self.payload,
                    )?;
                }
            }
        }
        self.windows = windows;
        Ok(accepted)
    }

    /// Adds a record at `t` to the sessions of its key, merging those it
    /// touches; `false` when it is late.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn session_update(
        &mut self,
        clock: Clock,
        step: u8,
        key: &[u8],
        form: Form,
        t: i64,
        gap: i64,
        op: &WindowOp,
        fields: &[AggregateField],
        inputs: &[Input],
        emitted: &mut Vec<(Emitted, Option<i64>)>,
    ) -> Result<bool, TaskError> {
        let watermark = clock.watermark;
        let own = Window {
            start: t,
            end: t.saturating_add(gap),
        };
        self.payload.clear();
        keyed_payload(&mut self.payload, key, None);
        state_key(&mut self.scratch, step, &self.payload);
        let slot = self.state.get_mut(&self.scratch)?;
        let mut sessions = match slot.take() {
            Some(StateValue::Sessions(s)) => s,
            _ => Vec::new(),
        };
        let (touching, mut rest): (Vec<Session>, Vec<Session>) =
            sessions.drain(..).partition(|s| s.window.touches(&own));
        let own_closed =
            watermark.is_some_and(|wm| (own.end - 1).saturating_add(op.allowed_lateness) <= wm);
        if touching.is_empty() && own_closed {
            *slot = (!rest.is_empty()).then_some(StateValue::Sessions(rest));
            return Ok(false);
        }
        let mut merged = Session {
            window: own,
            fired: false,
            accumulators: empty_accumulators(fields),
        };
        update(&mut merged.accumulators, inputs, t);
        for s in &touching {
            merged.window = merged.window.cover(&s.window);
            merged.accumulators.merge(&s.accumulators);
        }
        let last = merged.window.end - 1;
        let cleanup = last.saturating_add(op.allowed_lateness);
        merged.fired = watermark.is_some_and(|wm| last <= wm);
        if merged.fired {
            emitted.push((
                result(
                    form,
                    key,
                    &window_columns(merged.window),
                    &merged.accumulators,
                    fields,
                ),
                Some(last),
            ));
        }
        let merged_fired = merged.fired;
        let keep = watermark.is_none_or(|wm| cleanup > wm);
        if keep {
            rest.push(merged);
        }
        *slot = (!rest.is_empty()).then_some(StateValue::Sessions(rest));
        if keep {
            if !merged_fired {
                self.state
                    .register_timer(clock.domain, last, step, SESSION, &self.payload)?;
            }
            if op.allowed_lateness > 0 {
                self.state
                    .register_timer(clock.domain, cleanup, step, SESSION, &self.payload)?;
            }
        }
        Ok(true)
    }

    /// The time up to which timers of `domain` are due (the watermark it
    /// follows, or processing time), when a held timer is due by then.
    /// Held timers are looked at first: without any, the time is not
    /// needed (for processing time, a clock read per record).
    pub(super) fn due_until(&self, domain: TimeDomain) -> Option<i64> {
        let next = self.state.next_timer(domain)?;
        let until = match domain {
            TimeDomain::Processing => Some(self.processing_time()),
            TimeDomain::Event | TimeDomain::Repartitioned => self.domain_watermark(domain),
        }?;
        (next <= until).then_some(until)
    }

    /// Fires at most one chunk of due timers, in [`FIRING_ORDER`]. Returns
    /// whether more are due.
    pub(super) fn fire_chunk(
        &mut self,
        pipeline: &Pipeline,
        out: &mut Outputs,
    ) -> Result<bool, TaskError> {
        let mut budget = self.timer_chunk;
        let mut due = std::mem::take(&mut self.due);
        for domain in FIRING_ORDER {
            // Records emitted by firing windows may register further due
            // timers in later steps: repeat until none is due.
            while budget > 0
                && let Some(until) = self.due_until(domain)
            {
                due.clear();
                self.state
                    .take_due_timers(domain, until, budget, &mut due)?;
                // A due timer was promised; never spin if none came.
                if due.is_empty() {
                    break;
                }
                budget = budget.saturating_sub(due.len());
                for timer in due.drain(..) {
                    self.on_timer(pipeline, timer, out)?;
                }
            }
        }
        self.due = due;
        self.backlog = self.has_due_timers();
        Ok(self.backlog)
    }

    /// Fires every timer still due from the last chunk, so that a record
    /// sees the state of a caller that drained them.
    pub(super) fn complete_backlog(
        &mut self,
        pipeline: &Pipeline,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        if self.backlog {
            while self.fire_chunk(pipeline, out)? {}
        }
        Ok(())
    }

    pub(super) fn on_timer(
        &mut self,
        pipeline: &Pipeline,
        timer: Timer,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let Some(index) = pipeline.steps().iter().position(|s| s.id == timer.step) else {
            return Ok(());
        };
        let Some((key, window_start)) = parse_keyed_payload(&timer.payload) else {
            return Ok(());
        };
        state_key(&mut self.scratch, timer.step, &timer.payload);
        let step = &pipeline.steps()[index];
        let form = Form::of(pipeline, index);
        let keyed = form.keyed;
        // Reused from timer to timer, as most fire one result.
        let mut emitted = std::mem::take(&mut self.emitted);
        match (&step.operation, timer.kind) {
            (Operation::Dedupe { .. }, EXPIRE) => {
                let slot = self.state.get_mut(&self.scratch)?;
                if matches!(slot, Some(StateValue::Expiry(e)) if *e <= timer.time) {
                    *slot = None;
                }
            }
            (
                Operation::Aggregate {
                    window: Some(op),
                    fields,
                    ..
                },
                FIRE | CLEANUP,
            ) => {
                let Some(start) = window_start else {
                    return Ok(());
                };
                let Some(window) = op.assigner.window_starting_at(start) else {
                    return Ok(());
                };
                let slot = self.state.get_mut(&self.scratch)?;
                if timer.kind == FIRE
                    && let Some(StateValue::Accumulators(accs)) = slot.as_ref()
                {
                    emitted.push((
                        result(form, key, &window_columns(window), accs, fields),
                        Some(timer.time),
                    ));
                }
                if timer.kind == CLEANUP || op.allowed_lateness == 0 {
                    *slot = None;
                }
            }
            (
                Operation::Aggregate {
                    window: Some(op),
                    fields,
                    ..
                },
                SESSION,
            ) => {
                let wm = self
                    .clock(index)
                    .watermark
                    .unwrap_or(timer.time)
                    .max(timer.time);
                let slot = self.state.get_mut(&self.scratch)?;
                if let Some(StateValue::Sessions(sessions)) = slot {
                    for s in sessions.iter_mut() {
                        let last = s.window.end - 1;
                        if !s.fired && last <= wm {
                            s.fired = true;
                            emitted.push((
                                result(
                                    form,
                                    key,
                                    &window_columns(s.window),
                                    &s.accumulators,
                                    fields,
                                ),
                                Some(last),
                            ));
                        }
                    }
                    sessions
                        .retain(|s| (s.window.end - 1).saturating_add(op.allowed_lateness) > wm);
                    if sessions.is_empty() {
                        *slot = None;
                    }
                }
            }
            (Operation::Pattern(pattern), PATTERN) => {
                self.pattern_timer(index, pattern, &timer, (keyed, key), &mut emitted, out)?;
            }
            (Operation::Join(join), JOIN) => {
                self.join_timer(index, join, &timer, &mut emitted, out)?;
            }
            _ => {}
        }
        for (record, time) in emitted.drain(..) {
            let Some(value) = value_or_sent(record, form, key, out) else {
                continue;
            };
            let flow = Flow {
                value: Doc::Json(value),
                modified: true,
                key: keyed.then(|| key.to_vec()),
                keyed,
                time,
                source: None,
            };
            self.run(pipeline, index + 1, flow, out)?;
        }
        self.emitted = emitted;
        Ok(())
    }
}

/// Whether a keyBy precedes step `index`.
pub(super) fn step_is_keyed(pipeline: &Pipeline, index: usize) -> bool {
    pipeline.steps()[..index]
        .iter()
        .any(|s| matches!(s.operation, Operation::KeyBy { .. }))
}

/// Fresh accumulators of `fields`.
pub(super) fn empty_accumulators(fields: &[AggregateField]) -> Accumulators {
    Accumulators(
        fields
            .iter()
            .map(|f| Accumulator::new(f.function))
            .collect(),
    )
}

/// The accumulators in `slot`, created empty when absent.
pub(super) fn accumulators<'s>(
    slot: &'s mut Option<StateValue>,
    fields: &[AggregateField],
) -> &'s mut Accumulators {
    if !matches!(slot, Some(StateValue::Accumulators(_))) {
        *slot = Some(StateValue::Accumulators(empty_accumulators(fields)));
    }
    match slot {
        Some(StateValue::Accumulators(accs)) => accs,
        // Just set above.
        _ => unreachable!("accumulators were just created"),
    }
}

pub(super) fn update(accs: &mut Accumulators, inputs: &[Input], time: i64) {
    for (acc, input) in accs.0.iter_mut().zip(inputs) {
        acc.update(input, time);
    }
}

/// How an aggregate's results are written.
#[derive(Clone, Copy, Debug)]
pub(super) struct Form<'p> {
    /// A keyBy ran before the step: `key` is the key's text, else null.
    pub(super) keyed: bool,
    /// When no step follows, the layout of the sink's JSON text, written at
    /// once without building a JSON value.
    pub(super) text: Option<&'p ResultText>,
}

impl<'p> Form<'p> {
    /// The form of the results of the step at `index`.
    pub(super) fn of(pipeline: &'p Pipeline, index: usize) -> Form<'p> {
        Form {
            keyed: step_is_keyed(pipeline, index),
            text: Form::text_of(pipeline, index),
        }
    }

    /// The text layout of the step at `index`, if no step follows it.
    pub(super) fn text_of(pipeline: &'p Pipeline, index: usize) -> Option<&'p ResultText> {
        match &pipeline.steps()[index].operation {
            Operation::Aggregate { text, .. } if pipeline.is_last(index) => Some(text),
            _ => None,
        }
    }
}

/// A record a stateful step emits.
pub(super) enum Emitted {
    /// A JSON value, for the steps after it.
    Json(Value),
    /// The JSON text of an aggregate's result that no step follows.
    Text(Vec<u8>),
}

/// The output record of an aggregate: `key`, the window's `columns`
/// ([`window_columns`], or `window_seq`), then the fields, as a JSON object
/// (its keys in order, as a JSON value writes them).
pub(super) fn result(
    form: Form,
    key: &[u8],
    columns: &[(&str, i64)],
    accs: &Accumulators,
    fields: &[AggregateField],
) -> Emitted {
    let Some(layout) = form.text else {
        let mut map = Map::with_capacity(fields.len() + 3);
        map.insert("key".into(), key_value(form.keyed, key));
        for (name, value) in columns {
            map.insert((*name).into(), Value::from(*value));
        }
        for (f, acc) in fields.iter().zip(&accs.0) {
            map.insert(f.name.clone(), acc.result());
        }
        return Emitted::Json(Value::Object(map));
    };
    let mut text = Vec::with_capacity(32 + 24 * (fields.len() + 3) + key.len());
    for (before, member) in layout.members() {
        text.extend_from_slice(before);
        match member {
            Member::Key if form.keyed => {
                // Writing JSON into a vector cannot fail.
                let _ = write_json_string(&String::from_utf8_lossy(key), &mut text);
            }
            Member::Key => text.extend_from_slice(b"null"),
            // The layout was made from the same columns and fields.
            Member::Column(i) => {
                text.extend_from_slice(itoa::Buffer::new().format(columns[i].1).as_bytes());
            }
            Member::Field(i) => accs.0[i].write_result(&mut text),
        }
    }
    text.push(b'}');
    Emitted::Text(text)
}

/// The JSON value of an emitted record, for the steps after it; `None`
/// when it was an aggregate's JSON text, which this sends to the sink at
/// once, keyed as [`emit`] keys the records of the last step.
fn value_or_sent(record: Emitted, form: Form, key: &[u8], out: &mut Outputs) -> Option<Value> {
    match record {
        Emitted::Json(value) => Some(value),
        Emitted::Text(text) => {
            send(form.keyed.then(|| key.to_vec()), text, out);
            None
        }
    }
}

/// The columns of a time window in an aggregate's output.
pub(super) fn window_columns(w: Window) -> [(&'static str, i64); 2] {
    let [start, end] = TIME_WINDOW_COLUMNS;
    [(start, w.start), (end, w.end)]
}

/// The `key` of an output record: the key as text after a keyBy, else null.
pub(super) fn key_value(keyed: bool, key: &[u8]) -> Value {
    if keyed {
        Value::String(String::from_utf8_lossy(key).into_owned())
    } else {
        Value::Null
    }
}

/// The key a record's state is kept under: its key after a keyBy, else
/// the one global key.
pub(super) fn state_key_of<'f>(flow: &'f Flow<'_>) -> &'f [u8] {
    match &flow.key {
        Some(key) if flow.keyed => key,
        _ => &[],
    }
}

/// Counts a record as late and sends it to the late-data output.
pub(super) fn late(flow: &Flow<'_>, out: &mut Outputs) {
    out.counters.late += 1;
    if let Some(source) = flow.source {
        out.late.push(LateRecord {
            key: source.key.map(<[u8]>::to_vec),
            value: source.value.unwrap_or_default().to_vec(),
            source: SourcePosition::of(source),
        });
    }
}
