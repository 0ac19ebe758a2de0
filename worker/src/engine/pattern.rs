//! Pattern matching (complex event processing) on one key's events in
//! event-time order: a sequence of named stages, each a condition with a
//! quantifier, within a time bound, and optionally ending in an absence
//! ("A not followed by B within T").
//!
//! The semantics, on the events of one key sorted by event time (ties in
//! the order they were read):
//! - Every event that meets the first stage's condition starts a partial
//!   match. A partial match at a stage of `times: n` takes the next `n`
//!   events meeting its condition, then moves on; at a `oneOrMore` stage it
//!   takes every event meeting the condition, and moves on with the first
//!   event (after at least one) that meets the next stage's condition
//!   instead (greedy).
//! - Relaxed contiguity skips events that meet no condition the partial
//!   match waits for; strict contiguity drops the partial match at such an
//!   event.
//! - With `within`, every event of a match lies at most `within` after its
//!   first event; a partial match that can no longer finish in time is
//!   dropped.
//! - An absent last stage completes the match `within` after its first
//!   event, unless an event meeting the absent condition came by then.
//! - A completed match drops every other partial match that started before
//!   its last event (Flink's "skip past last event"): matches never share
//!   events. The oldest partial match completes first.
//!
//! This module is pure: the task ([`crate::engine::task`]) buffers events
//! until the watermark passes them, keeps the partial matches in state and
//! builds the output records.

use bytes::Bytes;
use weir_crds::expr::Expression;

/// The most partial matches one key keeps; beyond it the oldest is dropped
/// (and counted), so that a key's state stays bounded.
pub const MAX_PARTIAL_MATCHES: usize = 100;

/// How many events a stage takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantifier {
    /// Exactly this many (at least 1).
    Times(u32),
    /// One or more, greedily.
    OneOrMore,
}

/// Whether events that meet no awaited condition may come in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contiguity {
    /// They may, and are skipped.
    Relaxed,
    /// They may not: such an event drops the partial match.
    Strict,
}

/// One named stage of a pattern.
#[derive(Clone, Debug)]
pub struct Stage {
    /// The name, under which the output lists the stage's events.
    pub name: String,
    /// The condition an event must meet (CEL over `record`).
    pub condition: Expression,
    /// How many events the stage takes.
    pub quantifier: Quantifier,
    /// The stage matches the absence of such an event (last stage only).
    pub absent: bool,
}

/// A compiled pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// The stages in order.
    pub stages: Vec<Stage>,
    /// The longest a match may last, in milliseconds, from its first event.
    pub within: Option<i64>,
    /// Whether other events may come in between.
    pub contiguity: Contiguity,
}

/// An event a partial match took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// The stage that took it.
    pub stage: u16,
    /// Its event time.
    pub time: i64,
    /// The record, as JSON (shared by the partial matches that took it).
    pub value: Bytes,
}

/// A match in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    /// The stage it is at.
    pub stage: u16,
    /// Events taken at that stage.
    pub count: u32,
    /// The event time of its first event.
    pub start: i64,
    /// The events taken so far.
    pub events: Vec<Captured>,
}

/// A completed match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// The event time of its first event.
    pub start: i64,
    /// The event time of its last event, or for an absence the time it was
    /// confirmed (`start + within`).
    pub end: i64,
    /// Its events, in order.
    pub events: Vec<Captured>,
}

/// What one event does to one partial match.
enum Step {
    Keep(Partial),
    Drop,
    Complete(Match),
}

impl Pattern {
    /// Which stages' conditions `record` meets, a bit per stage (stage `i`
    /// is bit `i`); an evaluation error names the stage.
    pub fn conditions<'r>(
        &self,
        record: impl Into<weir_crds::expr::Record<'r>>,
    ) -> Result<u32, (String, weir_crds::expr::EvalError)> {
        let record = record.into();
        let mut holds = 0;
        for (i, stage) in self.stages.iter().enumerate() {
            let meets = stage
                .condition
                .eval_bool(record)
                .map_err(|e| (stage.name.clone(), e))?;
            holds |= u32::from(meets) << i;
        }
        Ok(holds)
    }

    /// Brings `partials` to time `now`: absences whose time is up complete
    /// (those confirmed before `now`, or also at `now` with `inclusive`, as
    /// for a watermark all events up to which were fed), and partial
    /// matches that can no longer finish within the bound are dropped.
    pub fn advance(
        &self,
        partials: &mut Vec<Partial>,
        now: i64,
        inclusive: bool,
        out: &mut Vec<Match>,
    ) {
        let Some(within) = self.within else {
            return;
        };
        let mut i = 0;
        while i < partials.len() {
            let p = &partials[i];
            let deadline = p.start.saturating_add(within);
            let due = deadline < now || (inclusive && deadline <= now);
            if self.stages[usize::from(p.stage)].absent && due {
                let p = partials.remove(i);
                let last = p.events.last().map_or(p.start, |e| e.time);
                out.push(Match {
                    start: p.start,
                    end: deadline,
                    events: p.events,
                });
                // Skip past its last event.
                partials.retain(|q| q.start > last);
                i = 0;
            } else if !self.stages[usize::from(p.stage)].absent && now > deadline {
                partials.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Feeds one event (in event-time order, after [`Pattern::advance`] to
    /// its time) that meets the stages' conditions `holds`; completed
    /// matches go to `out`. Returns how many partial matches were dropped
    /// for the bound [`MAX_PARTIAL_MATCHES`].
    pub fn feed(
        &self,
        partials: &mut Vec<Partial>,
        time: i64,
        value: &[u8],
        holds: u32,
        out: &mut Vec<Match>,
    ) -> usize {
        let value = Bytes::copy_from_slice(value);
        let mut kept = Vec::with_capacity(partials.len() + 1);
        for p in partials.drain(..) {
            match self.step(p, time, &value, holds) {
                Step::Keep(p) => kept.push(p),
                Step::Drop => {}
                Step::Complete(m) => {
                    // Every other partial match started before its last
                    // event: skip past it, and start nothing with it.
                    out.push(m);
                    return 0;
                }
            }
        }
        *partials = kept;
        if met(holds, 0) && !self.stages[0].absent {
            let start = Partial {
                stage: 0,
                count: 0,
                start: time,
                events: Vec::new(),
            };
            match self.step(start, time, &value, holds) {
                Step::Keep(p) => partials.push(p),
                Step::Drop => {}
                Step::Complete(m) => {
                    out.push(m);
                    partials.clear();
                    return 0;
                }
            }
        }
        let excess = partials.len().saturating_sub(MAX_PARTIAL_MATCHES);
        partials.drain(..excess);
        excess
    }

    /// One event on one partial match.
    fn step(&self, mut p: Partial, time: i64, value: &Bytes, holds: u32) -> Step {
        let at = usize::from(p.stage);
        let stage = &self.stages[at];
        if stage.absent {
            return if met(holds, at) {
                Step::Drop
            } else {
                Step::Keep(p)
            };
        }
        let take = |p: &mut Partial, stage_index: usize| {
            p.events.push(Captured {
                stage: stage_index as u16,
                time,
                value: value.clone(),
            });
        };
        let next = at + 1;
        match stage.quantifier {
            Quantifier::Times(n) if met(holds, at) => {
                take(&mut p, at);
                p.count += 1;
                if p.count < n {
                    return Step::Keep(p);
                }
                self.moved_on(p, next, time)
            }
            Quantifier::OneOrMore if met(holds, at) => {
                take(&mut p, at);
                p.count += 1;
                Step::Keep(p)
            }
            Quantifier::OneOrMore
                if p.count >= 1
                    && next < self.stages.len()
                    && met(holds, next)
                    && !self.stages[next].absent =>
            {
                // Greedy: the first event for the next stage ends this one.
                p.stage = next as u16;
                p.count = 0;
                self.step(p, time, value, holds)
            }
            _ => match self.contiguity {
                Contiguity::Strict => Step::Drop,
                Contiguity::Relaxed => Step::Keep(p),
            },
        }
    }

    /// A partial match whose stage is complete at `time` goes on to stage
    /// `next`: done after the last stage; waiting at an absence.
    fn moved_on(&self, mut p: Partial, next: usize, time: i64) -> Step {
        if next == self.stages.len() {
            return Step::Complete(Match {
                start: p.start,
                end: time,
                events: p.events,
            });
        }
        p.stage = next as u16;
        p.count = 0;
        Step::Keep(p)
    }
}

/// Whether stage `stage`'s bit is set in `holds`.
fn met(holds: u32, stage: usize) -> bool {
    holds & (1 << stage) != 0
}

#[cfg(test)]
mod tests;
