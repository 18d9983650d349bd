//! One command transaction on SQLite's single writer connection.

use rusqlite::Connection;

use super::sql::{self};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::group::Member;
use tally_domain::catalog::{Product, Sku};
use tally_domain::ids::TenantId;
use tally_domain::inventory::StockLevel;
use tally_domain::order::Order;
use tally_domain::text::Code;

use tally_domain::checkout::Saga;
use tally_domain::ids::{EventId, OrderId};

use crate::effect::{EffectOutcome, Once, PreparedEffect, settled};
use crate::records::{
    DeadLetterRecord, IdempotencyRecord, LockedStock, NewAuditRecord, NewEvent,
    NewIdempotencyRecord, NewJournalEntry, OrderState, StockMovement,
};
use crate::rows;
use crate::tx::CatalogPrices;
use crate::{StoreError, Tx, corrupt, to_micros};

/// A command's transaction: a member of the writer's group commit.
pub(super) struct SqliteTx {
    tx: Member,
}

impl SqliteTx {
    pub(super) fn new(tx: Member) -> Self {
        Self { tx }
    }
}

pub(super) const SELECT_IDEMPOTENCY_RECORD_BY_KEY: &str = concat!(
    rows::select_idempotency_record!(),
    " WHERE tenant_id = ? AND key = ?"
);

/// `IN (…)` over a list bound as one JSON array, so the statement text does not vary with the
/// list's length and stays in the prepared-statement cache.
fn json_list(skus: &[Sku]) -> String {
    serde_json::Value::from(skus.iter().map(Sku::as_str).collect::<Vec<_>>()).to_string()
}

pub(super) fn append_events(
    connection: &Connection,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    for event in events {
        sql::query(
            "INSERT INTO events (id, tenant_id, type, source, subject, partition_key, partition, time, data, correlation_id, causation_id, traceparent) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(event.id.as_uuid())
        .bind(event.tenant_id.as_uuid())
        .bind(event.event_type)
        .bind(&event.source)
        .bind(&event.subject)
        .bind(&event.partition_key)
        .bind(i64::from(event.partition))
        .bind(to_micros(event.time))
        .bind(event.data.to_string())
        .bind(event.correlation_id.as_deref())
        .bind(event.causation_id.as_deref())
        .bind(event.traceparent.as_deref())
        .execute(connection)?;
    }
    Ok(())
}

pub(super) fn insert_inbox(
    connection: &Connection,
    group: &str,
    event: EventId,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = sql::query(
        "INSERT INTO inbox (group_name, event_id, applied_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(event.as_uuid())
    .bind(to_micros(now))
    .execute(connection)?;
    Ok(done == 1)
}

pub(super) fn upsert_dead_letter(
    connection: &Connection,
    letter: &DeadLetterRecord,
) -> Result<(), StoreError> {
    sql::query(
        "INSERT INTO dead_letters (id, tenant_id, group_name, event_id, partition, position, event_type, subject, error, attempts, status, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (group_name, event_id) DO UPDATE SET error = excluded.error, attempts = excluded.attempts, \
         status = excluded.status, updated_at = excluded.updated_at \
         WHERE dead_letters.status <> ?",
    )
    .bind(letter.id)
    .bind(letter.tenant_id.as_uuid())
    .bind(&letter.group)
    .bind(letter.event_id.as_uuid())
    .bind(i64::from(letter.partition))
    .bind(letter.position)
    .bind(&letter.event_type)
    .bind(&letter.subject)
    .bind(&letter.error)
    .bind(letter.attempts.to_string())
    .bind(&letter.status)
    .bind(to_micros(letter.created_at))
    .bind(to_micros(letter.updated_at))
    .bind(crate::DISCARDED)
    .execute(connection)?;
    Ok(())
}

pub(super) fn order_still(
    connection: &Connection,
    tenant: TenantId,
    id: OrderId,
    status: &str,
    saga: &Saga,
) -> Result<bool, StoreError> {
    // The single writer holds the lock already.
    let row = sql::query("SELECT status, saga FROM orders WHERE tenant_id = ? AND id = ?")
        .bind(tenant.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(connection)?;
    let Some(row) = row else {
        return Ok(false);
    };
    let current: String = row.try_get("status")?;
    if current != status {
        return Ok(false);
    }
    let current: Saga = rows::Fields::json(&row, "saga")?;
    Ok(current == *saga)
}

pub(super) fn update_order(
    connection: &Connection,
    tenant: TenantId,
    id: OrderId,
    status: &str,
    saga: &Saga,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let saga = serde_json::to_string(saga).map_err(|e| corrupt("saga", e))?;
    sql::query(
        "UPDATE orders SET status = ?, saga = ?, updated_at = ? WHERE tenant_id = ? AND id = ?",
    )
    .bind(status)
    .bind(saga)
    .bind(to_micros(now))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .execute(connection)?;
    Ok(())
}

pub(super) fn insert_journal_entry(
    connection: &Connection,
    tenant: TenantId,
    entry: &NewJournalEntry,
) -> Result<(), StoreError> {
    for (line, posting) in entry.postings.iter().enumerate() {
        sql::query(
            "INSERT INTO postings (tenant_id, entry_id, line, account, currency, amount_minor) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(tenant.as_uuid())
        .bind(&entry.id)
        .bind(i64::try_from(line).unwrap_or(i64::MAX))
        .bind(&posting.account)
        .bind(&posting.currency)
        .bind(posting.amount_minor)
        .execute(connection)?;
    }
    sql::query(
        "INSERT INTO journal_entries (tenant_id, id, kind, pending_id, body, order_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(tenant.as_uuid())
    .bind(&entry.id)
    .bind(&entry.kind)
    .bind(entry.pending_id.as_deref())
    .bind(entry.body.to_string())
    .bind(entry.order_id.map(|id| id.as_uuid()))
    .bind(to_micros(entry.created_at))
    .execute(connection)?;
    Ok(())
}

pub(super) fn insert_audit(
    connection: &Connection,
    record: &NewAuditRecord,
) -> Result<(), StoreError> {
    sql::query(
        "INSERT INTO audit_records (tenant_id, id, at, body, entity_type, entity_id) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(record.tenant_id.as_uuid())
    .bind(record.id)
    .bind(to_micros(record.at))
    .bind(record.body.as_str())
    .bind(&record.entity_type)
    .bind(&record.entity_id)
    .execute(connection)?;
    Ok(())
}

/// Stores a prepared effect on the writer connection, as one queued job of the writer: the
/// statements of [`crate::effect::write_in`], run without a task switch between them. Whether
/// to keep what it wrote, and the outcome.
pub(super) fn write_effect(
    connection: &Connection,
    effect: &PreparedEffect,
) -> Result<(bool, EffectOutcome), StoreError> {
    let change = &effect.change;
    let first = match &effect.once {
        Once::Inbox { group, event } => insert_inbox(connection, group, *event, change.at)?,
        Once::Webhook { source, delivery } => {
            insert_webhook_delivery(connection, source, delivery, change.at)?
        }
    };
    let outcome = if !first {
        EffectOutcome::AlreadyApplied
    } else if !order_still(
        connection,
        change.tenant,
        change.order,
        &change.expected_status,
        &change.expected_saga,
    )? {
        return Ok((false, EffectOutcome::OrderChanged));
    } else {
        update_order(
            connection,
            change.tenant,
            change.order,
            &change.status,
            &change.saga,
            change.at,
        )?;
        for entry in &change.journal {
            insert_journal_entry(connection, change.tenant, entry)?;
        }
        insert_audit(connection, &change.audit)?;
        append_events(connection, &change.events)?;
        for movement in &change.stock {
            let delta = crate::stock::delta(movement.kind, movement.quantity);
            if !shift_stock(connection, change.tenant, delta, movement)? {
                return Ok((false, crate::effect::refusal(movement)?));
            }
        }
        EffectOutcome::Written
    };
    if let Some(letter) = &effect.settles {
        upsert_dead_letter(connection, &settled(letter, change.at))?;
        return Ok((true, outcome));
    }
    Ok((outcome == EffectOutcome::Written, outcome))
}

/// The stock rows of `skus`, by SKU and location.
pub(super) fn read_stock(
    connection: &Connection,
    tenant: TenantId,
    skus: &[String],
) -> Result<Vec<LockedStock>, StoreError> {
    let list = serde_json::Value::from(skus.to_vec()).to_string();
    let rows = sql::query(
        "SELECT sku, location, on_hand, reserved FROM stock_levels \
         WHERE tenant_id = ? AND sku IN (SELECT value FROM json_each(?)) ORDER BY sku, location",
    )
    .bind(tenant.as_uuid())
    .bind(list)
    .fetch_all(connection)?;
    rows.iter().map(rows::locked_stock).collect()
}

/// Records a partner's webhook delivery; `false` when it was recorded before.
fn insert_webhook_delivery(
    connection: &Connection,
    source: &str,
    delivery_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = sql::query(
        "INSERT INTO webhook_deliveries (source, delivery_id, received_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(source)
    .bind(delivery_id)
    .bind(to_micros(now))
    .execute(connection)?;
    Ok(done == 1)
}

/// Adds `delta` to a stock row, with the movement that explains it, unless that would take its
/// reserved or available units below zero; whether it did.
fn shift_stock(
    connection: &Connection,
    tenant: TenantId,
    delta: StockLevel,
    movement: &StockMovement,
) -> Result<bool, StoreError> {
    let changed = sql::query(
        "UPDATE stock_levels SET on_hand = on_hand + ?1, reserved = reserved + ?2, updated_at = ?3 \
         WHERE tenant_id = ?4 AND sku = ?5 AND location = ?6 \
           AND reserved + ?2 >= 0 AND on_hand + ?1 - (reserved + ?2) >= 0",
    )
    .bind(delta.on_hand)
    .bind(delta.reserved)
    .bind(to_micros(movement.at))
    .bind(tenant.as_uuid())
    .bind(&movement.sku)
    .bind(&movement.location)
    .execute(connection)?;
    if changed != 1 {
        return Ok(false);
    }
    insert_movement(connection, tenant, movement)?;
    Ok(true)
}

fn insert_movement(
    connection: &Connection,
    tenant: TenantId,
    movement: &StockMovement,
) -> Result<(), StoreError> {
    sql::query(
        "INSERT INTO stock_movements (tenant_id, sku, location, kind, quantity, order_id, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(tenant.as_uuid())
    .bind(&movement.sku)
    .bind(&movement.location)
    .bind(movement.kind.as_str())
    .bind(movement.quantity)
    .bind(movement.order_id.map(|id| id.as_uuid()))
    .bind(to_micros(movement.at))
    .execute(connection)?;
    Ok(())
}

#[async_trait]
impl Tx for SqliteTx {
    async fn lock_idempotency_key(&mut self, _: TenantId, _: &str) -> Result<bool, StoreError> {
        // The transaction runs on the only writer connection: no other command can be under way.
        Ok(true)
    }

    async fn find_idempotency_record(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sql::query(SELECT_IDEMPOTENCY_RECORD_BY_KEY)
            .bind(tenant.as_uuid())
            .bind(key)
            .fetch_optional(self.tx.connection()?)?;
        row.as_ref().map(rows::idempotency_record).transpose()
    }

    async fn delete_idempotency_record(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<(), StoreError> {
        sql::query("DELETE FROM idempotency_records WHERE tenant_id = ? AND key = ?")
            .bind(tenant.as_uuid())
            .bind(key)
            .execute(self.tx.connection()?)?;
        Ok(())
    }

    async fn insert_idempotency_record(
        &mut self,
        tenant: TenantId,
        record: &NewIdempotencyRecord<'_>,
    ) -> Result<(), StoreError> {
        sql::query(
            "INSERT INTO idempotency_records (tenant_id, key, fingerprint, status_code, location, response_body, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(tenant.as_uuid())
        .bind(record.key)
        .bind(&record.fingerprint[..])
        .bind(i64::from(record.response.status))
        .bind(record.response.location.as_deref())
        .bind(&record.response.body)
        .bind(to_micros(record.created_at))
        .bind(to_micros(record.expires_at))
        .execute(self.tx.connection()?)?;
        Ok(())
    }

    async fn existing_skus(
        &mut self,
        tenant: TenantId,
        skus: &[Sku],
    ) -> Result<Vec<Sku>, StoreError> {
        let rows: Vec<String> = sql::query(
            "SELECT sku FROM variants WHERE tenant_id = ? AND sku IN (SELECT value FROM json_each(?)) ORDER BY sku",
        )
        .bind(tenant.as_uuid())
        .bind(json_list(skus))
        .fetch_all_scalar(self.tx.connection()?)?;
        rows.iter()
            .map(|sku| Sku::parse(sku).map_err(|e| corrupt("sku", e)))
            .collect()
    }

    async fn insert_product(
        &mut self,
        tenant: TenantId,
        product: &Product,
    ) -> Result<(), StoreError> {
        sql::query("INSERT INTO products (tenant_id, id, name, created_at) VALUES (?, ?, ?, ?)")
            .bind(tenant.as_uuid())
            .bind(product.id.as_uuid())
            .bind(product.name.as_str())
            .bind(to_micros(product.created_at))
            .execute(self.tx.connection()?)?;
        for (position, variant) in product.variants.iter().enumerate() {
            sql::query(
                "INSERT INTO variants (tenant_id, sku, product_id, prices, position) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(tenant.as_uuid())
            .bind(variant.sku.as_str())
            .bind(product.id.as_uuid())
            .bind(crate::codec::prices_json(&variant.prices).to_string())
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .execute(self.tx.connection()?)?;
        }
        Ok(())
    }

    async fn catalog_prices(
        &mut self,
        tenant: TenantId,
        skus: &[Sku],
    ) -> Result<CatalogPrices, StoreError> {
        let rows = sql::query(
            "SELECT sku, prices FROM variants WHERE tenant_id = ? AND sku IN (SELECT value FROM json_each(?))",
        )
        .bind(tenant.as_uuid())
        .bind(json_list(skus))
        .fetch_all(self.tx.connection()?)?;
        rows.iter().map(rows::catalog_price).collect()
    }

    async fn lock_stock_level(
        &mut self,
        tenant: TenantId,
        sku: &Sku,
        location: &Code,
        now: DateTime<Utc>,
    ) -> Result<Option<StockLevel>, StoreError> {
        // The single writer holds the lock already; only make sure the row exists.
        sql::query(
            "INSERT INTO stock_levels (tenant_id, sku, location, on_hand, reserved, updated_at) \
             SELECT tenant_id, sku, ?, 0, 0, ? FROM variants WHERE tenant_id = ? AND sku = ? \
             ON CONFLICT (tenant_id, sku, location) DO NOTHING",
        )
        .bind(location.as_str())
        .bind(to_micros(now))
        .bind(tenant.as_uuid())
        .bind(sku.as_str())
        .execute(self.tx.connection()?)?;
        let row = sql::query(
            "SELECT on_hand, reserved FROM stock_levels WHERE tenant_id = ? AND sku = ? AND location = ?",
        )
        .bind(tenant.as_uuid())
        .bind(sku.as_str())
        .bind(location.as_str())
        .fetch_optional(self.tx.connection()?)?;
        row.as_ref().map(rows::stock_level).transpose()
    }

    async fn insert_order(&mut self, tenant: TenantId, order: &Order) -> Result<(), StoreError> {
        let lines = serde_json::to_string(&order.lines).map_err(|e| corrupt("order lines", e))?;
        let address =
            serde_json::to_string(&order.shipping_address).map_err(|e| corrupt("address", e))?;
        sql::query(
            "INSERT INTO orders (tenant_id, id, channel, customer_id, customer_email, currency, total_minor, status, lines, shipping_address, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(tenant.as_uuid())
        .bind(order.id.as_uuid())
        .bind(order.channel.as_str())
        .bind(order.customer.id.as_str())
        .bind(order.customer.email.as_ref().map(|e| e.as_str()))
        .bind(order.currency.code())
        .bind(order.total_minor)
        .bind(order.status.as_str())
        .bind(lines)
        .bind(address)
        .bind(to_micros(order.created_at))
        .bind(to_micros(order.created_at))
        .execute(self.tx.connection()?)?;
        Ok(())
    }

    async fn append_events(&mut self, events: &[NewEvent]) -> Result<(), StoreError> {
        append_events(self.tx.connection()?, events)
    }

    async fn insert_inbox(
        &mut self,
        group: &str,
        event: EventId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        insert_inbox(self.tx.connection()?, group, event, now)
    }

    async fn upsert_dead_letter(&mut self, letter: &DeadLetterRecord) -> Result<(), StoreError> {
        upsert_dead_letter(self.tx.connection()?, letter)
    }

    async fn insert_webhook_delivery(
        &mut self,
        source: &str,
        delivery_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        insert_webhook_delivery(self.tx.connection()?, source, delivery_id, now)
    }

    async fn lock_order(
        &mut self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderState>, StoreError> {
        let row = sql::query(concat!(
            rows::select_order!(),
            " WHERE tenant_id = ? AND id = ?"
        ))
        .bind(tenant.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(self.tx.connection()?)?;
        row.as_ref().map(rows::order_state).transpose()
    }

    async fn order_still(
        &mut self,
        tenant: TenantId,
        id: OrderId,
        status: &str,
        saga: &Saga,
    ) -> Result<bool, StoreError> {
        order_still(self.tx.connection()?, tenant, id, status, saga)
    }

    async fn update_order(
        &mut self,
        tenant: TenantId,
        id: OrderId,
        status: &str,
        saga: &Saga,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        update_order(self.tx.connection()?, tenant, id, status, saga, now)
    }

    async fn lock_stock(
        &mut self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError> {
        // The single writer holds every row already.
        self.read_stock(tenant, skus).await
    }

    async fn read_stock(
        &mut self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError> {
        read_stock(self.tx.connection()?, tenant, skus)
    }

    async fn shift_stock(
        &mut self,
        tenant: TenantId,
        delta: StockLevel,
        movement: &StockMovement,
    ) -> Result<bool, StoreError> {
        shift_stock(self.tx.connection()?, tenant, delta, movement)
    }

    async fn insert_journal_entry(
        &mut self,
        tenant: TenantId,
        entry: &NewJournalEntry,
    ) -> Result<(), StoreError> {
        insert_journal_entry(self.tx.connection()?, tenant, entry)
    }

    async fn insert_audit(&mut self, record: &NewAuditRecord) -> Result<(), StoreError> {
        insert_audit(self.tx.connection()?, record)
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
