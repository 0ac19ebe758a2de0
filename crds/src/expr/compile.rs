//! Compiles the AST of cel's parser into a [`Node`] tree, checking names,
//! arities and the types that are known without a record.

use std::borrow::Cow;
use std::collections::BTreeSet;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo, operators};
use regex::Regex;

use super::CompileError;
pub(crate) use super::node::{Loop, LoopKind, Node, StrMap, StrTest};
use super::value::{Arith, Kind, List, Map, Order, Val, equal, orderable};

/// The name of the one variable of an expression.
const RECORD: &str = "record";
/// The accumulator the parser's macro expansions use.
const ACCUMULATOR: &str = "@result";

/// The type of a node when it is known at compile time; `None` is dynamic.
type Ty = Option<Kind>;

/// The result of compiling an expression.
pub(crate) struct Compiled {
    pub(crate) node: Node,
    pub(crate) fields: Vec<String>,
    pub(crate) whole_record: bool,
}

/// The longest source accepted, in bytes: pipeline expressions are short, and
/// the parser's recursion must fit its stack.
const MAX_SOURCE_LEN: usize = 4096;
/// The deepest nesting of brackets accepted.
const MAX_BRACKET_DEPTH: usize = 32;
/// The deepest expression tree accepted, which bounds the recursion of
/// compiling and evaluating.
const MAX_DEPTH: usize = 128;
/// The stack of the thread that parses: cel's parser recurses deeply per
/// level of nesting. The worst sources the limits above let through (e.g.
/// 370 chained `?:` or 2000 unary operators) parse within 16 MiB even in a
/// debug build, and the tests check them.
const PARSER_STACK: usize = 64 << 20;

/// Parses and compiles `source`, on a thread with a stack large enough for
/// the deepest source accepted.
pub(crate) fn compile(source: &str) -> Result<Compiled, CompileError> {
    if source.len() > MAX_SOURCE_LEN {
        return Err(CompileError::new(
            1,
            1,
            &format!("the expression is longer than {MAX_SOURCE_LEN} bytes"),
        ));
    }
    check_nesting(source)?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("weir-expr-compile".to_owned())
            .stack_size(PARSER_STACK)
            .spawn_scoped(scope, || compile_here(source))
            .map_err(|e| CompileError::new(1, 1, &format!("cannot start the compiler: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(CompileError::new(1, 1, "the expression cannot be parsed")))
    })
}

/// Rejects sources whose brackets nest more than [`MAX_BRACKET_DEPTH`] deep
/// (outside string literals).
fn check_nesting(source: &str) -> Result<(), CompileError> {
    let mut depth = 0_usize;
    let mut quote = None;
    let mut escaped = false;
    for (offset, c) in source.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => {
                depth += 1;
                if depth > MAX_BRACKET_DEPTH {
                    let before = source.get(..offset).unwrap_or_default();
                    let line = before.matches('\n').count() + 1;
                    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
                    return Err(CompileError::new(
                        line,
                        column,
                        &format!("brackets nest more than {MAX_BRACKET_DEPTH} deep"),
                    ));
                }
            }
            (None, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
    }
    Ok(())
}

/// Parses and compiles `source` on the current thread.
fn compile_here(source: &str) -> Result<Compiled, CompileError> {
    let parsed = cel::parser::Parser::new().parse_with_source_info(source);
    let (ast, info) = parsed.map_err(|errors| match errors.errors.first() {
        Some(error) => CompileError::new(
            usize::try_from(error.pos.0).unwrap_or(1).max(1),
            usize::try_from(error.pos.1).unwrap_or(1).max(1),
            &syntax_message(&error.msg),
        ),
        None => CompileError::new(1, 1, "the expression cannot be parsed"),
    })?;
    let mut compiler = Compiler {
        source,
        info,
        scope: Vec::new(),
        fields: BTreeSet::new(),
        whole_record: false,
        depth: 0,
    };
    let (node, _) = compiler.expr(&ast)?;
    Ok(Compiled {
        node,
        fields: compiler.fields.into_iter().collect(),
        whole_record: compiler.whole_record,
    })
}

/// The parser's message, without the list of tokens it expected.
fn syntax_message(message: &str) -> String {
    let message = message.lines().next().unwrap_or(message);
    let message = message.split(" expecting ").next().unwrap_or(message);
    match message.strip_prefix("Syntax error: ") {
        Some(rest) => format!(
            "syntax error: {}",
            rest.replace("'<EOF>'", "end of expression")
        ),
        None => message.to_owned(),
    }
}

/// The state of one compilation.
struct Compiler<'s> {
    source: &'s str,
    info: SourceInfo,
    /// The iteration variables in scope, outermost first: a variable's index
    /// is its slot.
    scope: Vec<String>,
    fields: BTreeSet<String>,
    whole_record: bool,
    /// The depth of the node being compiled.
    depth: usize,
}

/// The name of a type for messages, "dyn" when unknown.
fn ty_name(ty: Ty) -> &'static str {
    ty.map_or("dyn", Kind::name)
}

/// Whether `ty` is known to be something other than `kind`.
fn known_not(ty: Ty, kinds: &[Kind]) -> bool {
    ty.is_some_and(|k| !kinds.contains(&k))
}

impl Compiler<'_> {
    /// The byte offset of the node `id` in the source.
    fn offset(&self, id: u64) -> usize {
        self.info
            .offset_for(id)
            .and_then(|(start, _)| usize::try_from(start).ok())
            .unwrap_or(0)
    }

    /// An error at the position of the node `id`.
    fn error(&self, id: u64, message: impl AsRef<str>) -> CompileError {
        self.error_at(self.offset(id), message.as_ref())
    }

    /// An error at the byte offset `offset` of the source.
    fn error_at(&self, offset: usize, message: &str) -> CompileError {
        let before = self.source.get(..offset).unwrap_or(self.source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        CompileError::new(line, column, message)
    }

    /// Moves an error reported at the call `id` (whose position is its
    /// opening parenthesis) to the start of the function's name.
    fn at_name(&self, id: u64, name: &str, error: CompileError) -> CompileError {
        let offset = self.offset(id);
        let before = self.source.get(..offset).unwrap_or_default().trim_end();
        let at_call = self.error_at(offset, "");
        if before.ends_with(name)
            && (error.line(), error.column()) == (at_call.line(), at_call.column())
        {
            self.error_at(before.len() - name.len(), error.message())
        } else {
            error
        }
    }

    /// Whether `expr` is the variable `record` (not shadowed by a macro's).
    fn is_record(&self, expr: &Expr) -> bool {
        matches!(expr, Expr::Ident(name) if name == RECORD && !self.scope.iter().any(|v| v == RECORD))
    }

    fn expr(&mut self, e: &IdedExpr) -> Result<(Node, Ty), CompileError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(
                e.id,
                format!("the expression nests more than {MAX_DEPTH} levels deep"),
            ));
        }
        self.depth += 1;
        let compiled = self.node(e);
        self.depth -= 1;
        compiled
    }

    fn node(&mut self, e: &IdedExpr) -> Result<(Node, Ty), CompileError> {
        match &e.expr {
            Expr::Literal(literal) => self.literal(e.id, literal),
            Expr::Ident(name) => {
                if let Some(slot) = self.scope.iter().rposition(|v| v == name) {
                    Ok((Node::Var(slot), None))
                } else if name == RECORD {
                    self.whole_record = true;
                    Ok((Node::Record, None))
                } else {
                    Err(self.error(
                        e.id,
                        format!(
                            "unknown identifier '{name}' (the record's fields are read as record.{name})"
                        ),
                    ))
                }
            }
            Expr::Select(select) => {
                let field: Box<str> = select.field.as_str().into();
                if self.is_record(&select.operand.expr) {
                    self.fields.insert(select.field.clone());
                    let node = if select.test {
                        Node::Has(Box::new(Node::Record), field)
                    } else {
                        Node::RecordField(field)
                    };
                    return Ok((node, select.test.then_some(Kind::Bool)));
                }
                let (operand, ty) = self.expr(&select.operand)?;
                if known_not(ty, &[Kind::Map]) {
                    return Err(self.error(
                        e.id,
                        format!(
                            "cannot select field '{}' from {}",
                            select.field,
                            ty_name(ty)
                        ),
                    ));
                }
                Ok(if select.test {
                    (Node::Has(Box::new(operand), field), Some(Kind::Bool))
                } else {
                    (Node::Select(Box::new(operand), field), None)
                })
            }
            Expr::Call(call) => {
                let target = call.target.as_deref();
                self.call(e.id, &call.func_name, target, &call.args)
                    .map_err(|error| self.at_name(e.id, &call.func_name, error))
            }
            Expr::List(list) => {
                if !list.optional_indices.is_empty() {
                    return Err(self.error(e.id, "optional list elements are not supported"));
                }
                let mut nodes = Vec::with_capacity(list.elements.len());
                for element in &list.elements {
                    nodes.push(self.expr(element)?.0);
                }
                let node = match constants(&nodes) {
                    Some(values) => Node::Const(Val::List(List::Owned(values))),
                    None => Node::List(nodes),
                };
                Ok((node, Some(Kind::List)))
            }
            Expr::Map(map) => self.map(&map.entries),
            Expr::Comprehension(comprehension) => self.comprehension(e.id, comprehension),
            Expr::Struct(s) => Err(self.error(
                e.id,
                format!(
                    "message construction ('{}{{...}}') is not supported",
                    s.type_name
                ),
            )),
            Expr::Unspecified => Err(self.error(e.id, "incomplete expression")),
        }
    }

    fn literal(&self, id: u64, literal: &LiteralValue) -> Result<(Node, Ty), CompileError> {
        let value = match literal {
            LiteralValue::Boolean(b) => Val::Bool(*b.inner()),
            LiteralValue::Int(i) => Val::Int(*i.inner()),
            LiteralValue::UInt(u) => Val::Uint(*u.inner()),
            LiteralValue::Double(d) => Val::Double(*d.inner()),
            LiteralValue::String(s) => Val::Str(Cow::Owned(s.inner().to_owned())),
            LiteralValue::Null => Val::Null,
            LiteralValue::Bytes(_) => {
                return Err(self.error(id, "bytes literals are not supported"));
            }
        };
        let kind = value.kind();
        Ok((Node::Const(value), Some(kind)))
    }

    fn map(
        &mut self,
        entries: &[cel::common::ast::IdedEntryExpr],
    ) -> Result<(Node, Ty), CompileError> {
        let mut nodes = Vec::with_capacity(entries.len());
        for entry in entries {
            let EntryExpr::MapEntry(entry) = &entry.expr else {
                return Err(self.error(entry.id, "struct fields are not supported"));
            };
            if entry.optional {
                return Err(self.error(entry.key.id, "optional map entries are not supported"));
            }
            let (key, key_ty) = self.expr(&entry.key)?;
            if known_not(key_ty, &[Kind::String, Kind::Int, Kind::Uint, Kind::Bool]) {
                return Err(self.error(
                    entry.key.id,
                    format!("a map key cannot be {}", ty_name(key_ty)),
                ));
            }
            if let Node::Const(key) = &key
                && nodes
                    .iter()
                    .any(|(k, _)| matches!(k, Node::Const(k) if equal(k, key)))
            {
                return Err(self.error(entry.key.id, "duplicate map key"));
            }
            let (value, _) = self.expr(&entry.value)?;
            nodes.push((key, value));
        }
        let all_const = nodes
            .iter()
            .all(|(k, v)| matches!((k, v), (Node::Const(_), Node::Const(_))));
        let node = if all_const {
            let entries = nodes
                .into_iter()
                .filter_map(|entry| match entry {
                    (Node::Const(k), Node::Const(v)) => Some((k, v)),
                    _ => None,
                })
                .collect();
            Node::Const(Val::Map(Map::Owned(entries)))
        } else {
            Node::Map(nodes)
        };
        Ok((node, Some(Kind::Map)))
    }

    fn comprehension(
        &mut self,
        id: u64,
        c: &cel::common::ast::ComprehensionExpr,
    ) -> Result<(Node, Ty), CompileError> {
        if c.iter_var2.is_some() {
            return Err(self.error(id, "two-variable comprehensions are not supported"));
        }
        let accumulator = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == ACCUMULATOR);
        let step_call = match &c.loop_step.expr {
            Expr::Call(call) if call.target.is_none() => Some(call),
            _ => None,
        };
        // Recognise the expansions of the standard macros (see cel's
        // parser/macros.rs), by their initial accumulator and step.
        let shape = match (&c.accu_init.expr, step_call) {
            (Expr::Literal(LiteralValue::Boolean(b)), Some(step))
                if !*b.inner()
                    && step.func_name == operators::LOGICAL_OR
                    && step.args.len() == 2
                    && accumulator(&step.args[0]) =>
            {
                Some((LoopKind::Exists, None, &step.args[1]))
            }
            (Expr::Literal(LiteralValue::Boolean(b)), Some(step))
                if *b.inner()
                    && step.func_name == operators::LOGICAL_AND
                    && step.args.len() == 2
                    && accumulator(&step.args[0]) =>
            {
                Some((LoopKind::All, None, &step.args[1]))
            }
            (Expr::Literal(LiteralValue::Int(_)), Some(step))
                if step.func_name == operators::CONDITIONAL && step.args.len() == 3 =>
            {
                Some((LoopKind::ExistsOne, None, &step.args[0]))
            }
            (Expr::List(init), Some(step)) if init.elements.is_empty() => {
                let append = appended_element;
                if step.func_name == operators::CONDITIONAL && step.args.len() == 3 {
                    append(&step.args[1]).map(|body| (LoopKind::Map, Some(&step.args[0]), body))
                } else {
                    append(&c.loop_step).map(|body| (LoopKind::Map, None, body))
                }
            }
            _ => None,
        };
        let Some((kind, filter, body)) = shape else {
            return Err(self.error(id, "unsupported comprehension"));
        };
        let (range, range_ty) = self.expr(&c.iter_range)?;
        if known_not(range_ty, &[Kind::List, Kind::Map]) {
            return Err(self.error(
                id,
                format!(
                    "a macro iterates over a list or a map, not {}",
                    ty_name(range_ty)
                ),
            ));
        }
        let slot = self.scope.len();
        self.scope.push(c.iter_var.clone());
        let compiled = self.loop_parts(filter, body, kind);
        self.scope.pop();
        let (filter, body) = compiled?;
        let ty = if kind == LoopKind::Map {
            Kind::List
        } else {
            Kind::Bool
        };
        let node = Node::Loop(Box::new(Loop {
            kind,
            slot,
            range,
            filter,
            body,
        }));
        Ok((node, Some(ty)))
    }

    /// The filter and body of a macro, with its variable in scope.
    fn loop_parts(
        &mut self,
        filter: Option<&IdedExpr>,
        body: &IdedExpr,
        kind: LoopKind,
    ) -> Result<(Option<Node>, Node), CompileError> {
        let filter = match filter {
            Some(filter) => Some(self.bool_operand(filter, "a filter")?),
            None => None,
        };
        let body = if kind == LoopKind::Map {
            self.expr(body)?.0
        } else {
            self.bool_operand(body, "a predicate")?
        };
        Ok((filter, body))
    }

    /// Compiles an operand that must be a bool.
    fn bool_operand(&mut self, e: &IdedExpr, what: &str) -> Result<Node, CompileError> {
        let (node, ty) = self.expr(e)?;
        if known_not(ty, &[Kind::Bool]) {
            return Err(self.error(e.id, format!("{what} must be a bool, not {}", ty_name(ty))));
        }
        Ok(node)
    }

    fn call(
        &mut self,
        id: u64,
        name: &str,
        target: Option<&IdedExpr>,
        args: &[IdedExpr],
    ) -> Result<(Node, Ty), CompileError> {
        let arity = |expected: usize| -> Result<(), CompileError> {
            if args.len() == expected {
                Ok(())
            } else {
                Err(self.error(
                    id,
                    format!(
                        "'{name}' takes {expected} argument{}, got {}",
                        if expected == 1 { "" } else { "s" },
                        args.len()
                    ),
                ))
            }
        };
        let arith = match name {
            operators::ADD => Some(Arith::Add),
            operators::SUBSTRACT => Some(Arith::Sub),
            operators::MULTIPLY => Some(Arith::Mul),
            operators::DIVIDE => Some(Arith::Div),
            operators::MODULO => Some(Arith::Rem),
            _ => None,
        };
        if let Some(op) = arith {
            let ((lhs, l), (rhs, r)) = self.binary(id, args)?;
            if let (Some(l), Some(r)) = (l, r)
                && (l != r || !op.defined_for(l))
            {
                return Err(self.error(id, op.mismatch(l, r)));
            }
            return Ok((Node::Arith(op, Box::new(lhs), Box::new(rhs)), l.or(r)));
        }
        let order = match name {
            operators::LESS => Some(Order::Lt),
            operators::LESS_EQUALS => Some(Order::Le),
            operators::GREATER => Some(Order::Gt),
            operators::GREATER_EQUALS => Some(Order::Ge),
            _ => None,
        };
        if let Some(op) = order {
            let ((lhs, l), (rhs, r)) = self.binary(id, args)?;
            if let (Some(l), Some(r)) = (l, r)
                && !orderable(l, r)
            {
                return Err(self.error(id, format!("cannot compare {} and {}", l.name(), r.name())));
            }
            return Ok((
                Node::Order(op, Box::new(lhs), Box::new(rhs)),
                Some(Kind::Bool),
            ));
        }
        match (name, target) {
            (operators::EQUALS | operators::NOT_EQUALS, None) => {
                let ((lhs, l), (rhs, r)) = self.binary(id, args)?;
                if let (Some(l), Some(r)) = (l, r)
                    && l != r
                    && !(l.is_numeric() && r.is_numeric())
                    && l != Kind::Null
                    && r != Kind::Null
                {
                    return Err(self.error(
                        id,
                        format!(
                            "comparing {} and {} with '{}' is always {}",
                            l.name(),
                            r.name(),
                            if name == operators::EQUALS {
                                "=="
                            } else {
                                "!="
                            },
                            name != operators::EQUALS
                        ),
                    ));
                }
                let (lhs, rhs) = (Box::new(lhs), Box::new(rhs));
                let node = if name == operators::EQUALS {
                    Node::Eq(lhs, rhs)
                } else {
                    Node::Ne(lhs, rhs)
                };
                Ok((node, Some(Kind::Bool)))
            }
            (operators::LOGICAL_AND | operators::LOGICAL_OR, None) => {
                let op = if name == operators::LOGICAL_AND {
                    "&&"
                } else {
                    "||"
                };
                let mut operands = args.iter();
                let Some(first) = operands.next() else {
                    return Err(self.error(id, format!("'{op}' needs two operands")));
                };
                let what = format!("an operand of '{op}'");
                let mut node = self.bool_operand(first, &what)?;
                for operand in operands {
                    let rhs = Box::new(self.bool_operand(operand, &what)?);
                    node = if name == operators::LOGICAL_AND {
                        Node::And(Box::new(node), rhs)
                    } else {
                        Node::Or(Box::new(node), rhs)
                    };
                }
                Ok((node, Some(Kind::Bool)))
            }
            (operators::LOGICAL_NOT, None) => {
                arity(1)?;
                let operand = self.bool_operand(&args[0], "the operand of '!'")?;
                Ok((Node::Not(Box::new(operand)), Some(Kind::Bool)))
            }
            (operators::NEGATE, None) => {
                arity(1)?;
                let (operand, ty) = self.expr(&args[0])?;
                if known_not(ty, &[Kind::Int, Kind::Double]) {
                    return Err(self.error(id, format!("cannot negate {}", ty_name(ty))));
                }
                Ok((Node::Neg(Box::new(operand)), ty))
            }
            (operators::CONDITIONAL, None) => {
                arity(3)?;
                let condition = self.bool_operand(&args[0], "the condition of '?:'")?;
                let (then, t) = self.expr(&args[1])?;
                let (otherwise, o) = self.expr(&args[2])?;
                let ty = if t == o { t } else { None };
                let node = Node::Cond(Box::new(condition), Box::new(then), Box::new(otherwise));
                Ok((node, ty))
            }
            (operators::IN, None) => {
                let ((needle, _), (haystack, h)) = self.binary(id, args)?;
                if known_not(h, &[Kind::List, Kind::Map]) {
                    return Err(self.error(
                        id,
                        format!(
                            "'in' needs a list or a map on its right, not {}",
                            ty_name(h)
                        ),
                    ));
                }
                Ok((
                    Node::In(Box::new(needle), Box::new(haystack)),
                    Some(Kind::Bool),
                ))
            }
            (operators::INDEX, None) => self.index(id, args),
            ("size", _) => {
                let operands = self.operands(id, name, target, args, 1)?;
                let [(operand, ty)]: [(Node, Ty); 1] = operands
                    .try_into()
                    .map_err(|_| self.error(id, "'size' takes 1 argument"))?;
                if known_not(ty, &[Kind::String, Kind::List, Kind::Map]) {
                    return Err(
                        self.error(id, format!("size() is not defined for {}", ty_name(ty)))
                    );
                }
                Ok((Node::Size(Box::new(operand)), Some(Kind::Int)))
            }
            ("contains" | "startsWith" | "endsWith" | "matches", _) => {
                let [(subject, s), (argument, a)] = self.string_call(id, name, target, args)?;
                let test = match name {
                    "contains" => StrTest::Contains,
                    "startsWith" => StrTest::StartsWith,
                    "endsWith" => StrTest::EndsWith,
                    _ => StrTest::Matches,
                };
                for ty in [s, a] {
                    if known_not(ty, &[Kind::String]) {
                        return Err(
                            self.error(id, format!("'{name}' takes strings, not {}", ty_name(ty)))
                        );
                    }
                }
                let node = match (test, argument) {
                    (StrTest::Matches, Node::Const(Val::Str(pattern))) => {
                        let regex = Regex::new(&pattern).map_err(|e| {
                            let reason = e.to_string();
                            let reason = reason.lines().last().unwrap_or("invalid").trim();
                            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                            self.error(
                                id,
                                format!("invalid regular expression '{pattern}': {reason}"),
                            )
                        })?;
                        Node::Matches(Box::new(subject), Box::new(regex))
                    }
                    (test, argument) => Node::StrTest(test, Box::new(subject), Box::new(argument)),
                };
                Ok((node, Some(Kind::Bool)))
            }
            ("lowerAscii" | "upperAscii" | "trim", Some(target)) => {
                arity(0)?;
                let (subject, ty) = self.expr(target)?;
                if known_not(ty, &[Kind::String]) {
                    return Err(self.error(
                        id,
                        format!("'{name}' is defined for strings, not {}", ty_name(ty)),
                    ));
                }
                let map = match name {
                    "lowerAscii" => StrMap::LowerAscii,
                    "upperAscii" => StrMap::UpperAscii,
                    _ => StrMap::Trim,
                };
                Ok((Node::StrMap(map, Box::new(subject)), Some(Kind::String)))
            }
            ("lowerAscii" | "upperAscii" | "trim", None) => Err(self.error(
                id,
                format!("'{name}' is called as a method: <string>.{name}()"),
            )),
            ("int" | "uint" | "double" | "string" | "bool" | "dyn", None) => {
                arity(1)?;
                let (operand, ty) = self.expr(&args[0])?;
                let (to, from): (Kind, &[Kind]) = match name {
                    "int" => (
                        Kind::Int,
                        &[Kind::Int, Kind::Uint, Kind::Double, Kind::String],
                    ),
                    "uint" => (
                        Kind::Uint,
                        &[Kind::Int, Kind::Uint, Kind::Double, Kind::String],
                    ),
                    "double" => (
                        Kind::Double,
                        &[Kind::Int, Kind::Uint, Kind::Double, Kind::String],
                    ),
                    "string" => (
                        Kind::String,
                        &[
                            Kind::Int,
                            Kind::Uint,
                            Kind::Double,
                            Kind::String,
                            Kind::Bool,
                        ],
                    ),
                    "bool" => (Kind::Bool, &[Kind::Bool, Kind::String]),
                    _ => return Ok((operand, None)),
                };
                if known_not(ty, from) {
                    return Err(self.error(
                        id,
                        format!("cannot convert {} to {}", ty_name(ty), to.name()),
                    ));
                }
                Ok((Node::Convert(to, Box::new(operand)), Some(to)))
            }
            ("int" | "uint" | "double" | "string" | "bool" | "dyn", Some(_)) => Err(self.error(
                id,
                format!("'{name}' is called as a function: {name}(<value>)"),
            )),
            (operators::OPT_INDEX | operators::OPT_SELECT, _) => {
                Err(self.error(id, "optional syntax is not supported"))
            }
            (
                operators::ALL
                | operators::EXISTS
                | operators::EXISTS_ONE
                | "existsOne"
                | operators::MAP
                | operators::FILTER,
                _,
            ) => Err(self.error(
                id,
                format!("'{name}' is a macro called as <list>.{name}(<variable>, <expression>)"),
            )),
            _ => Err(self.error(id, format!("unknown function '{name}'"))),
        }
    }

    /// Compiles the two operands of a binary operator.
    #[allow(clippy::type_complexity)]
    fn binary(
        &mut self,
        id: u64,
        args: &[IdedExpr],
    ) -> Result<((Node, Ty), (Node, Ty)), CompileError> {
        match args {
            [lhs, rhs] => Ok((self.expr(lhs)?, self.expr(rhs)?)),
            _ => Err(self.error(id, "an operator needs two operands")),
        }
    }

    /// Compiles the operands of a function that is called either as
    /// `f(a, b...)` or as `a.f(b...)`, with `count` operands in all.
    fn operands(
        &mut self,
        id: u64,
        name: &str,
        target: Option<&IdedExpr>,
        args: &[IdedExpr],
        count: usize,
    ) -> Result<Vec<(Node, Ty)>, CompileError> {
        let given = args.len() + usize::from(target.is_some());
        if given != count {
            let expected = count - usize::from(target.is_some());
            return Err(self.error(
                id,
                format!(
                    "'{name}' takes {expected} argument{}, got {}",
                    if expected == 1 { "" } else { "s" },
                    args.len()
                ),
            ));
        }
        let mut operands = Vec::with_capacity(count);
        for operand in target.into_iter().chain(args) {
            operands.push(self.expr(operand)?);
        }
        Ok(operands)
    }

    /// Compiles the receiver and argument of a string function: a method,
    /// except `matches` which is also a function of two strings.
    fn string_call(
        &mut self,
        id: u64,
        name: &str,
        target: Option<&IdedExpr>,
        args: &[IdedExpr],
    ) -> Result<[(Node, Ty); 2], CompileError> {
        if target.is_none() && name != "matches" {
            return Err(self.error(
                id,
                format!("'{name}' is called as a method: <string>.{name}(<string>)"),
            ));
        }
        let operands = self.operands(id, name, target, args, 2)?;
        operands
            .try_into()
            .map_err(|_| self.error(id, format!("'{name}' takes 2 operands")))
    }

    fn index(&mut self, id: u64, args: &[IdedExpr]) -> Result<(Node, Ty), CompileError> {
        if let [operand, index] = args
            && self.is_record(&operand.expr)
            && let Expr::Literal(LiteralValue::String(field)) = &index.expr
        {
            self.fields.insert(field.inner().to_owned());
            return Ok((Node::RecordField(field.inner().into()), None));
        }
        let ((operand, o), (index, i)) = self.binary(id, args)?;
        let allowed: &[Kind] = match o {
            Some(Kind::List) => &[Kind::Int, Kind::Uint],
            Some(Kind::Map) => &[Kind::String, Kind::Int, Kind::Uint, Kind::Bool],
            None => &[Kind::String, Kind::Int, Kind::Uint, Kind::Bool],
            Some(other) => {
                return Err(self.error(id, format!("cannot index {}", other.name())));
            }
        };
        if known_not(i, allowed) {
            return Err(self.error(
                id,
                format!("cannot index {} with {}", ty_name(o), ty_name(i)),
            ));
        }
        Ok((Node::Index(Box::new(operand), Box::new(index)), None))
    }
}

/// The `x` of a step `@result + [x]` of a `map` or `filter` expansion.
fn appended_element(step: &IdedExpr) -> Option<&IdedExpr> {
    match &step.expr {
        Expr::Call(add)
            if add.func_name == operators::ADD
                && add.args.len() == 2
                && matches!(&add.args[0].expr, Expr::Ident(n) if n == ACCUMULATOR) =>
        {
            match &add.args[1].expr {
                Expr::List(l) if l.elements.len() == 1 => l.elements.first(),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The values of `nodes` if they are all constants.
fn constants(nodes: &[Node]) -> Option<Vec<Val<'static>>> {
    nodes
        .iter()
        .map(|node| match node {
            Node::Const(value) => Some(value.clone()),
            _ => None,
        })
        .collect()
}
