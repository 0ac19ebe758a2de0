//! What an expression reads `record` from: a decoded JSON value, or only the
//! top-level fields the expressions of a pipeline read, decoded straight from
//! the record's bytes into values that borrow from them ([`Fields`]).

use std::borrow::Cow;
use std::mem::ManuallyDrop;

use serde_json::Value as Json;

use super::value::{Map, Val, same_bytes, write_json_string};

/// The record an expression is evaluated over.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    /// A decoded JSON value.
    Json(&'a Json),
    /// Only some top-level fields of a JSON object.
    Fields(&'a Fields<'a>),
}

impl<'a> From<&'a Json> for Record<'a> {
    fn from(json: &'a Json) -> Self {
        Record::Json(json)
    }
}

impl<'a> From<&'a Fields<'a>> for Record<'a> {
    fn from(fields: &'a Fields<'a>) -> Self {
        Record::Fields(fields)
    }
}

/// The value of one top-level field, as decoded from the record's bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A JSON integer that fits an `i64`.
    Int(i64),
    /// A JSON integer beyond `i64`: a double to expressions, as a JSON
    /// value of the record would be, but kept whole in JSON output.
    Uint(u64),
    /// Any other JSON number.
    Double(f64),
    /// A string, borrowed from the record unless it holds escapes.
    Str(Cow<'a, str>),
    /// An array or an object (boxed, so that the common values stay small).
    Json(Box<Json>),
}

impl FieldValue<'_> {
    /// Appends the field's JSON text as an expression reading it writes
    /// it (see [`super::Expression::record_field`]); an error, and `out`
    /// as it was, for a value JSON cannot hold.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), super::EvalError> {
        let start = out.len();
        // The common values directly, not through a `Val`.
        let written = match self {
            FieldValue::Int(i) => {
                out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes());
                Ok(())
            }
            FieldValue::Str(s) => {
                write_json_string(s, out).map_err(|e| super::EvalError::new(e.to_string()))
            }
            other => other.val().write_json(out),
        };
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    /// The field as an owned JSON value.
    pub fn to_json(&self) -> Json {
        match self {
            FieldValue::Null => Json::Null,
            FieldValue::Bool(b) => Json::Bool(*b),
            FieldValue::Int(i) => Json::from(*i),
            FieldValue::Uint(u) => Json::from(*u),
            FieldValue::Double(d) => {
                serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number)
            }
            FieldValue::Str(s) => Json::String(s.clone().into_owned()),
            FieldValue::Json(json) => (**json).clone(),
        }
    }

    /// The value as expressions see it: the same as the JSON value would be.
    pub(crate) fn val(&self) -> Val<'_> {
        match self {
            FieldValue::Null => Val::Null,
            FieldValue::Bool(b) => Val::Bool(*b),
            FieldValue::Int(i) => Val::Int(*i),
            FieldValue::Uint(u) => Val::Double(*u as f64),
            FieldValue::Double(d) => Val::Double(*d),
            FieldValue::Str(s) => Val::Str(Cow::Borrowed(s)),
            FieldValue::Json(json) => Val::from_json(json),
        }
    }
}

/// The most fields a [`Fields`] record holds.
pub const MAX_FIELDS: usize = 8;

/// Some top-level fields of a JSON object: those named in a sorted list (at
/// most [`MAX_FIELDS`]), each present or not. It lives on the stack, so
/// decoding a record into it allocates only for strings with escapes and
/// nested values.
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    names: &'a [String],
    /// The values, dropped by [`Fields`]'s `Drop` only when `may_own` says
    /// one of them may own memory: a record decoded into plain values has
    /// nothing to free, and looking at every slot to find that out costs
    /// as much as a comparison of the pipeline.
    values: ManuallyDrop<[Option<FieldValue<'a>>; MAX_FIELDS]>,
    /// Whether a value was stored by [`Fields::set`], which takes any
    /// value; [`Fields::plain_slot`] takes only values that own nothing.
    may_own: bool,
}

impl Drop for Fields<'_> {
    fn drop(&mut self) {
        if self.may_own {
            self.clear();
        }
    }
}

/// An emptied slot of [`Fields`], for a decoder to write a value that owns
/// no memory in place (see [`Fields::plain_slot`]).
pub struct PlainSlot<'f, 'a>(&'f mut Option<FieldValue<'a>>);

impl<'a> PlainSlot<'_, 'a> {
    /// Stores `null`.
    #[inline(always)]
    pub fn null(self) {
        *self.0 = Some(FieldValue::Null);
    }

    /// Stores a boolean.
    #[inline(always)]
    pub fn bool(self, value: bool) {
        *self.0 = Some(FieldValue::Bool(value));
    }

    /// Stores an integer.
    #[inline(always)]
    pub fn int(self, value: i64) {
        *self.0 = Some(FieldValue::Int(value));
    }

    /// Stores a double.
    #[inline(always)]
    pub fn double(self, value: f64) {
        *self.0 = Some(FieldValue::Double(value));
    }

    /// Stores a string borrowed from the record.
    #[inline(always)]
    pub fn str(self, value: &'a str) {
        *self.0 = Some(FieldValue::Str(Cow::Borrowed(value)));
    }
}

impl<'a> Fields<'a> {
    /// No fields yet, out of `names` (sorted, without duplicates; only the
    /// first [`MAX_FIELDS`] can be set).
    #[inline]
    pub fn new(names: &'a [String]) -> Fields<'a> {
        Fields {
            names,
            values: Default::default(),
            may_own: false,
        }
    }

    /// The position of `name` in the names, if it is one of them. The
    /// names are few and short: a scan comparing lengths first beats a
    /// binary search.
    #[inline]
    pub fn position(&self, name: &str) -> Option<usize> {
        self.position_of_bytes(name.as_bytes())
    }

    /// The position of the name whose UTF-8 bytes are `name`, if it is one
    /// of them (see [`Fields::position`]).
    #[inline]
    pub fn position_of_bytes(&self, name: &[u8]) -> Option<usize> {
        self.names
            .iter()
            .take(MAX_FIELDS)
            .position(|n| same_bytes(n.as_bytes(), name))
    }

    /// Sets the field at `position` (a later value of a key replaces an
    /// earlier one, as in a decoded JSON object).
    pub fn set(&mut self, position: usize, value: FieldValue<'a>) {
        if let Some(slot) = self.values.get_mut(position) {
            self.may_own = true;
            *slot = Some(value);
        }
    }

    /// The slot of the field at `position`, emptied (an earlier value, of
    /// a repeated key, dropped), for a decoder to write a value that owns
    /// nothing in place: a value built first and then stored is copied
    /// through the stack, which stalls the load that copies it.
    #[inline(always)]
    pub fn plain_slot(&mut self, position: usize) -> Option<PlainSlot<'_, 'a>> {
        let slot = self.values.get_mut(position)?;
        if slot.is_some() {
            *slot = None;
        }
        Some(PlainSlot(slot))
    }

    /// Unsets every field.
    pub fn clear(&mut self) {
        for slot in self.values.iter_mut() {
            *slot = None;
        }
        self.may_own = false;
    }

    /// The field at `position` among the names, if it is called `name` and
    /// the record has it: for readers that found the position once, from
    /// the same names (see [`Fields::position`]), and check it is still
    /// the field they mean.
    #[inline]
    pub fn get_at(&self, position: usize, name: &str) -> Option<&FieldValue<'a>> {
        let found = self.names.get(position)?;
        same_bytes(found.as_bytes(), name.as_bytes())
            .then(|| self.values.get(position)?.as_ref())
            .flatten()
    }

    /// The field called `name`, if the record has it.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&FieldValue<'a>> {
        self.values[self.position(name)?].as_ref()
    }

    /// The fields the record has, with their names, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &FieldValue<'a>)> + '_ {
        self.names
            .iter()
            .zip(self.values.iter())
            .filter_map(|(name, value)| Some((name.as_str(), value.as_ref()?)))
    }

    /// The fields as a JSON object.
    pub fn to_json(&self) -> serde_json::Map<String, Json> {
        self.iter()
            .map(|(name, value)| (name.to_owned(), value.to_json()))
            .collect()
    }
}

impl<'a> Record<'a> {
    /// Whether the record is a JSON object ([`Fields`] always are).
    pub fn is_object(&self) -> bool {
        match self {
            Record::Json(json) => json.is_object(),
            Record::Fields(_) => true,
        }
    }

    /// The record as a whole value. A pipeline decodes into [`Fields`]
    /// only when no expression reads the record whole; if one did, it
    /// would read an object of those fields (with integers beyond `i64` as
    /// doubles, where a JSON value would write them whole).
    pub(crate) fn whole(self) -> Val<'a> {
        match self {
            Record::Json(json) => Val::from_json(json),
            Record::Fields(fields) => Val::Map(Map::Owned(
                fields
                    .iter()
                    .map(|(name, value)| (Val::Str(Cow::Borrowed(name)), value.val()))
                    .collect(),
            )),
        }
    }
}
