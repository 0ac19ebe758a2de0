//! The layout of RocksDB keys: state values by step and key, timers by
//! clock and time (see the layout in [`crate::state`]).

/// Kind byte of state values.
pub(super) const STATE: u8 = 0x01;
/// Kind byte of event-time timers.
const EVENT_TIMERS: u8 = 0x02;
/// Kind byte of processing-time timers.
const PROCESSING_TIMERS: u8 = 0x03;
/// Kind byte of event-time timers after a repartition.
const REPARTITIONED_TIMERS: u8 = 0x04;
/// The key (a kind byte alone) of the latest window start RocksDB holds
/// or held a value of (see the `stored_windows` module).
pub(super) const LATEST_STORED_WINDOW: [u8; 1] = [0x05];

/// Appends the payload of a keyed value: the key, length-prefixed, then the
/// window start if any, so that keys sort by (key, window start).
pub fn keyed_payload(out: &mut Vec<u8>, key: &[u8], window_start: Option<i64>) {
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    if let Some(start) = window_start {
        out.extend_from_slice(&order_preserving(start));
    }
}

/// Splits a payload written by [`keyed_payload`] into the key and the window
/// start; `None` when it is not such a payload.
pub fn parse_keyed_payload(payload: &[u8]) -> Option<(&[u8], Option<i64>)> {
    let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let key = payload.get(4..4 + len)?;
    let rest = payload.get(4 + len..)?;
    match rest.len() {
        0 => Some((key, None)),
        8 => Some((key, Some(from_order_preserving(rest.try_into().ok()?)))),
        _ => None,
    }
}

/// The step and window start of a window's state key (built by
/// [`state_key`] from a [`keyed_payload`] with a window start); `None` for
/// any other key.
#[inline]
pub(super) fn window_of_state_key(key: &[u8]) -> Option<(u8, i64)> {
    match key {
        [STATE, step, payload @ ..] => match parse_keyed_payload(payload)? {
            (_, Some(start)) => Some((*step, start)),
            (_, None) => None,
        },
        _ => None,
    }
}

pub(super) fn order_preserving(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn from_order_preserving(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeDomain {
    /// The task watermark over the source partitions.
    Event,
    /// The wall clock given to [`crate::engine::task::TaskProcessor::advance_time`].
    Processing,
    /// The watermark of the records read back from a repartition topic: the
    /// minimum over the upstream tasks' watermarks.
    Repartitioned,
}

impl TimeDomain {
    /// Every domain.
    pub(super) const ALL: [TimeDomain; 3] = [
        TimeDomain::Event,
        TimeDomain::Processing,
        TimeDomain::Repartitioned,
    ];

    pub(super) fn prefix(self) -> u8 {
        match self {
            TimeDomain::Event => EVENT_TIMERS,
            TimeDomain::Processing => PROCESSING_TIMERS,
            TimeDomain::Repartitioned => REPARTITIONED_TIMERS,
        }
    }

    /// Its index in [`TimeDomain::ALL`].
    pub(super) fn index(self) -> usize {
        match self {
            TimeDomain::Event => 0,
            TimeDomain::Processing => 1,
            TimeDomain::Repartitioned => 2,
        }
    }
}

/// A timer. Timers order as their RocksDB keys do within a domain: by
/// time, then step, kind and payload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    /// When it was due.
    pub time: i64,
    /// The step that registered it.
    pub step: u8,
    /// What the step does when it fires.
    pub kind: u8,
    /// The state payload it is about.
    pub payload: Vec<u8>,
}

pub(super) fn timer_key(
    domain: TimeDomain,
    time: i64,
    step: u8,
    kind: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut key = Vec::with_capacity(11 + payload.len());
    key.push(domain.prefix());
    key.extend_from_slice(&order_preserving(time));
    key.push(step);
    key.push(kind);
    key.extend_from_slice(payload);
    key
}

pub(super) fn parse_timer_key(key: &[u8]) -> Option<Timer> {
    Some(Timer {
        time: from_order_preserving(key.get(1..9)?.try_into().ok()?),
        step: *key.get(9)?,
        kind: *key.get(10)?,
        payload: key.get(11..)?.to_vec(),
    })
}

/// The state key of `payload` for step `step`, written into `out` (cleared
/// first).
pub fn state_key(out: &mut Vec<u8>, step: u8, payload: &[u8]) {
    out.clear();
    out.push(STATE);
    out.push(step);
    out.extend_from_slice(payload);
}
