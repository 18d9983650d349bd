//! Parameters bound the same way by every statement that takes them: events as one array per
//! column (inserted through `unnest`), an audit record, an idempotency record.

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use uuid::Uuid;

use tally_domain::ids::TenantId;

use crate::records::{NewAuditRecord, NewEvent, NewIdempotencyRecord};
use crate::{StoreError, corrupt};

/// The partition-key advisory locks a transaction appending `events` takes, in ascending order,
/// so that two transactions appending under overlapping keys cannot deadlock on each other.
pub(super) fn partition_lock_ids<'e>(events: impl IntoIterator<Item = &'e NewEvent>) -> Vec<i32> {
    let mut ids: Vec<i32> = events
        .into_iter()
        .map(|e| crate::log::key_lock_id(&e.partition_key))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The twelve columns of `events`, in the order every statement that appends them takes:
/// id, tenant, type, source, subject, partition key, partition, time, data, correlation id,
/// causation id, traceparent.
#[derive(Default)]
pub(super) struct EventColumns {
    ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    types: Vec<String>,
    sources: Vec<String>,
    subjects: Vec<String>,
    keys: Vec<String>,
    partitions: Vec<i32>,
    times: Vec<DateTime<Utc>>,
    data: Vec<String>,
    correlations: Vec<Option<String>>,
    causations: Vec<Option<String>>,
    traceparents: Vec<Option<String>>,
}

impl EventColumns {
    pub(super) fn of<'e>(
        events: impl IntoIterator<Item = &'e NewEvent>,
    ) -> Result<Self, StoreError> {
        let mut columns = Self::default();
        for event in events {
            columns.ids.push(event.id.as_uuid());
            columns.tenants.push(event.tenant_id.as_uuid());
            columns.types.push(event.event_type.to_owned());
            columns.sources.push(event.source.clone());
            columns.subjects.push(event.subject.clone());
            columns.keys.push(event.partition_key.clone());
            columns
                .partitions
                .push(i32::try_from(event.partition).map_err(|e| corrupt("partition", e))?);
            columns.times.push(event.time);
            columns.data.push(event.data.to_string());
            columns.correlations.push(event.correlation_id.clone());
            columns.causations.push(event.causation_id.clone());
            columns.traceparents.push(event.traceparent.clone());
        }
        Ok(columns)
    }

    /// Binds the columns as the next twelve parameters of `query`.
    pub(super) fn bind<'q>(
        self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(self.ids)
            .bind(self.tenants)
            .bind(self.types)
            .bind(self.sources)
            .bind(self.subjects)
            .bind(self.keys)
            .bind(self.partitions)
            .bind(self.times)
            .bind(self.data)
            .bind(self.correlations)
            .bind(self.causations)
            .bind(self.traceparents)
    }
}

/// Binds an audit record as the next six parameters of `query`: tenant, id, time, body, entity
/// type, entity id.
pub(super) fn bind_audit<'q>(
    query: Query<'q, Postgres, PgArguments>,
    record: &'q NewAuditRecord,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(record.tenant_id.as_uuid())
        .bind(record.id)
        .bind(record.at)
        .bind(record.body.as_str())
        .bind(&record.entity_type)
        .bind(&record.entity_id)
}

/// Binds an idempotency record as the next eight parameters of `query`: tenant, key,
/// fingerprint, status code, location, response body, creation and expiry times.
pub(super) fn bind_idempotency_record<'q>(
    query: Query<'q, Postgres, PgArguments>,
    tenant: TenantId,
    record: &'q NewIdempotencyRecord<'_>,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(tenant.as_uuid())
        .bind(record.key)
        .bind(&record.fingerprint[..])
        .bind(i16::try_from(record.response.status).unwrap_or(i16::MAX))
        .bind(record.response.location.as_deref())
        .bind(&record.response.body)
        .bind(record.created_at)
        .bind(record.expires_at)
}
