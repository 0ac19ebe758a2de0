//! The pattern step of a task: each key's events wait in state until the
//! watermark passes them, then go through the pattern
//! ([`crate::engine::pattern`]) in event-time order. A timer at the key's
//! earliest waiting event releases what the watermark passed; one at the
//! earliest deadline of the key's partial matches confirms absences and
//! drops what can no longer match.

use super::windows::{Emitted, key_value, late, state_key_of};
use super::*;
use crate::engine::pattern::{Contiguity, Match, Pattern};
use crate::state::PendingEvent;

impl TaskProcessor {
    /// A record reaching the pattern step at `index`.
    pub(super) fn pattern_event(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        pattern: &Pattern,
        flow: Flow<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let step = &pipeline.steps()[index];
        let Some(t) = flow.time else {
            dead_letter_reason(
                &flow,
                format!("{}: record has no event time", step.name),
                out,
            );
            return Ok(());
        };
        let holds = match pattern.conditions(flow.record()) {
            Ok(holds) => holds,
            Err((stage, e)) => {
                dead_letter_reason(&flow, format!("{}: {stage}: {e}", step.name), out);
                return Ok(());
            }
        };
        let clock = self.clock(index);
        if clock.watermark.is_some_and(|wm| t <= wm) {
            late(&flow, out);
            return Ok(());
        }
        // Under relaxed contiguity an event that meets no condition
        // changes nothing; under strict contiguity it breaks partial
        // matches, so it waits too (without its record).
        if holds == 0 && pattern.contiguity == Contiguity::Relaxed {
            return Ok(());
        }
        self.payload.clear();
        keyed_payload(&mut self.payload, state_key_of(&flow), None);
        state_key(&mut self.scratch, step.id, &self.payload);
        let slot = self.state.get_mut(&self.scratch)?;
        let (mut pending, partials) = match slot.take() {
            Some(StateValue::Pattern { pending, partials }) => (pending, partials),
            _ => (Vec::new(), Vec::new()),
        };
        // Sorted by time; equal times in the order they came.
        let at = pending.partition_point(|e| e.time <= t);
        pending.insert(
            at,
            PendingEvent {
                time: t,
                holds,
                value: if holds != 0 {
                    encoded(&flow)
                } else {
                    Vec::new()
                },
            },
        );
        *slot = Some(StateValue::Pattern { pending, partials });
        // The key's timer is at its earliest waiting event: only a new
        // earliest one needs another.
        if at == 0 {
            self.state
                .register_timer(clock.domain, t, step.id, PATTERN, &self.payload)?;
        }
        Ok(())
    }

    /// The pattern timer of a key (the state key is in `scratch`): feeds
    /// the events the watermark passed, confirms absences and drops what
    /// expired, and appends the matches' records to `emitted`.
    pub(super) fn pattern_timer(
        &mut self,
        index: usize,
        pattern: &Pattern,
        timer: &Timer,
        (keyed, key): (bool, &[u8]),
        emitted: &mut Vec<(Emitted, Option<i64>)>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let clock = self.clock(index);
        let watermark = clock.watermark.unwrap_or(timer.time).max(timer.time);
        let slot = self.state.get_mut(&self.scratch)?;
        let Some(StateValue::Pattern {
            mut pending,
            mut partials,
        }) = slot.take()
        else {
            return Ok(());
        };
        let due = pending.partition_point(|e| e.time <= watermark);
        let mut matches = Vec::new();
        for event in pending.drain(..due) {
            pattern.advance(&mut partials, event.time, false, &mut matches);
            out.counters.partial_matches_dropped += pattern.feed(
                &mut partials,
                event.time,
                &event.value,
                event.holds,
                &mut matches,
            ) as u64;
        }
        pattern.advance(&mut partials, watermark, true, &mut matches);
        let deadline = pattern.within.and_then(|within| {
            partials
                .iter()
                .map(|p| p.start.saturating_add(within))
                .min()
        });
        let next_event = pending.first().map(|e| e.time);
        if !pending.is_empty() || !partials.is_empty() {
            *slot = Some(StateValue::Pattern { pending, partials });
        }
        for time in [next_event, deadline.filter(|d| *d > watermark)]
            .into_iter()
            .flatten()
        {
            self.state
                .register_timer(clock.domain, time, timer.step, PATTERN, &timer.payload)?;
        }
        for m in &matches {
            emitted.push((
                Emitted::Json(match_record(keyed, key, m, pattern)),
                Some(m.end),
            ));
        }
        Ok(())
    }
}

/// The output record of a match: `key`, `match_start`, `match_end` and, per
/// stage that took events, the list of its records.
fn match_record(keyed: bool, key: &[u8], m: &Match, pattern: &Pattern) -> Value {
    let mut map = Map::with_capacity(pattern.stages.len() + 3);
    map.insert("key".into(), key_value(keyed, key));
    map.insert("match_start".into(), Value::from(m.start));
    map.insert("match_end".into(), Value::from(m.end));
    for (i, stage) in pattern.stages.iter().enumerate() {
        if stage.absent {
            continue;
        }
        let records: Vec<Value> = m
            .events
            .iter()
            .filter(|e| usize::from(e.stage) == i)
            .map(|e| {
                serde_json::from_slice(&e.value).unwrap_or_else(|error| {
                    // Written by this step from a decoded record: cannot
                    // fail but for corrupt state, which is reported.
                    tracing::error!(stage = %stage.name, %error, "a matched record in state is not JSON");
                    Value::Null
                })
            })
            .collect();
        map.insert(stage.name.clone(), Value::Array(records));
    }
    Value::Object(map)
}
