//! Evaluates a compiled [`Node`] tree directly over a JSON record.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value as Json;

use super::EvalError;
use super::compile::{Loop, LoopKind, Node, StrMap, StrTest};
use super::record::{FieldValue, Record};
use super::value::{Items, Kind, List, Map, Val, arith, compare, equal, numeric_cmp};

/// What one evaluation reads: the record and the macro variables in scope.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a, 's> {
    record: Record<'a>,
    /// The innermost macro variable: variables live in frames on the stack,
    /// so that macros do not allocate.
    frame: Option<&'s Frame<'a, 's>>,
}

/// The value of a macro variable, and the variables around it.
struct Frame<'a, 's> {
    slot: usize,
    value: Val<'a>,
    parent: Option<&'s Frame<'a, 's>>,
}

impl<'a> Scope<'a, '_> {
    /// A scope over `record` with no variables.
    pub(crate) fn new(record: Record<'a>) -> Self {
        Scope {
            record,
            frame: None,
        }
    }

    /// The value of the variable at `slot`.
    fn var(&self, slot: usize) -> Option<&Val<'a>> {
        let mut frame = self.frame;
        while let Some(f) = frame {
            if f.slot == slot {
                return Some(&f.value);
            }
            frame = f.parent;
        }
        None
    }
}

/// The error for a value of the wrong type.
fn expected(what: &str, got: &Val<'_>) -> EvalError {
    EvalError::new(format!("{what} must be a bool, not {}", got.kind().name()))
}

/// The error for selecting a field that is not there.
fn no_such_field(name: &str) -> EvalError {
    EvalError::new(format!("no such field '{name}'"))
}

/// `value.name`.
fn select<'a>(value: Val<'a>, name: &str) -> Result<Val<'a>, EvalError> {
    match value {
        Val::Map(map) => map
            .get(&Val::Str(Cow::Borrowed(name)))
            .ok_or_else(|| no_such_field(name)),
        other => Err(EvalError::new(format!(
            "cannot select field '{name}' from {}",
            other.kind().name()
        ))),
    }
}

/// `has(value.name)`.
fn has(value: &Val<'_>, name: &str) -> Result<bool, EvalError> {
    match value {
        Val::Map(map) => Ok(map.contains_key(&Val::Str(Cow::Borrowed(name)))),
        other => Err(EvalError::new(format!(
            "cannot test field '{name}' of {}",
            other.kind().name()
        ))),
    }
}

/// `value[index]`.
fn index<'a>(value: Val<'a>, index: &Val<'_>) -> Result<Val<'a>, EvalError> {
    match value {
        Val::List(list) => {
            let position = match index {
                Val::Int(i) => usize::try_from(*i).ok(),
                Val::Uint(u) => usize::try_from(*u).ok(),
                other => {
                    return Err(EvalError::new(format!(
                        "cannot index list with {}",
                        other.kind().name()
                    )));
                }
            };
            position
                .and_then(|p| list.get(p))
                .ok_or_else(|| EvalError::new(format!("index {} out of range", display(index))))
        }
        Val::Map(map) => map
            .get(index)
            .ok_or_else(|| EvalError::new(format!("no such key {}", display(index)))),
        other => Err(EvalError::new(format!(
            "cannot index {}",
            other.kind().name()
        ))),
    }
}

/// A scalar for messages: strings quoted.
fn display(value: &Val<'_>) -> String {
    match value {
        Val::Str(s) => format!("'{s}'"),
        Val::Int(i) => i.to_string(),
        Val::Uint(u) => format!("{u}u"),
        Val::Double(d) => d.to_string(),
        Val::Bool(b) => b.to_string(),
        other => other.kind().name().to_owned(),
    }
}

/// The string operand of a string function.
fn string<'v, 'a>(value: &'v Val<'a>, function: &str) -> Result<&'v str, EvalError> {
    match value {
        Val::Str(s) => Ok(s),
        other => Err(EvalError::new(format!(
            "'{function}' takes strings, not {}",
            other.kind().name()
        ))),
    }
}

/// The name of a string test, for messages.
fn test_name(test: StrTest) -> &'static str {
    match test {
        StrTest::Contains => "contains",
        StrTest::StartsWith => "startsWith",
        StrTest::EndsWith => "endsWith",
        StrTest::Matches => "matches",
    }
}

/// Applies a string transformation, borrowing when the result is a slice.
fn str_map<'a>(map: StrMap, value: Val<'a>) -> Result<Val<'a>, EvalError> {
    let name = match map {
        StrMap::LowerAscii => "lowerAscii",
        StrMap::UpperAscii => "upperAscii",
        StrMap::Trim => "trim",
    };
    let Val::Str(s) = value else {
        return Err(EvalError::new(format!(
            "'{name}' is defined for strings, not {}",
            value.kind().name()
        )));
    };
    Ok(Val::Str(match map {
        StrMap::LowerAscii if s.bytes().any(|b| b.is_ascii_uppercase()) => {
            Cow::Owned(s.to_ascii_lowercase())
        }
        StrMap::UpperAscii if s.bytes().any(|b| b.is_ascii_lowercase()) => {
            Cow::Owned(s.to_ascii_uppercase())
        }
        StrMap::LowerAscii | StrMap::UpperAscii => s,
        StrMap::Trim => match s {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
        },
    }))
}

/// `int()`, `uint()`, `double()`, `string()` and `bool()`.
fn convert<'a>(to: Kind, value: Val<'a>) -> Result<Val<'a>, EvalError> {
    let fail = |value: &Val<'_>| {
        EvalError::new(format!(
            "cannot convert {} to {}",
            match value {
                Val::Str(_) | Val::Double(_) | Val::Int(_) | Val::Uint(_) => display(value),
                other => other.kind().name().to_owned(),
            },
            to.name()
        ))
    };
    // Like cel-go, the doubles strictly between -2^63 and 2^63 truncate to an
    // int, and those in [0, 2^64) to a uint.
    const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;
    const U64_BOUND: f64 = 18_446_744_073_709_551_616.0;
    Ok(match (to, &value) {
        (Kind::Int, Val::Int(_))
        | (Kind::Uint, Val::Uint(_))
        | (Kind::Double, Val::Double(_))
        | (Kind::String, Val::Str(_))
        | (Kind::Bool, Val::Bool(_)) => value,
        (Kind::Int, Val::Uint(u)) => Val::Int(i64::try_from(*u).map_err(|_| fail(&value))?),
        (Kind::Int, Val::Double(d)) if *d > -I64_BOUND && *d < I64_BOUND => Val::Int(*d as i64),
        (Kind::Int, Val::Str(s)) => Val::Int(s.parse().map_err(|_| fail(&value))?),
        (Kind::Uint, Val::Int(i)) => Val::Uint(u64::try_from(*i).map_err(|_| fail(&value))?),
        (Kind::Uint, Val::Double(d)) if *d >= 0.0 && *d < U64_BOUND => Val::Uint(*d as u64),
        (Kind::Uint, Val::Str(s)) => Val::Uint(s.parse().map_err(|_| fail(&value))?),
        (Kind::Double, Val::Int(i)) => Val::Double(*i as f64),
        (Kind::Double, Val::Uint(u)) => Val::Double(*u as f64),
        (Kind::Double, Val::Str(s)) => Val::Double(s.parse().map_err(|_| fail(&value))?),
        (Kind::String, Val::Int(i)) => Val::Str(Cow::Owned(i.to_string())),
        (Kind::String, Val::Uint(u)) => Val::Str(Cow::Owned(u.to_string())),
        (Kind::String, Val::Double(d)) => Val::Str(Cow::Owned(d.to_string())),
        (Kind::String, Val::Bool(b)) => Val::Str(Cow::Borrowed(if *b { "true" } else { "false" })),
        (Kind::Bool, Val::Str(s)) => match s.as_ref() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Val::Bool(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Val::Bool(false),
            _ => return Err(fail(&value)),
        },
        _ => return Err(fail(&value)),
    })
}

/// The elements of a list or the keys of a map, for a macro.
fn items(range: Val<'_>) -> Result<Items<'_>, EvalError> {
    match range {
        Val::List(list) => Ok(list.into_items()),
        Val::Map(map) => Ok(map.into_keys()),
        other => Err(EvalError::new(format!(
            "a macro iterates over a list or a map, not {}",
            other.kind().name()
        ))),
    }
}

/// `record.name`.
fn record_field<'a>(record: Record<'a>, name: &str) -> Result<Val<'a>, EvalError> {
    match record {
        Record::Json(Json::Object(map)) => map
            .get(name)
            .map(Val::from_json)
            .ok_or_else(|| no_such_field(name)),
        Record::Json(other) => select(Val::from_json(other), name),
        Record::Fields(fields) => fields
            .get(name)
            .map(FieldValue::val)
            .ok_or_else(|| no_such_field(name)),
    }
}

/// The ordering of a decoded field and a string or number constant
/// (`record.amount > 100`, `record.country == 'DE'`, the most common
/// conditions), without the general path's operand results; `None` for
/// anything else (and NaN), which the general path then evaluates. Strings
/// and numbers order and compare equal there exactly as here.
#[inline]
fn field_against_constant(cx: Scope<'_, '_>, lhs: &Node, rhs: &Node) -> Option<Ordering> {
    let (Record::Fields(fields), Node::RecordField(name), Node::Const(constant)) =
        (cx.record, lhs, rhs)
    else {
        return None;
    };
    field_value_against_constant(fields.get(name)?, constant)
}

/// The ordering of a decoded field's value and a constant when both are
/// strings or both numbers (see [`field_against_constant`]); `None` for
/// anything else and NaN.
#[inline]
pub(crate) fn field_value_against_constant(
    field: &FieldValue<'_>,
    constant: &Val<'_>,
) -> Option<Ordering> {
    match (field, constant) {
        (FieldValue::Str(a), Val::Str(b)) => Some(a.as_ref().cmp(b.as_ref())),
        (FieldValue::Int(a), Val::Int(b)) => Some(a.cmp(b)),
        // NaN is left to the general path, which refuses to order it.
        (field @ (FieldValue::Int(_) | FieldValue::Uint(_) | FieldValue::Double(_)), _) => {
            numeric_cmp(&field.val(), constant).flatten()
        }
        _ => None,
    }
}

impl Node {
    /// Evaluates an operand: constants and fields of the record without a
    /// call (the common operands of comparisons), other nodes with one.
    #[inline(always)]
    fn operand<'a>(&'a self, cx: Scope<'a, '_>) -> Result<Val<'a>, EvalError> {
        match self {
            Node::Const(value) => Ok(value.borrowed()),
            Node::RecordField(name) => record_field(cx.record, name),
            other => other.eval(cx),
        }
    }

    /// Evaluates a node that must be a bool, without building a value for
    /// the operators that compute one; `what` names the node in the error
    /// when it is not a bool.
    pub(crate) fn test<'a>(&'a self, cx: Scope<'a, '_>, what: &str) -> Result<bool, EvalError> {
        match self {
            Node::And(lhs, rhs) => logic(cx, lhs, rhs, false),
            Node::Or(lhs, rhs) => logic(cx, lhs, rhs, true),
            Node::Not(operand) => operand.test(cx, "the operand of '!'").map(|b| !b),
            Node::Eq(lhs, rhs) => {
                if let Some(ordering) = field_against_constant(cx, lhs, rhs) {
                    return Ok(ordering.is_eq());
                }
                let lhs = lhs.operand(cx)?;
                Ok(equal(&lhs, &rhs.operand(cx)?))
            }
            Node::Ne(lhs, rhs) => {
                if let Some(ordering) = field_against_constant(cx, lhs, rhs) {
                    return Ok(ordering.is_ne());
                }
                let lhs = lhs.operand(cx)?;
                Ok(!equal(&lhs, &rhs.operand(cx)?))
            }
            Node::Order(op, lhs, rhs) => {
                if let Some(ordering) = field_against_constant(cx, lhs, rhs) {
                    return Ok(op.holds(ordering));
                }
                let lhs = lhs.operand(cx)?;
                compare(*op, &lhs, &rhs.operand(cx)?)
            }
            Node::Has(operand, name) => has(&operand.operand(cx)?, name),
            Node::In(needle, haystack) => {
                let needle = needle.operand(cx)?;
                match haystack.operand(cx)? {
                    Val::List(list) => Ok(list.contains(&needle)),
                    Val::Map(map) => Ok(map.contains_key(&needle)),
                    other => Err(EvalError::new(format!(
                        "'in' needs a list or a map on its right, not {}",
                        other.kind().name()
                    ))),
                }
            }
            Node::StrTest(test, subject, argument) => {
                let subject = subject.operand(cx)?;
                let argument = argument.operand(cx)?;
                let name = test_name(*test);
                let (s, a) = (string(&subject, name)?, string(&argument, name)?);
                Ok(match test {
                    StrTest::Contains => s.contains(a),
                    StrTest::StartsWith => s.starts_with(a),
                    StrTest::EndsWith => s.ends_with(a),
                    StrTest::Matches => regex::Regex::new(a)
                        .map_err(|_| EvalError::new(format!("invalid regular expression '{a}'")))?
                        .is_match(s),
                })
            }
            Node::Matches(subject, regex) => {
                let subject = subject.operand(cx)?;
                Ok(regex.is_match(string(&subject, "matches")?))
            }
            other => match other.eval(cx)? {
                Val::Bool(b) => Ok(b),
                value => Err(expected(what, &value)),
            },
        }
    }

    /// Evaluates the node.
    pub(crate) fn eval<'a>(&'a self, cx: Scope<'a, '_>) -> Result<Val<'a>, EvalError> {
        match self {
            Node::Const(value) => Ok(value.borrowed()),
            Node::Record => Ok(cx.record.whole()),
            Node::RecordField(name) => record_field(cx.record, name),
            Node::Var(slot) => cx
                .var(*slot)
                .cloned()
                .ok_or_else(|| EvalError::new_static("internal error: unbound variable")),
            Node::Select(operand, name) => select(operand.operand(cx)?, name),
            Node::Index(operand, i) => {
                let operand = operand.operand(cx)?;
                index(operand, &i.operand(cx)?)
            }
            Node::List(elements) => {
                let mut values = Vec::with_capacity(elements.len());
                for element in elements {
                    values.push(element.eval(cx)?);
                }
                Ok(Val::List(List::Owned(values)))
            }
            Node::Map(entries) => {
                let mut values: Vec<(Val<'a>, Val<'a>)> = Vec::with_capacity(entries.len());
                for (key, value) in entries {
                    let key = key.eval(cx)?;
                    if !matches!(key, Val::Str(_) | Val::Int(_) | Val::Uint(_) | Val::Bool(_)) {
                        return Err(EvalError::new(format!(
                            "a map key cannot be {}",
                            key.kind().name()
                        )));
                    }
                    if values.iter().any(|(k, _)| equal(k, &key)) {
                        return Err(EvalError::new(format!(
                            "duplicate map key {}",
                            display(&key)
                        )));
                    }
                    let value = value.eval(cx)?;
                    values.push((key, value));
                }
                Ok(Val::Map(Map::Owned(values)))
            }
            Node::And(..)
            | Node::Or(..)
            | Node::Not(..)
            | Node::Eq(..)
            | Node::Ne(..)
            | Node::Order(..)
            | Node::Has(..)
            | Node::In(..)
            | Node::StrTest(..)
            | Node::Matches(..) => self.test(cx, "a condition").map(Val::Bool),
            Node::Cond(condition, then, otherwise) => {
                if condition.test(cx, "the condition of '?:'")? {
                    then.operand(cx)
                } else {
                    otherwise.operand(cx)
                }
            }
            Node::Neg(operand) => match operand.operand(cx)? {
                Val::Int(i) => i
                    .checked_neg()
                    .map(Val::Int)
                    .ok_or_else(|| EvalError::new_static("integer overflow")),
                Val::Double(d) => Ok(Val::Double(-d)),
                other => Err(EvalError::new(format!(
                    "cannot negate {}",
                    other.kind().name()
                ))),
            },
            Node::Arith(op, lhs, rhs) => {
                let lhs = lhs.operand(cx)?;
                arith(*op, lhs, rhs.operand(cx)?)
            }
            Node::Size(operand) => operand.operand(cx)?.size().map(Val::Int),
            Node::StrMap(map, operand) => str_map(*map, operand.operand(cx)?),
            Node::Convert(to, operand) => convert(*to, operand.operand(cx)?),
            Node::Loop(l) => {
                let items = items(l.range.eval(cx)?)?;
                run_loop(cx, l, items)
            }
        }
    }
}

/// `lhs && rhs` (`or` false) or `lhs || rhs` (`or` true), with CEL's
/// commutative error absorption: `false && error` and `error && false` are
/// both false, and the error of the left operand wins otherwise.
fn logic<'a>(cx: Scope<'a, '_>, lhs: &'a Node, rhs: &'a Node, or: bool) -> Result<bool, EvalError> {
    let what = if or {
        "an operand of '||'"
    } else {
        "an operand of '&&'"
    };
    let left = match lhs.test(cx, what) {
        Ok(b) if b == or => return Ok(or),
        Ok(_) => None,
        Err(error) => Some(error),
    };
    match (rhs.test(cx, what), left) {
        (Ok(b), _) if b == or => Ok(or),
        (_, Some(error)) => Err(error),
        (right, None) => right,
    }
}

/// Runs a macro over `items`, binding each to the variable at `l.slot`.
fn run_loop<'a>(cx: Scope<'a, '_>, l: &'a Loop, items: Items<'a>) -> Result<Val<'a>, EvalError> {
    let mut error = None;
    let mut count = 0_usize;
    let mut mapped = Vec::new();
    for item in items {
        let frame = Frame {
            slot: l.slot,
            value: item,
            parent: cx.frame,
        };
        let cx = Scope {
            record: cx.record,
            frame: Some(&frame),
        };
        match l.kind {
            LoopKind::Exists | LoopKind::All => {
                let stop = l.kind == LoopKind::Exists;
                match l.body.test(cx, "a predicate") {
                    Ok(b) if b == stop => return Ok(Val::Bool(stop)),
                    Ok(_) => {}
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            LoopKind::ExistsOne => {
                if l.body.test(cx, "a predicate")? {
                    count += 1;
                }
            }
            LoopKind::Map => {
                if let Some(filter) = &l.filter
                    && !filter.test(cx, "a filter")?
                {
                    continue;
                }
                mapped.push(l.body.eval(cx)?);
            }
        }
    }
    match l.kind {
        LoopKind::Exists | LoopKind::All => match error {
            Some(error) => Err(error),
            None => Ok(Val::Bool(l.kind == LoopKind::All)),
        },
        LoopKind::ExistsOne => Ok(Val::Bool(count == 1)),
        LoopKind::Map => Ok(Val::List(List::Owned(mapped))),
    }
}
