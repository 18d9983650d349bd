//! Idempotency keys (IETF `Idempotency-Key` header draft) and request fingerprints.

use serde::Serialize;

use crate::ParseError;
use crate::ids::EventId;

/// The key of one step a consumer takes for one event: `{consumer}:{event}:{step}`. It is the
/// idempotency key of the step's partner call and the id of its journal entry, so a step
/// repeated by a retry, a redelivery or a cancellation that asks again makes the same call and
/// books the same entry. Written once here for the dispatcher, the ledger and the saga.
pub fn step_key(consumer: &str, event: EventId, step: &str) -> String {
    format!("{consumer}:{event}:{step}")
}

/// Length limit of an idempotency key, in bytes. UUIDs and ULIDs fit many times over; the limit
/// bounds the key index.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// A client-chosen key, unique per tenant for the retention window: 1 to
/// [`IDEMPOTENCY_KEY_BYTES_MAX`] printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        // The draft defines the header as a Structured Field string; clients commonly send the
        // bare value, so both `"abc"` and `abc` are accepted and mean the same key.
        let raw = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or(raw);
        if raw.is_empty() || raw.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(ParseError::new(format!(
                "must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} characters"
            )));
        }
        if !raw.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ParseError::new(
                "must contain only printable ASCII without spaces",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A digest of what a request asks for (method, route and canonical body). The same key with a
/// different fingerprint is a client error, never a replay.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accept_structured_field_strings() {
        assert_eq!(
            IdempotencyKey::parse("\"abc-1\"").map(|k| k.0),
            Ok("abc-1".to_owned())
        );
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1)).is_err());
    }
}
