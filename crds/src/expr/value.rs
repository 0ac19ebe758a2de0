//! The values expressions compute with: CEL values that borrow from the record
//! (and from the compiled expression's constants) wherever they can.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value as Json;

use super::EvalError;

/// A CEL value during evaluation. `'a` is the lifetime of the record and of
/// the compiled expression, which both outlive one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Cow<'a, str>),
    List(List<'a>),
    Map(Map<'a>),
}

/// A CEL list: a JSON array of the record, a constant of the expression or
/// one built during evaluation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum List<'a> {
    Json(&'a [Json]),
    Ref(&'a [Val<'a>]),
    Owned(Vec<Val<'a>>),
}

/// A CEL map: a JSON object of the record, a constant of the expression or one
/// built during evaluation (entries in insertion order, keys unique).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Map<'a> {
    Json(&'a serde_json::Map<String, Json>),
    Ref(&'a [(Val<'a>, Val<'a>)]),
    Owned(Vec<(Val<'a>, Val<'a>)>),
}

/// The CEL type of a value, as named in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    List,
    Map,
}

impl Kind {
    /// The CEL name of the type.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "bool",
            Kind::Int => "int",
            Kind::Uint => "uint",
            Kind::Double => "double",
            Kind::String => "string",
            Kind::List => "list",
            Kind::Map => "map",
        }
    }

    /// Whether the type is one of the three numeric types.
    pub(crate) fn is_numeric(self) -> bool {
        matches!(self, Kind::Int | Kind::Uint | Kind::Double)
    }
}

/// The arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl Arith {
    /// The verb of "cannot add string and int".
    fn verb(self) -> &'static str {
        match self {
            Arith::Add => "add",
            Arith::Sub => "subtract",
            Arith::Mul => "multiply",
            Arith::Div => "divide",
            Arith::Rem => "take the remainder of",
        }
    }

    /// Whether the operator is defined between two values of `kind`.
    pub(crate) fn defined_for(self, kind: Kind) -> bool {
        match (self, kind) {
            (_, Kind::Int | Kind::Uint) => true,
            (Arith::Rem, Kind::Double) => false,
            (_, Kind::Double) => true,
            (Arith::Add, Kind::String | Kind::List) => true,
            _ => false,
        }
    }

    /// The error for applying the operator to `lhs` and `rhs`.
    pub(crate) fn mismatch(self, lhs: Kind, rhs: Kind) -> String {
        format!("cannot {} {} and {}", self.verb(), lhs.name(), rhs.name())
    }
}

/// The ordering operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Order {
    /// Whether `ordering` satisfies the operator.
    pub(crate) fn holds(self, ordering: Ordering) -> bool {
        match self {
            Order::Lt => ordering == Ordering::Less,
            Order::Le => ordering != Ordering::Greater,
            Order::Gt => ordering == Ordering::Greater,
            Order::Ge => ordering != Ordering::Less,
        }
    }
}

/// Whether values of `lhs` and `rhs` can be ordered with `<`.
pub(crate) fn orderable(lhs: Kind, rhs: Kind) -> bool {
    (lhs.is_numeric() && rhs.is_numeric())
        || (lhs == rhs && matches!(lhs, Kind::String | Kind::Bool))
}

impl<'a> Val<'a> {
    /// The value of a JSON value of the record: a JSON integer that fits an
    /// `i64` is an int, every other number a double.
    pub(crate) fn from_json(json: &'a Json) -> Val<'a> {
        match json {
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Val::Str(Cow::Borrowed(s)),
            Json::Array(items) => Val::List(List::Json(items)),
            Json::Object(map) => Val::Map(Map::Json(map)),
        }
    }

    /// The value borrowed from `self`, without copying strings or lists.
    pub(crate) fn borrowed(&'a self) -> Val<'a> {
        match self {
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(*b),
            Val::Int(i) => Val::Int(*i),
            Val::Uint(u) => Val::Uint(*u),
            Val::Double(d) => Val::Double(*d),
            Val::Str(s) => Val::Str(Cow::Borrowed(s)),
            Val::List(List::Json(items)) => Val::List(List::Json(items)),
            Val::List(List::Ref(items)) => Val::List(List::Ref(items)),
            Val::List(List::Owned(items)) => Val::List(List::Ref(items)),
            Val::Map(Map::Json(map)) => Val::Map(Map::Json(map)),
            Val::Map(Map::Ref(entries)) => Val::Map(Map::Ref(entries)),
            Val::Map(Map::Owned(entries)) => Val::Map(Map::Ref(entries)),
        }
    }

    /// The CEL type of the value.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Val::Null => Kind::Null,
            Val::Bool(_) => Kind::Bool,
            Val::Int(_) => Kind::Int,
            Val::Uint(_) => Kind::Uint,
            Val::Double(_) => Kind::Double,
            Val::Str(_) => Kind::String,
            Val::List(_) => Kind::List,
            Val::Map(_) => Kind::Map,
        }
    }

    /// The value as an owned JSON value. Maps with int, uint or bool keys
    /// become objects keyed by the key's text; NaN and infinities, which JSON
    /// cannot represent, are an error.
    pub(crate) fn to_json(&self) -> Result<Json, EvalError> {
        Ok(match self {
            Val::Null => Json::Null,
            Val::Bool(b) => Json::Bool(*b),
            Val::Int(i) => Json::from(*i),
            Val::Uint(u) => Json::from(*u),
            Val::Double(d) => serde_json::Number::from_f64(*d)
                .map(Json::Number)
                .ok_or_else(|| EvalError::new(format!("{d} cannot be represented in JSON")))?,
            Val::Str(s) => Json::String(s.to_string()),
            Val::List(List::Json(items)) => Json::Array(items.to_vec()),
            Val::List(List::Ref(items)) => {
                Json::Array(items.iter().map(Val::to_json).collect::<Result<_, _>>()?)
            }
            Val::List(List::Owned(items)) => {
                Json::Array(items.iter().map(Val::to_json).collect::<Result<_, _>>()?)
            }
            Val::Map(Map::Json(map)) => Json::Object((*map).clone()),
            Val::Map(Map::Ref(entries)) => entries_to_json(entries)?,
            Val::Map(Map::Owned(entries)) => entries_to_json(entries)?,
        })
    }

    /// Appends the text form of the value, as CEL's `string()` writes it
    /// (lists and maps as JSON), to `out`. Null is an error.
    pub(crate) fn write_text(&self, out: &mut Vec<u8>) -> Result<(), EvalError> {
        use std::io::Write as _;
        match self {
            Val::Null => return Err(EvalError::new_static("the key is null")),
            Val::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Val::Str(s) => out.extend_from_slice(s.as_bytes()),
            Val::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Val::Uint(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
            Val::Double(d) => write!(out, "{d}").map_err(|e| EvalError::new(e.to_string()))?,
            Val::List(_) | Val::Map(_) => self.write_json(out)?,
        }
        Ok(())
    }

    /// Appends the value as JSON text to `out`, as [`to_json`](Self::to_json)
    /// would convert it, without building a JSON value.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EvalError> {
        let json = |e: serde_json::Error| EvalError::new(e.to_string());
        match self {
            Val::Null => out.extend_from_slice(b"null"),
            Val::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Val::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Val::Uint(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
            Val::Double(d) if d.is_finite() => serde_json::to_writer(&mut *out, d).map_err(json)?,
            Val::Double(d) => {
                return Err(EvalError::new(format!("{d} cannot be represented in JSON")));
            }
            Val::Str(s) => write_json_string(s, out).map_err(json)?,
            Val::List(List::Json(items)) => {
                serde_json::to_writer(&mut *out, items).map_err(json)?
            }
            Val::Map(Map::Json(map)) => serde_json::to_writer(&mut *out, map).map_err(json)?,
            Val::List(list) => {
                out.push(b'[');
                for (i, item) in list.clone().into_items().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_json(out)?;
                }
                out.push(b']');
            }
            Val::Map(Map::Ref(entries)) => write_entries(entries, out)?,
            Val::Map(Map::Owned(entries)) => write_entries(entries, out)?,
        }
        Ok(())
    }

    /// The number of elements of a list or map, or of code points of a string.
    pub(crate) fn size(&self) -> Result<i64, EvalError> {
        let size = match self {
            Val::Str(s) => s.chars().count(),
            Val::List(list) => list.len(),
            Val::Map(map) => map.len(),
            other => {
                return Err(EvalError::new(format!(
                    "size() is not defined for {}",
                    other.kind().name()
                )));
            }
        };
        i64::try_from(size).map_err(|_| EvalError::new_static("integer overflow"))
    }
}

/// Appends map entries as a JSON object, keyed by the text of each key.
fn write_entries(entries: &[(Val<'_>, Val<'_>)], out: &mut Vec<u8>) -> Result<(), EvalError> {
    out.push(b'{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match key {
            Val::Str(_) => key.write_json(out)?,
            Val::Int(_) | Val::Uint(_) | Val::Bool(_) => {
                out.push(b'"');
                key.write_json(out)?;
                out.push(b'"');
            }
            other => {
                return Err(EvalError::new(format!(
                    "a map key cannot be {}",
                    other.kind().name()
                )));
            }
        }
        out.push(b':');
        value.write_json(out)?;
    }
    out.push(b'}');
    Ok(())
}

/// A JSON object of map entries, keyed by the text of each key.
fn entries_to_json(entries: &[(Val<'_>, Val<'_>)]) -> Result<Json, EvalError> {
    let mut object = serde_json::Map::new();
    for (key, value) in entries {
        let key = match key {
            Val::Str(s) => s.to_string(),
            Val::Int(i) => i.to_string(),
            Val::Uint(u) => u.to_string(),
            Val::Bool(b) => b.to_string(),
            other => {
                return Err(EvalError::new(format!(
                    "a map key cannot be {}",
                    other.kind().name()
                )));
            }
        };
        object.insert(key, value.to_json()?);
    }
    Ok(Json::Object(object))
}

impl<'a> List<'a> {
    /// The number of elements.
    pub(crate) fn len(&self) -> usize {
        match self {
            List::Json(items) => items.len(),
            List::Ref(items) => items.len(),
            List::Owned(items) => items.len(),
        }
    }

    /// The element at `index`, if there is one.
    pub(crate) fn get(&self, index: usize) -> Option<Val<'a>> {
        match self {
            List::Json(items) => items.get(index).map(Val::from_json),
            List::Ref(items) => items.get(index).map(Val::borrowed),
            List::Owned(items) => items.get(index).cloned(),
        }
    }

    /// Whether an element equals `needle`.
    pub(crate) fn contains(&self, needle: &Val<'_>) -> bool {
        match self {
            List::Json(items) => items.iter().any(|item| equal_json(needle, item)),
            List::Ref(items) => items.iter().any(|item| equal(needle, item)),
            List::Owned(items) => items.iter().any(|item| equal(needle, item)),
        }
    }

    /// The elements, in order.
    pub(crate) fn into_items(self) -> Items<'a> {
        match self {
            List::Json(items) => Items::Json(items.iter()),
            List::Ref(items) => Items::Ref(items.iter()),
            List::Owned(items) => Items::Owned(items.into_iter()),
        }
    }

    /// The elements as an owned vector.
    fn into_vec(self) -> Vec<Val<'a>> {
        match self {
            List::Owned(items) => items,
            other => other.into_items().collect(),
        }
    }
}

impl<'a> Map<'a> {
    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        match self {
            Map::Json(map) => map.len(),
            Map::Ref(entries) => entries.len(),
            Map::Owned(entries) => entries.len(),
        }
    }

    /// The value under `key`, if there is one. Keys compare as CEL values:
    /// `1`, `1u` and `1.0` are the same key.
    pub(crate) fn get(&self, key: &Val<'_>) -> Option<Val<'a>> {
        match self {
            Map::Json(map) => match key {
                Val::Str(key) => map.get(key.as_ref()).map(Val::from_json),
                _ => None,
            },
            Map::Ref(entries) => entries
                .iter()
                .find(|(k, _)| equal(k, key))
                .map(|(_, v)| v.borrowed()),
            Map::Owned(entries) => entries
                .iter()
                .find(|(k, _)| equal(k, key))
                .map(|(_, v)| v.clone()),
        }
    }

    /// Whether the map has an entry for `key`.
    pub(crate) fn contains_key(&self, key: &Val<'_>) -> bool {
        match self {
            Map::Json(map) => match key {
                Val::Str(key) => map.contains_key(key.as_ref()),
                _ => false,
            },
            Map::Ref(entries) => entries.iter().any(|(k, _)| equal(k, key)),
            Map::Owned(entries) => entries.iter().any(|(k, _)| equal(k, key)),
        }
    }

    /// The keys, in order (the order of a JSON object is its key order).
    pub(crate) fn into_keys(self) -> Items<'a> {
        match self {
            Map::Json(map) => Items::JsonKeys(map.keys()),
            Map::Ref(entries) => Items::RefKeys(entries.iter()),
            Map::Owned(entries) => Items::OwnedKeys(entries.into_iter()),
        }
    }
}

/// The elements of a list, or the keys of a map, that a macro iterates over.
pub(crate) enum Items<'a> {
    Json(std::slice::Iter<'a, Json>),
    Ref(std::slice::Iter<'a, Val<'a>>),
    Owned(std::vec::IntoIter<Val<'a>>),
    JsonKeys(serde_json::map::Keys<'a>),
    RefKeys(std::slice::Iter<'a, (Val<'a>, Val<'a>)>),
    OwnedKeys(std::vec::IntoIter<(Val<'a>, Val<'a>)>),
}

impl<'a> Iterator for Items<'a> {
    type Item = Val<'a>;

    fn next(&mut self) -> Option<Val<'a>> {
        match self {
            Items::Json(items) => items.next().map(Val::from_json),
            Items::Ref(items) => items.next().map(Val::borrowed),
            Items::Owned(items) => items.next(),
            Items::JsonKeys(keys) => keys.next().map(|k| Val::Str(Cow::Borrowed(k.as_str()))),
            Items::RefKeys(entries) => entries.next().map(|(k, _)| k.borrowed()),
            Items::OwnedKeys(entries) => entries.next().map(|(k, _)| k),
        }
    }
}

/// Appends `s` as a JSON string, as serde_json writes it: serde_json
/// escapes only quotes, backslashes and control characters, so a string
/// without them is copied between quotes as it is.
#[inline]
pub fn write_json_string(s: &str, out: &mut Vec<u8>) -> serde_json::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// Whether two byte strings are equal: short ones (field names, codes)
/// compared inline, as a call to `memcmp` would cost more than the
/// comparison, as two words that overlap in the middle (the first and the
/// last bytes of a length).
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    /// The `N` bytes of `s` from its start and the `N` up to its end.
    #[inline(always)]
    fn ends<const N: usize>(s: &[u8]) -> Option<([u8; N], [u8; N])> {
        let first = s.get(..N)?.try_into().ok()?;
        let last = s.get(s.len().checked_sub(N)?..)?.try_into().ok()?;
        Some((first, last))
    }
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        0 => true,
        1 => a[0] == b[0],
        2..=3 => ends::<2>(a) == ends::<2>(b),
        4..=7 => ends::<4>(a) == ends::<4>(b),
        8..=16 => ends::<8>(a) == ends::<8>(b),
        _ => a == b,
    }
}

/// CEL's heterogeneous equality: numbers compare by value across int, uint
/// and double; values of different types are unequal; NaN equals nothing.
pub(crate) fn equal(lhs: &Val<'_>, rhs: &Val<'_>) -> bool {
    match (lhs, rhs) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(a), Val::Bool(b)) => a == b,
        (Val::Str(a), Val::Str(b)) => same_bytes(a.as_bytes(), b.as_bytes()),
        (Val::List(a), Val::List(b)) => {
            a.len() == b.len()
                && (0..a.len()).all(|i| match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => equal(&x, &y),
                    _ => false,
                })
        }
        (Val::Map(a), Val::Map(b)) => {
            a.len() == b.len()
                && a.clone()
                    .into_keys()
                    .all(|key| match (a.get(&key), b.get(&key)) {
                        (Some(x), Some(y)) => equal(&x, &y),
                        _ => false,
                    })
        }
        _ => matches!(numeric_cmp(lhs, rhs), Some(Some(Ordering::Equal))),
    }
}

/// Equality of a value and a JSON value of the record, without converting
/// containers.
fn equal_json(lhs: &Val<'_>, rhs: &Json) -> bool {
    match (lhs, rhs) {
        (Val::Str(a), Json::String(b)) => a == b,
        _ => equal(lhs, &Val::from_json(rhs)),
    }
}

/// The numeric ordering of two numbers: `None` when either is not a number,
/// `Some(None)` when they are unordered (NaN).
pub(crate) fn numeric_cmp(lhs: &Val<'_>, rhs: &Val<'_>) -> Option<Option<Ordering>> {
    Some(match (lhs, rhs) {
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(b)),
        (Val::Uint(a), Val::Uint(b)) => Some(a.cmp(b)),
        (Val::Double(a), Val::Double(b)) => a.partial_cmp(b),
        (Val::Int(a), Val::Uint(b)) => Some(int_uint_cmp(*a, *b)),
        (Val::Uint(a), Val::Int(b)) => Some(int_uint_cmp(*b, *a).reverse()),
        (Val::Int(a), Val::Double(b)) => (*a as f64).partial_cmp(b),
        (Val::Double(a), Val::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Val::Uint(a), Val::Double(b)) => (*a as f64).partial_cmp(b),
        (Val::Double(a), Val::Uint(b)) => a.partial_cmp(&(*b as f64)),
        _ => return None,
    })
}

/// The ordering of an int and a uint.
fn int_uint_cmp(a: i64, b: u64) -> Ordering {
    u64::try_from(a).map_or(Ordering::Less, |a| a.cmp(&b))
}

/// `lhs op rhs` for an ordering operator: numbers across types, strings by
/// code point, `false < true`; NaN and other types are errors.
pub(crate) fn compare(op: Order, lhs: &Val<'_>, rhs: &Val<'_>) -> Result<bool, EvalError> {
    let ordering = match (lhs, rhs) {
        (Val::Str(a), Val::Str(b)) => a.as_ref().cmp(b.as_ref()),
        (Val::Bool(a), Val::Bool(b)) => a.cmp(b),
        _ => match numeric_cmp(lhs, rhs) {
            Some(Some(ordering)) => ordering,
            Some(None) => return Err(EvalError::new_static("NaN values cannot be ordered")),
            None => {
                return Err(EvalError::new(format!(
                    "cannot compare {} and {}",
                    lhs.kind().name(),
                    rhs.kind().name()
                )));
            }
        },
    };
    Ok(op.holds(ordering))
}

/// `lhs op rhs` for an arithmetic operator. Int and uint arithmetic that
/// overflows is an error; the operands must be of the same type.
pub(crate) fn arith<'a>(op: Arith, lhs: Val<'a>, rhs: Val<'a>) -> Result<Val<'a>, EvalError> {
    match (lhs, rhs) {
        (Val::Int(a), Val::Int(b)) => int_arith(op, a, b).map(Val::Int),
        (Val::Uint(a), Val::Uint(b)) => uint_arith(op, a, b).map(Val::Uint),
        (Val::Double(a), Val::Double(b)) => match op {
            Arith::Add => Ok(Val::Double(a + b)),
            Arith::Sub => Ok(Val::Double(a - b)),
            Arith::Mul => Ok(Val::Double(a * b)),
            Arith::Div => Ok(Val::Double(a / b)),
            Arith::Rem => Err(EvalError::new(op.mismatch(Kind::Double, Kind::Double))),
        },
        (Val::Str(a), Val::Str(b)) if op == Arith::Add => {
            let mut joined = a.into_owned();
            joined.push_str(&b);
            Ok(Val::Str(Cow::Owned(joined)))
        }
        (Val::List(a), Val::List(b)) if op == Arith::Add => {
            let mut joined = a.into_vec();
            joined.extend(b.into_items());
            Ok(Val::List(List::Owned(joined)))
        }
        (lhs, rhs) => Err(EvalError::new(op.mismatch(lhs.kind(), rhs.kind()))),
    }
}

/// Checked int arithmetic.
fn int_arith(op: Arith, a: i64, b: i64) -> Result<i64, EvalError> {
    if b == 0 {
        match op {
            Arith::Div => return Err(EvalError::new_static("division by zero")),
            Arith::Rem => return Err(EvalError::new_static("modulus by zero")),
            _ => {}
        }
    }
    match op {
        Arith::Add => a.checked_add(b),
        Arith::Sub => a.checked_sub(b),
        Arith::Mul => a.checked_mul(b),
        Arith::Div => a.checked_div(b),
        Arith::Rem => a.checked_rem(b),
    }
    .ok_or_else(|| EvalError::new_static("integer overflow"))
}

/// Checked uint arithmetic.
fn uint_arith(op: Arith, a: u64, b: u64) -> Result<u64, EvalError> {
    match op {
        Arith::Add => a.checked_add(b),
        Arith::Sub => a.checked_sub(b),
        Arith::Mul => a.checked_mul(b),
        Arith::Div => {
            return a
                .checked_div(b)
                .ok_or_else(|| EvalError::new_static("division by zero"));
        }
        Arith::Rem => {
            return a
                .checked_rem(b)
                .ok_or_else(|| EvalError::new_static("modulus by zero"));
        }
    }
    .ok_or_else(|| EvalError::new_static("unsigned integer overflow"))
}
