//! Audit records: who did what to which entity, why and when, sealed into a per-tenant chain.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::canonical::{self, DraftBytes};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of a tenant's first record: there is no predecessor to commit to.
pub const GENESIS_PREV_HASH: Hash = [0; 32];

/// Sub-second digits kept in `at`. Both stores keep microseconds, so a record sealed with a finer
/// time would read back different from what was hashed and fail verification.
pub const AT_SUBSEC_DIGITS: u16 = 6;

/// Who caused a change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Actor {
    /// A caller of the HTTP API, by the id of the API key it used (never the key's secret).
    ApiKey(Uuid),
    /// A partner's webhook or callback, by partner name (`payments`, `shopify`).
    Partner(String),
    /// A consumer inside Tally, by consumer group (`checkout`, `notifications`).
    System(String),
}

/// Why a change happened: the request, idempotency key, event and causation that led to it. Any
/// ledger entry is traced back to its request or webhook through these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Cause {
    /// The HTTP request's `x-request-id`, when a request caused the change.
    pub request_id: Option<String>,
    /// The client's `Idempotency-Key`, when the request carried one.
    pub idempotency_key: Option<String>,
    /// The event a consumer was applying, when a consumer made the change.
    pub event_id: Option<Uuid>,
    /// The CloudEvents `causationid` chain link: what caused the event itself.
    pub causation_id: Option<String>,
}

/// A record before it joins the chain: everything but its place (`sequence`, `prev_hash`) and
/// the `hash` that seals it. Built by the code that makes the change; the store seals it inside
/// the same database transaction, after reading the tenant's chain head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub tenant_id: Uuid,
    pub id: Uuid,
    /// When the change happened, from the injected clock.
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// The kind of entity changed (`order`, `journal_entry`, `api_key`).
    pub entity_type: String,
    pub entity_id: String,
    /// What was done (`placed`, `captured`, `revoked`).
    pub action: String,
    /// The entity before the change; `None` when it was created.
    pub before: Option<serde_json::Value>,
    /// The entity after the change; `None` when it was deleted.
    pub after: Option<serde_json::Value>,
    pub cause: Cause,
}

/// A sealed audit record. The fields are public because a record read back from the store is
/// untrusted data: [`crate::verify()`] recomputes every hash rather than believing `hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub tenant_id: Uuid,
    /// Position in the tenant's chain: 1, 2, 3… with no gaps.
    pub sequence: i64,
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub entity_type: String,
    pub entity_id: String,
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub cause: Cause,
    /// The `hash` of the record at `sequence - 1`, or [`GENESIS_PREV_HASH`] for the first.
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    /// `SHA-256(prev_hash || canonical bytes of every other field)`; see [`crate::canonical`].
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl AuditRecord {
    /// The hash this record's content calls for, whatever its `hash` field says.
    pub fn compute_hash(&self) -> Hash {
        canonical::chain_hash(&self.prev_hash, &canonical::canonical_bytes(self))
    }

    /// The chain's head if this record is the newest.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            sequence: self.sequence,
            hash: self.hash,
        }
    }
}

/// The end of a tenant's chain: the newest record's sequence and hash. The store keeps it to
/// seal the next record; kept (or published) outside the database too, it also proves that no
/// record was cut from the end and that the chain was not rewritten from some point on, which a
/// hash chain alone cannot show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub sequence: i64,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl ChainHead {
    /// The head of an empty chain.
    pub const GENESIS: ChainHead = ChainHead {
        sequence: 0,
        hash: GENESIS_PREV_HASH,
    };
}

/// Seals a draft as record `sequence` of its tenant's chain, after the record whose hash is
/// `prev_hash`. `at` is truncated to microseconds ([`AT_SUBSEC_DIGITS`]) before hashing.
///
/// Panics on a sequence below 1, or when `prev_hash` is the genesis hash exactly when the
/// sequence is not 1: either means the caller lost track of the chain head, and writing such a
/// record would break the chain for good.
pub fn seal(draft: AuditDraft, sequence: i64, prev_hash: Hash) -> AuditRecord {
    assert_place(sequence, &prev_hash);
    let AuditDraft {
        tenant_id,
        id,
        at,
        actor,
        entity_type,
        entity_id,
        action,
        before,
        after,
        cause,
    } = draft;
    let mut record = AuditRecord {
        tenant_id,
        sequence,
        id,
        at: at.trunc_subsecs(AT_SUBSEC_DIGITS),
        actor,
        entity_type,
        entity_id,
        action,
        before,
        after,
        cause,
        prev_hash,
        hash: GENESIS_PREV_HASH,
    };
    record.hash = record.compute_hash();
    record
}

/// Seals a draft as the record after `head`.
pub fn seal_after(head: &ChainHead, draft: AuditDraft) -> AuditRecord {
    seal(draft, next_sequence(head), head.hash)
}

/// Seals a draft, given as its canonical bytes, as the record after `head`: the new head, whose
/// hash is the one [`seal_after`] gives the draft itself.
pub fn seal_bytes_after(head: &ChainHead, draft: &mut DraftBytes) -> ChainHead {
    let sequence = next_sequence(head);
    assert_place(sequence, &head.hash);
    ChainHead {
        sequence,
        hash: draft.hash_at(sequence, &head.hash),
    }
}

/// The sequence of the record after `head`.
fn next_sequence(head: &ChainHead) -> i64 {
    assert!(
        head.sequence >= 0,
        "chain head sequence {} is negative",
        head.sequence
    );
    assert!(head.sequence < i64::MAX, "the audit chain is full");
    head.sequence + 1
}

/// A record's place is sound: sequences start at 1, and the first record, only it, follows
/// the genesis hash.
fn assert_place(sequence: i64, prev_hash: &Hash) {
    assert!(sequence >= 1, "audit sequence {sequence} is below 1");
    assert_eq!(
        sequence == 1,
        *prev_hash == GENESIS_PREV_HASH,
        "audit record {sequence} must follow the genesis hash exactly when it is the first"
    );
}

/// Hashes as lowercase hex in serialized records, so they read like every other digest.
mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Hash;

    pub fn serialize<S: Serializer>(hash: &Hash, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut hash = [0; 32];
        hex::decode_to_slice(&text, &mut hash).map_err(serde::de::Error::custom)?;
        Ok(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn draft() -> AuditDraft {
        AuditDraft {
            tenant_id: Uuid::from_u128(1),
            id: Uuid::from_u128(2),
            at: Utc
                .timestamp_opt(1_700_000_000, 123_456_789)
                .single()
                .expect("valid time"),
            actor: Actor::Partner("payments".to_owned()),
            entity_type: "order".to_owned(),
            entity_id: "o-1".to_owned(),
            action: "captured".to_owned(),
            before: Some(serde_json::json!({"status": "authorized"})),
            after: Some(serde_json::json!({"status": "captured"})),
            cause: Cause {
                event_id: Some(Uuid::from_u128(3)),
                ..Cause::default()
            },
        }
    }

    #[test]
    fn sealing_keeps_microseconds_and_commits_to_the_content() {
        let record = seal(draft(), 1, GENESIS_PREV_HASH);
        assert_eq!(record.at.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(record.hash, record.compute_hash());
        assert_ne!(record.hash, GENESIS_PREV_HASH);
        let next = seal_after(&record.head(), draft());
        assert_eq!((next.sequence, next.prev_hash), (2, record.hash));
        assert_ne!(
            next.hash, record.hash,
            "the same content at another place hashes apart"
        );
    }

    #[test]
    fn sealing_a_drafts_bytes_gives_the_hash_sealing_the_draft_gives() {
        let mut head = ChainHead::GENESIS;
        let mut drafts = vec![draft(), draft(), draft()];
        drafts[1].actor = Actor::ApiKey(Uuid::from_u128(9));
        drafts[1].before = None;
        drafts[1].cause.request_id = Some("req-1".to_owned());
        drafts[2].actor = Actor::System("checkout".to_owned());
        drafts[2].after =
            Some(serde_json::json!({"lines": [{"sku": "A", "quantity": 2}], "n": -7}));
        for draft in drafts {
            let mut bytes = DraftBytes::of(&draft);
            let sealed = seal_after(&head, draft);
            let from_bytes = seal_bytes_after(&head, &mut bytes);
            assert_eq!(from_bytes, sealed.head(), "record {}", sealed.sequence);
            head = from_bytes;
        }
        assert_eq!(head.sequence, 3);
    }

    #[test]
    #[should_panic(expected = "genesis")]
    fn sealing_bytes_after_a_head_that_lost_its_hash_stops_the_process() {
        let head = ChainHead {
            sequence: 4,
            hash: GENESIS_PREV_HASH,
        };
        seal_bytes_after(&head, &mut DraftBytes::of(&draft()));
    }

    #[test]
    fn a_record_survives_a_json_round_trip() {
        let record = seal(draft(), 1, GENESIS_PREV_HASH);
        let text = serde_json::to_string(&record).expect("serializes");
        assert!(text.contains(&hex::encode(record.hash)));
        let back: AuditRecord = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, record);
        assert_eq!(back.compute_hash(), record.hash);
    }

    #[test]
    #[should_panic(expected = "genesis")]
    fn a_later_record_after_the_genesis_hash_stops_the_process() {
        seal(draft(), 2, GENESIS_PREV_HASH);
    }

    #[test]
    #[should_panic(expected = "below 1")]
    fn a_sequence_below_one_stops_the_process() {
        seal(draft(), 0, GENESIS_PREV_HASH);
    }
}
