//! One command transaction on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use tally_domain::catalog::{Product, Sku};
use tally_domain::ids::TenantId;
use tally_domain::inventory::StockLevel;
use tally_domain::order::Order;
use tally_domain::text::Code;

use super::columns::{EventColumns, bind_audit, bind_idempotency_record, partition_lock_ids};
use super::{LOCK_CLASS_IDEMPOTENCY_KEY, LOCK_CLASS_PARTITION_KEY};
use crate::log::key_lock_id;
use tally_domain::checkout::Saga;
use tally_domain::ids::{EventId, OrderId};

use crate::records::{
    DeadLetterRecord, IdempotencyRecord, LockedStock, NewAuditRecord, NewEvent,
    NewIdempotencyRecord, NewJournalEntry, OrderState, StockMovement,
};
use crate::rows::{self, Fields};
use crate::tx::CatalogPrices;
use crate::{StoreError, Tx, corrupt};

pub(super) struct PgTx {
    tx: Transaction<'static, Postgres>,
}

impl PgTx {
    pub(super) fn new(tx: Transaction<'static, Postgres>) -> Self {
        Self { tx }
    }
}

pub(super) const SELECT_IDEMPOTENCY_RECORD_BY_KEY: &str = concat!(
    rows::select_idempotency_record!(),
    " WHERE tenant_id = $1 AND key = $2"
);

fn sku_strings(skus: &[Sku]) -> Vec<String> {
    skus.iter().map(|s| s.as_str().to_owned()).collect()
}

/// The SKUs a statement asks for (`$2`, each once), each joined to a lateral subquery that
/// probes the tenant's key for it (`$1`). Asked as `sku = ANY($2)`, a hundred SKUs or more (an
/// order may have 100 lines) let the planner use the key for the tenant alone and test its whole
/// catalog against the array (11.8 ms for 200 SKUs of a 50,000-variant catalog, where probes take
/// under 1 ms); a lateral subquery with a `LIMIT` or `OFFSET` is never flattened into a join, so
/// each SKU is one probe of the key whatever the statistics say.
macro_rules! each_wanted_sku {
    () => {
        "(SELECT DISTINCT unnest($2::text[]) AS sku) AS w CROSS JOIN LATERAL"
    };
}

/// A variant's prices, by SKU.
const SELECT_PRICES: &str = concat!(
    "SELECT v.sku, v.prices FROM ",
    each_wanted_sku!(),
    " (SELECT sku, prices FROM variants WHERE tenant_id = $1 AND sku = w.sku LIMIT 1) AS v"
);

/// The SKUs the catalog has, in order.
const SELECT_EXISTING_SKUS: &str = concat!(
    "SELECT v.sku FROM ",
    each_wanted_sku!(),
    " (SELECT sku FROM variants WHERE tenant_id = $1 AND sku = w.sku LIMIT 1) AS v ORDER BY v.sku"
);

/// Every stock row of the SKUs, by SKU and location: a row per location, so `OFFSET 0` rather
/// than a limit keeps the subquery apart.
const SELECT_STOCK: &str = concat!(
    "SELECT s.sku, s.location, s.on_hand, s.reserved FROM ",
    each_wanted_sku!(),
    " (SELECT sku, location, on_hand, reserved FROM stock_levels WHERE tenant_id = $1 \
     AND sku = w.sku OFFSET 0) AS s ORDER BY s.sku, s.location"
);

/// The stock rows of `skus`, by SKU and location.
pub(super) async fn read_stock<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    tenant: TenantId,
    skus: &[String],
) -> Result<Vec<LockedStock>, StoreError> {
    let rows = sqlx::query(SELECT_STOCK)
        .bind(tenant.as_uuid())
        .bind(skus)
        .fetch_all(executor)
        .await?;
    rows.iter().map(rows::locked_stock).collect()
}

#[async_trait]
impl Tx for PgTx {
    async fn lock_idempotency_key(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<bool, StoreError> {
        // A try-lock, not a wait: a second request under the same key, from any process, is
        // told 409 at once rather than held behind the first.
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(LOCK_CLASS_IDEMPOTENCY_KEY)
            .bind(key_lock_id(&format!("{tenant}/{key}")))
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(locked)
    }

    async fn find_idempotency_record(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(SELECT_IDEMPOTENCY_RECORD_BY_KEY)
            .bind(tenant.as_uuid())
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(rows::idempotency_record).transpose()
    }

    async fn delete_idempotency_record(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_records WHERE tenant_id = $1 AND key = $2")
            .bind(tenant.as_uuid())
            .bind(key)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn insert_idempotency_record(
        &mut self,
        tenant: TenantId,
        record: &NewIdempotencyRecord<'_>,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO idempotency_records (tenant_id, key, fingerprint, status_code, location, response_body, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        );
        bind_idempotency_record(insert, tenant, record)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn existing_skus(
        &mut self,
        tenant: TenantId,
        skus: &[Sku],
    ) -> Result<Vec<Sku>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(SELECT_EXISTING_SKUS)
            .bind(tenant.as_uuid())
            .bind(sku_strings(skus))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter()
            .map(|sku| Sku::parse(sku).map_err(|e| corrupt("sku", e)))
            .collect()
    }

    async fn insert_product(
        &mut self,
        tenant: TenantId,
        product: &Product,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO products (tenant_id, id, name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant.as_uuid())
        .bind(product.id.as_uuid())
        .bind(product.name.as_str())
        .bind(product.created_at)
        .execute(&mut *self.tx)
        .await?;
        let skus: Vec<String> = product
            .variants
            .iter()
            .map(|v| v.sku.as_str().to_owned())
            .collect();
        let prices: Vec<String> = product
            .variants
            .iter()
            .map(|v| crate::codec::prices_json(&v.prices).to_string())
            .collect();
        sqlx::query(
            "INSERT INTO variants (tenant_id, sku, product_id, prices, position) \
             SELECT $1, sku, $2, prices::jsonb, position::int - 1 \
             FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS v(sku, prices, position)",
        )
        .bind(tenant.as_uuid())
        .bind(product.id.as_uuid())
        .bind(skus)
        .bind(prices)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn catalog_prices(
        &mut self,
        tenant: TenantId,
        skus: &[Sku],
    ) -> Result<CatalogPrices, StoreError> {
        let rows = sqlx::query(SELECT_PRICES)
            .bind(tenant.as_uuid())
            .bind(sku_strings(skus))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(rows::catalog_price).collect()
    }

    async fn lock_stock_level(
        &mut self,
        tenant: TenantId,
        sku: &Sku,
        location: &Code,
        now: DateTime<Utc>,
    ) -> Result<Option<StockLevel>, StoreError> {
        sqlx::query(
            "INSERT INTO stock_levels (tenant_id, sku, location, on_hand, reserved, updated_at) \
             SELECT tenant_id, sku, $1, 0, 0, $2 FROM variants WHERE tenant_id = $3 AND sku = $4 \
             ON CONFLICT (tenant_id, sku, location) DO NOTHING",
        )
        .bind(location.as_str())
        .bind(now)
        .bind(tenant.as_uuid())
        .bind(sku.as_str())
        .execute(&mut *self.tx)
        .await?;
        let row = sqlx::query(
            "SELECT on_hand, reserved FROM stock_levels WHERE tenant_id = $1 AND sku = $2 AND location = $3 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(sku.as_str())
        .bind(location.as_str())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(rows::stock_level).transpose()
    }

    async fn insert_order(&mut self, tenant: TenantId, order: &Order) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO orders (tenant_id, id, channel, customer_id, customer_email, currency, total_minor, status, lines, shipping_address, saga, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
        )
        .bind(tenant.as_uuid())
        .bind(order.id.as_uuid())
        .bind(order.channel.as_str())
        .bind(order.customer.id.as_str())
        .bind(order.customer.email.as_ref().map(|e| e.as_str()))
        .bind(order.currency.code())
        .bind(order.total_minor)
        .bind(order.status.as_str())
        .bind(Json(&order.lines))
        .bind(Json(&order.shipping_address))
        // The saga as the steps write it, not the column's default `{}`: `write_effect` checks
        // that the order is still as a step read it by comparing the stored `jsonb` with the
        // saga the step expects, and `{}` is not equal to the default saga written out.
        .bind(Json(Saga::default()))
        .bind(order.created_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn append_events(&mut self, events: &[NewEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // The partition-key locks and the insert in one round trip (see `append_events` in the
        // migrations).
        let call = sqlx::query(
            "SELECT append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(LOCK_CLASS_PARTITION_KEY)
        .bind(partition_lock_ids(events));
        EventColumns::of(events)?
            .bind(call)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn record_command(
        &mut self,
        events: &[NewEvent],
        audit: &NewAuditRecord,
        tenant: TenantId,
        record: &NewIdempotencyRecord<'_>,
    ) -> Result<(), StoreError> {
        // One round trip instead of four (see `record_command` in the migrations).
        let call = sqlx::query(
            "SELECT record_command($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)",
        )
        .bind(LOCK_CLASS_PARTITION_KEY)
        .bind(partition_lock_ids(events));
        let call = bind_audit(EventColumns::of(events)?.bind(call), audit);
        bind_idempotency_record(call, tenant, record)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn insert_inbox(
        &mut self,
        group: &str,
        event: EventId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO inbox (group_name, event_id, applied_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(event.as_uuid())
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn upsert_dead_letter(&mut self, letter: &DeadLetterRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dead_letters (id, tenant_id, group_name, event_id, partition, position, event_type, subject, error, attempts, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (group_name, event_id) DO UPDATE SET error = excluded.error, attempts = excluded.attempts, \
             status = excluded.status, updated_at = excluded.updated_at \
             WHERE dead_letters.status <> $14",
        )
        .bind(letter.id)
        .bind(letter.tenant_id.as_uuid())
        .bind(&letter.group)
        .bind(letter.event_id.as_uuid())
        .bind(i32::try_from(letter.partition).map_err(|e| corrupt("partition", e))?)
        .bind(letter.position)
        .bind(&letter.event_type)
        .bind(&letter.subject)
        .bind(&letter.error)
        .bind(Json(&letter.attempts))
        .bind(&letter.status)
        .bind(letter.created_at)
        .bind(letter.updated_at)
        .bind(crate::DISCARDED)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn insert_webhook_delivery(
        &mut self,
        source: &str,
        delivery_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO webhook_deliveries (source, delivery_id, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(source)
        .bind(delivery_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn lock_order(
        &mut self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderState>, StoreError> {
        let row = sqlx::query(concat!(
            rows::select_order!(),
            " WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        ))
        .bind(tenant.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(rows::order_state).transpose()
    }

    async fn order_still(
        &mut self,
        tenant: TenantId,
        id: OrderId,
        status: &str,
        saga: &Saga,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT status, saga FROM orders WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let current = row.text("status")?;
        let current_saga: Saga = row.json("saga")?;
        Ok(current == status && current_saga == *saga)
    }

    async fn update_order(
        &mut self,
        tenant: TenantId,
        id: OrderId,
        status: &str,
        saga: &Saga,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE orders SET status = $1, saga = $2, updated_at = $3 WHERE tenant_id = $4 AND id = $5")
            .bind(status)
            .bind(Json(saga))
            .bind(now)
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn lock_stock(
        &mut self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError> {
        let rows = sqlx::query(
            "SELECT sku, location, on_hand, reserved FROM stock_levels \
             WHERE tenant_id = $1 AND sku = ANY($2) \
             ORDER BY sku COLLATE \"C\", location COLLATE \"C\" FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(skus)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(rows::locked_stock).collect()
    }

    async fn read_stock(
        &mut self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError> {
        read_stock(&mut *self.tx, tenant, skus).await
    }

    async fn shift_stock(
        &mut self,
        tenant: TenantId,
        delta: StockLevel,
        movement: &StockMovement,
    ) -> Result<bool, StoreError> {
        let written = sqlx::query(
            "WITH level AS ( \
                 UPDATE stock_levels SET on_hand = on_hand + $1, reserved = reserved + $2, updated_at = $3 \
                 WHERE tenant_id = $4 AND sku = $5 AND location = $6 \
                   AND reserved + $2 >= 0 AND on_hand + $1 - (reserved + $2) >= 0 \
                 RETURNING 1 \
             ) \
             INSERT INTO stock_movements (tenant_id, sku, location, kind, quantity, order_id, at) \
             SELECT $4, $5, $6, $7, $8, $9, $3 FROM level",
        )
        .bind(delta.on_hand)
        .bind(delta.reserved)
        .bind(movement.at)
        .bind(tenant.as_uuid())
        .bind(&movement.sku)
        .bind(&movement.location)
        .bind(movement.kind.as_str())
        .bind(movement.quantity)
        .bind(movement.order_id.map(|id| id.as_uuid()))
        .execute(&mut *self.tx)
        .await?;
        Ok(written.rows_affected() == 1)
    }

    async fn insert_journal_entry(
        &mut self,
        tenant: TenantId,
        entry: &NewJournalEntry,
    ) -> Result<(), StoreError> {
        let accounts: Vec<&str> = entry.postings.iter().map(|p| p.account.as_str()).collect();
        let currencies: Vec<&str> = entry.postings.iter().map(|p| p.currency.as_str()).collect();
        let amounts: Vec<i64> = entry.postings.iter().map(|p| p.amount_minor).collect();
        sqlx::query(
            "INSERT INTO postings (tenant_id, entry_id, line, account, currency, amount_minor) \
             SELECT $1, $2, line::int - 1, account, currency, amount \
             FROM unnest($3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY AS p(account, currency, amount, line)",
        )
        .bind(tenant.as_uuid())
        .bind(&entry.id)
        .bind(accounts)
        .bind(currencies)
        .bind(amounts)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO journal_entries (tenant_id, id, kind, pending_id, body, order_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant.as_uuid())
        .bind(&entry.id)
        .bind(&entry.kind)
        .bind(entry.pending_id.as_deref())
        .bind(Json(&entry.body))
        .bind(entry.order_id.map(|id| id.as_uuid()))
        .bind(entry.created_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn insert_audit(&mut self, record: &NewAuditRecord) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO audit_records (tenant_id, id, at, body, entity_type, entity_id) VALUES ($1, $2, $3, $4::jsonb, $5, $6)",
        );
        bind_audit(insert, record).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}
