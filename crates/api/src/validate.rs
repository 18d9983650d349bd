//! Turning wire bodies into domain values while collecting every invalid field, so a client
//! learns all of its mistakes from one response.

use tally_domain::ParseError;

use crate::problem::{ApiError, FieldError};

/// Collects field errors while parsing a body.
#[derive(Debug, Default)]
pub struct Fields {
    errors: Vec<FieldError>,
}

impl Fields {
    /// Keeps a parsed value, or records why the field at `pointer` is invalid.
    pub fn check<T>(
        &mut self,
        pointer: impl Into<String>,
        parsed: Result<T, ParseError>,
    ) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(FieldError {
                    pointer: pointer.into(),
                    detail: error.reason,
                });
                None
            }
        }
    }

    /// An optional field: absent is fine, present must parse.
    pub fn check_optional<T>(
        &mut self,
        pointer: impl Into<String>,
        raw: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Option<Option<T>> {
        match raw {
            None => Some(None),
            Some(raw) => self.check(pointer, parse(raw)).map(Some),
        }
    }

    /// An integer field sent as a JSON number: fractions and out-of-range values are refused
    /// with the field's own wording rather than a deserializer's.
    pub fn integer(
        &mut self,
        pointer: impl Into<String>,
        raw: &serde_json::Number,
        what: &str,
    ) -> Option<i64> {
        let parsed = raw
            .as_i64()
            .ok_or_else(|| ParseError::new(format!("must be a whole number ({what})")));
        self.check(pointer, parsed)
    }

    /// Ends parsing: the value if every field was valid, else all the errors.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(ApiError::Invalid(self.errors)),
        }
    }

    /// Records an error that spans fields.
    pub fn push(&mut self, pointer: impl Into<String>, error: ParseError) {
        self.errors.push(FieldError {
            pointer: pointer.into(),
            detail: error.reason,
        });
    }
}
