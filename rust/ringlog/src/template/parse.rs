//! Splitting a template into literal text and fields, with `str.format`'s
//! brace rules: `{{` and `}}` are literal braces, a field runs from `{` to
//! the next `}`, a lone `}` is an error.
//!
//! Invariant: what this returns is what `Template` renders; every refusal
//! (conversion `!r`, nested `{` in a spec, a name that is not an identifier,
//! a duplicate name, more than `MAX_VALUES` fields, unbalanced braces) is a
//! [`TemplateError`] whose position is the character index of the offending
//! character in the template.

use super::spec::{self, Spec};
use super::TemplateError;
use crate::value::MAX_VALUES;

#[derive(Clone)]
pub(super) struct Field {
    /// Literal text before this field, as a range of `Parsed::text`.
    pub literal: std::ops::Range<usize>,
    pub name: String,
    pub spec: Spec,
}

pub(super) struct Parsed {
    /// All literal text, unescaped, concatenated.
    pub text: String,
    pub fields: Vec<Field>,
    /// Literal text after the last field.
    pub tail: std::ops::Range<usize>,
}

fn error(position: usize, message: impl Into<String>) -> TemplateError {
    TemplateError {
        position,
        message: message.into(),
    }
}

pub(super) fn parse(source: &str) -> Result<Parsed, TemplateError> {
    let c: Vec<char> = source.chars().collect();
    let mut text = String::new();
    let mut fields: Vec<Field> = Vec::new();
    let mut lit_start = 0;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '{' if c.get(i + 1) == Some(&'{') => {
                text.push('{');
                i += 2;
            }
            '}' if c.get(i + 1) == Some(&'}') => {
                text.push('}');
                i += 2;
            }
            '}' => {
                return Err(error(
                    i,
                    "single '}' in template (write '}}' for a literal brace)",
                ))
            }
            '{' => {
                if fields.len() == MAX_VALUES {
                    return Err(error(
                        i,
                        format!("too many fields: a template has at most {MAX_VALUES}"),
                    ));
                }
                let (field, end) = field(&c, i)?;
                if !field.0.is_empty() && fields.iter().any(|f| f.name == field.0) {
                    return Err(error(i + 1, format!("duplicate field name '{}'", field.0)));
                }
                fields.push(Field {
                    literal: lit_start..text.len(),
                    name: field.0,
                    spec: field.1,
                });
                lit_start = text.len();
                i = end;
            }
            ch => {
                text.push(ch);
                i += 1;
            }
        }
    }
    Ok(Parsed {
        tail: lit_start..text.len(),
        text,
        fields,
    })
}

/// Parses the field opening at `c[open] == '{'`; returns it and the index
/// just past its `}`.
fn field(c: &[char], open: usize) -> Result<((String, Spec), usize), TemplateError> {
    let mut i = open + 1;
    let name_start = i;
    while i < c.len() && !matches!(c[i], ':' | '!' | '}' | '{') {
        i += 1;
    }
    let name: String = c[name_start..i].iter().collect();
    match c.get(i) {
        None => {
            return Err(error(
                open,
                "unmatched '{': expected '}' before end of template",
            ))
        }
        Some('{') => return Err(error(i, "unexpected '{' in field name")),
        Some('!') => {
            return Err(error(
                i,
                "conversions ('!r', '!s', '!a') are not supported in log templates",
            ))
        }
        _ => {}
    }
    if !is_identifier(&name) {
        return Err(error(
            name_start,
            format!(
                "field name {name:?} is not an identifier (attribute, index and numbered fields are not supported)"
            ),
        ));
    }
    let mut spec = Spec::default();
    if c[i] == ':' {
        i += 1;
        let spec_start = i;
        while i < c.len() && c[i] != '}' {
            if c[i] == '{' {
                return Err(error(i, "nested fields in a format spec are not supported"));
            }
            i += 1;
        }
        if i == c.len() {
            return Err(error(
                open,
                "unmatched '{': expected '}' before end of template",
            ));
        }
        let text: String = c[spec_start..i].iter().collect();
        spec = spec::parse(&text, spec_start)?;
    }
    Ok(((name, spec), i + 1))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        None => true,
        Some(first) => {
            (first == '_' || first.is_alphabetic())
                && chars.all(|ch| ch == '_' || ch.is_alphanumeric())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> TemplateError {
        match parse(src) {
            Ok(_) => panic!("{src:?} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn literals_and_fields() {
        let p = parse("{{a}} {x:>5d} mid {}{y} }}end").unwrap();
        assert_eq!(p.text, "{a}  mid  }end");
        let names: Vec<&str> = p.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["x", "", "y"]);
        assert_eq!(&p.text[p.fields[0].literal.clone()], "{a} ");
        assert_eq!(&p.text[p.fields[1].literal.clone()], " mid ");
        assert_eq!(&p.text[p.fields[2].literal.clone()], "");
        assert_eq!(&p.text[p.tail.clone()], " }end");
    }

    #[test]
    fn positions_are_character_indices() {
        assert_eq!(err("ab}c").position, 2);
        assert_eq!(err("é}").position, 1);
        assert_eq!(err("x {a").position, 2);
        assert_eq!(err("x {a:5").position, 2);
        assert_eq!(err("{a!r}").position, 2);
        assert_eq!(err("{a:{w}}").position, 3);
        assert_eq!(err("{a{b}").position, 2);
        assert_eq!(err("{a} {a}").position, 5);
        assert!(err("{a} {a}").message.contains("duplicate"));
        assert_eq!(err("{a.b}").position, 1);
        assert_eq!(err("{0}").position, 1);
        assert_eq!(err("{a[0]}").position, 1);
        assert_eq!(err("é {x:5.2q}").position, 8);
        assert_eq!(err("{").position, 0);
    }

    #[test]
    fn field_limit() {
        let ok = "{}".repeat(MAX_VALUES);
        assert_eq!(parse(&ok).unwrap().fields.len(), MAX_VALUES);
        let e = err(&format!("{ok} {{}} {{}}"));
        assert!(e.message.contains("at most"), "{e}");
        // the 13th field opens after the 12 `{}` and a space
        assert_eq!(e.position, 2 * MAX_VALUES + 1);
        // empty names never collide
        assert!(parse("{} {}").is_ok());
    }
}
