//! Template-level cases; expected strings were produced by CPython 3.11's
//! `format()` / `str.format`.

use super::*;

fn one(spec: &str, v: Value) -> String {
    let t = Template::parse(&format!("{{:{spec}}}")).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    let mut out = String::new();
    t.render(&[v], &mut out);
    out
}

#[test]
fn smoke() {
    assert_eq!(one("", Value::Float(1.5)), "1.5");
    assert_eq!(one(">5d", Value::Int(3)), "    3");
    assert_eq!(one("^15.4e", Value::Float(1234.5)), "  1.2345e+03   ");
}
