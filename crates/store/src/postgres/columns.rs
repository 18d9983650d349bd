//! Parameters bound the same way by every statement that takes them: events as one array per
//! column (inserted through `unnest`), an audit record, an idempotency record.

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use uuid::Uuid;

use crate::records::{NewAuditRecord, NewEvent};
use crate::{StoreError, corrupt};

pub(super) use crate::write::partition_lock_ids;

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
