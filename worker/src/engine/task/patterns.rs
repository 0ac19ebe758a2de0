//! The pattern step of a task: each key's events wait in state until the
//! watermark passes them, then go through the pattern
//! ([`crate::engine::pattern`]) in event-time order. A timer at each
//! event's time releases it; one at the earliest deadline of the key's
//! partial matches confirms absences and drops what can no longer match.

use super::windows::step_is_keyed;
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
        let holds = match pattern.conditions(&flow.value) {
            Ok(holds) => holds,
            Err((stage, e)) => {
                dead_letter_reason(&flow, format!("{}: {stage}: {e}", step.name), out);
                return Ok(());
            }
        };
        let clock = self.clock(index);
        if clock.watermark.is_some_and(|wm| t <= wm) {
            out.counters.late += 1;
            if let Some(source) = flow.source {
                out.late.push(LateRecord {
                    key: source.key.map(<[u8]>::to_vec),
                    value: source.value.unwrap_or_default().to_vec(),
                    source: SourcePosition::of(source),
                });
            }
            return Ok(());
        }
        let meets_any = holds.iter().any(|h| *h);
        // Under relaxed contiguity an event that meets no condition
        // changes nothing; under strict contiguity it breaks partial
        // matches, so it waits too (without its record).
        if !meets_any && pattern.contiguity == Contiguity::Relaxed {
            return Ok(());
        }
        let key = if flow.keyed {
            flow.key.clone().unwrap_or_default()
        } else {
            Vec::new()
        };
        self.payload.clear();
        keyed_payload(&mut self.payload, &key, None);
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
                holds: holds
                    .iter()
                    .enumerate()
                    .fold(0u32, |mask, (i, h)| mask | (u32::from(*h) << i)),
                value: if meets_any {
                    serde_json::to_vec(&flow.value).unwrap_or_default()
                } else {
                    Vec::new()
                },
            },
        );
        *slot = Some(StateValue::Pattern { pending, partials });
        self.state
            .register_timer(clock.domain, t, step.id, PATTERN, &self.payload)?;
        Ok(())
    }

    /// The pattern timer of a key: feeds the events the watermark passed,
    /// confirms absences and drops what expired, then emits the matches.
    pub(super) fn pattern_timer(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        pattern: &Pattern,
        timer: &Timer,
        key: &[u8],
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
        let mut holds = vec![false; pattern.stages.len()];
        let mut dropped = 0;
        for event in pending.drain(..due) {
            for (i, h) in holds.iter_mut().enumerate() {
                *h = event.holds & (1 << i) != 0;
            }
            pattern.advance(&mut partials, event.time, false, &mut matches);
            dropped += pattern.feed(
                &mut partials,
                event.time,
                &event.value,
                &holds,
                &mut matches,
            );
        }
        out.counters.partial_matches_dropped += dropped as u64;
        pattern.advance(&mut partials, watermark, true, &mut matches);
        let deadline = pattern.within.and_then(|within| {
            partials
                .iter()
                .map(|p| p.start.saturating_add(within))
                .min()
        });
        if !pending.is_empty() || !partials.is_empty() {
            *slot = Some(StateValue::Pattern { pending, partials });
        }
        if let Some(deadline) = deadline.filter(|d| *d > watermark) {
            self.state.register_timer(
                clock.domain,
                deadline,
                timer.step,
                PATTERN,
                &timer.payload,
            )?;
        }
        let step = &pipeline.steps()[index];
        let keyed = step_is_keyed(pipeline, index);
        for m in matches {
            let value = match_record(keyed, key, &m, pattern, &step.name);
            let flow = Flow {
                value,
                modified: true,
                key: keyed.then(|| key.to_vec()),
                keyed,
                time: Some(m.end),
                source: None,
            };
            self.run(pipeline, index + 1, flow, out)?;
        }
        Ok(())
    }
}

/// The output record of a match: `key`, `match_start`, `match_end` and, per
/// stage that took events, the list of its records.
fn match_record(keyed: bool, key: &[u8], m: &Match, pattern: &Pattern, step: &str) -> Value {
    let mut map = Map::with_capacity(pattern.stages.len() + 3);
    let key = if keyed {
        Value::String(String::from_utf8_lossy(key).into_owned())
    } else {
        Value::Null
    };
    map.insert("key".into(), key);
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
                    tracing::error!(step, %error, "a matched record in state is not JSON");
                    Value::Null
                })
            })
            .collect();
        map.insert(stage.name.clone(), Value::Array(records));
    }
    Value::Object(map)
}
