//! Log line templates: literal text with numeric fields, rendered
//! byte-identically to Python's `str.format` / `format()`.
//!
//! Syntax: `{{` and `}}` are literal braces; a field is `{name}`,
//! `{name:spec}`, `{}` or `{:spec}` (names are identifiers or empty, and
//! only label the field: values are given in order of appearance). The spec
//! is Python's format mini-language
//! `[[fill]align][sign][z][#][0][width][,|_][.precision][type]` with align
//! `< > ^ =`, sign `+ - space`, and type `d e E f F g G %` or none.
//!
//! Invariants:
//! * A template that parses renders every value: all refusals happen in
//!   [`Template::parse`] (conversions, nested fields, types `n b o x X c s`,
//!   precision or `z` with `d`, both `,` and `_`, width over
//!   [`MAX_WIDTH`], precision over [`MAX_PRECISION`], more than
//!   [`MAX_VALUES`](crate::value::MAX_VALUES) fields, unbalanced braces).
//!   Error positions are character (not byte) indices into the template.
//! * For an `Int` in an integer field and a `Float` in a float field, the
//!   output is exactly `format(value, spec)`. A field receives whichever
//!   the producer pushed, so the crossings are defined as Python would
//!   convert them:
//!   - `Float` with type `d`: `format(int(v), spec)` (truncation toward
//!     zero) when finite; `nan`/`inf` render as `format(v, spec)` without
//!     the `d` (fill, align, sign and width kept).
//!   - `Int` with a float type `e E f F g G %`: `format(v, spec)`, which
//!     Python computes on `float(v)`.
//!   - `Int` with no type: as `d`; but where Python would refuse the spec
//!     for an int, with a precision it renders `format(float(v), spec)`,
//!     and a `z` flag is ignored (an int has no negative zero).
//! * [`Template::render`] and [`Template::render_bytes`] append to the
//!   caller's buffer and allocate nothing else: numbers are built in fixed
//!   stack buffers.

mod align;
mod decimal;
mod exact;
mod float;
mod parse;
mod scratch;
mod spec;

use std::fmt;
use std::fmt::Write;

use crate::value::Value;
use scratch::Scratch;
use spec::{Kind, Spec};
pub use spec::{MAX_PRECISION, MAX_WIDTH};

/// Why a template was refused, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    /// Character index in the template of the offending character.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

impl std::error::Error for TemplateError {}

/// A parsed template: immutable, cheap to render many times.
#[derive(Clone)]
pub struct Template {
    source: String,
    text: String,
    fields: Vec<parse::Field>,
    tail: std::ops::Range<usize>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Template").field(&self.source).finish()
    }
}

impl Template {
    /// Parses and validates `source`; see the module docs for the syntax.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let p = parse::parse(source)?;
        Ok(Template {
            source: source.to_owned(),
            text: p.text,
            fields: p.fields,
            tail: p.tail,
        })
    }

    /// The template as it was registered.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of fields, i.e. of values a record for this template carries.
    pub fn arity(&self) -> usize {
        self.fields.len()
    }

    /// Field names in order of appearance (`""` for unnamed fields).
    pub fn field_names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }

    /// Appends one rendered line (no newline) to `out`.
    ///
    /// The caller guarantees `values.len() == self.arity()`; in release
    /// builds extra values are ignored and missing ones render as nothing,
    /// so a bug upstream never panics the drain thread.
    pub fn render(&self, values: &[Value], out: &mut String) {
        // Borrow the string's buffer (no allocation), append, give it back.
        let mut bytes = std::mem::take(out).into_bytes();
        let start = bytes.len();
        self.render_bytes(values, &mut bytes);
        *out = String::from_utf8(bytes).unwrap_or_else(|e| {
            // Cannot happen (see `render_bytes`); keep what was there.
            let mut bytes = e.into_bytes();
            bytes.truncate(start);
            String::from_utf8(bytes).unwrap_or_default()
        });
    }

    /// [`Template::render`] onto bytes: what the drain uses, since a sink
    /// takes bytes. What it appends is always valid UTF-8 (literal text
    /// from the template, fill characters, ASCII numbers).
    pub fn render_bytes(&self, values: &[Value], out: &mut Vec<u8>) {
        debug_assert_eq!(values.len(), self.arity(), "{:?}", self.source);
        for (i, field) in self.fields.iter().enumerate() {
            out.extend_from_slice(self.text[field.literal.clone()].as_bytes());
            if let Some(&v) = values.get(i) {
                render_value(&field.spec, v, out);
            }
        }
        out.extend_from_slice(self.text[self.tail.clone()].as_bytes());
    }
}

/// Formats one value with `spec` onto `out`.
fn render_value(spec: &Spec, v: Value, out: &mut Vec<u8>) {
    // Only fixed notation (and `d` of a float) of a large value or with a
    // large precision can outgrow the small buffer, which is cheaper to set
    // up: below 1e38 (1e40 once `%` multiplies) a fixed body has at most 41
    // integer digits, so with at most 80 decimals, `.` and `%` it fits 128.
    let magnitude = match v {
        Value::Int(_) => 0.0,
        Value::Float(f) => f.abs(),
    };
    let fixed = matches!(spec.kind, Kind::F { .. } | Kind::Percent | Kind::D);
    if fixed && (magnitude >= 1e38 || spec.precision.is_some_and(|p| p > 80)) {
        render_in::<{ scratch::CAPACITY }>(spec, v, out)
    } else {
        render_in::<{ scratch::SMALL }>(spec, v, out)
    }
}

fn render_in<const N: usize>(spec: &Spec, v: Value, out: &mut Vec<u8>) {
    let mut body = Scratch::<N>::new();
    let negative = match (spec.kind, v) {
        (Kind::D, Value::Int(i)) | (Kind::None, Value::Int(i)) if spec.precision.is_none() => {
            body.push_u64(i.unsigned_abs());
            i < 0
        }
        (Kind::D, Value::Float(f)) if f.is_finite() => {
            // int(f): truncate toward zero. Below 2^64 the cast is exact;
            // above, `{:.0}` prints an integral f64's exact digits.
            let t = f.trunc();
            if t.abs() < 18446744073709551616.0 {
                body.push_u64(t.abs() as u64);
            } else {
                let _ = write!(body, "{:.0}", t.abs());
            }
            t < 0.0
        }
        (_, Value::Int(i)) => float::body(i as f64, spec, &mut body),
        (_, Value::Float(f)) => float::body(f, spec, &mut body),
    };
    align::finish(spec, negative, body.as_bytes(), out);
}

#[cfg(test)]
mod tests;
