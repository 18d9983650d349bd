//! Chain tests over the public API: a sealed chain verifies, and any edit, deletion, swap or
//! insertion is reported at the record where it happened.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use tally_audit::{
    Actor, AuditDraft, AuditRecord, Cause, ChainBreak, ChainHead, seal_after, verify,
    verify_segment,
};
use uuid::Uuid;

/// Records in the fixed chain: long enough that edits at the start, middle and end differ.
const CHAIN_LENGTH: usize = 100;

/// Every field of a record, each of which an attacker might edit.
const FIELD_COUNT: usize = 15;

fn start_time() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("valid time")
}

fn draft(tenant_id: Uuid, index: usize) -> AuditDraft {
    let n = u128::try_from(index).expect("small index");
    let actor = match index % 3 {
        0 => Actor::ApiKey(Uuid::from_u128(1_000 + n)),
        1 => Actor::Partner("payments".to_owned()),
        _ => Actor::System("checkout".to_owned()),
    };
    AuditDraft {
        tenant_id,
        id: Uuid::from_u128(n + 1),
        at: start_time() + Duration::milliseconds(i64::try_from(index).expect("small")),
        actor,
        entity_type: "order".to_owned(),
        entity_id: format!("order-{}", index / 4),
        action: ["placed", "authorized", "captured", "shipped"][index % 4].to_owned(),
        before: (!index.is_multiple_of(4))
            .then(|| json!({"status": "placed", "total_minor": index})),
        after: Some(json!({"status": "authorized", "lines": [{"sku": "A-1", "quantity": 2}]})),
        cause: Cause {
            request_id: Some(format!("req-{index}")),
            idempotency_key: index.is_multiple_of(2).then(|| format!("key-{index}")),
            event_id: (index % 2 == 1).then(|| Uuid::from_u128(5_000 + n)),
            causation_id: None,
        },
    }
}

fn chain(length: usize) -> Vec<AuditRecord> {
    let tenant_id = Uuid::from_u128(42);
    let mut head = ChainHead::GENESIS;
    let mut records = Vec::with_capacity(length);
    for index in 0..length {
        let record = seal_after(&head, draft(tenant_id, index));
        head = record.head();
        records.push(record);
    }
    records
}

/// Changes one field of a record to a value it certainly did not have.
fn mutate(record: &mut AuditRecord, field: usize) {
    let flip = |hash: &mut [u8; 32]| hash[7] ^= 0x01;
    match field {
        0 => record.tenant_id = Uuid::from_u128(record.tenant_id.as_u128() ^ 1),
        1 => record.sequence += 1_000,
        2 => record.id = Uuid::from_u128(record.id.as_u128() ^ 1),
        3 => record.at += Duration::microseconds(1),
        4 => {
            record.actor = match &record.actor {
                Actor::System(_) => Actor::Partner("checkout".to_owned()),
                Actor::ApiKey(_) | Actor::Partner(_) => Actor::System("checkout".to_owned()),
            }
        }
        5 => record.entity_type.push('s'),
        6 => record.entity_id.push('0'),
        7 => record.action = "refunded".to_owned(),
        8 => record.before = record.before.take().map_or(Some(json!(null)), |_| None),
        9 => record.after = Some(json!({"status": "authorized", "lines": []})),
        10 => record.cause.request_id = None,
        11 => record.cause.idempotency_key = Some("forged".to_owned()),
        12 => record.cause.event_id = Some(Uuid::from_u128(7)),
        13 => record.cause.causation_id = Some(String::new()),
        14 => flip(&mut record.prev_hash),
        _ => flip(&mut record.hash),
    }
}

fn breaks(records: &[AuditRecord]) -> Vec<ChainBreak> {
    verify(records).err().unwrap_or_default()
}

fn names(breaks: &[ChainBreak], record: &AuditRecord) -> bool {
    breaks
        .iter()
        .any(|b| b.record_id() == Some(record.id) || b.sequence() == record.sequence)
}

/// A chain sealed record by record verifies as a whole and in pages.
#[test]
fn a_sealed_chain_verifies() {
    let records = chain(CHAIN_LENGTH);
    assert_eq!(verify(&records), Ok(()));
    let head = records.last().map(AuditRecord::head);
    assert_eq!(
        verify_segment(&ChainHead::GENESIS, &records, head.as_ref()),
        Ok(())
    );
    let (first, second) = records.split_at(37);
    let middle = first.last().map(AuditRecord::head).expect("non-empty");
    assert_eq!(verify_segment(&ChainHead::GENESIS, first, None), Ok(()));
    assert_eq!(verify_segment(&middle, second, head.as_ref()), Ok(()));
}

/// Editing any field of any record is reported, naming that record.
#[test]
fn an_edit_to_any_field_of_any_record_is_named() {
    let records = chain(CHAIN_LENGTH);
    for position in 0..CHAIN_LENGTH {
        for field in 0..FIELD_COUNT {
            let mut edited = records.clone();
            mutate(&mut edited[position], field);
            let found = breaks(&edited);
            assert!(
                names(&found, &edited[position]),
                "field {field} of record {position}: {found:?}"
            );
        }
    }
}

/// An edit whose hash is recomputed still breaks the link from the next record.
#[test]
fn a_resealed_edit_is_named_at_the_next_record() {
    let mut records = chain(CHAIN_LENGTH);
    records[10].action = "refunded".to_owned();
    records[10].hash = records[10].compute_hash();
    assert_eq!(
        breaks(&records),
        vec![ChainBreak::Unlinked {
            sequence: 12,
            id: records[11].id
        }]
    );
}

/// Deleting any one record is reported at the sequence where the chain breaks; deleting the
/// last is caught by the chain head.
#[test]
fn a_deleted_record_is_named() {
    let records = chain(CHAIN_LENGTH);
    for position in 0..CHAIN_LENGTH - 1 {
        let mut cut = records.clone();
        cut.remove(position);
        let expected = i64::try_from(position + 1).expect("small");
        assert_eq!(
            breaks(&cut),
            vec![ChainBreak::SequenceMismatch {
                expected,
                found: expected + 1,
                id: records[position + 1].id,
            }]
        );
    }
    let head = records.last().map(AuditRecord::head).expect("non-empty");
    let truncated = &records[..CHAIN_LENGTH - 1];
    assert_eq!(
        verify(truncated),
        Ok(()),
        "the chain alone cannot see a cut end"
    );
    assert_eq!(
        verify_segment(&ChainHead::GENESIS, truncated, Some(&head)),
        Err(vec![ChainBreak::HeadMismatch {
            head_sequence: 100,
            found_sequence: 99
        }])
    );
}

/// Swapping two records, or inserting a copy of one, is named at the displaced records.
#[test]
fn swapped_and_inserted_records_are_named() {
    let records = chain(CHAIN_LENGTH);
    let mut swapped = records.clone();
    swapped.swap(20, 60);
    let found = breaks(&swapped);
    assert!(
        names(&found, &records[20]) && names(&found, &records[60]),
        "{found:?}"
    );

    let mut renumbered = records.clone();
    renumbered.swap(5, 6);
    (renumbered[5].sequence, renumbered[6].sequence) = (6, 7);
    let found = breaks(&renumbered);
    assert!(
        names(&found, &renumbered[5]) && names(&found, &renumbered[6]),
        "{found:?}"
    );

    let mut inserted = records.clone();
    inserted.insert(30, records[70].clone());
    let found = breaks(&inserted);
    assert!(names(&found, &records[70]), "{found:?}");
}

/// A record of another tenant in the run is named.
#[test]
fn a_foreign_record_is_named() {
    let mut records = chain(5);
    let foreign = chain(5).remove(2);
    records[2] = AuditRecord {
        tenant_id: Uuid::from_u128(7),
        ..foreign
    };
    let found = breaks(&records);
    assert!(
        found
            .iter()
            .any(|b| matches!(b, ChainBreak::ForeignTenant { sequence: 3, .. }))
    );
    assert!(found[0].to_string().contains("sequence 3"), "{found:?}");
}

proptest! {
    /// Changing any single field of any record of any chain is detected and named.
    #[test]
    fn any_single_field_mutation_is_detected(
        length in 1..40usize,
        position_seed in any::<usize>(),
        field in 0..FIELD_COUNT,
    ) {
        let mut records = chain(length);
        let position = position_seed % length;
        mutate(&mut records[position], field);
        let found = breaks(&records);
        prop_assert!(names(&found, &records[position]), "{:?}", found);
    }
}
