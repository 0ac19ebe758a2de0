//! Aggregate accumulators: their update rules, results and a compact binary
//! encoding for RocksDB.
//!
//! An aggregate step keeps one [`Accumulators`] per key (and window), one
//! [`Accumulator`] per output field, in the order of the spec's fields.

use serde_json::{Number, Value};
use thiserror::Error;
use weir_crds::job::AggregateFunction;

use crate::engine::hll::{HllError, HyperLogLog};

/// A stored accumulator could not be read.
#[derive(Debug, Error)]
pub enum AccumulatorError {
    /// The bytes end early or hold an unknown tag.
    #[error("corrupt accumulator: {0}")]
    Corrupt(&'static str),
    /// A HyperLogLog sketch is corrupt.
    #[error(transparent)]
    Hll(#[from] HllError),
    /// A first/last value is not JSON.
    #[error("corrupt first/last value: {0}")]
    Json(#[from] serde_json::Error),
}

/// What one record contributes to one accumulator.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// count: nothing.
    Unit,
    /// sum, min, max, avg: a number (kept as an integer when it is one, so
    /// sums of integers stay exact).
    Number(Num),
    /// approxDistinct: the hash of the value's canonical bytes.
    Hash(u64),
    /// first, last: the value.
    Value(Value),
}

/// A number as an aggregate sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    /// An integer that fits an `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
}

impl Num {
    /// The number of a JSON value, `None` for non-numbers.
    pub fn from_json(value: &Value) -> Option<Num> {
        let n = match value {
            Value::Number(n) => n,
            _ => return None,
        };
        match n.as_i64() {
            Some(i) => Some(Num::Int(i)),
            None => n.as_f64().map(Num::Float),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn to_json(self) -> Value {
        match self {
            Num::Int(i) => Value::from(i),
            Num::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        }
    }

    fn less(self, other: Num) -> bool {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a < b,
            (a, b) => a.as_f64() < b.as_f64(),
        }
    }
}

/// The running state of one aggregate field.
#[derive(Clone, Debug, PartialEq)]
pub enum Accumulator {
    /// Number of records.
    Count(u64),
    /// Exact integer sum until a non-integer or an overflow, then a float.
    Sum(Num),
    /// Smallest number so far.
    Min(Option<Num>),
    /// Largest number so far.
    Max(Option<Num>),
    /// Sum and count.
    Avg {
        /// Sum of the numbers.
        sum: f64,
        /// How many.
        count: u64,
    },
    /// A HyperLogLog sketch.
    Distinct(HyperLogLog),
    /// The value with the earliest event time (the first to arrive on ties).
    First(Option<(i64, Value)>),
    /// The value with the latest event time (the last to arrive on ties).
    Last(Option<(i64, Value)>),
}

fn add(a: Num, b: Num) -> Num {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x
            .checked_add(y)
            .map_or(Num::Float(x as f64 + y as f64), Num::Int),
        (x, y) => Num::Float(x.as_f64() + y.as_f64()),
    }
}

impl Accumulator {
    /// An estimate of the heap memory the accumulator holds besides itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Accumulator::Distinct(hll) => hll.heap_bytes(),
            Accumulator::First(Some((_, v))) | Accumulator::Last(Some((_, v))) => {
                json_heap_bytes(v)
            }
            _ => 0,
        }
    }

    /// An empty accumulator for `function`.
    pub fn new(function: AggregateFunction) -> Accumulator {
        match function {
            AggregateFunction::Count => Accumulator::Count(0),
            AggregateFunction::Sum => Accumulator::Sum(Num::Int(0)),
            AggregateFunction::Min => Accumulator::Min(None),
            AggregateFunction::Max => Accumulator::Max(None),
            AggregateFunction::Avg => Accumulator::Avg { sum: 0.0, count: 0 },
            AggregateFunction::ApproxDistinct => Accumulator::Distinct(HyperLogLog::default()),
            AggregateFunction::First => Accumulator::First(None),
            AggregateFunction::Last => Accumulator::Last(None),
        }
    }

    /// Adds one record's input at event time `time` (records without event
    /// time pass `i64::MIN`, so first and last follow arrival order). An
    /// input of the wrong kind is ignored: the pipeline computes inputs from
    /// the same functions, so it does not happen.
    pub fn update(&mut self, input: &Input, time: i64) {
        match (self, input) {
            (Accumulator::Count(c), _) => *c += 1,
            (Accumulator::Sum(s), Input::Number(n)) => *s = add(*s, *n),
            (Accumulator::Min(m), Input::Number(n)) if m.is_none_or(|m| n.less(m)) => {
                *m = Some(*n);
            }
            (Accumulator::Max(m), Input::Number(n)) if m.is_none_or(|m| m.less(*n)) => {
                *m = Some(*n);
            }
            (Accumulator::Avg { sum, count }, Input::Number(n)) => {
                *sum += n.as_f64();
                *count += 1;
            }
            (Accumulator::Distinct(hll), Input::Hash(h)) => hll.insert_hash(*h),
            (Accumulator::First(f), Input::Value(v))
                if f.as_ref().is_none_or(|(t, _)| time < *t) =>
            {
                *f = Some((time, v.clone()));
            }
            (Accumulator::Last(l), Input::Value(v))
                if l.as_ref().is_none_or(|(t, _)| time >= *t) =>
            {
                *l = Some((time, v.clone()));
            }
            _ => {}
        }
    }

    /// Folds `other` (the same function over other records) into this one,
    /// as when two session windows merge.
    pub fn merge(&mut self, other: &Accumulator) {
        match (self, other) {
            (Accumulator::Count(a), Accumulator::Count(b)) => *a += b,
            (Accumulator::Sum(a), Accumulator::Sum(b)) => *a = add(*a, *b),
            (Accumulator::Min(a), Accumulator::Min(Some(b))) if a.is_none_or(|a| b.less(a)) => {
                *a = Some(*b);
            }
            (Accumulator::Max(a), Accumulator::Max(Some(b))) if a.is_none_or(|a| a.less(*b)) => {
                *a = Some(*b);
            }
            (Accumulator::Avg { sum, count }, Accumulator::Avg { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (Accumulator::Distinct(a), Accumulator::Distinct(b)) => a.merge(b),
            (Accumulator::First(a), Accumulator::First(Some((t, v))))
                if a.as_ref().is_none_or(|(at, _)| t < at) =>
            {
                *a = Some((*t, v.clone()));
            }
            (Accumulator::Last(a), Accumulator::Last(Some((t, v))))
                if a.as_ref().is_none_or(|(at, _)| t >= at) =>
            {
                *a = Some((*t, v.clone()));
            }
            _ => {}
        }
    }

    /// The current result as JSON (`null` for min, max, avg, first and last
    /// over nothing).
    pub fn result(&self) -> Value {
        match self {
            Accumulator::Count(c) => Value::from(*c),
            Accumulator::Sum(s) => s.to_json(),
            Accumulator::Min(m) | Accumulator::Max(m) => m.map_or(Value::Null, Num::to_json),
            Accumulator::Avg { sum, count } => {
                if *count == 0 {
                    Value::Null
                } else {
                    Num::Float(sum / *count as f64).to_json()
                }
            }
            Accumulator::Distinct(hll) => Value::from(hll.estimate()),
            Accumulator::First(v) | Accumulator::Last(v) => {
                v.as_ref().map_or(Value::Null, |(_, v)| v.clone())
            }
        }
    }

    /// Appends [`Accumulator::result`] as JSON text, as serde_json writes
    /// it: counts and integer sums directly, the others through their
    /// value.
    pub fn write_result(&self, out: &mut Vec<u8>) {
        match self {
            Accumulator::Count(c) => {
                out.extend_from_slice(itoa::Buffer::new().format(*c).as_bytes())
            }
            Accumulator::Sum(Num::Int(i)) => {
                out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes());
            }
            // Writing JSON into a vector cannot fail.
            other => drop(serde_json::to_writer(out, &other.result())),
        }
    }
}

/// An estimate of the heap memory of a JSON value besides the value itself:
/// string and array buffers, object entries (a B-tree map's entries cost
/// about their key, their value and a pointer or two).
fn json_heap_bytes(value: &Value) -> usize {
    const VALUE: usize = std::mem::size_of::<Value>();
    match value {
        Value::String(s) => s.capacity(),
        Value::Array(items) => {
            items.capacity() * VALUE + items.iter().map(json_heap_bytes).sum::<usize>()
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                k.capacity() + std::mem::size_of::<String>() + VALUE + 16 + json_heap_bytes(v)
            })
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// The accumulators of one key (and window), one per aggregate field.
#[derive(Clone, Debug, PartialEq)]
pub struct Accumulators(pub Vec<Accumulator>);

const TAG_COUNT: u8 = 1;
const TAG_SUM: u8 = 2;
const TAG_MIN: u8 = 3;
const TAG_MAX: u8 = 4;
const TAG_AVG: u8 = 5;
const TAG_DISTINCT: u8 = 6;
const TAG_FIRST: u8 = 7;
const TAG_LAST: u8 = 8;

fn encode_num(n: Option<Num>, out: &mut Vec<u8>) {
    match n {
        None => out.push(0),
        Some(Num::Int(i)) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Some(Num::Float(f)) => {
            out.push(2);
            out.extend_from_slice(&f.to_le_bytes());
        }
    }
}

/// A cursor over encoded bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Whether everything was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], AccumulatorError> {
        if self.bytes.len() < n {
            return Err(AccumulatorError::Corrupt("truncated"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// The next byte.
    pub(crate) fn u8(&mut self) -> Result<u8, AccumulatorError> {
        Ok(self.take(1)?[0])
    }

    /// The next 8 bytes, little-endian.
    pub(crate) fn u64(&mut self) -> Result<u64, AccumulatorError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// The next 2 bytes, little-endian.
    pub(crate) fn u16(&mut self) -> Result<u16, AccumulatorError> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(b))
    }

    /// The next 4 bytes, little-endian.
    pub(crate) fn u32(&mut self) -> Result<u32, AccumulatorError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn num(&mut self) -> Result<Option<Num>, AccumulatorError> {
        Ok(match self.u8()? {
            0 => None,
            1 => Some(Num::Int(self.u64()? as i64)),
            2 => Some(Num::Float(f64::from_bits(self.u64()?))),
            _ => return Err(AccumulatorError::Corrupt("unknown number tag")),
        })
    }

    fn timed_value(&mut self) -> Result<Option<(i64, Value)>, AccumulatorError> {
        Ok(match self.u8()? {
            0 => None,
            1 => {
                let time = self.u64()? as i64;
                let len = self.u32()? as usize;
                Some((time, serde_json::from_slice(self.take(len)?)?))
            }
            _ => return Err(AccumulatorError::Corrupt("unknown value tag")),
        })
    }

    fn hll(&mut self) -> Result<HyperLogLog, AccumulatorError> {
        let (hll, used) = HyperLogLog::decode(self.bytes)?;
        self.take(used)?;
        Ok(hll)
    }
}

fn encode_timed_value(v: &Option<(i64, Value)>, out: &mut Vec<u8>) {
    match v {
        None => out.push(0),
        Some((time, value)) => {
            out.push(1);
            out.extend_from_slice(&time.to_le_bytes());
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            // Writing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, value);
            let len = (out.len() - len_at - 4) as u32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
}

impl Accumulators {
    /// Adds what `other` (of the same fields) accumulated.
    pub fn merge(&mut self, other: &Accumulators) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            a.merge(b);
        }
    }

    /// An estimate of the heap memory the accumulators hold (for the
    /// write-back cache's byte budget).
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<Accumulator>()
            + self.0.iter().map(Accumulator::heap_bytes).sum::<usize>()
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.0.len() as u8);
        for acc in &self.0 {
            match acc {
                Accumulator::Count(c) => {
                    out.push(TAG_COUNT);
                    out.extend_from_slice(&c.to_le_bytes());
                }
                Accumulator::Sum(s) => {
                    out.push(TAG_SUM);
                    encode_num(Some(*s), out);
                }
                Accumulator::Min(m) => {
                    out.push(TAG_MIN);
                    encode_num(*m, out);
                }
                Accumulator::Max(m) => {
                    out.push(TAG_MAX);
                    encode_num(*m, out);
                }
                Accumulator::Avg { sum, count } => {
                    out.push(TAG_AVG);
                    out.extend_from_slice(&sum.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
                Accumulator::Distinct(hll) => {
                    out.push(TAG_DISTINCT);
                    hll.encode(out);
                }
                Accumulator::First(v) => {
                    out.push(TAG_FIRST);
                    encode_timed_value(v, out);
                }
                Accumulator::Last(v) => {
                    out.push(TAG_LAST);
                    encode_timed_value(v, out);
                }
            }
        }
    }

    /// Reads accumulators written by [`Accumulators::encode`] from the
    /// reader.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Accumulators, AccumulatorError> {
        let n = r.u8()?;
        let mut accs = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let acc = match r.u8()? {
                TAG_COUNT => Accumulator::Count(r.u64()?),
                TAG_SUM => Accumulator::Sum(
                    r.num()?
                        .ok_or(AccumulatorError::Corrupt("sum without a value"))?,
                ),
                TAG_MIN => Accumulator::Min(r.num()?),
                TAG_MAX => Accumulator::Max(r.num()?),
                TAG_AVG => Accumulator::Avg {
                    sum: f64::from_bits(r.u64()?),
                    count: r.u64()?,
                },
                TAG_DISTINCT => Accumulator::Distinct(r.hll()?),
                TAG_FIRST => Accumulator::First(r.timed_value()?),
                TAG_LAST => Accumulator::Last(r.timed_value()?),
                _ => return Err(AccumulatorError::Corrupt("unknown accumulator tag")),
            };
            accs.push(acc);
        }
        Ok(Accumulators(accs))
    }

    /// Decodes a whole value written by [`Accumulators::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Accumulators, AccumulatorError> {
        let mut r = Reader::new(bytes);
        let accs = Accumulators::read(&mut r)?;
        if r.is_empty() {
            Ok(accs)
        } else {
            Err(AccumulatorError::Corrupt("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn all() -> Accumulators {
        Accumulators(
            [
                AggregateFunction::Count,
                AggregateFunction::Sum,
                AggregateFunction::Min,
                AggregateFunction::Max,
                AggregateFunction::Avg,
                AggregateFunction::ApproxDistinct,
                AggregateFunction::First,
                AggregateFunction::Last,
            ]
            .into_iter()
            .map(Accumulator::new)
            .collect(),
        )
    }

    fn feed(accs: &mut Accumulators, n: Num, time: i64) {
        for acc in &mut accs.0 {
            let input = match acc {
                Accumulator::Count(_) => Input::Unit,
                Accumulator::Distinct(_) => {
                    Input::Hash(crate::engine::hll::hash64(&time.to_le_bytes()))
                }
                // Stored as JSON text, which keeps integers exact; doubles
                // may change in the last digit through serde_json's parser,
                // so doubles are replaced by the time here.
                Accumulator::First(_) | Accumulator::Last(_) => Input::Value(match n {
                    Num::Int(i) => Value::from(i),
                    Num::Float(_) => Value::from(time),
                }),
                _ => Input::Number(n),
            };
            acc.update(&input, time);
        }
    }

    #[test]
    fn results() {
        let mut accs = all();
        let empty: Vec<Value> = accs.0.iter().map(Accumulator::result).collect();
        assert_eq!(
            empty,
            vec![
                json!(0),
                json!(0),
                json!(null),
                json!(null),
                json!(null),
                json!(0),
                json!(null),
                json!(null)
            ]
        );
        feed(&mut accs, Num::Int(5), 20);
        feed(&mut accs, Num::Int(-3), 10);
        feed(&mut accs, Num::Int(7), 30);
        feed(&mut accs, Num::Int(9), 30);
        let got: Vec<Value> = accs.0.iter().map(Accumulator::result).collect();
        assert_eq!(
            got,
            vec![
                json!(4),
                json!(18),
                json!(-3),
                json!(9),
                json!(4.5),
                json!(3),
                json!(-3),
                json!(9)
            ]
        );
        feed(&mut accs, Num::Float(0.5), 0);
        assert_eq!(accs.0[1].result(), json!(18.5));
        assert_eq!(accs.0[6].result(), json!(0));
    }

    #[test]
    fn merge_equals_feeding_everything_to_one() {
        let mut a = all();
        let mut b = all();
        let mut both = all();
        for (i, n) in [4i64, -2, 9, 9, 1, 0].into_iter().enumerate() {
            let target = if i % 2 == 0 { &mut a } else { &mut b };
            feed(target, Num::Int(n), n);
            feed(&mut both, Num::Int(n), n);
        }
        for (x, y) in a.0.iter_mut().zip(&b.0) {
            x.merge(y);
        }
        assert_eq!(a, both);
    }

    #[test]
    fn integer_sum_overflow_turns_float() {
        let mut acc = Accumulator::new(AggregateFunction::Sum);
        acc.update(&Input::Number(Num::Int(i64::MAX)), 0);
        acc.update(&Input::Number(Num::Int(1)), 0);
        assert_eq!(acc.result(), json!(i64::MAX as f64 + 1.0));
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        assert!(Accumulators::decode(&[]).is_err());
        assert!(Accumulators::decode(&[1, 99]).is_err());
        assert!(Accumulators::decode(&[1, TAG_COUNT, 0]).is_err());
        assert!(Accumulators::decode(&[0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn encoding_round_trips(values in proptest::collection::vec((any::<i64>(), any::<f64>(), any::<bool>()), 0..50)) {
            let mut accs = all();
            for (i, f, int) in values {
                let n = if int || !f.is_finite() { Num::Int(i) } else { Num::Float(f) };
                feed(&mut accs, n, i);
            }
            let mut bytes = Vec::new();
            accs.encode(&mut bytes);
            let back = Accumulators::decode(&bytes).unwrap();
            let mut again = Vec::new();
            back.encode(&mut again);
            prop_assert_eq!(bytes, again);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Accumulators::decode(&bytes);
        }
    }
}
