//! Tests of the expression language: tables of expressions over records, the
//! compile errors, error absorption, overflow, allocation, and a property
//! test against cel's own interpreter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::cell::Cell;

use proptest::prelude::*;
use serde_json::{Value as Json, json};

use super::value::{Val, same_bytes, write_json_string};
use super::{Expression, FieldValue, Fields, compile};

/// A record with a field of every kind.
fn record() -> Json {
    json!({
        "user_id": "u123",
        "amount": 12.5,
        "country": "DE",
        "ts": 1_732_176_000_000_i64,
        "n": 7,
        "items": [{"price": 3}, {"price": 20}],
        "tags": ["a", "b"],
        "email": "Jo@Example.com",
        "coupon": null,
        "big": 18_446_744_073_709_551_615_u64,
        "nested": {"k": "v", "x": 1},
        "padded": "  hi  ",
        "word": "héllo",
    })
}

fn compiled(source: &str) -> Expression {
    compile(source).unwrap_or_else(|e| panic!("{source}: {e}"))
}

/// Each expression evaluates, over [`record`], to the value or to the error
/// message given.
fn check(cases: &[(&str, Result<Json, &str>)]) {
    let record = record();
    for (source, expected) in cases {
        let expression = compiled(source);
        let actual = expression.eval(&record).map_err(|e| e.to_string());
        let expected = expected.clone().map_err(str::to_owned);
        assert_eq!(actual, expected, "{source}");
        // eval_json writes the same JSON, or fails the same way and leaves the
        // buffer as it was.
        let mut out = b"[".to_vec();
        let written = expression
            .eval_json(&record, &mut out)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                out.push(b']');
                serde_json::from_slice::<Json>(&out).map_err(|e| e.to_string())
            });
        match (written, expected) {
            (Ok(Json::Array(written)), Ok(expected)) => {
                assert_eq!(written, [expected], "{source}")
            }
            (Err(written), Err(expected)) => {
                assert_eq!(
                    (written, out.as_slice()),
                    (expected, b"[".as_slice()),
                    "{source}"
                )
            }
            (written, expected) => panic!("{source}: {written:?} but {expected:?}"),
        }
    }
}

#[test]
fn the_examples_evaluate() {
    check(&[
        (
            "record.amount > 10.0 && record.country != \"XX\"",
            Ok(json!(true)),
        ),
        ("record.user_id", Ok(json!("u123"))),
        ("record.n * 100", Ok(json!(700))),
        (
            "has(record.coupon) ? record.coupon : \"none\"",
            Ok(json!(null)),
        ),
        (
            "has(record.missing) ? record.missing : \"none\"",
            Ok(json!("none")),
        ),
        ("record.country in [\"DE\", \"FR\"]", Ok(json!(true))),
        ("record.country in [\"NL\", \"FR\"]", Ok(json!(false))),
        ("record.email.endsWith(\"@Example.com\")", Ok(json!(true))),
        (
            "record.email.lowerAscii().endsWith(\"@example.com\")",
            Ok(json!(true)),
        ),
        ("size(record.items) > 0", Ok(json!(true))),
        (
            "string(record.user_id) + \":\" + record.country",
            Ok(json!("u123:DE")),
        ),
        (
            "string(record.n) + \":\" + record.country",
            Ok(json!("7:DE")),
        ),
    ]);
}

#[test]
fn fields_indexes_and_literals() {
    check(&[
        ("record.missing", Err("no such field 'missing'")),
        ("record.nested.k", Ok(json!("v"))),
        ("record.nested.missing", Err("no such field 'missing'")),
        (
            "record.nested.k.x",
            Err("cannot select field 'x' from string"),
        ),
        ("record[\"country\"]", Ok(json!("DE"))),
        ("record.nested[\"x\"]", Ok(json!(1))),
        ("record.nested[\"y\"]", Err("no such key 'y'")),
        ("record.items[1].price", Ok(json!(20))),
        ("record.tags[1u]", Ok(json!("b"))),
        ("record.items[5]", Err("index 5 out of range")),
        ("record.items[-1]", Err("index -1 out of range")),
        ("record.tags[record.n - 7]", Ok(json!("a"))),
        ("record.country[0]", Err("cannot index string")),
        ("record.big", Ok(json!(18_446_744_073_709_551_615_f64))),
        ("record.ts + 1", Ok(json!(1_732_176_000_001_i64))),
        (
            "{\"a\": record.n, \"b\": [record.country]}",
            Ok(json!({"a": 7, "b": ["DE"]})),
        ),
        (
            "{1: \"x\", true: \"y\"}",
            Ok(json!({"1": "x", "true": "y"})),
        ),
        ("{\"a\": 1}.a", Ok(json!(1))),
        (
            "{record.country: 1, \"DE\": 2}",
            Err("duplicate map key 'DE'"),
        ),
        ("{record.nested: 1}", Err("a map key cannot be map")),
        ("[1, record.n][1]", Ok(json!(7))),
        ("null", Ok(json!(null))),
        ("5u", Ok(json!(5))),
        ("2.5e1", Ok(json!(25.0))),
        ("has(record.nested.k)", Ok(json!(true))),
        ("has(record.nested.z)", Ok(json!(false))),
        (
            "has(record.user_id.x)",
            Err("cannot test field 'x' of string"),
        ),
        ("has(record.missing.x)", Err("no such field 'missing'")),
        ("record", Ok(record())),
        ("record.nested", Ok(json!({"k": "v", "x": 1}))),
        ("record.items[0]", Ok(json!({"price": 3}))),
    ]);
}

#[test]
fn arithmetic() {
    check(&[
        ("7 / 2", Ok(json!(3))),
        ("-7 / 2", Ok(json!(-3))),
        ("-7 % 3", Ok(json!(-1))),
        ("7.0 / 2.0", Ok(json!(3.5))),
        ("7u / 2u", Ok(json!(3))),
        ("5u * 2u + 1u - 3u % 2u", Ok(json!(10))),
        ("dyn(uint(record.n)) + 1", Err("cannot add uint and int")),
        (
            "record.tags + record.tags.map(t, t + t)",
            Ok(json!(["a", "b", "aa", "bb"])),
        ),
        (
            "(record.n > 1 ? record.country : \"x\") + record.user_id",
            Ok(json!("DEu123")),
        ),
        ("record.amount * 2.0", Ok(json!(25.0))),
        ("double(record.n) * 1.5", Ok(json!(10.5))),
        ("record.amount * 100", Err("cannot multiply double and int")),
        ("record.n + record.amount", Err("cannot add int and double")),
        ("record.country + 1", Err("cannot add string and int")),
        (
            "record.amount % 2.0",
            Err("cannot take the remainder of double and double"),
        ),
        ("record.tags[0] + record.tags[1]", Ok(json!("ab"))),
        ("record.tags + [\"c\"]", Ok(json!(["a", "b", "c"]))),
        ("-record.n", Ok(json!(-7))),
        ("-record.amount", Ok(json!(-12.5))),
        ("-record.country", Err("cannot negate string")),
        ("record.n / 0", Err("division by zero")),
        ("record.n % 0", Err("modulus by zero")),
        ("5u / (record.n == 7 ? 0u : 1u)", Err("division by zero")),
        (
            "record.amount / 0.0",
            Err("inf cannot be represented in JSON"),
        ),
    ]);
}

#[test]
fn overflow_is_an_error() {
    check(&[
        ("9223372036854775807 + record.n", Err("integer overflow")),
        ("-9223372036854775808 - record.n", Err("integer overflow")),
        (
            "9223372036854775807 * (record.n - 5)",
            Err("integer overflow"),
        ),
        (
            "-9223372036854775808 / (record.n - 8)",
            Err("integer overflow"),
        ),
        (
            "-9223372036854775808 % (record.n - 8)",
            Err("integer overflow"),
        ),
        (
            "-(-9223372036854775808 + record.n - 7)",
            Err("integer overflow"),
        ),
        ("-9223372036854775808", Ok(json!(i64::MIN))),
        (
            "18446744073709551615u + uint(record.n)",
            Err("unsigned integer overflow"),
        ),
        ("1u - uint(record.n)", Err("unsigned integer overflow")),
        ("9223372036854775806 + 1", Ok(json!(i64::MAX))),
    ]);
}

#[test]
fn comparisons() {
    check(&[
        ("1 == 1.0", Ok(json!(true))),
        ("1u == 1", Ok(json!(true))),
        ("record.n == 7.0", Ok(json!(true))),
        ("record.n < 7.5", Ok(json!(true))),
        ("2u > 1", Ok(json!(true))),
        ("-1 < 1u", Ok(json!(true))),
        ("record.big > record.n", Ok(json!(true))),
        ("\"a\" < \"b\"", Ok(json!(true))),
        ("record.country >= \"DE\"", Ok(json!(true))),
        ("false < true", Ok(json!(true))),
        ("[1, 2] == [1.0, 2u]", Ok(json!(true))),
        ("record.tags == [\"a\", \"b\"]", Ok(json!(true))),
        (
            "record.nested == {\"x\": 1.0, \"k\": \"v\"}",
            Ok(json!(true)),
        ),
        ("record.nested != {\"x\": 2, \"k\": \"v\"}", Ok(json!(true))),
        ("record.user_id == 123", Ok(json!(false))),
        ("record.coupon == null", Ok(json!(true))),
        ("record.n == null", Ok(json!(false))),
        ("record.country < 1", Err("cannot compare string and int")),
        ("0.0 / 0.0 < 1.0", Err("NaN values cannot be ordered")),
        ("0.0 / 0.0 == 0.0 / 0.0", Ok(json!(false))),
        ("1 in [1.0]", Ok(json!(true))),
        ("\"k\" in record.nested", Ok(json!(true))),
        ("\"z\" in record.nested", Ok(json!(false))),
        ("1 in {1u: 2}", Ok(json!(true))),
        ("(record.n > 1 ? {\"a\": record.n} : {}).a", Ok(json!(7))),
        ("{\"a\": [record.n]}.a[0] == 7u", Ok(json!(true))),
        ("record.email.lowerAscii() > record.email", Ok(json!(true))),
        (
            "{\"k\": 1, \"j\": 2}.exists(k, k == \"j\")",
            Ok(json!(true)),
        ),
        (
            "1 in record.n",
            Err("'in' needs a list or a map on its right, not int"),
        ),
    ]);
}

#[test]
fn logic_short_circuits_and_absorbs_errors() {
    check(&[
        ("false && record.missing == 1", Ok(json!(false))),
        ("record.missing == 1 && false", Ok(json!(false))),
        (
            "record.missing == 1 && true",
            Err("no such field 'missing'"),
        ),
        (
            "true && record.missing == 1",
            Err("no such field 'missing'"),
        ),
        ("true || record.missing == 1", Ok(json!(true))),
        ("record.missing == 1 || true", Ok(json!(true))),
        (
            "record.missing == 1 || false",
            Err("no such field 'missing'"),
        ),
        ("record.x == 1 && record.y == 1", Err("no such field 'x'")),
        ("record.n && false", Ok(json!(false))),
        (
            "record.n && true",
            Err("an operand of '&&' must be a bool, not int"),
        ),
        (
            "true && record.n",
            Err("an operand of '&&' must be a bool, not int"),
        ),
        ("record.n || true", Ok(json!(true))),
        ("!(record.n > 5)", Ok(json!(false))),
        (
            "!record.n",
            Err("the operand of '!' must be a bool, not int"),
        ),
        ("true ? 1 : record.missing", Ok(json!(1))),
        ("record.n > 5 ? \"big\" : \"small\"", Ok(json!("big"))),
        (
            "record.n ? 1 : 2",
            Err("the condition of '?:' must be a bool, not int"),
        ),
        ("record.missing ? 1 : 2", Err("no such field 'missing'")),
        ("true ? 1 : \"a\"", Ok(json!(1))),
    ]);
}

#[test]
fn functions() {
    check(&[
        ("\"abc\".contains(\"b\")", Ok(json!(true))),
        ("record.email.startsWith(\"Jo\")", Ok(json!(true))),
        ("record.email.matches(\"^[A-Za-z]+@\")", Ok(json!(true))),
        ("matches(record.country, \"^D\")", Ok(json!(true))),
        ("record.country.matches(record.user_id)", Ok(json!(false))),
        (
            "record.country.matches(record.user_id + \"(\")",
            Err("invalid regular expression 'u123('"),
        ),
        (
            "record.n.contains(\"a\")",
            Err("'contains' takes strings, not int"),
        ),
        ("record.padded.trim()", Ok(json!("hi"))),
        ("record.email.upperAscii()", Ok(json!("JO@EXAMPLE.COM"))),
        (
            "record.n.trim()",
            Err("'trim' is defined for strings, not int"),
        ),
        ("size(record.word)", Ok(json!(5))),
        ("record.word.size()", Ok(json!(5))),
        ("size(record.nested)", Ok(json!(2))),
        ("size(record.n)", Err("size() is not defined for int")),
        ("int(\"42\")", Ok(json!(42))),
        ("int(record.user_id)", Err("cannot convert 'u123' to int")),
        ("int(3.9)", Ok(json!(3))),
        ("int(-3.9)", Ok(json!(-3))),
        (
            "int(1e19)",
            Err("cannot convert 10000000000000000000 to int"),
        ),
        (
            "int(18446744073709551615u)",
            Err("cannot convert 18446744073709551615u to int"),
        ),
        ("uint(record.n)", Ok(json!(7))),
        ("uint(record.n - 8)", Err("cannot convert -1 to uint")),
        ("uint(3.5)", Ok(json!(3))),
        ("uint(-0.5)", Err("cannot convert -0.5 to uint")),
        (
            "int(-9223372036854775808.0)",
            Err("cannot convert -9223372036854776000 to int"),
        ),
        (
            "int(-9223372036854774784.0)",
            Ok(json!(-9_223_372_036_854_774_784_i64)),
        ),
        ("int(0.0 / 0.0)", Err("cannot convert NaN to int")),
        ("uint(\"12\")", Ok(json!(12))),
        ("double(\"2.5\")", Ok(json!(2.5))),
        ("double(5u)", Ok(json!(5.0))),
        ("string(2.5)", Ok(json!("2.5"))),
        ("string(true)", Ok(json!("true"))),
        ("string(5u)", Ok(json!("5"))),
        ("string(record.tags)", Err("cannot convert list to string")),
        ("bool(\"true\")", Ok(json!(true))),
        ("bool(\"f\")", Ok(json!(false))),
        ("bool(\"yes\")", Err("cannot convert 'yes' to bool")),
        ("bool(record.coupon)", Err("cannot convert null to bool")),
        ("dyn(1)", Ok(json!(1))),
    ]);
}

#[test]
fn macros() {
    check(&[
        ("record.tags.exists(t, t == \"b\")", Ok(json!(true))),
        ("record.tags.exists(t, t == \"c\")", Ok(json!(false))),
        ("record.items.all(i, i.price > 1)", Ok(json!(true))),
        ("record.items.all(i, i.price > 5)", Ok(json!(false))),
        ("record.items.map(i, i.price * 2)", Ok(json!([6, 40]))),
        ("record.items.map(i, i.price > 5, i.price)", Ok(json!([20]))),
        ("record.items.filter(i, i.price > 5).size()", Ok(json!(1))),
        ("record.items.exists_one(i, i.price > 1)", Ok(json!(false))),
        ("record.items.exists_one(i, i.price > 5)", Ok(json!(true))),
        ("record.nested.exists(k, k == \"x\")", Ok(json!(true))),
        (
            "record.tags.map(t, record.tags.map(u, t + u))",
            Ok(json!([["aa", "ab"], ["ba", "bb"]])),
        ),
        ("[1, 2].map(x, [x].map(x, x * 10))", Ok(json!([[10], [20]]))),
        ("[0, 1].exists(x, 10 / x == 10)", Ok(json!(true))),
        ("[0].exists(x, 10 / x == 10)", Err("division by zero")),
        ("[0, 1].all(x, 10 / x == 5)", Ok(json!(false))),
        ("[1, 0].all(x, 10 / x == 10)", Err("division by zero")),
        (
            "[1].exists(x, x)",
            Err("a predicate must be a bool, not int"),
        ),
        (
            "record.n.exists(x, true)",
            Err("a macro iterates over a list or a map, not int"),
        ),
        (
            "record.items.map(i, i.weight)",
            Err("no such field 'weight'"),
        ),
        (
            "[\"a\", \"b\"].filter(record, record == \"b\")",
            Ok(json!(["b"])),
        ),
    ]);
}

/// The error message of compiling `source`.
fn compile_error(source: &str) -> String {
    match compile(source) {
        Ok(_) => panic!("{source} compiled"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_kind_of_compile_error_is_reported_with_its_column() {
    let cases = [
        // syntax
        (
            "record.amount >",
            "column 16: syntax error: mismatched input end of expression",
        ),
        (
            "record.amount > > 1",
            "column 17: syntax error: extraneous input '>'",
        ),
        ("has(record)", "column 5: invalid argument to has() macro"),
        // names
        (
            "amount > 1",
            "column 1: unknown identifier 'amount' (the record's fields are read as record.amount)",
        ),
        (
            "[1].exists(x, y > 1)",
            "column 15: unknown identifier 'y' (the record's fields are read as record.y)",
        ),
        ("lenght(record.x)", "column 1: unknown function 'lenght'"),
        (
            "record.name.lenght()",
            "column 13: unknown function 'lenght'",
        ),
        (
            "record.a.exists(x)",
            "column 10: 'exists' is a macro called as <list>.exists(<variable>, <expression>)",
        ),
        // arities and call styles
        ("size()", "column 1: 'size' takes 1 argument, got 0"),
        ("size(1, 2)", "column 1: 'size' takes 1 argument, got 2"),
        (
            "record.x.contains(\"a\", \"b\")",
            "column 10: 'contains' takes 1 argument, got 2",
        ),
        (
            "contains(record.x, \"a\")",
            "column 1: 'contains' is called as a method: <string>.contains(<string>)",
        ),
        (
            "trim(record.x)",
            "column 1: 'trim' is called as a method: <string>.trim()",
        ),
        (
            "record.x.trim(1)",
            "column 10: 'trim' takes 0 arguments, got 1",
        ),
        ("int(1, 2)", "column 1: 'int' takes 1 argument, got 2"),
        (
            "record.x.int()",
            "column 10: 'int' is called as a function: int(<value>)",
        ),
        // types known without a record
        ("\"a\" - 1", "column 5: cannot subtract string and int"),
        (
            "record.n + (1 + 1.0)",
            "column 15: cannot add int and double",
        ),
        (
            "1.5 % 2.0",
            "column 5: cannot take the remainder of double and double",
        ),
        (
            "size(record.x) + \"a\"",
            "column 16: cannot add int and string",
        ),
        ("\"a\" < 1", "column 5: cannot compare string and int"),
        (
            "1 == \"a\"",
            "column 3: comparing int and string with '==' is always false",
        ),
        (
            "[1] != {}",
            "column 5: comparing list and map with '!=' is always true",
        ),
        ("size(1)", "column 1: size() is not defined for int"),
        ("!1", "column 2: the operand of '!' must be a bool, not int"),
        (
            "1 && record.x",
            "column 1: an operand of '&&' must be a bool, not int",
        ),
        (
            "record.x || \"a\"",
            "column 13: an operand of '||' must be a bool, not string",
        ),
        ("-\"a\"", "column 1: cannot negate string"),
        (
            "1 ? 2 : 3",
            "column 1: the condition of '?:' must be a bool, not int",
        ),
        ("[1][\"a\"]", "column 4: cannot index list with string"),
        ("1[0]", "column 2: cannot index int"),
        ("\"a\".x", "column 4: cannot select field 'x' from string"),
        (
            "has(\"a\".x)",
            "column 4: cannot select field 'x' from string",
        ),
        (
            "1 in 1",
            "column 3: 'in' needs a list or a map on its right, not int",
        ),
        ("int(true)", "column 1: cannot convert bool to int"),
        ("bool(1)", "column 1: cannot convert int to bool"),
        (
            "record.x.contains(1)",
            "column 10: 'contains' takes strings, not int",
        ),
        (
            "(1).trim()",
            "column 5: 'trim' is defined for strings, not int",
        ),
        ("{[1]: 2}", "column 2: a map key cannot be list"),
        ("{\"a\": 1, \"a\": 2}", "column 10: duplicate map key"),
        (
            "(1).exists(x, true)",
            "column 11: a macro iterates over a list or a map, not int",
        ),
        (
            "[1].exists(x, x + 1)",
            "column 17: a predicate must be a bool, not int",
        ),
        (
            "[1].map(x, 1, x)",
            "column 12: a filter must be a bool, not int",
        ),
        // regular expressions
        (
            "record.x.matches(\"[\")",
            "column 10: invalid regular expression '[': unclosed character class",
        ),
        (
            "matches(record.x, \"(\")",
            "column 1: invalid regular expression '(': unclosed group",
        ),
        // unsupported
        ("b\"abc\"", "column 1: bytes literals are not supported"),
        (
            "Foo{a: 1}",
            "column 4: message construction ('Foo{...}') is not supported",
        ),
        // positions on later lines
        (
            "record.a > 1 &&\n  \"a\" - 1 > 0",
            "line 2, column 7: cannot subtract string and int",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(source, expected)| compile_error(source) != *expected)
        .map(|(source, _)| format!("{source:?} gives {:?}", compile_error(source)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn eval_bool_requires_a_bool() {
    let record = record();
    assert_eq!(compiled("record.n > 5").eval_bool(&record), Ok(true));
    assert_eq!(
        compiled("record.n")
            .eval_bool(&record)
            .map_err(|e| e.to_string()),
        Err("the expression must be a bool, not int".to_owned())
    );
    assert_eq!(
        compiled("record.nope > 1")
            .eval_bool(&record)
            .map_err(|e| e.to_string()),
        Err("no such field 'nope'".to_owned())
    );
}

#[test]
fn eval_f64_takes_every_number() {
    let record = record();
    assert_eq!(compiled("record.n").eval_f64(&record), Ok(7.0));
    assert_eq!(compiled("record.amount").eval_f64(&record), Ok(12.5));
    assert_eq!(compiled("3u").eval_f64(&record), Ok(3.0));
    assert_eq!(
        compiled("record.country")
            .eval_f64(&record)
            .map_err(|e| e.to_string()),
        Err("the expression must be a number, not string".to_owned())
    );
}

#[test]
fn keys_are_the_text_of_the_value() {
    let record = record();
    let key = |source: &str| {
        let mut out = b"prefix|".to_vec();
        compiled(source)
            .eval_key(&record, &mut out)
            .map(|()| String::from_utf8(out).unwrap_or_default())
            .map_err(|e| e.to_string())
    };
    assert_eq!(key("record.user_id"), Ok("prefix|u123".to_owned()));
    assert_eq!(key("record.n"), Ok("prefix|7".to_owned()));
    // A string and a number with the same text are the same key, as are
    // numbers that CEL's == finds equal.
    assert_eq!(key("\"7\""), key("record.n"));
    assert_eq!(key("7u"), key("record.n"));
    assert_eq!(key("7.0"), key("record.n"));
    assert_eq!(key("record.amount"), Ok("prefix|12.5".to_owned()));
    assert_eq!(
        key("-9223372036854775807 - 1"),
        Ok("prefix|-9223372036854775808".to_owned())
    );
    assert_eq!(
        key("18446744073709551615u"),
        Ok("prefix|18446744073709551615".to_owned())
    );
    assert_eq!(key("record.n > 1"), Ok("prefix|true".to_owned()));
    assert_eq!(key("record.tags"), Ok("prefix|[\"a\",\"b\"]".to_owned()));
    assert_eq!(key("record.coupon"), Err("the key is null".to_owned()));
    let mut out = b"prefix|".to_vec();
    assert!(
        compiled("record.n / 0")
            .eval_key(&record, &mut out)
            .is_err()
    );
    assert!(
        compiled("[record.n, record.n / 0]")
            .eval_key(&record, &mut out)
            .is_err()
    );
    assert_eq!(out, b"prefix|");
    assert_eq!(
        key("record.missing"),
        Err("no such field 'missing'".to_owned())
    );
}

#[test]
fn fields_lists_the_top_level_fields_read() {
    let e = compiled(
        "record.b > 1 && has(record.a) && record[\"c\"] == 1 && record.b.x == 2 \
         && [1].exists(record, record > 0)",
    );
    assert_eq!(e.fields(), ["a", "b", "c"]);
    assert!(!e.reads_whole_record());
    let e = compiled("size(record) > 1 && record.z == 1");
    assert_eq!(e.fields(), ["z"]);
    assert!(e.reads_whole_record());
    assert!(compiled("\"k\" in record").reads_whole_record());
    assert!(compiled("1 + 1 == 2").fields().is_empty());
}

#[test]
fn an_expression_keeps_its_source_and_is_shared_between_threads() {
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>(value: T) -> T {
        value
    }
    let e = send_sync(compiled("record.n > 1"));
    assert_eq!(e.source(), "record.n > 1");
    let record = record();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let e = e.clone();
                let record = &record;
                s.spawn(move || e.eval_bool(record))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Ok(false)))
            .collect::<Vec<_>>()
    });
    assert_eq!(results, [Ok(true), Ok(true)]);
}

/// A pass-through allocator that counts the allocations and frees of each
/// thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static FREES: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREES.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn decoded_fields_free_the_values_they_own() {
    let names: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
    let counts = || (ALLOCATIONS.with(Cell::get), FREES.with(Cell::get));
    let before = counts();
    let mut fields = Fields::new(&names);
    fields.set(0, FieldValue::Str(Cow::Owned("escaped".repeat(3))));
    fields.set(1, FieldValue::Json(Box::new(json!([1, 2]))));
    fields.plain_slot(2).expect("a slot").int(7);
    // A repeated key: the owned value it replaces is freed then.
    fields.plain_slot(0).expect("a slot").str("plain");
    assert_eq!(fields.get("c"), Some(&FieldValue::Int(7)));
    drop(fields);
    let after = counts();
    let (allocated, freed) = (after.0 - before.0, after.1 - before.1);
    assert!(allocated >= 3, "the values allocated: {allocated}");
    assert_eq!(freed, allocated, "every allocation of the values is freed");
}

#[test]
fn filters_field_accesses_and_comparisons_do_not_allocate() {
    let record = record();
    let filters = [
        "record.amount > 10.0 && record.country != \"XX\"",
        "record.country in [\"DE\", \"FR\"] || record.n == 7",
        "has(record.coupon) && record.email.endsWith(\"@Example.com\")",
        "record.email.matches(\"^[A-Za-z]+@\") && size(record.items) > 0",
        "record.items.exists(i, i.price > 10) && record.items[0].price == 3",
        "record.padded.trim() == \"hi\" && record.nested.k == \"v\"",
    ];
    for source in filters {
        let e = compiled(source);
        // The first evaluation on a thread fills the regex crate's cache.
        assert_eq!(e.eval_bool(&record), Ok(true), "{source}");
        let before = ALLOCATIONS.with(Cell::get);
        let result = e.eval_bool(&record);
        let allocations = ALLOCATIONS.with(Cell::get) - before;
        assert_eq!((result, allocations), (Ok(true), 0), "{source}");
    }
    let e = compiled("record.user_id");
    let mut key = Vec::with_capacity(16);
    let before = ALLOCATIONS.with(Cell::get);
    let result = e.eval_key(&record, &mut key);
    assert_eq!((result, ALLOCATIONS.with(Cell::get) - before), (Ok(()), 0));
    // Map outputs written as JSON into a buffer with room do not allocate.
    let mut out = Vec::with_capacity(256);
    for source in [
        "record.user_id",
        "record.amount * 100.0",
        "record.n + 1",
        "record.tags",
        "record.nested",
    ] {
        let e = compiled(source);
        let before = ALLOCATIONS.with(Cell::get);
        let result = e.eval_json(&record, &mut out);
        assert_eq!(
            (result, ALLOCATIONS.with(Cell::get) - before),
            (Ok(()), 0),
            "{source}"
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&out),
        r#""u123"1250.08["a","b"]{"k":"v","x":1}"#
    );
}

/// An arithmetic or comparison expression over `record.a`, `record.b` (ints)
/// and `record.x`, `record.y` (doubles).
#[derive(Clone, Debug)]
enum Gen {
    Int(i64),
    Uint(u64),
    Double(f64),
    Field(&'static str),
    Neg(Box<Gen>),
    Not(Box<Gen>),
    Binary(&'static str, Box<Gen>, Box<Gen>),
    Cond(Box<Gen>, Box<Gen>, Box<Gen>),
}

impl Gen {
    fn source(&self) -> String {
        match self {
            Gen::Int(i) => format!("({i})"),
            Gen::Uint(u) => format!("{u}u"),
            Gen::Double(d) => format!("({d:?})"),
            Gen::Field(name) => format!("record.{name}"),
            Gen::Neg(e) => format!("-{}", e.source()),
            Gen::Not(e) => format!("!{}", e.source()),
            Gen::Binary(op, l, r) => format!("({} {op} {})", l.source(), r.source()),
            Gen::Cond(c, t, f) => format!("({} ? {} : {})", c.source(), t.source(), f.source()),
        }
    }
}

fn int_value() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -20_i64..20,
        1 => any::<i64>(),
        1 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1_i64), Just(0_i64)],
    ]
}

fn double_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (-40_i32..40).prop_map(|i| f64::from(i) / 4.0),
        1 => -1e300_f64..1e300,
    ]
}

/// The leaves of one type: literals and fields of the generated record
/// (`record.z` is missing).
fn leaf(kind: char) -> BoxedStrategy<Gen> {
    match kind {
        'u' => prop_oneof![
            8 => 0_u64..40,
            1 => any::<u64>(),
            1 => Just(u64::MAX),
        ]
        .prop_map(Gen::Uint)
        .boxed(),
        'i' => prop_oneof![
            2 => int_value().prop_map(Gen::Int),
            1 => prop_oneof![Just("a"), Just("b")].prop_map(Gen::Field),
        ]
        .boxed(),
        'd' => prop_oneof![
            2 => double_value().prop_map(Gen::Double),
            1 => prop_oneof![Just("x"), Just("y")].prop_map(Gen::Field),
        ]
        .boxed(),
        'b' => any::<bool>()
            .prop_map(|b| {
                let op = if b { "==" } else { "!=" };
                Gen::Binary(op, Box::new(Gen::Int(1)), Box::new(Gen::Int(1)))
            })
            .boxed(),
        _ => prop_oneof![
            int_value().prop_map(Gen::Int),
            double_value().prop_map(Gen::Double),
            (0_u64..10).prop_map(Gen::Uint),
            prop_oneof![Just("a"), Just("x"), Just("z")].prop_map(Gen::Field),
        ]
        .boxed(),
    }
}

/// An expression of `kind` ('i'nt, 'd'ouble, 'b'ool, or '?' for any, which
/// mixes types) of at most `depth` levels: mostly well typed, so that most
/// cases compare values rather than errors.
fn typed(kind: char, depth: u32) -> BoxedStrategy<Gen> {
    if depth == 0 {
        return leaf(kind);
    }
    let sub = |kind| typed(kind, depth - 1);
    let binary = |ops: &'static [&'static str], l: BoxedStrategy<Gen>, r: BoxedStrategy<Gen>| {
        (proptest::sample::select(ops), l, r)
            .prop_map(|(op, l, r)| Gen::Binary(op, Box::new(l), Box::new(r)))
    };
    let cond = |kind| {
        (sub('b'), sub(kind), sub(kind))
            .prop_map(|(c, t, f)| Gen::Cond(Box::new(c), Box::new(t), Box::new(f)))
    };
    const ARITH: &[&str] = &["+", "-", "*", "/", "%"];
    const COMPARE: &[&str] = &["==", "!=", "<", "<=", ">", ">="];
    const LOGIC: &[&str] = &["&&", "||"];
    match kind {
        'i' | 'd' | 'u' => prop_oneof![
            2 => leaf(kind),
            4 => binary(ARITH, sub(kind), sub(kind)),
            1 => sub(kind).prop_map(|e| Gen::Neg(Box::new(e))),
            1 => cond(kind),
        ]
        .boxed(),
        'b' => prop_oneof![
            1 => leaf('b'),
            2 => binary(COMPARE, sub('i'), sub('i')),
            2 => binary(COMPARE, sub('d'), sub('d')),
            2 => binary(COMPARE, sub('i'), sub('d')),
            1 => binary(COMPARE, sub('u'), sub('u')),
            1 => binary(COMPARE, sub('u'), sub('i')),
            1 => binary(COMPARE, sub('d'), sub('u')),
            3 => binary(LOGIC, sub('b'), sub('b')),
            1 => binary(LOGIC, sub('b'), sub('?')),
            1 => sub('b').prop_map(|e| Gen::Not(Box::new(e))),
            1 => cond('b'),
        ]
        .boxed(),
        _ => prop_oneof![
            binary(ARITH, sub('?'), sub('?')),
            binary(COMPARE, sub('?'), sub('?')),
            binary(LOGIC, sub('?'), sub('?')),
            cond('?'),
        ]
        .boxed(),
    }
}

/// A generated expression of any type.
fn expression() -> impl Strategy<Value = Gen> {
    prop_oneof![
        2 => typed('i', 3),
        2 => typed('d', 3),
        1 => typed('u', 3),
        3 => typed('b', 3),
        1 => typed('?', 2),
    ]
}

/// The result of cel's interpreter, as its type and value, or an error.
fn cel_result(source: &str, record: &Json) -> Result<String, String> {
    let program = cel::Program::compile(source).map_err(|e| e.to_string())?;
    // Built by hand: serialising a JSON value would make every non-negative
    // integer a uint, where a JSON integer is an int.
    let mut fields = std::collections::HashMap::new();
    for (name, value) in record.as_object().into_iter().flatten() {
        let value = match (value.as_i64(), value.as_f64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(f)) => cel::Value::Float(f),
            _ => return Err(format!("unexpected field {value}")),
        };
        fields.insert(name.clone(), value);
    }
    let mut context = cel::Context::default();
    context.add_variable_from_value("record", fields);
    match program.execute(&context).map_err(|e| e.to_string())? {
        cel::Value::Int(i) => Ok(format!("int {i}")),
        cel::Value::UInt(u) => Ok(format!("uint {u}")),
        cel::Value::Float(f) => Ok(format!("double {f:?}")),
        cel::Value::Bool(b) => Ok(format!("bool {b}")),
        other => Err(format!("unexpected {other:?}")),
    }
}

/// Our result in the same form as [`cel_result`].
fn our_result(expression: &Expression, record: &Json) -> Result<String, String> {
    match expression.value(record.into()) {
        Ok(Val::Int(i)) => Ok(format!("int {i}")),
        Ok(Val::Uint(u)) => Ok(format!("uint {u}")),
        Ok(Val::Double(f)) => Ok(format!("double {f:?}")),
        Ok(Val::Bool(b)) => Ok(format!("bool {b}")),
        Ok(other) => Err(format!("unexpected {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// On arithmetic and comparisons, our evaluator agrees with cel's
    /// interpreter: the same value, or an error from both.
    #[test]
    fn agrees_with_cels_interpreter(
        e in expression(),
        a in int_value(),
        b in int_value(),
        x in double_value(),
        y in double_value(),
    ) {
        let source = e.source();
        let record = json!({"a": a, "b": b, "x": x, "y": y});
        // Expressions we reject when compiling have a type error between
        // operands of known types, which cel only finds when evaluating (and
        // sometimes never does, behind a short circuit).
        if let Ok(expression) = compile(&source) {
            let ours = our_result(&expression, &record);
            let theirs = cel_result(&source, &record);
            match (&ours, &theirs) {
                (Ok(o), Ok(t)) => prop_assert_eq!(o, t, "{} over {}", source, record),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "{} over {}: ours {:?}, cel's {:?}", source, record, ours, theirs),
            }
        }
    }
}

proptest! {
    /// The inline comparison of short byte strings (names, codes) agrees
    /// with slice equality at every length, on strings that differ in one
    /// byte anywhere or in their length.
    #[test]
    fn short_byte_strings_compare_as_slices(
        a in prop::collection::vec(prop::sample::select(b"ab".to_vec()), 0..40),
        change in any::<prop::sample::Index>(),
        shorter in any::<bool>(),
    ) {
        let mut b = a.clone();
        if shorter {
            b.pop();
        } else if !b.is_empty() {
            let i = change.index(b.len());
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        }
        prop_assert!(same_bytes(&a, &a));
        prop_assert_eq!(same_bytes(&a, &b), a == b);
        prop_assert_eq!(same_bytes(&b, &a), a == b);
    }

    /// Strings are written as serde_json writes them, those it copies as
    /// they are and those it escapes.
    #[test]
    fn strings_are_written_as_serde_json_writes_them(
        s in prop::collection::vec(prop_oneof![
            4 => prop::sample::select(vec!['a', 'Z', ' ', '~', '\u{7f}', '\u{e9}', '\u{1F600}']),
            1 => prop::sample::select(vec!['"', '\\', '\n', '\u{0}', '\u{1f}', '/']),
        ], 0..12).prop_map(|chars| chars.into_iter().collect::<String>()),
    ) {
        let mut out = b"x".to_vec();
        write_json_string(&s, &mut out).unwrap();
        prop_assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("x{}", serde_json::to_string(&s).unwrap())
        );
    }
}

#[test]
fn malformed_sources_are_one_line_errors_and_never_crash() {
    let deep = format!("{}1{}", "(".repeat(300), ")".repeat(300));
    let negations = format!("{}true", "!".repeat(2000));
    let minus = format!("{}1", "-".repeat(2000));
    let sum = format!("1{}", " + 1".repeat(1000));
    let select = format!("record{}", ".a".repeat(2000));
    let long = "1 + ".repeat(2000);
    let ternaries = format!("{}0", "true ? 1 : ".repeat(370));
    let calls = format!("record.s{}", ".trim()".repeat(580));
    let mixed = format!("{}1", "-!".repeat(2000));
    let sources = [
        "",
        "   ",
        "record.",
        "1 +* 2",
        "'unterminated",
        "record.a ?? b",
        "😀 + 1",
        "record.a.b.c.d(",
        "{",
        "[1,",
        "record.`a b`",
        "record.?a",
        "record.x\n  + ",
        "1 = 2",
        "record.a in",
        deep.as_str(),
        negations.as_str(),
        minus.as_str(),
        sum.as_str(),
        select.as_str(),
        long.as_str(),
        ternaries.as_str(),
        calls.as_str(),
        mixed.as_str(),
    ];
    for source in sources {
        // Some compile (an even number of '!' or '-' cancels out), none
        // crashes.
        let Err(error) = compile(source) else {
            continue;
        };
        let message = error.to_string();
        assert!(
            message.starts_with("column ") || message.starts_with("line "),
            "{source:?}: {message}"
        );
        assert!(!message.contains('\n'), "{source:?}: {message}");
    }
}

#[test]
fn limits_are_reported() {
    let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    assert_eq!(
        compile_error(&deep),
        "column 33: brackets nest more than 32 deep"
    );
    let sum = format!("1{}", " + 1".repeat(200));
    assert_eq!(
        compile_error(&sum),
        "column 287: the expression nests more than 128 levels deep"
    );
    assert_eq!(
        compile_error(&"1 + ".repeat(2000)),
        "column 1: the expression is longer than 4096 bytes"
    );
    // Brackets inside strings do not count.
    let quoted = format!(
        "record.s == \"{}\" && record.t == '{}'",
        "(".repeat(40),
        "[\\'".repeat(40)
    );
    assert_eq!(compiled(&quoted).fields(), ["s", "t"]);
    let sum = format!("1{}", " + 1".repeat(100));
    assert_eq!(compiled(&sum).eval(&json!({})), Ok(json!(101)));
}

/// A field written from its slot is the JSON an expression reading it
/// writes, for every kind of field value; `record_field` names only
/// field-only expressions.
#[test]
fn a_field_written_from_its_slot_is_what_reading_it_writes() {
    use std::borrow::Cow;

    use super::{FieldValue, Fields};

    let names = vec!["x".to_owned()];
    let values = [
        FieldValue::Null,
        FieldValue::Bool(true),
        FieldValue::Int(-42),
        FieldValue::Int(i64::MIN),
        FieldValue::Uint(u64::MAX),
        FieldValue::Double(-0.0),
        FieldValue::Double(12.25),
        FieldValue::Str(Cow::Borrowed("a\"b\\c\u{1}é")),
        FieldValue::Str(Cow::Owned("owned".to_owned())),
        FieldValue::Json(Box::new(json!({"k": [1, "two", null]}))),
    ];
    let expression = compile("record.x").unwrap();
    assert_eq!(expression.record_field(), Some("x"));
    assert_eq!(compile("record.x + 1").unwrap().record_field(), None);
    for value in values {
        let mut fields = Fields::new(&names);
        fields.set(0, value.clone());
        let mut by_expression = b"prefix".to_vec();
        expression.eval_json(&fields, &mut by_expression).unwrap();
        let mut from_slot = b"prefix".to_vec();
        value.write_json(&mut from_slot).unwrap();
        assert_eq!(
            String::from_utf8(from_slot).unwrap(),
            String::from_utf8(by_expression).unwrap(),
            "{value:?}"
        );
    }
}
