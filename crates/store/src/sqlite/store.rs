//! Reads, tenant set-up, the log and maintenance on SQLite.

use std::collections::HashSet;

use super::sql::{self};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_domain::ids::{EventId, OrderId, ProductId, TenantId};
use uuid::Uuid;

use super::SqliteStore;
use crate::effect::{EffectOutcome, PreparedEffect};
use crate::records::*;
use crate::rows;
use crate::{DISCARDED, Engine, Store, StoreError, Tx, to_micros};

#[async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let tx = self.writer.begin().await?;
        Ok(Box::new(super::tx::SqliteTx::new(tx)))
    }

    async fn write_effect(&self, effect: PreparedEffect) -> Result<EffectOutcome, StoreError> {
        self.writer
            .answer(move |connection| super::tx::write_effect(connection, &effect))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sql::query("SELECT 1").fetch_scalar::<i64>(&*self.reader().await?)?;
        Ok(())
    }

    async fn create_tenant(&self, tenant: &NewTenant) -> Result<(), StoreError> {
        self.writer
            .execute(
                sql::query("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)")
                    .bind(tenant.id.as_uuid())
                    .bind(&tenant.name)
                    .bind(to_micros(tenant.created_at)),
            )
            .await?;
        Ok(())
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<(), StoreError> {
        self.writer.execute(sql::query(
            "INSERT INTO api_keys (id, tenant_id, key_hash, scopes, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(key.id.as_uuid())
        .bind(key.tenant_id.as_uuid())
        .bind(&key.key_hash[..])
        .bind(&key.scopes)
        .bind(to_micros(key.created_at))
        )
        .await?;
        Ok(())
    }

    async fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sql::query(
            "SELECT id, tenant_id, scopes, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE key_hash = ?",
        )
        .bind(&key_hash[..])
        .fetch_optional(&*self.reader().await?)?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn find_idempotency_record(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sql::query(super::tx::SELECT_IDEMPOTENCY_RECORD_BY_KEY)
            .bind(tenant.as_uuid())
            .bind(key)
            .fetch_optional(&*self.reader().await?)?;
        row.as_ref().map(rows::idempotency_record).transpose()
    }

    async fn purge_idempotency_records(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let done = self
            .writer
            .execute(
                sql::query(
                    "DELETE FROM idempotency_records WHERE (tenant_id, key) IN \
             (SELECT tenant_id, key FROM idempotency_records WHERE expires_at <= ? LIMIT ?)",
                )
                .bind(to_micros(now))
                .bind(i64::from(limit)),
            )
            .await?;
        Ok(done)
    }

    async fn product(
        &self,
        tenant: TenantId,
        id: ProductId,
    ) -> Result<Option<ProductRecord>, StoreError> {
        // One reader: the product and its variants from one snapshot.
        let reader = self.reader().await?;
        let Some(row) =
            sql::query("SELECT name, created_at FROM products WHERE tenant_id = ? AND id = ?")
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .fetch_optional(&reader)?
        else {
            return Ok(None);
        };
        let variants = sql::query(
            "SELECT sku, prices FROM variants WHERE tenant_id = ? AND product_id = ? ORDER BY position",
        )
        .bind(tenant.as_uuid())
        .bind(id.as_uuid())
        .fetch_all(&reader)?;
        rows::product(id, &row, &variants).map(Some)
    }

    async fn stock_levels(
        &self,
        tenant: TenantId,
        sku: &str,
    ) -> Result<Option<Vec<StockRecord>>, StoreError> {
        // One reader: the SKU and its stock rows from one snapshot.
        let reader = self.reader().await?;
        let known = sql::query("SELECT 1 FROM variants WHERE tenant_id = ? AND sku = ?")
            .bind(tenant.as_uuid())
            .bind(sku)
            .fetch_optional(&reader)?;
        if known.is_none() {
            return Ok(None);
        }
        let rows = sql::query(
            "SELECT location, on_hand, reserved, updated_at FROM stock_levels WHERE tenant_id = ? AND sku = ? ORDER BY location",
        )
        .bind(tenant.as_uuid())
        .bind(sku)
        .fetch_all(&reader)?;
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
        super::tx::read_stock(&*self.reader().await?, tenant, skus)
    }

    async fn order(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        order(&*self.reader().await?, tenant, id)
    }

    async fn timeline(
        &self,
        tenant: TenantId,
        subject: &str,
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        timeline(&*self.reader().await?, tenant, subject)
    }

    async fn order_and_timeline(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<(OrderRecord, Vec<TimelineEntry>)>, StoreError> {
        // One reader, so one snapshot for the order and its timeline.
        let reader = self.reader().await?;
        let Some(record) = order(&reader, tenant, id)? else {
            return Ok(None);
        };
        let timeline = timeline(&reader, tenant, &id.to_string())?;
        Ok(Some((record, timeline)))
    }

    async fn orders(
        &self,
        tenant: TenantId,
        filter: &OrderFilter,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        // Each filter is `? IS NULL OR column = ?` so one prepared statement serves every
        // combination; the primary key (tenant_id, id) drives the newest-first scan.
        let sql = concat!(
            rows::select_order!(),
            " WHERE tenant_id = ?1 \
             AND (?2 IS NULL OR customer_id = ?2) \
             AND (?3 IS NULL OR status = ?3) \
             AND (?4 IS NULL OR channel = ?4) \
             AND (?5 IS NULL OR created_at >= ?5) \
             AND (?6 IS NULL OR created_at < ?6) \
             AND (?7 IS NULL OR id < ?7) \
             ORDER BY id DESC LIMIT ?8"
        );
        let rows = sql::query(sql)
            .bind(tenant.as_uuid())
            .bind(filter.customer_id.as_deref())
            .bind(filter.status.as_deref())
            .bind(filter.channel.as_deref())
            .bind(filter.created_from.map(to_micros))
            .bind(filter.created_before.map(to_micros))
            .bind(filter.before_id.map(|id| id.as_uuid()))
            .bind(i64::from(limit))
            .fetch_all(&*self.reader().await?)?;
        rows.iter().map(rows::order).collect()
    }

    fn log_partitions(&self) -> u32 {
        self.partitions
    }

    async fn sequence_outbox(&self, _limit: u32) -> Result<u64, StoreError> {
        // Positions are given on insert: see the module documentation.
        Ok(0)
    }

    async fn read_log(
        &self,
        partition: Option<u32>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let rows = match partition {
            Some(partition) => sql::query(concat!(
                rows::select_log_event!(),
                " WHERE partition = ? AND position > ? ORDER BY position LIMIT ?"
            ))
            .bind(i64::from(partition))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&*self.reader().await?)?,
            None => sql::query(concat!(
                rows::select_log_event!(),
                " WHERE position > ? ORDER BY position LIMIT ?"
            ))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&*self.reader().await?)?,
        };
        rows.iter().map(rows::log_event).collect()
    }

    async fn consumer_offset(&self, group: &str, partition: u32) -> Result<i64, StoreError> {
        let position: Option<i64> = sql::query(
            "SELECT position FROM consumer_offsets WHERE group_name = ? AND partition = ?",
        )
        .bind(group)
        .bind(i64::from(partition))
        .fetch_optional_scalar(&*self.reader().await?)?;
        Ok(position.unwrap_or(0))
    }

    async fn commit_consumer_offset(
        &self,
        group: &str,
        partition: u32,
        position: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.writer
            .execute(
                sql::query(UPSERT_OFFSET)
                    .bind(group)
                    .bind(i64::from(partition))
                    .bind(position)
                    .bind(to_micros(now)),
            )
            .await?;
        Ok(())
    }

    async fn position_before(
        &self,
        partition: u32,
        time: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let position: Option<i64> =
            sql::query("SELECT max(position) FROM events WHERE partition = ? AND time < ?")
                .bind(i64::from(partition))
                .bind(to_micros(time))
                .fetch_scalar(&*self.reader().await?)?;
        Ok(position.unwrap_or(0))
    }

    async fn outbox_pending(&self) -> Result<i64, StoreError> {
        Ok(0)
    }

    async fn log_backlog(&self, group: &str) -> Result<i64, StoreError> {
        let reader = self.reader().await?;
        let mut backlog = 0;
        for partition in 0..self.partitions {
            let count: i64 = sql::query(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE partition = ?1 AND position > \
                 coalesce((SELECT position FROM consumer_offsets WHERE group_name = ?2 AND partition = ?1), 0) \
                 LIMIT ?3)",
            )
            .bind(i64::from(partition))
            .bind(group)
            .bind(crate::log::BACKLOG_COUNT_MAX)
            .fetch_scalar(&reader)?;
            backlog += count;
        }
        Ok(backlog)
    }

    async fn join(&self, group: &str) -> Result<Box<dyn crate::Lease>, StoreError> {
        Ok(Box::new(super::lease::join(
            &self.writer,
            &self.leases,
            group,
        )))
    }

    async fn members(&self, group: &str) -> Result<u32, StoreError> {
        Ok(super::lease::members(&self.leases, group))
    }

    async fn try_lease(
        &self,
        group: &str,
        partition: u32,
    ) -> Result<Option<Box<dyn crate::Lease>>, StoreError> {
        Ok(
            super::lease::try_lease(&self.writer, &self.leases, group, partition)
                .map(|lease| Box::new(lease) as Box<dyn crate::Lease>),
        )
    }

    async fn seal_audit(&self, limit: u32) -> Result<u64, StoreError> {
        // The chain is computed from committed rows on a reader, away from the writer: parsing,
        // canonicalizing and hashing a batch took the writer for milliseconds. The writer then
        // only stores the result, after checking that no other sealer moved a head meanwhile.
        // Rows and heads from one snapshot, so that the heads are those the rows follow.
        let reader = self.reader().await?;
        let read = (|reader: &rusqlite::Connection| -> Result<_, StoreError> {
            let rows = sql::query(
                "SELECT seq, tenant_id, id FROM audit_records WHERE sequence IS NULL ORDER BY seq LIMIT ?",
            )
            .bind(i64::from(limit))
            .fetch_all(reader)?
            .iter()
            .map(rows::draft_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
            let kept = crate::audit::kept_bytes(&rows);
            let mut read = std::collections::HashMap::new();
            for seq in crate::audit::unkept(&rows, &kept) {
                let body: String = sql::query("SELECT body FROM audit_records WHERE seq = ?")
                    .bind(seq)
                    .fetch_optional_scalar(reader)?
                    .ok_or_else(|| StoreError::Corrupt(format!("audit draft {seq} vanished")))?;
                read.insert(seq, crate::audit::draft_from_text(&body, seq)?);
            }
            let unsealed = crate::audit::unsealed(rows, kept, read)?;
            let mut heads = std::collections::HashMap::new();
            for tenant in unsealed
                .iter()
                .map(|u| u.tenant)
                .collect::<std::collections::BTreeSet<_>>()
            {
                if let Some(head) = audit_head(reader, tenant)? {
                    heads.insert(tenant, head);
                }
            }
            Ok((unsealed, heads))
        })(&reader);
        drop(reader);
        let (unsealed, heads) = read?;
        if unsealed.is_empty() {
            return Ok(0);
        }
        let before = heads.clone();
        let (sealed, heads) = crate::audit::seal(unsealed, heads)?;
        let tx = self.writer.begin().await?;
        for (tenant, head) in &heads {
            let current = audit_head(tx.connection()?, *tenant)?;
            if current.map(|h| h.sequence) != before.get(tenant).map(|h| h.sequence) {
                // Another sealer got there first; the next pass starts from its heads.
                tx.rollback().await?;
                return Ok(0);
            }
            sql::query(
                "INSERT INTO audit_heads (tenant_id, sequence, hash) VALUES (?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET sequence = excluded.sequence, hash = excluded.hash",
            )
            .bind(tenant.as_uuid())
            .bind(head.sequence)
            .bind(&head.hash[..])
            .execute(tx.connection()?)?;
        }
        for (seq, seal) in &sealed {
            let changed = sql::query(
                "UPDATE audit_records SET sequence = ?, prev_hash = ?, hash = ? WHERE seq = ? AND sequence IS NULL",
            )
            .bind(seal.sequence)
            .bind(&seal.prev_hash[..])
            .bind(&seal.hash[..])
            .bind(seq)
            .execute(tx.connection()?)?;
            if changed != 1 {
                // Sealed by another sealer since it was read; the next pass starts afresh.
                tx.rollback().await?;
                return Ok(0);
            }
        }
        tx.commit().await?;
        Ok(sealed.len() as u64)
    }

    async fn audit_chain(&self, tenant: TenantId) -> Result<AuditChain, StoreError> {
        // Records, head and count from one snapshot: read apart, a seal committed in between
        // shows a head past the chain's end, a break that is not there.
        let reader = &*self.reader().await?;
        {
            let rows = sql::query(
                "SELECT sequence, body, prev_hash, hash FROM audit_records WHERE tenant_id = ? AND sequence IS NOT NULL ORDER BY sequence",
            )
            .bind(tenant.as_uuid())
            .fetch_all(reader)?;
            let records = rows
                .iter()
                .map(rows::sealed_audit_record)
                .collect::<Result<Vec<_>, StoreError>>()?;
            let head = audit_head(reader, tenant)?;
            let unsealed: i64 = sql::query(
                "SELECT count(*) FROM audit_records WHERE tenant_id = ? AND sequence IS NULL",
            )
            .bind(tenant.as_uuid())
            .fetch_scalar(reader)?;
            Ok(AuditChain {
                records,
                head,
                unsealed,
            })
        }
    }

    async fn audit_of(
        &self,
        tenant: TenantId,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sql::query(concat!(
            rows::select_audit_row!(),
            " WHERE tenant_id = ? AND entity_type = ? AND entity_id = ? ORDER BY seq"
        ))
        .bind(tenant.as_uuid())
        .bind(entity_type)
        .bind(entity_id)
        .fetch_all(&*self.reader().await?)?;
        rows.iter().map(rows::audit_row).collect()
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let ids: Vec<Uuid> = sql::query("SELECT id FROM tenants ORDER BY id")
            .fetch_all_scalar(&*self.reader().await?)?;
        Ok(ids.into_iter().map(TenantId::from_uuid).collect())
    }

    async fn journal(&self, tenant: TenantId) -> Result<Vec<StoredEntry>, StoreError> {
        let rows = sql::query(
            "SELECT id, kind, pending_id, body, order_id, created_at FROM journal_entries WHERE tenant_id = ? ORDER BY created_at, id",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&*self.reader().await?)?;
        let postings = sql::query(
            "SELECT entry_id, account, currency, amount_minor FROM postings WHERE tenant_id = ? ORDER BY entry_id, line",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&*self.reader().await?)?;
        rows::journal(tenant, &rows, &postings)
    }

    async fn account_postings(
        &self,
        tenant: TenantId,
        account: &str,
    ) -> Result<Vec<AccountPosting>, StoreError> {
        let rows = sql::query(
            "SELECT p.entry_id, e.kind, e.pending_id, p.currency, p.amount_minor, e.created_at FROM postings p JOIN journal_entries e ON e.tenant_id = p.tenant_id AND e.id = p.entry_id WHERE p.tenant_id = ? AND p.account = ? ORDER BY e.created_at, p.entry_id",
        )
        .bind(tenant.as_uuid())
        .bind(account)
        .fetch_all(&*self.reader().await?)?;
        rows.iter().map(rows::account_posting).collect()
    }

    async fn settled_orders(&self, tenant: TenantId) -> Result<Vec<(OrderId, String)>, StoreError> {
        let rows = sql::query(
            "SELECT id, currency FROM orders WHERE tenant_id = ? AND status IN ('completed', 'cancelled', 'refunded')",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&*self.reader().await?)?;
        rows.iter().map(rows::settled_order).collect()
    }

    async fn stock_reconciliation(&self) -> Result<Vec<StockReconciliation>, StoreError> {
        let levels = sql::query("SELECT tenant_id, sku, location, on_hand, reserved FROM stock_levels ORDER BY tenant_id, sku, location")
            .fetch_all(&*self.reader().await?)?;
        let sums = sql::query(
            "SELECT tenant_id, sku, location, kind, sum(quantity) AS total FROM stock_movements GROUP BY tenant_id, sku, location, kind",
        )
        .fetch_all(&*self.reader().await?)?;
        rows::stock_reconciliation(&levels, &sums)
    }

    async fn order_status_counts(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sql::query("SELECT status, count(*) AS n FROM orders WHERE tenant_id = ? GROUP BY status ORDER BY status")
            .bind(tenant.as_uuid())
            .fetch_all(&*self.reader().await?)?;
        rows.iter().map(rows::status_count).collect()
    }

    async fn event(&self, id: EventId) -> Result<Option<LogEvent>, StoreError> {
        let row = sql::query(concat!(rows::select_log_event!(), " WHERE id = ?"))
            .bind(id.as_uuid())
            .fetch_optional(&*self.reader().await?)?;
        row.as_ref().map(rows::log_event).transpose()
    }

    async fn inbox_holds(
        &self,
        group: &str,
        events: &[EventId],
    ) -> Result<HashSet<EventId>, StoreError> {
        // One lookup per event on one reader: each is a step down an index in memory.
        let reader = self.reader().await?;
        let mut held = HashSet::new();
        for event in events {
            let found = sql::query("SELECT 1 FROM inbox WHERE group_name = ? AND event_id = ?")
                .bind(group)
                .bind(event.as_uuid())
                .fetch_optional(&reader)?;
            if found.is_some() {
                held.insert(*event);
            }
        }
        Ok(held)
    }

    async fn dead_letter_unsettled(&self, group: &str, event: EventId) -> Result<bool, StoreError> {
        let found = sql::query(UNSETTLED_DEAD_LETTER)
            .bind(group)
            .bind(event.as_uuid())
            .fetch_optional(&*self.reader().await?)?;
        Ok(found.is_some())
    }

    async fn dead_letters(
        &self,
        tenant: TenantId,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let rows = sql::query(concat!(rows::select_dead_letter!(), " WHERE tenant_id = ?1 AND (?2 IS NULL OR status = ?2) ORDER BY created_at DESC LIMIT ?3"))
        .bind(tenant.as_uuid())
        .bind(status)
        .bind(i64::from(limit))
        .fetch_all(&*self.reader().await?)?;
        rows.iter().map(rows::dead_letter).collect()
    }

    async fn dead_letter(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<DeadLetterRecord>, StoreError> {
        let row = sql::query(concat!(
            rows::select_dead_letter!(),
            " WHERE tenant_id = ? AND id = ?"
        ))
        .bind(tenant.as_uuid())
        .bind(id)
        .fetch_optional(&*self.reader().await?)?;
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
        let tx = self.writer.begin().await?;
        let moved = sql::query(
            "UPDATE dead_letters SET status = ?, updated_at = ? WHERE tenant_id = ? AND id = ? AND status = ?",
        )
        .bind(to)
        .bind(to_micros(now))
        .bind(tenant.as_uuid())
        .bind(id)
        .bind(from)
        .execute(tx.connection()?)?;
        if moved == 1 && to == DISCARDED {
            // The group is done with a discarded event: its inbox says so, and a re-delivery
            // (the log read again after a crash) skips it rather than applying it after all.
            sql::query(
                "INSERT INTO inbox (group_name, event_id, applied_at) \
                 SELECT group_name, event_id, ? FROM dead_letters WHERE tenant_id = ? AND id = ? \
                 ON CONFLICT DO NOTHING",
            )
            .bind(to_micros(now))
            .bind(tenant.as_uuid())
            .bind(id)
            .execute(tx.connection()?)?;
        }
        tx.commit().await?;
        Ok(moved == 1)
    }

    async fn dead_letters_to_retry(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let rows = sql::query(concat!(
            rows::select_dead_letter!(),
            " WHERE group_name = ? AND status = 'retrying' ORDER BY position LIMIT ?"
        ))
        .bind(group)
        .bind(i64::from(limit))
        .fetch_all(&*self.reader().await?)?;
        rows.iter().map(rows::dead_letter).collect()
    }
}

pub(super) const UPSERT_OFFSET: &str = "INSERT INTO consumer_offsets (group_name, partition, position, updated_at) VALUES (?, ?, ?, ?) \
     ON CONFLICT (group_name, partition) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at";

/// A letter of (group, event) not yet applied: the unique key (group_name, event_id) finds it.
const UNSETTLED_DEAD_LETTER: &str = "SELECT 1 FROM dead_letters WHERE group_name = ? AND event_id = ? AND status IN ('open', 'retrying')";

/// A tenant's audit chain head, if it has sealed anything.
fn audit_head(
    connection: &rusqlite::Connection,
    tenant: TenantId,
) -> Result<Option<tally_audit::ChainHead>, StoreError> {
    let Some(head) = sql::query("SELECT sequence, hash FROM audit_heads WHERE tenant_id = ?")
        .bind(tenant.as_uuid())
        .fetch_optional(connection)?
    else {
        return Ok(None);
    };
    rows::audit_head(&head).map(Some)
}

fn order(
    connection: &rusqlite::Connection,
    tenant: TenantId,
    id: OrderId,
) -> Result<Option<OrderRecord>, StoreError> {
    let row = sql::query(concat!(
        rows::select_order!(),
        " WHERE tenant_id = ? AND id = ?"
    ))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_optional(connection)?;
    row.as_ref().map(rows::order).transpose()
}

fn timeline(
    connection: &rusqlite::Connection,
    tenant: TenantId,
    subject: &str,
) -> Result<Vec<TimelineEntry>, StoreError> {
    let rows = sql::query(
        "SELECT id, type, time FROM events WHERE tenant_id = ? AND subject = ? ORDER BY position",
    )
    .bind(tenant.as_uuid())
    .bind(subject)
    .fetch_all(connection)?;
    rows.iter().map(rows::timeline_entry).collect()
}
