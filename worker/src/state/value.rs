//! The values kept in state and their encoding.

use crate::engine::aggregate::{AccumulatorError, Accumulators, Reader};
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
}

const VALUE_ACCUMULATORS: u8 = 1;
const VALUE_SESSIONS: u8 = 2;
const VALUE_EXPIRY: u8 = 3;
const VALUE_COUNT_PANES: u8 = 4;

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
            _ => return Err(AccumulatorError::Corrupt("unknown state value tag")),
        };
        if r.is_empty() {
            Ok(value)
        } else {
            Err(AccumulatorError::Corrupt("trailing bytes"))
        }
    }
}
