//! The canonical byte encoding of an audit record, which its hash commits to.
//!
//! The encoding must be deterministic (the same record always gives the same bytes, on every
//! machine and after a round trip through either store) and unambiguous (two different records
//! never give the same bytes). JSON text is neither by itself: key order and whitespace vary, and
//! `serde_json`'s map keeps insertion order when any crate in the build enables its
//! `preserve_order` feature. So records are encoded field by field, in a fixed order:
//!
//! | field | encoding |
//! |---|---|
//! | format | `str("tally.audit.v1")`, so a future format can never collide with this one |
//! | `tenant_id`, `id` | the UUID's 16 bytes |
//! | `sequence` | 8 bytes, big-endian two's complement |
//! | `at` | seconds since the Unix epoch (8 bytes, big-endian) then nanoseconds (4 bytes) |
//! | `actor` | tag byte `1` API key + 16 UUID bytes, `2` partner + `str`, `3` system + `str` |
//! | `entity_type`, `entity_id`, `action` | `str` |
//! | `before`, `after` | `0`, or `1` then `json` |
//! | `cause` | `request_id`, `idempotency_key` as optional `str`; `event_id` as optional UUID; `causation_id` as optional `str` |
//!
//! where `str` is the length in bytes (8 bytes, big-endian) followed by the UTF-8 bytes, an
//! optional value is `0` or `1` followed by the value, and `json` is a tagged tree:
//! `n` null, `f` false, `t` true, `d` + `str(number as serde_json writes it)`, `s` + `str`,
//! `a` + count (8 bytes) + each item, `o` + count (8 bytes) + each (`str(key)`, value) with keys
//! sorted by their UTF-8 bytes. Every item either has a fixed size or states its length, so no
//! two values share an encoding. `prev_hash` and `hash` are not part of it: the hash is
//! `SHA-256(prev_hash || canonical bytes)`.
//!
//! Numbers are encoded as `serde_json` writes them, so a store must hand back `before` and
//! `after` as equal `serde_json::Value`s (text, or PostgreSQL `jsonb`, which keeps a number's
//! written digits; only an exponent form such as `1e2`, which Tally's serializers never
//! produce, would come back rewritten).

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{AT_SUBSEC_DIGITS, Actor, AuditDraft, AuditRecord, Cause, Hash};

/// The format tag at the start of every encoding. A change to the encoding must change it.
pub const CANONICAL_FORMAT: &str = "tally.audit.v1";

/// The bytes a record's hash commits to: every field but `prev_hash` and `hash`.
pub fn canonical_bytes(record: &AuditRecord) -> Vec<u8> {
    encode(&Fields {
        tenant_id: record.tenant_id,
        sequence: record.sequence,
        id: record.id,
        at: record.at,
        actor: &record.actor,
        entity_type: &record.entity_type,
        entity_id: &record.entity_id,
        action: &record.action,
        before: record.before.as_ref(),
        after: record.after.as_ref(),
        cause: &record.cause,
    })
    .bytes
}

/// A draft's canonical bytes with its place in the chain left open: sealing it writes the
/// sequence in and hashes, with no JSON tree to build or walk. Made where the draft is made, so
/// that the sealer, which handles every record the store writes, need not parse the stored draft
/// back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftBytes {
    bytes: Vec<u8>,
    /// Where the 8 bytes of `sequence` go.
    sequence_at: usize,
}

impl DraftBytes {
    /// The draft's bytes, its time cut to what the stores keep ([`AT_SUBSEC_DIGITS`]), as
    /// [`crate::seal`] hashes them.
    pub fn of(draft: &AuditDraft) -> Self {
        encode(&Fields {
            tenant_id: draft.tenant_id,
            sequence: 0,
            id: draft.id,
            at: draft.at.trunc_subsecs(AT_SUBSEC_DIGITS),
            actor: &draft.actor,
            entity_type: &draft.entity_type,
            entity_id: &draft.entity_id,
            action: &draft.action,
            before: draft.before.as_ref(),
            after: draft.after.as_ref(),
            cause: &draft.cause,
        })
    }

    /// The hash of the record these bytes become at `sequence`, after the record whose hash is
    /// `prev_hash`; the caller checks the place ([`crate::seal_bytes_after`]).
    pub(crate) fn hash_at(&mut self, sequence: i64, prev_hash: &Hash) -> Hash {
        self.bytes[self.sequence_at..self.sequence_at + 8].copy_from_slice(&sequence.to_be_bytes());
        chain_hash(prev_hash, &self.bytes)
    }
}

/// The fields a record's hash commits to, from a sealed record or a draft.
struct Fields<'a> {
    tenant_id: Uuid,
    sequence: i64,
    id: Uuid,
    at: DateTime<Utc>,
    actor: &'a Actor,
    entity_type: &'a str,
    entity_id: &'a str,
    action: &'a str,
    before: Option<&'a Value>,
    after: Option<&'a Value>,
    cause: &'a Cause,
}

/// The encoded fields, with where the sequence went.
fn encode(fields: &Fields<'_>) -> DraftBytes {
    let mut out = Encoder::default();
    out.str(CANONICAL_FORMAT);
    out.uuid(fields.tenant_id);
    let sequence_at = out.bytes.len();
    out.i64(fields.sequence);
    out.uuid(fields.id);
    out.i64(fields.at.timestamp());
    out.raw(&fields.at.timestamp_subsec_nanos().to_be_bytes());
    match fields.actor {
        Actor::ApiKey(key_id) => {
            out.raw(&[1]);
            out.uuid(*key_id);
        }
        Actor::Partner(name) => {
            out.raw(&[2]);
            out.str(name);
        }
        Actor::System(group) => {
            out.raw(&[3]);
            out.str(group);
        }
    }
    out.str(fields.entity_type);
    out.str(fields.entity_id);
    out.str(fields.action);
    for value in [fields.before, fields.after] {
        out.optional(value, Encoder::json);
    }
    let cause = fields.cause;
    out.optional(cause.request_id.as_deref(), Encoder::str);
    out.optional(cause.idempotency_key.as_deref(), Encoder::str);
    out.optional(cause.event_id, Encoder::uuid);
    out.optional(cause.causation_id.as_deref(), Encoder::str);
    DraftBytes {
        bytes: out.bytes,
        sequence_at,
    }
}

/// `SHA-256(prev_hash || canonical)`.
pub fn chain_hash(prev_hash: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

#[derive(Default)]
struct Encoder {
    bytes: Vec<u8>,
}

/// A pending piece of a JSON tree on the encoder's explicit stack.
enum Item<'a> {
    Value(&'a Value),
    Key(&'a str),
}

impl Encoder {
    fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// A count or length. `usize` is at most 64 bits on every target Tally builds for, so the
    /// conversion is lossless.
    fn len(&mut self, len: usize) {
        self.raw(&(len as u64).to_be_bytes());
    }

    fn str(&mut self, text: &str) {
        self.len(text.len());
        self.raw(text.as_bytes());
    }

    fn uuid(&mut self, uuid: Uuid) {
        self.raw(uuid.as_bytes());
    }

    fn i64(&mut self, value: i64) {
        self.raw(&value.to_be_bytes());
    }

    fn optional<T>(&mut self, value: Option<T>, encode: fn(&mut Self, T)) {
        match value {
            None => self.raw(&[0]),
            Some(value) => {
                self.raw(&[1]);
                encode(self, value);
            }
        }
    }

    /// Encodes a JSON tree with an explicit stack rather than recursion, so a deeply nested
    /// value built in code (which the parser's depth limit never saw) cannot overflow the
    /// thread's stack. The loop runs once per node and key of the tree.
    fn json(&mut self, root: &Value) {
        let mut stack = vec![Item::Value(root)];
        while let Some(item) = stack.pop() {
            let value = match item {
                Item::Key(key) => {
                    self.str(key);
                    continue;
                }
                Item::Value(value) => value,
            };
            match value {
                Value::Null => self.raw(b"n"),
                Value::Bool(false) => self.raw(b"f"),
                Value::Bool(true) => self.raw(b"t"),
                Value::Number(number) => {
                    self.raw(b"d");
                    self.str(&number.to_string());
                }
                Value::String(text) => {
                    self.raw(b"s");
                    self.str(text);
                }
                Value::Array(items) => {
                    self.raw(b"a");
                    self.len(items.len());
                    stack.extend(items.iter().rev().map(Item::Value));
                }
                Value::Object(map) => {
                    self.raw(b"o");
                    self.len(map.len());
                    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    for (key, value) in entries.into_iter().rev() {
                        stack.push(Item::Value(value));
                        stack.push(Item::Key(key));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encoded(value: &Value) -> Vec<u8> {
        let mut out = Encoder::default();
        out.json(value);
        out.bytes
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_the_encoding() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": [true, null, "x"]}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":[true,null,"x"],"b":1}"#).expect("json");
        assert_eq!(encoded(&a), encoded(&b));
    }

    #[test]
    fn different_values_encode_differently() {
        let values = [
            json!(null),
            json!(false),
            json!(true),
            json!(1),
            json!(1.0),
            json!(-1),
            json!("1"),
            json!(""),
            json!([]),
            json!({}),
            json!(["ab", "c"]),
            json!(["a", "bc"]),
            json!([["a"], "b"]),
            json!([["a", "b"]]),
            json!({"a": "b"}),
            json!({"ab": ""}),
            json!({"a": {"b": null}}),
            json!({"a": {}, "b": null}),
        ];
        for (i, x) in values.iter().enumerate() {
            for y in &values[i + 1..] {
                assert_ne!(encoded(x), encoded(y), "{x} and {y} collide");
            }
        }
    }

    #[test]
    fn a_deeply_nested_value_does_not_overflow_the_stack() {
        let mut value = json!(0);
        for _ in 0..100_000 {
            value = Value::Array(vec![value]);
        }
        assert!(encoded(&value).len() > 100_000);
        // Dropping the value recurses in serde_json itself; leak it so only the encoder's depth
        // is under test.
        std::mem::forget(value);
    }
}
