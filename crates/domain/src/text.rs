//! Bounded strings. Every free-text field has a length limit so that a client cannot make a row,
//! an event or a log line arbitrarily large.

use serde::Serialize;

use crate::ParseError;

/// Length limit of names, address lines and similar human text, in characters.
pub const TEXT_CHARS_MAX: usize = 200;
/// Length limit of machine codes (channels, locations, customer references), in bytes.
pub const CODE_BYTES_MAX: usize = 64;

/// Human text: trimmed, non-empty, at most [`TEXT_CHARS_MAX`] characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Text(String);

impl Text {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ParseError::new("must not be empty"));
        }
        if trimmed.chars().count() > TEXT_CHARS_MAX {
            return Err(ParseError::new(format!(
                "must be at most {TEXT_CHARS_MAX} characters"
            )));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ParseError::new("must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A machine code such as a channel (`web`, `pos-12`) or a location (`wh-east`): 1 to
/// [`CODE_BYTES_MAX`] ASCII letters, digits, `-`, `_`, `.` or `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Code(String);

impl Code {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > CODE_BYTES_MAX {
            return Err(ParseError::new(format!(
                "must be 1 to {CODE_BYTES_MAX} characters"
            )));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        if !raw.chars().all(allowed) {
            return Err(ParseError::new(
                "may contain only ASCII letters, digits, '-', '_', '.' and ':'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(Text::parse("  Ada  ").map(|t| t.0), Ok("Ada".to_owned()));
        assert!(Text::parse("   ").is_err());
        assert!(Text::parse(&"x".repeat(TEXT_CHARS_MAX + 1)).is_err());
        assert!(Text::parse("a\u{0}b").is_err());
    }

    #[test]
    fn code_rejects_spaces_and_overlong_values() {
        assert!(Code::parse("pos-12").is_ok());
        assert!(Code::parse("pos 12").is_err());
        assert!(Code::parse("").is_err());
        assert!(Code::parse(&"a".repeat(CODE_BYTES_MAX + 1)).is_err());
    }
}
