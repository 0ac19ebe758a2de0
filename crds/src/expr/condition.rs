//! A filter's condition compiled against the fields a pipeline decodes.
//!
//! The conditions filters are mostly made of — a field compared with a
//! constant (`record.amount > 100`, `record.country == 'DE'`), joined by
//! `&&`, `||` and `!` — are compiled into a small tree that reads each
//! field from its slot in [`Fields`] (found once, when the condition is
//! bound to the pipeline's decoded names) and compares it with its
//! constant, with no dispatch over the general expression tree. The fast
//! tree answers only where it gives what the expression gives (a field
//! present, of a type the comparison orders as the expression does); on
//! any other record, and for every other shape of condition, the
//! expression is evaluated as usual, so results and errors never differ.

use std::cmp::Ordering;

use super::compile::Node;
use super::eval::field_value_against_constant;
use super::value::{Order, Val, same_bytes};
use super::{EvalError, Expression, FieldValue, Fields, Record};

/// A filter's condition: its expression, and the fast tree of the shapes
/// above when it has one of them.
#[derive(Clone, Debug)]
pub struct Condition {
    expression: Expression,
    fast: Option<Fast>,
}

/// The compiled shapes.
#[derive(Clone, Debug)]
enum Fast {
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
    /// A field, at its position among the decoded names, against a
    /// constant.
    Compare {
        position: usize,
        name: Box<str>,
        test: Test,
        constant: Val<'static>,
    },
}

/// What a comparison asks of the ordering of the field and the constant.
#[derive(Clone, Copy, Debug)]
enum Test {
    Eq,
    Ne,
    Order(Order),
}

impl Condition {
    /// The condition of `expression` over records decoded into fields of
    /// `names` (the decode plan's; `None` when records are decoded whole,
    /// where only the expression is evaluated).
    pub fn bind(expression: Expression, names: Option<&[String]>) -> Condition {
        let fast = names.and_then(|names| Fast::compile(&expression.inner.node, names));
        Condition { expression, fast }
    }

    /// The expression the condition was compiled from.
    pub fn expression(&self) -> &Expression {
        &self.expression
    }

    /// Evaluates the condition over `record`, as
    /// [`Expression::eval_bool`] does.
    #[inline]
    pub fn test<'r>(&self, record: impl Into<Record<'r>>) -> Result<bool, EvalError> {
        let record = record.into();
        if let (Some(fast), Record::Fields(fields)) = (&self.fast, record)
            && let Some(holds) = fast.test(fields)
        {
            return Ok(holds);
        }
        self.expression.eval_bool(record)
    }
}

impl Fast {
    /// The fast tree of `node`, if it has one of the shapes, reading
    /// fields among `names`.
    fn compile(node: &Node, names: &[String]) -> Option<Fast> {
        let both = |lhs: &Node, rhs: &Node| {
            Some((
                Box::new(Fast::compile(lhs, names)?),
                Box::new(Fast::compile(rhs, names)?),
            ))
        };
        let compare = |lhs: &Node, rhs: &Node, test: Test| match (lhs, rhs) {
            (Node::RecordField(name), Node::Const(constant)) => Some(Fast::Compare {
                position: names.iter().position(|n| **n == **name)?,
                name: name.clone(),
                test,
                constant: constant.clone(),
            }),
            _ => None,
        };
        match node {
            Node::And(lhs, rhs) => both(lhs, rhs).map(|(l, r)| Fast::And(l, r)),
            Node::Or(lhs, rhs) => both(lhs, rhs).map(|(l, r)| Fast::Or(l, r)),
            Node::Not(operand) => Fast::compile(operand, names).map(|o| Fast::Not(Box::new(o))),
            Node::Eq(lhs, rhs) => compare(lhs, rhs, Test::Eq),
            Node::Ne(lhs, rhs) => compare(lhs, rhs, Test::Ne),
            Node::Order(op, lhs, rhs) => compare(lhs, rhs, Test::Order(*op)),
            _ => None,
        }
    }

    /// The condition's value over `fields`, where it is the expression's;
    /// `None` where only the expression can tell (an absent field, other
    /// types, NaN, or an operand the other operand does not decide).
    fn test(&self, fields: &Fields<'_>) -> Option<bool> {
        match self {
            // `false && x` is false whatever x is, an error included.
            Fast::And(lhs, rhs) => match lhs.test(fields)? {
                false => Some(false),
                true => rhs.test(fields),
            },
            Fast::Or(lhs, rhs) => match lhs.test(fields)? {
                true => Some(true),
                false => rhs.test(fields),
            },
            Fast::Not(operand) => operand.test(fields).map(|b| !b),
            Fast::Compare {
                position,
                name,
                test,
                constant,
            } => {
                let field = fields.get_at(*position, name)?;
                // Equal strings without ordering them.
                if let (Test::Eq | Test::Ne, FieldValue::Str(a), Val::Str(b)) =
                    (test, field, constant)
                {
                    return Some(
                        same_bytes(a.as_bytes(), b.as_bytes()) == matches!(test, Test::Eq),
                    );
                }
                let ordering: Ordering = field_value_against_constant(field, constant)?;
                Some(match test {
                    Test::Eq => ordering.is_eq(),
                    Test::Ne => ordering.is_ne(),
                    Test::Order(op) => op.holds(ordering),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;

    use super::*;
    use crate::expr::compile;

    fn names() -> Vec<String> {
        ["amount", "country", "flag", "ts"]
            .map(str::to_owned)
            .to_vec()
    }

    /// Comparisons of every kind, and conditions the fast tree leaves to
    /// the expression.
    const COMPARISONS: &[&str] = &[
        "record.amount > 100",
        "record.amount <= 100.5",
        "record.amount == 7",
        "record.amount != 7u",
        "record.country == 'DE'",
        "record.country >= 'FR'",
        "record.country != 'US'",
        "record.flag == true",
        "record.ts < 5",
        "record.missing == 1",
        "record.amount + 1 > 2",
        "size(record.country) == 2",
    ];

    fn condition() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(COMPARISONS).prop_map(str::to_owned);
        leaf.prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) || ({b})")),
                inner.prop_map(|a| format!("!({a})")),
            ]
        })
    }

    fn value() -> impl Strategy<Value = Option<FieldValue<'static>>> {
        prop_oneof![
            Just(None),
            Just(Some(FieldValue::Null)),
            any::<bool>().prop_map(|b| Some(FieldValue::Bool(b))),
            (-3_i64..200).prop_map(|i| Some(FieldValue::Int(i))),
            Just(Some(FieldValue::Uint(u64::MAX))),
            prop_oneof![Just(f64::NAN), Just(-0.0), Just(100.5), -3.0..200.0]
                .prop_map(|d| Some(FieldValue::Double(d))),
            prop::sample::select(&["DE", "FR", "US", "", "ZZ"][..])
                .prop_map(|s| Some(FieldValue::Str(Cow::Borrowed(s)))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The bound condition gives what the expression gives, errors
        /// included, on records of every type of field, absent ones too.
        #[test]
        fn agrees_with_the_expression(
            source in condition(),
            values in prop::collection::vec(value(), 4),
        ) {
            let names = names();
            let mut fields = Fields::new(&names);
            for (position, value) in values.into_iter().enumerate() {
                if let Some(value) = value {
                    fields.set(position, value);
                }
            }
            let expression = compile(&source).unwrap();
            let condition = Condition::bind(expression.clone(), Some(&names));
            prop_assert_eq!(
                condition.test(&fields),
                expression.eval_bool(&fields),
                "{}", source
            );
        }
    }

    #[test]
    fn compiles_comparisons_of_fields_with_constants_only() {
        let names = names();
        let bound = |source: &str| Condition::bind(compile(source).unwrap(), Some(&names));
        assert!(
            bound("record.amount > 100 && record.country == 'DE'")
                .fast
                .is_some()
        );
        assert!(
            bound("!(record.ts < 5) || record.flag == true")
                .fast
                .is_some()
        );
        assert!(bound("record.amount + 1 > 2").fast.is_none());
        assert!(
            bound("record.missing == 1").fast.is_none(),
            "not a decoded field"
        );
        assert!(
            Condition::bind(compile("record.ts < 5").unwrap(), None)
                .fast
                .is_none()
        );
    }
}
