//! The values kept in state and their encoding.

use crate::engine::aggregate::{AccumulatorError, Accumulators, Reader};
use crate::engine::pattern::{Captured, Partial};
use crate::engine::window::Window;

/// One session window of a key with its accumulators.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// The session's extent.
    pub window: Window,
    /// Whether its result was emitted (it stays for the allowed lateness).
    pub fired: bool,
    /// The aggregate so far.
    pub accumulators: Accumulators,
}

/// An event waiting at a pattern step until the watermark passes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEvent {
    /// Its event time.
    pub time: i64,
    /// The stages whose condition it meets, a bit per stage.
    pub holds: u32,
    /// The record as JSON (empty when it meets no condition).
    pub value: Vec<u8>,
}

/// A record kept by a join step: a row version of its table, or a record
/// of either stream waiting for a pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRow {
    /// Its event time (0 for the rows of a table join that is not
    /// temporal).
    pub time: i64,
    /// The record as JSON; empty for a table row's deletion.
    pub value: Vec<u8>,
}

/// A value kept in state.
#[derive(Clone, Debug, PartialEq)]
pub enum StateValue {
    /// The accumulators of a key (and tumbling or sliding window).
    Accumulators(Accumulators),
    /// The open session windows of a key.
    Sessions(Vec<Session>),
    /// When a dedupe key expires.
    Expiry(i64),
    /// The count windows of a key: how many events it has had, and the
    /// accumulators of its latest panes (`slideCount` events each, the
    /// last one filling) that the next windows still cover.
    CountPanes {
        /// Events of the key so far.
        events: u64,
        /// Oldest pane first.
        panes: Vec<Accumulators>,
    },
    /// A key at a pattern step: its events the watermark has not passed,
    /// and its partial matches.
    Pattern {
        /// Sorted by event time.
        pending: Vec<PendingEvent>,
        /// Oldest first.
        partials: Vec<Partial>,
    },
    /// A key at a join step.
    Join {
        /// Records of the pipeline's stream it keeps: those waiting for the
        /// watermark (temporal table join) or for pairs (interval join).
        /// Sorted by event time.
        own: Vec<JoinRow>,
        /// Records of the join's topic: the table's row (its versions by
        /// event time, for a temporal join) or the other stream's records
        /// waiting for pairs. Sorted by event time.
        other: Vec<JoinRow>,
    },
}

const VALUE_ACCUMULATORS: u8 = 1;
const VALUE_SESSIONS: u8 = 2;
const VALUE_EXPIRY: u8 = 3;
const VALUE_COUNT_PANES: u8 = 4;
const VALUE_PATTERN: u8 = 5;
const VALUE_JOIN: u8 = 6;

impl StateValue {
    /// An estimate of the heap memory the decoded value holds.
    pub fn heap_bytes(&self) -> usize {
        match self {
            StateValue::Accumulators(accs) => accs.heap_bytes(),
            StateValue::Sessions(sessions) => {
                sessions.capacity() * std::mem::size_of::<Session>()
                    + sessions
                        .iter()
                        .map(|s| s.accumulators.heap_bytes())
                        .sum::<usize>()
            }
            StateValue::Expiry(_) => 0,
            StateValue::CountPanes { panes, .. } => {
                panes.capacity() * std::mem::size_of::<Accumulators>()
                    + panes.iter().map(Accumulators::heap_bytes).sum::<usize>()
            }
            StateValue::Pattern { pending, partials } => {
                pending.capacity() * std::mem::size_of::<PendingEvent>()
                    + pending.iter().map(|e| e.value.capacity()).sum::<usize>()
                    + partials.capacity() * std::mem::size_of::<Partial>()
                    + partials
                        .iter()
                        .flat_map(|p| &p.events)
                        .map(|e| std::mem::size_of::<Captured>() + e.value.len())
                        .sum::<usize>()
            }
            StateValue::Join { own, other } => [own, other]
                .into_iter()
                .map(|rows| {
                    rows.capacity() * std::mem::size_of::<JoinRow>()
                        + rows.iter().map(|r| r.value.capacity()).sum::<usize>()
                })
                .sum(),
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            StateValue::Accumulators(accs) => {
                out.push(VALUE_ACCUMULATORS);
                accs.encode(out);
            }
            StateValue::Sessions(sessions) => {
                out.push(VALUE_SESSIONS);
                out.extend_from_slice(&(sessions.len() as u32).to_le_bytes());
                for s in sessions {
                    out.extend_from_slice(&s.window.start.to_le_bytes());
                    out.extend_from_slice(&s.window.end.to_le_bytes());
                    out.push(u8::from(s.fired));
                    s.accumulators.encode(out);
                }
            }
            StateValue::Expiry(t) => {
                out.push(VALUE_EXPIRY);
                out.extend_from_slice(&t.to_le_bytes());
            }
            StateValue::CountPanes { events, panes } => {
                out.push(VALUE_COUNT_PANES);
                out.extend_from_slice(&events.to_le_bytes());
                out.extend_from_slice(&(panes.len() as u32).to_le_bytes());
                for pane in panes {
                    pane.encode(out);
                }
            }
            StateValue::Pattern { pending, partials } => {
                out.push(VALUE_PATTERN);
                out.extend_from_slice(&(pending.len() as u32).to_le_bytes());
                for e in pending {
                    out.extend_from_slice(&e.time.to_le_bytes());
                    out.extend_from_slice(&e.holds.to_le_bytes());
                    write_bytes(out, &e.value);
                }
                out.extend_from_slice(&(partials.len() as u32).to_le_bytes());
                for p in partials {
                    out.extend_from_slice(&p.stage.to_le_bytes());
                    out.extend_from_slice(&p.count.to_le_bytes());
                    out.extend_from_slice(&p.start.to_le_bytes());
                    out.extend_from_slice(&(p.events.len() as u32).to_le_bytes());
                    for e in &p.events {
                        out.extend_from_slice(&e.stage.to_le_bytes());
                        out.extend_from_slice(&e.time.to_le_bytes());
                        write_bytes(out, &e.value);
                    }
                }
            }
            StateValue::Join { own, other } => {
                out.push(VALUE_JOIN);
                for rows in [own, other] {
                    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
                    for row in rows {
                        out.extend_from_slice(&row.time.to_le_bytes());
                        write_bytes(out, &row.value);
                    }
                }
            }
        }
    }

    /// Decodes a value written by [`StateValue::encode`].
    pub fn decode(bytes: &[u8]) -> Result<StateValue, AccumulatorError> {
        let mut r = Reader::new(bytes);
        let value = match r.u8()? {
            VALUE_ACCUMULATORS => StateValue::Accumulators(Accumulators::read(&mut r)?),
            VALUE_SESSIONS => {
                let n = r.u32()?;
                let mut sessions = Vec::new();
                for _ in 0..n {
                    let start = r.u64()? as i64;
                    let end = r.u64()? as i64;
                    let fired = r.u8()? != 0;
                    let accumulators = Accumulators::read(&mut r)?;
                    sessions.push(Session {
                        window: Window { start, end },
                        fired,
                        accumulators,
                    });
                }
                StateValue::Sessions(sessions)
            }
            VALUE_EXPIRY => StateValue::Expiry(r.u64()? as i64),
            VALUE_COUNT_PANES => {
                let events = r.u64()?;
                let n = r.u32()?;
                let mut panes = Vec::new();
                for _ in 0..n {
                    panes.push(Accumulators::read(&mut r)?);
                }
                StateValue::CountPanes { events, panes }
            }
            VALUE_PATTERN => {
                let n = r.u32()?;
                let mut pending = Vec::new();
                for _ in 0..n {
                    let time = r.u64()? as i64;
                    let holds = r.u32()?;
                    let value = read_bytes(&mut r)?;
                    pending.push(PendingEvent { time, holds, value });
                }
                let n = r.u32()?;
                let mut partials = Vec::new();
                for _ in 0..n {
                    let stage = r.u16()?;
                    let count = r.u32()?;
                    let start = r.u64()? as i64;
                    let m = r.u32()?;
                    let mut events = Vec::new();
                    for _ in 0..m {
                        let stage = r.u16()?;
                        let time = r.u64()? as i64;
                        let value = read_bytes(&mut r)?.into();
                        events.push(Captured { stage, time, value });
                    }
                    partials.push(Partial {
                        stage,
                        count,
                        start,
                        events,
                    });
                }
                StateValue::Pattern { pending, partials }
            }
            VALUE_JOIN => {
                let mut read_rows = || -> Result<Vec<JoinRow>, AccumulatorError> {
                    let n = r.u32()?;
                    let mut rows = Vec::new();
                    for _ in 0..n {
                        let time = r.u64()? as i64;
                        let value = read_bytes(&mut r)?;
                        rows.push(JoinRow { time, value });
                    }
                    Ok(rows)
                };
                let own = read_rows()?;
                let other = read_rows()?;
                StateValue::Join { own, other }
            }
            _ => return Err(AccumulatorError::Corrupt("unknown state value tag")),
        };
        if r.is_empty() {
            Ok(value)
        } else {
            Err(AccumulatorError::Corrupt("trailing bytes"))
        }
    }
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn read_bytes(r: &mut Reader<'_>) -> Result<Vec<u8>, AccumulatorError> {
    let n = r.u32()? as usize;
    Ok(r.take(n)?.to_vec())
}
