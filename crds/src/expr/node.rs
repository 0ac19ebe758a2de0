//! The compiled form of an expression: a tree of [`Node`]s that
//! [`super::compile()`] builds and [`super::eval`] evaluates.

use regex::Regex;

use super::value::{Arith, Kind, Order, Val};

/// A compiled expression node, evaluated by [`Node::eval`](super::eval).
#[derive(Debug)]
pub(crate) enum Node {
    /// A constant.
    Const(Val<'static>),
    /// The whole record.
    Record,
    /// A top-level field of the record.
    RecordField(Box<str>),
    /// The iteration variable of the macro at this depth.
    Var(usize),
    /// `operand.field`.
    Select(Box<Node>, Box<str>),
    /// `has(operand.field)`.
    Has(Box<Node>, Box<str>),
    /// `operand[index]`.
    Index(Box<Node>, Box<Node>),
    /// A list built from its elements.
    List(Vec<Node>),
    /// A map built from its entries.
    Map(Vec<(Node, Node)>),
    /// `_&&_`.
    And(Box<Node>, Box<Node>),
    /// `_||_`.
    Or(Box<Node>, Box<Node>),
    /// `!_`.
    Not(Box<Node>),
    /// `_?_:_`.
    Cond(Box<Node>, Box<Node>, Box<Node>),
    /// `-_`.
    Neg(Box<Node>),
    /// An arithmetic operator.
    Arith(Arith, Box<Node>, Box<Node>),
    /// `_==_`.
    Eq(Box<Node>, Box<Node>),
    /// `_!=_`.
    Ne(Box<Node>, Box<Node>),
    /// An ordering operator.
    Order(Order, Box<Node>, Box<Node>),
    /// `@in`.
    In(Box<Node>, Box<Node>),
    /// `size()`.
    Size(Box<Node>),
    /// A string function of two strings.
    StrTest(StrTest, Box<Node>, Box<Node>),
    /// `matches()` with a pattern known at compile time.
    Matches(Box<Node>, Box<Regex>),
    /// A string function of one string.
    StrMap(StrMap, Box<Node>),
    /// A type conversion.
    Convert(Kind, Box<Node>),
    /// A macro iterating over a list or the keys of a map.
    Loop(Box<Loop>),
}

/// The string functions that test one string against another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StrTest {
    Contains,
    StartsWith,
    EndsWith,
    /// `matches()` with a pattern computed per record.
    Matches,
}

/// The string functions that transform a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StrMap {
    LowerAscii,
    UpperAscii,
    Trim,
}

/// What a macro computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoopKind {
    Exists,
    All,
    ExistsOne,
    /// `map()` (with an optional filter, in `Loop::filter`) and `filter()`.
    Map,
}

/// A macro: `range.kind(var, [filter,] body)`.
#[derive(Debug)]
pub(crate) struct Loop {
    pub(crate) kind: LoopKind,
    pub(crate) slot: usize,
    pub(crate) range: Node,
    pub(crate) filter: Option<Node>,
    pub(crate) body: Node,
}
