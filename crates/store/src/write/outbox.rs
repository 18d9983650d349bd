//! What every change writes beside its own rows: its events into the outbox (under their
//! partition keys' locks on PostgreSQL) and its audit record, and a command's response under
//! its idempotency key, on PostgreSQL in one round trip.

use std::borrow::Cow;

use tally_domain::ids::TenantId;

use super::{idempotency_args, insert_idempotency_record};
use crate::exec::{Arg, Exec, args, pick};
use crate::postgres::LOCK_CLASS_PARTITION_KEY;
use crate::records::{NewAuditRecord, NewEvent, NewIdempotencyRecord};
use crate::{Engine, StoreError, corrupt};

/// The partition-key advisory locks a transaction appending `events` takes on PostgreSQL, in
/// ascending order, so that two transactions appending under overlapping keys cannot deadlock.
pub(crate) fn partition_lock_ids<'e>(events: impl IntoIterator<Item = &'e NewEvent>) -> Vec<i32> {
    let mut ids: Vec<i32> = events
        .into_iter()
        .map(|e| crate::log::key_lock_id(&e.partition_key))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The fourteen parameters of PostgreSQL's `append_events` (see the migrations): the lock class
/// and ids, then the twelve columns of `events` as one array each, in the order id, tenant,
/// type, source, subject, partition key, partition, time, data, correlation id, causation id,
/// traceparent.
pub(crate) fn event_columns<'e>(events: &'e [NewEvent]) -> Result<Vec<Arg<'e>>, StoreError> {
    let partitions = events
        .iter()
        .map(|e| i32::try_from(e.partition).map_err(|e| corrupt("partition", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let text = |f: fn(&NewEvent) -> &str| Arg::Texts(events.iter().map(|e| f(e).into()).collect());
    let optional = |f: fn(&NewEvent) -> Option<&str>| {
        Arg::OptTexts(events.iter().map(|e| f(e).map(Cow::Borrowed)).collect())
    };
    Ok(vec![
        Arg::Int4(Some(LOCK_CLASS_PARTITION_KEY)),
        Arg::Int4s(partition_lock_ids(events)),
        Arg::Uuids(events.iter().map(|e| e.id.as_uuid()).collect()),
        Arg::Uuids(events.iter().map(|e| e.tenant_id.as_uuid()).collect()),
        text(|e| e.event_type),
        text(|e| &e.source),
        text(|e| &e.subject),
        text(|e| &e.partition_key),
        Arg::Int4s(partitions),
        Arg::Times(events.iter().map(|e| e.time).collect()),
        Arg::Texts(events.iter().map(|e| e.data.to_string().into()).collect()),
        optional(|e| e.correlation_id.as_deref()),
        optional(|e| e.causation_id.as_deref()),
        optional(|e| e.traceparent.as_deref()),
    ])
}

/// The six parameters of an audit record: tenant, id, time, body, entity type, entity id.
/// The body is JSON text, which PostgreSQL's statements cast to `jsonb`.
fn audit_args(record: &NewAuditRecord) -> [Arg<'_>; 6] {
    args![
        record.tenant_id.as_uuid(),
        record.id,
        record.at,
        record.body.as_str(),
        record.entity_type.as_str(),
        record.entity_id.as_str()
    ]
}

/// Writes events to the outbox. Must be the last locking step of a transaction: on PostgreSQL
/// it takes the events' partition-key locks, so that each key's events enter the log in commit
/// order; on SQLite, whose writes are serialized, insertion order is commit order, and an
/// event's position is given as it is inserted.
pub(crate) async fn append_events<X: Exec>(
    x: &mut X,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    if X::ENGINE == Engine::Postgres {
        // The partition-key locks and the insert in one round trip.
        x.execute(
            "SELECT append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &event_columns(events)?,
        )
        .await?;
        return Ok(());
    }
    for event in events {
        x.execute(
            "INSERT INTO events (id, tenant_id, type, source, subject, partition_key, partition, \
             time, data, correlation_id, causation_id, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                event.id.as_uuid().into(),
                event.tenant_id.as_uuid().into(),
                event.event_type.into(),
                event.source.as_str().into(),
                event.subject.as_str().into(),
                event.partition_key.as_str().into(),
                Arg::int4(event.partition)?,
                event.time.into(),
                Arg::json(&event.data)?,
                event.correlation_id.as_deref().into(),
                event.causation_id.as_deref().into(),
                event.traceparent.as_deref().into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// What every command writes beside its own rows: its events, its audit record and the response
/// under its idempotency key (on PostgreSQL in one round trip, see `record_command` in the
/// migrations).
pub(crate) async fn record_command<X: Exec>(
    x: &mut X,
    events: &[NewEvent],
    audit: &NewAuditRecord,
    tenant: TenantId,
    record: &NewIdempotencyRecord<'_>,
) -> Result<(), StoreError> {
    if X::ENGINE == Engine::Postgres {
        let mut call = event_columns(events)?;
        call.extend(audit_args(audit));
        call.extend(idempotency_args(tenant, record));
        x.execute(
            "SELECT record_command($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)",
            &call,
        )
        .await?;
        return Ok(());
    }
    append_events(x, events).await?;
    insert_audit(x, audit).await?;
    insert_idempotency_record(x, tenant, record).await
}

pub(crate) async fn insert_audit<X: Exec>(
    x: &mut X,
    record: &NewAuditRecord,
) -> Result<(), StoreError> {
    let sql = pick::<X>(
        "INSERT INTO audit_records (tenant_id, id, at, body, entity_type, entity_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        "INSERT INTO audit_records (tenant_id, id, at, body, entity_type, entity_id) \
         VALUES ($1, $2, $3, $4::jsonb, $5, $6)",
    );
    x.execute(sql, &audit_args(record)).await?;
    Ok(())
}
