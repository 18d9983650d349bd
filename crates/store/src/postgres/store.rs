//! Reads, tenant set-up, the log and maintenance on PostgreSQL.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use tally_domain::ids::{EventId, OrderId, ProductId, TenantId};
use uuid::Uuid;

use super::PgStore;
use crate::effect::{EffectOutcome, PreparedEffect};
use crate::records::*;
use crate::rows::{self, Fields};
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

    async fn write_effect(&self, effect: PreparedEffect) -> Result<EffectOutcome, StoreError> {
        match effect.settles {
            // A retried dead letter is rare: its settling goes through the generic path.
            Some(_) => crate::effect::write_in(self.begin().await?, &effect).await,
            None => self.effects.write(effect.once, effect.change).await,
        }
    }

    async fn record_inbox(
        &self,
        group: &str,
        events: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // One statement, which is its own transaction, instead of a round trip per row; rows in
        // the order effect batches take them (see `batch`), so that the two cannot deadlock.
        sqlx::query(
            "INSERT INTO inbox (group_name, event_id, applied_at) \
             SELECT $1, event_id, $3 FROM unnest($2::uuid[]) AS e(event_id) ORDER BY event_id \
             ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(events.iter().map(|e| e.as_uuid()).collect::<Vec<_>>())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
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
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn find_idempotency_record(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(super::tx::SELECT_IDEMPOTENCY_RECORD_BY_KEY)
            .bind(tenant.as_uuid())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::idempotency_record).transpose()
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
        .await?;
        rows::product(id, &row, &variants).map(Some)
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
            .map(rows::stock_record)
            .collect::<Result<Vec<_>, StoreError>>()
            .map(Some)
    }

    async fn read_stock(
        &self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError> {
        super::tx::read_stock(&self.pool, tenant, skus).await
    }

    async fn order(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        self.reads.order(tenant, id).await
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
        rows.iter().map(rows::timeline_entry).collect()
    }

    async fn order_and_timeline(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<(OrderRecord, Vec<TimelineEntry>)>, StoreError> {
        // One statement, so one snapshot: the order and its events as of one moment.
        self.reads.order_and_timeline(tenant, id).await
    }

    async fn orders(
        &self,
        tenant: TenantId,
        filter: &OrderFilter,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        // Each filter is `$n IS NULL OR column = $n` so one prepared statement serves every
        // combination; the primary key (tenant_id, id) drives the newest-first scan.
        let sql = concat!(
            rows::select_order!(),
            " WHERE tenant_id = $1 \
             AND ($2::text IS NULL OR customer_id = $2) \
             AND ($3::text IS NULL OR status = $3) \
             AND ($4::text IS NULL OR channel = $4) \
             AND ($5::timestamptz IS NULL OR created_at >= $5) \
             AND ($6::timestamptz IS NULL OR created_at < $6) \
             AND ($7::uuid IS NULL OR id < $7) \
             ORDER BY id DESC LIMIT $8"
        );
        let rows = sqlx::query(sql)
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
        rows.iter().map(rows::order).collect()
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
            Some(partition) => {
                sqlx::query(concat!(
                    rows::select_log_event!(),
                    " WHERE partition = $1 AND position > $2 ORDER BY position LIMIT $3"
                ))
                .bind(i32::try_from(partition).map_err(|e| corrupt("partition", e))?)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    rows::select_log_event!(),
                    " WHERE position > $1 ORDER BY position LIMIT $2"
                ))
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(rows::log_event).collect()
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

    async fn position_before(
        &self,
        partition: u32,
        time: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT max(position) FROM events WHERE partition = $1 AND time < $2 AND position IS NOT NULL",
        )
        .bind(i32::try_from(partition).map_err(|e| corrupt("partition", e))?)
        .bind(time)
        .fetch_one(&self.pool)
        .await?;
        Ok(position.unwrap_or(0))
    }

    async fn outbox_pending(&self) -> Result<i64, StoreError> {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(pending)
    }

    async fn log_backlog(&self, group: &str) -> Result<i64, StoreError> {
        let mut backlog = 0;
        for partition in 0..self.partitions {
            let count: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE partition = $1 AND position > \
                 coalesce((SELECT position FROM consumer_offsets WHERE group_name = $2 AND partition = $1), 0) \
                 LIMIT $3) capped",
            )
            .bind(i32::try_from(partition).map_err(|e| corrupt("partition", e))?)
            .bind(group)
            .bind(crate::log::BACKLOG_COUNT_MAX)
            .fetch_one(&self.pool)
            .await?;
            backlog += count;
        }
        Ok(backlog)
    }

    async fn join(&self, group: &str) -> Result<Box<dyn crate::Lease>, StoreError> {
        Ok(Box::new(super::lease::join(&self.pool, group).await?))
    }

    async fn members(&self, group: &str) -> Result<u32, StoreError> {
        super::lease::members(&self.pool, group).await
    }

    async fn try_lease(
        &self,
        group: &str,
        partition: u32,
    ) -> Result<Option<Box<dyn crate::Lease>>, StoreError> {
        Ok(super::lease::try_lease(&self.pool, group, partition)
            .await?
            .map(|lease| Box::new(lease) as Box<dyn crate::Lease>))
    }

    async fn seal_audit(&self, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One sealer at a time: chains are extended strictly one after another.
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(super::LOCK_CLASS_AUDIT_SEALER)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT seq, tenant_id, id FROM audit_records WHERE sequence IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::draft_row)
        .collect::<Result<Vec<_>, StoreError>>()?;
        if rows.is_empty() {
            return Ok(0);
        }
        let kept = crate::audit::kept_bytes(&rows);
        let missing = crate::audit::unkept(&rows, &kept);
        let mut read = std::collections::HashMap::new();
        if !missing.is_empty() {
            for row in sqlx::query("SELECT seq, body FROM audit_records WHERE seq = ANY($1)")
                .bind(&missing)
                .fetch_all(&mut *tx)
                .await?
            {
                read.insert(row.int("seq")?, row.json("body")?);
            }
        }
        let unsealed = crate::audit::unsealed(rows, kept, read)?;
        let mut heads = std::collections::HashMap::new();
        for tenant in unsealed
            .iter()
            .map(|u| u.tenant)
            .collect::<std::collections::BTreeSet<_>>()
        {
            let head = sqlx::query("SELECT sequence, hash FROM audit_heads WHERE tenant_id = $1")
                .bind(tenant.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(head) = head {
                heads.insert(tenant, rows::audit_head(&head)?);
            }
        }
        let (sealed, heads) = crate::audit::seal(unsealed, heads)?;
        // Every record of the batch in one statement, not one round trip each.
        sqlx::query(
            "UPDATE audit_records a SET sequence = s.sequence, prev_hash = s.prev_hash, hash = s.hash \
             FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]) AS s(seq, sequence, prev_hash, hash) \
             WHERE a.seq = s.seq",
        )
        .bind(sealed.iter().map(|(seq, _)| *seq).collect::<Vec<i64>>())
        .bind(sealed.iter().map(|(_, s)| s.sequence).collect::<Vec<i64>>())
        .bind(sealed.iter().map(|(_, s)| s.prev_hash.to_vec()).collect::<Vec<_>>())
        .bind(sealed.iter().map(|(_, s)| s.hash.to_vec()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        for (tenant, head) in &heads {
            sqlx::query(
                "INSERT INTO audit_heads (tenant_id, sequence, hash) VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO UPDATE SET sequence = excluded.sequence, hash = excluded.hash",
            )
            .bind(tenant.as_uuid())
            .bind(head.sequence)
            .bind(&head.hash[..])
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(sealed.len() as u64)
    }

    async fn audit_chain(&self, tenant: TenantId) -> Result<AuditChain, StoreError> {
        // Records, head and count from one snapshot: read apart, a seal committed in between
        // shows a head past the chain's end, a break that is not there.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT sequence, body, prev_hash, hash FROM audit_records WHERE tenant_id = $1 AND sequence IS NOT NULL ORDER BY sequence",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        let records = rows
            .iter()
            .map(rows::sealed_audit_record)
            .collect::<Result<Vec<_>, StoreError>>()?;
        let head = sqlx::query("SELECT sequence, hash FROM audit_heads WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(rows::audit_head)
            .transpose()?;
        let unsealed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_records WHERE tenant_id = $1 AND sequence IS NULL",
        )
        .bind(tenant.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AuditChain {
            records,
            head,
            unsealed,
        })
    }

    async fn audit_of(
        &self,
        tenant: TenantId,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(concat!(
            rows::select_audit_row!(),
            " WHERE tenant_id = $1 AND entity_type = $2 AND entity_id = $3 ORDER BY seq"
        ))
        .bind(tenant.as_uuid())
        .bind(entity_type)
        .bind(entity_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::audit_row).collect()
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().map(TenantId::from_uuid).collect())
    }

    async fn journal(&self, tenant: TenantId) -> Result<Vec<StoredEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, pending_id, body, order_id, created_at FROM journal_entries WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        let postings = sqlx::query(
            "SELECT entry_id, account, currency, amount_minor FROM postings WHERE tenant_id = $1 ORDER BY entry_id, line",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        rows::journal(tenant, &rows, &postings)
    }

    async fn account_postings(
        &self,
        tenant: TenantId,
        account: &str,
    ) -> Result<Vec<AccountPosting>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.entry_id, e.kind, e.pending_id, p.currency, p.amount_minor, e.created_at FROM postings p JOIN journal_entries e ON e.tenant_id = p.tenant_id AND e.id = p.entry_id WHERE p.tenant_id = $1 AND p.account = $2 ORDER BY e.created_at, p.entry_id",
        )
        .bind(tenant.as_uuid())
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::account_posting).collect()
    }

    async fn settled_orders(&self, tenant: TenantId) -> Result<Vec<(OrderId, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, currency FROM orders WHERE tenant_id = $1 AND status IN ('completed', 'cancelled', 'refunded')",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::settled_order).collect()
    }

    async fn stock_reconciliation(&self) -> Result<Vec<StockReconciliation>, StoreError> {
        let levels = sqlx::query("SELECT tenant_id, sku, location, on_hand, reserved FROM stock_levels ORDER BY tenant_id, sku, location")
            .fetch_all(&self.pool)
            .await?;
        let sums = sqlx::query(
            "SELECT tenant_id, sku, location, kind, sum(quantity)::bigint AS total FROM stock_movements GROUP BY tenant_id, sku, location, kind",
        )
        .fetch_all(&self.pool)
        .await?;
        rows::stock_reconciliation(&levels, &sums)
    }

    async fn order_status_counts(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, count(*) AS n FROM orders WHERE tenant_id = $1 GROUP BY status ORDER BY status")
            .bind(tenant.as_uuid())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::status_count).collect()
    }

    async fn event(&self, id: EventId) -> Result<Option<LogEvent>, StoreError> {
        let row = sqlx::query(concat!(rows::select_log_event!(), " WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::log_event).transpose()
    }

    async fn inbox_holds(
        &self,
        group: &str,
        events: &[EventId],
    ) -> Result<HashSet<EventId>, StoreError> {
        if events.is_empty() {
            return Ok(HashSet::new());
        }
        let ids: Vec<Uuid> = events.iter().map(|event| event.as_uuid()).collect();
        // One look-up by the whole key per event, whatever the planner believes of the table:
        // `event_id = ANY($2)` let it scan the group's every row and test each against the
        // array (with statistics that had the inbox small and a hundred events in a batch,
        // 10 ms a call at 40,000 rows, growing with the inbox); a lateral subquery with a
        // limit is never flattened into a join, so each event is an index probe.
        let held: Vec<Uuid> = sqlx::query_scalar(
            "SELECT w.event_id FROM unnest($2::uuid[]) AS w(event_id) \
             CROSS JOIN LATERAL (SELECT 1 FROM inbox i \
             WHERE i.group_name = $1 AND i.event_id = w.event_id LIMIT 1) AS held",
        )
        .bind(group)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(held.into_iter().map(EventId::from_uuid).collect())
    }

    async fn dead_letter_unsettled(&self, group: &str, event: EventId) -> Result<bool, StoreError> {
        let found = sqlx::query(UNSETTLED_DEAD_LETTER)
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
        let rows = sqlx::query(concat!(rows::select_dead_letter!(), " WHERE tenant_id = $1 AND ($2 IS NULL OR status = $2) ORDER BY created_at DESC LIMIT $3"))
        .bind(tenant.as_uuid())
        .bind(status)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::dead_letter).collect()
    }

    async fn dead_letter(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<DeadLetterRecord>, StoreError> {
        let row = sqlx::query(concat!(
            rows::select_dead_letter!(),
            " WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.as_uuid())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::dead_letter).transpose()
    }

    async fn set_dead_letter_status(
        &self,
        tenant: TenantId,
        id: Uuid,
        from: &str,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // A discarded event is settled for its group in the same statement: its inbox row makes
        // a re-delivery (the log read again after a crash) skip it rather than apply it.
        let moved: i64 = sqlx::query_scalar(
            "WITH moved AS (UPDATE dead_letters SET status = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND id = $4 AND status = $5 RETURNING group_name, event_id), \
             settled AS (INSERT INTO inbox (group_name, event_id, applied_at) \
             SELECT group_name, event_id, $2 FROM moved WHERE $1 = $6 ON CONFLICT DO NOTHING) \
             SELECT count(*) FROM moved",
        )
        .bind(to)
        .bind(now)
        .bind(tenant.as_uuid())
        .bind(id)
        .bind(from)
        .bind(crate::DISCARDED)
        .fetch_one(&self.pool)
        .await?;
        Ok(moved == 1)
    }

    async fn dead_letters_to_retry(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            rows::select_dead_letter!(),
            " WHERE group_name = $1 AND status = 'retrying' ORDER BY position LIMIT $2"
        ))
        .bind(group)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::dead_letter).collect()
    }
}

pub(super) const UPSERT_OFFSET: &str = "INSERT INTO consumer_offsets (group_name, partition, position, updated_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (group_name, partition) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at";

/// A letter of (group, event) not yet applied: the unique key (group_name, event_id) finds it.
const UNSETTLED_DEAD_LETTER: &str = "SELECT 1 FROM dead_letters WHERE group_name = $1 AND event_id = $2 AND status IN ('open', 'retrying')";
