//! The expression language of pipelines: CEL (the Kubernetes expression
//! language) over one variable, `record`, the decoded JSON value of a record.
//!
//! An expression is [`compile`](fn@compile)d once, at start-up, into a tree that is then
//! evaluated directly over each record ([`Record`]): a [`serde_json::Value`],
//! or only the top-level fields the pipeline reads, decoded straight from the
//! record's bytes ([`Fields`]). Nothing is converted per record, and field
//! accesses, comparisons and filters borrow from the record instead of
//! allocating.
//!
//! # Supported
//!
//! - Literals: null, bools, ints, uints (`1u`), doubles, strings, lists and
//!   maps. JSON numbers are ints when they are integers that fit an `i64`, and
//!   doubles otherwise.
//! - `record.field`, `record["field"]`, `x.field` on maps, `has(x.field)`,
//!   indexing lists (by int or uint) and maps.
//! - Arithmetic `+ - * / %` on two ints, two uints or two doubles (no `%` on
//!   doubles); overflow, division by zero and modulus by zero are errors.
//!   Like CEL, there is no arithmetic between different numeric types: write
//!   `double(record.n) * 1.5`. `+` also joins strings and lists.
//! - `==` and `!=` between any values, numbers comparing by value across int,
//!   uint and double; `< <= > >=` between numbers (across types), strings and
//!   bools.
//! - `&&`, `||` (short-circuiting, with CEL's error absorption: `false &&
//!   error` is false), `!`, `? :`, `in` (lists and map keys).
//! - `size()`, the string methods `contains`, `startsWith`, `endsWith`,
//!   `matches` (RE2 syntax of the `regex` crate; a literal pattern is compiled
//!   once), `lowerAscii`, `upperAscii`, `trim`, and the conversions `int()`,
//!   `uint()`, `double()`, `string()`, `bool()`, and `dyn()` (which hides
//!   a type from the checks made when compiling).
//! - The macros `all`, `exists`, `exists_one`, `map` (also with a filter) and
//!   `filter` over lists and map keys.
//!
//! # Rejected when compiled
//!
//! Syntax errors, identifiers other than `record` and macro variables,
//! unknown functions, wrong arities, type errors between operands whose types
//! are known without a record (`"a" - 1`, `size(1)`, `1 == "a"`), invalid
//! literal regular expressions, bytes literals, message construction,
//! optional syntax, two-variable comprehensions, functions outside the list
//! above (e.g. `timestamp()`, `duration()`), and sources longer than 4096
//! bytes, with brackets nested more than 32 deep or trees more than 128
//! levels deep (which bound the recursion of parsing and evaluating).
//!
//! # Differences from cel-go
//!
//! `string()` of a double writes Rust's shortest round-tripping decimal
//! without an exponent (`string(1e20)` is `"100000000000000000000"`, not
//! `"1e+20"`); `matches` uses the `regex` crate, whose syntax is RE2's with
//! minor differences; `trim` removes Unicode white space. Errors are plain
//! messages (see [`EvalError`]), and an expression's result is a JSON value,
//! so a map with int keys becomes an object keyed by their text.

mod compile;
mod condition;
mod eval;
mod node;
mod record;
#[cfg(test)]
mod tests;
mod value;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::Value as Json;

use self::compile::Node;
use self::eval::Scope;
use self::value::Val;

pub use self::condition::Condition;
pub use self::record::{FieldValue, Fields, MAX_FIELDS, PlainSlot, Record};
pub use self::value::write_json_string;

/// Compiles `source`, checking it as far as it can be without a record.
pub fn compile(source: &str) -> Result<Expression, CompileError> {
    let compiled = compile::compile(source)?;
    Ok(Expression {
        inner: Arc::new(Inner {
            source: source.to_owned(),
            node: compiled.node,
            fields: compiled.fields,
            whole_record: compiled.whole_record,
        }),
    })
}

/// A compiled expression, cheap to clone and to share between threads.
#[derive(Clone)]
pub struct Expression {
    inner: Arc<Inner>,
}

/// What an [`Expression`] shares between its clones.
struct Inner {
    source: String,
    node: Node,
    fields: Vec<String>,
    whole_record: bool,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expression")
            .field("source", &self.inner.source)
            .field("fields", &self.inner.fields)
            .field("whole_record", &self.inner.whole_record)
            .finish_non_exhaustive()
    }
}

impl Expression {
    /// The source text the expression was compiled from.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Evaluates the expression over `record`, returning the result.
    fn value<'a>(&'a self, record: Record<'a>) -> Result<Val<'a>, EvalError> {
        self.inner.node.eval(Scope::new(record))
    }

    /// Evaluates to an owned JSON value (map step outputs). Maps with int,
    /// uint or bool keys become objects keyed by the key's text; a double
    /// that is NaN or infinite is an error, as JSON cannot hold it.
    pub fn eval<'r>(&self, record: impl Into<Record<'r>>) -> Result<Json, EvalError> {
        self.value(record.into())?.to_json()
    }

    /// Evaluates and appends the result to `out` as JSON text, the same JSON
    /// as [`eval`](Self::eval) gives, without building a JSON value: for map
    /// step outputs that are encoded anyway. On error `out` is left as it
    /// was.
    pub fn eval_json<'r>(
        &self,
        record: impl Into<Record<'r>>,
        out: &mut Vec<u8>,
    ) -> Result<(), EvalError> {
        let start = out.len();
        let written = self
            .value(record.into())
            .and_then(|value| value.write_json(out));
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    /// Evaluates a filter: an error when the result is not a bool.
    pub fn eval_bool<'r>(&self, record: impl Into<Record<'r>>) -> Result<bool, EvalError> {
        self.inner
            .node
            .test(Scope::new(record.into()), "the expression")
    }

    /// Evaluates a number for an aggregate (sum, min, max, avg): ints, uints
    /// and doubles as `f64`; an error otherwise.
    pub fn eval_f64<'r>(&self, record: impl Into<Record<'r>>) -> Result<f64, EvalError> {
        match self.value(record.into())? {
            Val::Int(i) => Ok(i as f64),
            Val::Uint(u) => Ok(u as f64),
            Val::Double(d) => Ok(d),
            other => Err(EvalError::new(format!(
                "the expression must be a number, not {}",
                other.kind().name()
            ))),
        }
    }

    /// Evaluates a key (keyBy, dedupe, approxDistinct) and appends its
    /// canonical bytes to `out`.
    ///
    /// The encoding is the text of the value, as `string()` gives it: a
    /// string is its UTF-8 bytes, an int or uint its decimal digits, a double
    /// its shortest round-tripping decimal (`42.0` is `42`), a bool `true` or
    /// `false`, and a list or map its JSON text. So `"42"`, `42`, `42u` and
    /// `42.0` are the same key: a key is compared the way CEL's `==` compares
    /// numbers, and a field that one producer writes as a string and another
    /// as a number still groups together. Write `type`-distinguishing keys
    /// explicitly, e.g. `string(record.id) + ":" + record.kind`, if they must
    /// differ. A null (or missing) key is an error, and leaves `out` as it
    /// was.
    pub fn eval_key<'r>(
        &self,
        record: impl Into<Record<'r>>,
        out: &mut Vec<u8>,
    ) -> Result<(), EvalError> {
        let start = out.len();
        let written = self
            .value(record.into())
            .and_then(|value| value.write_text(out));
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    /// The top-level fields of `record` the expression reads, sorted and
    /// deduplicated, so the worker can decode only those. When
    /// [`reads_whole_record`](Self::reads_whole_record) is true the
    /// expression also reads the record as a whole and needs every field.
    pub fn fields(&self) -> &[String] {
        &self.inner.fields
    }

    /// The field's name when the expression is only a top-level field of
    /// the record (`record.amount`): a reader that found the field's slot
    /// in [`Fields`] may read it there, and write it with
    /// [`FieldValue::write_json`], which gives what
    /// [`eval_json`](Self::eval_json) would.
    pub fn record_field(&self) -> Option<&str> {
        match &self.inner.node {
            Node::RecordField(name) => Some(name),
            _ => None,
        }
    }

    /// Whether the expression uses `record` other than by selecting named
    /// fields (e.g. `size(record)`, `record[k]`, `"x" in record`), so that the
    /// whole record must be decoded.
    pub fn reads_whole_record(&self) -> bool {
        self.inner.whole_record
    }
}

/// Why an expression does not compile: a one-line reason with the position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", position(*.line, *.column))]
pub struct CompileError {
    line: usize,
    column: usize,
    message: String,
}

/// "column C: " on the first line, "line L, column C: " after it.
fn position(line: usize, column: usize) -> String {
    if line > 1 {
        format!("line {line}, column {column}: ")
    } else {
        format!("column {column}: ")
    }
}

impl CompileError {
    /// An error at `line` and `column` (both 1-based, the column in
    /// characters).
    fn new(line: usize, column: usize, message: &str) -> Self {
        CompileError {
            line,
            column,
            message: message.to_owned(),
        }
    }

    /// The line of the error, 1-based.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The column of the error, 1-based, in characters.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The reason, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why an expression failed for one record, e.g. "no such field 'amount'",
/// "cannot add string and int" or "division by zero".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    message: Cow<'static, str>,
}

impl EvalError {
    /// An error with a computed message.
    fn new(message: String) -> Self {
        EvalError {
            message: Cow::Owned(message),
        }
    }

    /// An error with a fixed message, which does not allocate.
    fn new_static(message: &'static str) -> Self {
        EvalError {
            message: Cow::Borrowed(message),
        }
    }

    /// The reason.
    pub fn message(&self) -> &str {
        &self.message
    }
}
