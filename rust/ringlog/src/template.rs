//! Placeholder; replaced by the template parser/formatter.
use crate::value::Value;

#[derive(Debug)]
pub struct TemplateError {
    pub position: usize,
    pub message: String,
}

pub struct Template;

impl Template {
    pub fn parse(_source: &str) -> Result<Template, TemplateError> {
        Err(TemplateError {
            position: 0,
            message: "not implemented".into(),
        })
    }
    pub fn arity(&self) -> usize {
        0
    }
    pub fn render(&self, _values: &[Value], _out: &mut String) {}
}
