//! Reads, tenant set-up, the log and maintenance on PostgreSQL.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use tally_domain::ids::{ApiKeyId, EventId, OrderId, ProductId, TenantId};
use uuid::Uuid;

use super::PgStore;
use crate::records::*;
use crate::{Engine, Store, StoreError, Tx, corrupt};

#[async_trait]
impl Store for PgStore {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let tx = self.pool.begin().await?;
        Ok(Box::new(super::tx::PgTx::new(tx)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_tenant(&self, tenant: &NewTenant) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(tenant.id.as_uuid())
            .bind(&tenant.name)
            .bind(tenant.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, key_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.id.as_uuid())
        .bind(key.tenant_id.as_uuid())
        .bind(&key.key_hash[..])
        .bind(&key.scopes)
        .bind(key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, scopes, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE key_hash = $1",
        )
        .bind(&key_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ApiKeyRecord {
                id: ApiKeyId::from_uuid(row.try_get("id")?),
                tenant_id: TenantId::from_uuid(row.try_get("tenant_id")?),
                scopes: row.try_get("scopes")?,
                revoked: row.try_get("revoked")?,
            })
        })
        .transpose()
    }

    async fn find_idempotency_record(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(super::tx::SELECT_IDEMPOTENCY_RECORD)
            .bind(tenant.as_uuid())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(super::tx::idempotency_record).transpose()
    }

    async fn purge_idempotency_records(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idempotency_records WHERE (tenant_id, key) IN \
             (SELECT tenant_id, key FROM idempotency_records WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn product(
        &self,
        tenant: TenantId,
        id: ProductId,
    ) -> Result<Option<ProductRecord>, StoreError> {
        let Some(row) =
            sqlx::query("SELECT name, created_at FROM products WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let variants = sqlx::query(
            "SELECT sku, prices FROM variants WHERE tenant_id = $1 AND product_id = $2 ORDER BY position",
        )
        .bind(tenant.as_uuid())
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let Json(prices): Json<BTreeMap<String, i64>> = row.try_get("prices")?;
            Ok(VariantRecord {
                sku: row.try_get("sku")?,
                prices,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(ProductRecord {
            id,
            name: row.try_get("name")?,
            variants,
            created_at: row.try_get("created_at")?,
        }))
    }

    async fn stock_levels(
        &self,
        tenant: TenantId,
        sku: &str,
    ) -> Result<Option<Vec<StockRecord>>, StoreError> {
        let known = sqlx::query("SELECT 1 FROM variants WHERE tenant_id = $1 AND sku = $2")
            .bind(tenant.as_uuid())
            .bind(sku)
            .fetch_optional(&self.pool)
            .await?;
        if known.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT location, on_hand, reserved, updated_at FROM stock_levels WHERE tenant_id = $1 AND sku = $2 ORDER BY location",
        )
        .bind(tenant.as_uuid())
        .bind(sku)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StockRecord {
                    location: row.try_get("location")?,
                    on_hand: row.try_get("on_hand")?,
                    reserved: row.try_get("reserved")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
            .map(Some)
    }

    async fn order(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_ORDER} WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(order_record).transpose()
    }

    async fn timeline(
        &self,
        tenant: TenantId,
        subject: &str,
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, type, time FROM events WHERE tenant_id = $1 AND subject = $2 ORDER BY seq",
        )
        .bind(tenant.as_uuid())
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TimelineEntry {
                    event_id: EventId::from_uuid(row.try_get("id")?),
                    event_type: row.try_get("type")?,
                    time: row.try_get("time")?,
                })
            })
            .collect()
    }

    async fn orders(
        &self,
        tenant: TenantId,
        filter: &OrderFilter,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        // Each filter is `$n IS NULL OR column = $n` so one prepared statement serves every
        // combination; the primary key (tenant_id, id) drives the newest-first scan.
        let sql = format!(
            "{SELECT_ORDER} WHERE tenant_id = $1 \
             AND ($2::text IS NULL OR customer_id = $2) \
             AND ($3::text IS NULL OR status = $3) \
             AND ($4::text IS NULL OR channel = $4) \
             AND ($5::timestamptz IS NULL OR created_at >= $5) \
             AND ($6::timestamptz IS NULL OR created_at < $6) \
             AND ($7::uuid IS NULL OR id < $7) \
             ORDER BY id DESC LIMIT $8"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.as_uuid())
            .bind(filter.customer_id.as_deref())
            .bind(filter.status.as_deref())
            .bind(filter.channel.as_deref())
            .bind(filter.created_from)
            .bind(filter.created_before)
            .bind(filter.before_id.map(|id| id.as_uuid()))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(order_record).collect()
    }

    fn log_partitions(&self) -> u32 {
        self.partitions
    }

    async fn sequence_outbox(&self, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The head row serializes relays: positions are handed out by one transaction at a
        // time, and each sees every row committed before it took the lock (READ COMMITTED
        // takes a fresh snapshot per statement).
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let positioned = sqlx::query(
            "WITH pending AS ( \
                 SELECT seq, $1::bigint + row_number() OVER (ORDER BY seq) AS position \
                 FROM (SELECT seq FROM events WHERE position IS NULL ORDER BY seq LIMIT $2) p \
             ) \
             UPDATE events e SET position = pending.position FROM pending WHERE e.seq = pending.seq",
        )
        .bind(head)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if positioned > 0 {
            let count = i64::try_from(positioned).map_err(|e| corrupt("positioned rows", e))?;
            sqlx::query("UPDATE log_head SET position = position + $1 WHERE id = 1")
                .bind(count)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(positioned)
    }

    async fn read_log(
        &self,
        partition: Option<u32>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let rows = match partition {
            Some(partition) => sqlx::query(&format!(
                "{SELECT_LOG_EVENT} WHERE partition = $1 AND position > $2 ORDER BY position LIMIT $3"
            ))
            .bind(i32::try_from(partition).map_err(|e| corrupt("partition", e))?)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
            None => sqlx::query(&format!(
                "{SELECT_LOG_EVENT} WHERE position > $1 ORDER BY position LIMIT $2"
            ))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter().map(log_event).collect()
    }

    async fn consumer_offset(&self, group: &str, partition: u32) -> Result<i64, StoreError> {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM consumer_offsets WHERE group_name = $1 AND partition = $2",
        )
        .bind(group)
        .bind(i32::try_from(partition).map_err(|e| corrupt("partition", e))?)
        .fetch_optional(&self.pool)
        .await?;
        Ok(position.unwrap_or(0))
    }

    async fn commit_consumer_offset(
        &self,
        group: &str,
        partition: u32,
        position: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(UPSERT_OFFSET)
            .bind(group)
            .bind(i32::try_from(partition).map_err(|e| corrupt("partition", e))?)
            .bind(position)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_pending(&self) -> Result<i64, StoreError> {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(pending)
    }

    async fn event(&self, id: EventId) -> Result<Option<LogEvent>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_LOG_EVENT} WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(log_event).transpose()
    }

    async fn inbox_contains(&self, group: &str, event: EventId) -> Result<bool, StoreError> {
        let found = sqlx::query("SELECT 1 FROM inbox WHERE group_name = $1 AND event_id = $2")
            .bind(group)
            .bind(event.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn dead_letters(
        &self,
        tenant: TenantId,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_DEAD_LETTER} WHERE tenant_id = $1 AND ($2 IS NULL OR status = $2) ORDER BY created_at DESC LIMIT $3"
        ))
        .bind(tenant.as_uuid())
        .bind(status)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter).collect()
    }

    async fn dead_letter(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<DeadLetterRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "{SELECT_DEAD_LETTER} WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.as_uuid())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(dead_letter).transpose()
    }

    async fn set_dead_letter_status(
        &self,
        tenant: TenantId,
        id: Uuid,
        from: &str,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE dead_letters SET status = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4 AND status = $5",
        )
        .bind(to)
        .bind(now)
        .bind(tenant.as_uuid())
        .bind(id)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn dead_letters_to_retry(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_DEAD_LETTER} WHERE group_name = $1 AND status = 'retrying' ORDER BY position LIMIT $2"
        ))
        .bind(group)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter).collect()
    }
}

pub(super) const UPSERT_OFFSET: &str = "INSERT INTO consumer_offsets (group_name, partition, position, updated_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (group_name, partition) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at";

pub(super) const SELECT_ORDER: &str = "SELECT id, channel, customer_id, customer_email, currency, total_minor, status, lines, shipping_address, saga, created_at, updated_at FROM orders";

pub(super) fn order_state(row: &PgRow) -> Result<OrderState, StoreError> {
    let record = order_record(row)?;
    Ok(OrderState {
        saga: record.saga.clone(),
        record,
    })
}

fn order_record(row: &PgRow) -> Result<OrderRecord, StoreError> {
    let Json(lines): Json<Vec<LineRecord>> = row.try_get("lines")?;
    let Json(shipping_address): Json<AddressRecord> = row.try_get("shipping_address")?;
    let Json(saga) = row.try_get("saga")?;
    Ok(OrderRecord {
        saga,
        id: OrderId::from_uuid(row.try_get("id")?),
        channel: row.try_get("channel")?,
        customer_id: row.try_get("customer_id")?,
        customer_email: row.try_get("customer_email")?,
        currency: row.try_get("currency")?,
        total_minor: row.try_get("total_minor")?,
        status: row.try_get("status")?,
        lines,
        shipping_address,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const SELECT_LOG_EVENT: &str = "SELECT position, id, tenant_id, type, source, subject, partition_key, partition, time, data, correlation_id, causation_id, traceparent FROM events";

fn log_event(row: &PgRow) -> Result<LogEvent, StoreError> {
    let partition: i32 = row.try_get("partition")?;
    Ok(LogEvent {
        position: row.try_get("position")?,
        id: EventId::from_uuid(row.try_get("id")?),
        tenant_id: TenantId::from_uuid(row.try_get("tenant_id")?),
        event_type: row.try_get("type")?,
        source: row.try_get("source")?,
        subject: row.try_get("subject")?,
        partition_key: row.try_get("partition_key")?,
        partition: u32::try_from(partition).map_err(|e| corrupt("event partition", e))?,
        time: row.try_get("time")?,
        data: row.try_get("data")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
        traceparent: row.try_get("traceparent")?,
    })
}

const SELECT_DEAD_LETTER: &str = "SELECT id, tenant_id, group_name, event_id, partition, position, event_type, subject, error, attempts, status, created_at, updated_at FROM dead_letters";

fn dead_letter(row: &PgRow) -> Result<DeadLetterRecord, StoreError> {
    let partition: i32 = row.try_get("partition")?;
    let Json(attempts) = row.try_get("attempts")?;
    Ok(DeadLetterRecord {
        id: row.try_get("id")?,
        tenant_id: TenantId::from_uuid(row.try_get("tenant_id")?),
        group: row.try_get("group_name")?,
        event_id: EventId::from_uuid(row.try_get("event_id")?),
        partition: u32::try_from(partition).map_err(|e| corrupt("partition", e))?,
        position: row.try_get("position")?,
        event_type: row.try_get("event_type")?,
        subject: row.try_get("subject")?,
        error: row.try_get("error")?,
        attempts,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
