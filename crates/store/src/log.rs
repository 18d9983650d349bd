//! What both engines' logs share: how a partition key maps to a partition and to a lock.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tally_domain::event::EventDraft;
use tally_domain::ids::{EventId, TenantId};

use crate::records::NewEvent;

/// Events counted per partition when measuring a consumer group's backlog. A lag gauge read
/// every second must not cost the database a scan of the whole backlog (counting tens of
/// thousands of events took over a second on PostgreSQL); past this the gauge says "at least".
pub const BACKLOG_COUNT_MAX: i64 = 10_000;

/// A stable 64-bit hash of a partition key. Stable across processes, versions and machines:
/// partitions of rows already written depend on it.
fn key_hash(partition_key: &str) -> u64 {
    let digest = Sha256::digest(partition_key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The log partition of a partition key.
pub fn partition_of(partition_key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "a log has at least one partition");
    let partition = key_hash(partition_key) % u64::from(partitions);
    // The remainder of a division by a u32 fits in a u32.
    u32::try_from(partition).unwrap_or_else(|_| unreachable!("remainder below a u32 divisor"))
}

/// The 32-bit lock id that serializes appends of one partition key (PostgreSQL advisory locks).
pub fn key_lock_id(partition_key: &str) -> i32 {
    // Keep the low 32 bits; collisions only make two keys wait for each other.
    (key_hash(partition_key) & 0xFFFF_FFFF) as u32 as i32
}

/// Why an event happened: the request or event that caused it, and the trace it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Causes {
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub traceparent: Option<String>,
}

/// Wraps a decision's draft into a CloudEvents envelope for the outbox, under `id` (minted by
/// the injected clock).
pub fn envelope(
    id: EventId,
    draft: EventDraft,
    tenant: TenantId,
    partitions: u32,
    now: DateTime<Utc>,
    causes: &Causes,
) -> NewEvent {
    NewEvent {
        id,
        tenant_id: tenant,
        event_type: draft.event_type.as_str(),
        source: format!("/tally/{}", draft.event_type.category()),
        partition: partition_of(&draft.partition_key, partitions),
        subject: draft.subject,
        partition_key: draft.partition_key,
        time: now,
        data: draft.data,
        correlation_id: causes.correlation_id.clone(),
        causation_id: causes.causation_id.clone(),
        traceparent: causes.traceparent.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_of("order-1", 8), partition_of("order-1", 8));
        for key in ["a", "b", "SKU-1", "0192f0c4-0000-7000-8000-000000000000"] {
            assert!(partition_of(key, 8) < 8);
        }
        assert_eq!(partition_of("anything", 1), 0);
    }
}
