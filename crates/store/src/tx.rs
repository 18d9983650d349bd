//! The primitives one command transaction is made of; the `tally-commands` crate composes them
//! into commands, and `EngineTx` implements them once for both engines over the
//! statements of `crate::write`.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_domain::catalog::{Product, Sku};
use tally_domain::ids::TenantId;
use tally_domain::inventory::StockLevel;
use tally_domain::money::{Currency, Money};
use tally_domain::order::Order;
use tally_domain::text::Code;

use crate::StoreError;
use crate::effect::OrderChange;
use crate::exec::{Exec, Finish};
use crate::write;
use tally_domain::checkout::Saga;
use tally_domain::ids::{EventId, OrderId, ProductId};

use crate::records::{
    DeadLetterRecord, IdempotencyRecord, LockedStock, NewAuditRecord, NewEvent,
    NewIdempotencyRecord, NewJournalEntry, OrderState, ProductRecord, StockMovement,
};

/// Prices per SKU, as order placement needs them.
pub type CatalogPrices = HashMap<Sku, HashMap<Currency, Money>>;

/// One open command transaction. Dropping it without [`Tx::commit`] rolls it back, but only
/// eventually (in the background); [`Tx::rollback`] releases its locks before returning.
#[async_trait]
pub trait Tx: Send {
    /// Makes this transaction the only one working under `key` until it ends. Returns `false`
    /// when another transaction, possibly in another process, holds the key right now.
    async fn lock_idempotency_key(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<bool, StoreError>;
    async fn find_idempotency_record(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    async fn delete_idempotency_record(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<(), StoreError>;
    async fn insert_idempotency_record(
        &mut self,
        tenant: TenantId,
        record: &NewIdempotencyRecord<'_>,
    ) -> Result<(), StoreError>;

    /// Of `skus`, those the tenant's catalog already has.
    async fn existing_skus(
        &mut self,
        tenant: TenantId,
        skus: &[Sku],
    ) -> Result<Vec<Sku>, StoreError>;
    async fn insert_product(
        &mut self,
        tenant: TenantId,
        product: &Product,
    ) -> Result<(), StoreError>;
    async fn catalog_prices(
        &mut self,
        tenant: TenantId,
        skus: &[Sku],
    ) -> Result<CatalogPrices, StoreError>;
    /// Locks a product and its variants for the rest of the transaction and returns them.
    async fn lock_product(
        &mut self,
        tenant: TenantId,
        id: ProductId,
    ) -> Result<Option<ProductRecord>, StoreError>;
    /// Stores a product's name and its variants' prices (its SKUs do not change).
    async fn update_product(
        &mut self,
        tenant: TenantId,
        product: &Product,
    ) -> Result<(), StoreError>;

    /// Locks the stock row of a SKU at a location for the rest of the transaction and returns
    /// it, creating it empty first if the SKU exists but has no stock there. `None` means the
    /// tenant's catalog has no such SKU.
    async fn lock_stock_level(
        &mut self,
        tenant: TenantId,
        sku: &Sku,
        location: &Code,
        now: DateTime<Utc>,
    ) -> Result<Option<StockLevel>, StoreError>;
    async fn insert_order(&mut self, tenant: TenantId, order: &Order) -> Result<(), StoreError>;

    /// Writes events to the outbox. Must be the last locking step of a transaction: it may wait
    /// for other transactions appending under the same partition keys, so that each key's
    /// events enter the log in commit order.
    async fn append_events(&mut self, events: &[NewEvent]) -> Result<(), StoreError>;

    /// Stores what every command writes beside its own rows: its events, its audit record and
    /// the response under its idempotency key (on PostgreSQL in one round trip).
    async fn record_command(
        &mut self,
        events: &[NewEvent],
        audit: &NewAuditRecord,
        tenant: TenantId,
        record: &NewIdempotencyRecord<'_>,
    ) -> Result<(), StoreError>;

    /// Writes a change to an order, whose caller has checked the order (or locked it and made
    /// the change from what it found), up to a stock move its row refuses, which it returns;
    /// the caller must then roll back.
    async fn write_change(
        &mut self,
        change: &OrderChange,
    ) -> Result<Option<StockMovement>, StoreError>;

    /// Records that `group` applied `event`; `false` when it already had (a duplicate delivery).
    async fn insert_inbox(
        &mut self,
        group: &str,
        event: EventId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Parks an event as a dead letter of its group, or updates the group's letter for it; a
    /// letter an operator discarded stays as it is.
    async fn upsert_dead_letter(&mut self, letter: &DeadLetterRecord) -> Result<(), StoreError>;
    /// Records a partner webhook delivery; `false` when it was applied before.
    async fn insert_webhook_delivery(
        &mut self,
        source: &str,
        delivery_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Locks an order for the rest of the transaction, like [`Tx::lock_order`], and tells
    /// whether it is still in `status` with `saga`. A step computed from an earlier read of
    /// the order needs nothing more to know that its writes still follow: no other column of
    /// an order changes after it is placed. `false` also when the order does not exist.
    async fn order_still(
        &mut self,
        tenant: TenantId,
        id: OrderId,
        status: &str,
        saga: &Saga,
    ) -> Result<bool, StoreError>;

    /// Locks an order and its saga state for the rest of the transaction.
    async fn lock_order(
        &mut self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderState>, StoreError>;
    async fn update_order(
        &mut self,
        tenant: TenantId,
        id: OrderId,
        status: &str,
        saga: &Saga,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Locks every stock row of `skus`, in (SKU, location) order so concurrent reservations
    /// cannot deadlock.
    async fn lock_stock(
        &mut self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError>;
    /// The stock rows of `skus` as last committed, in (SKU, location) order, without locking
    /// them: what a reservation is planned on before it locks the rows it chose.
    async fn read_stock(
        &mut self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError>;
    /// Adds `delta` to a stock row in one statement, with the movement that explains it, and
    /// returns whether it did: `false` (nothing written) when the row is missing or the change
    /// would leave it with fewer than zero units reserved or available. The row is locked
    /// from this statement to the end of the transaction.
    async fn shift_stock(
        &mut self,
        tenant: TenantId,
        delta: StockLevel,
        movement: &StockMovement,
    ) -> Result<bool, StoreError>;

    /// Writes an entry and its postings; the database refuses one that does not balance.
    async fn insert_journal_entry(
        &mut self,
        tenant: TenantId,
        entry: &NewJournalEntry,
    ) -> Result<(), StoreError>;
    async fn insert_audit(&mut self, record: &NewAuditRecord) -> Result<(), StoreError>;

    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Rolls back and waits for it, releasing every lock the transaction held.
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// A command transaction on either engine: a SQLite writer's member or a PostgreSQL
/// transaction, running the statements of [`crate::write`].
pub(crate) struct EngineTx<X>(pub(crate) X);

#[async_trait]
impl<X: Exec + Finish + Send + 'static> Tx for EngineTx<X> {
    async fn lock_idempotency_key(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<bool, StoreError> {
        write::lock_idempotency_key(&mut self.0, tenant, key).await
    }

    async fn find_idempotency_record(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        write::find_idempotency_record(&mut self.0, tenant, key).await
    }

    async fn delete_idempotency_record(
        &mut self,
        tenant: TenantId,
        key: &str,
    ) -> Result<(), StoreError> {
        write::delete_idempotency_record(&mut self.0, tenant, key).await
    }

    async fn insert_idempotency_record(
        &mut self,
        tenant: TenantId,
        record: &NewIdempotencyRecord<'_>,
    ) -> Result<(), StoreError> {
        write::insert_idempotency_record(&mut self.0, tenant, record).await
    }

    async fn existing_skus(
        &mut self,
        tenant: TenantId,
        skus: &[Sku],
    ) -> Result<Vec<Sku>, StoreError> {
        write::existing_skus(&mut self.0, tenant, skus).await
    }

    async fn insert_product(
        &mut self,
        tenant: TenantId,
        product: &Product,
    ) -> Result<(), StoreError> {
        write::insert_product(&mut self.0, tenant, product).await
    }

    async fn catalog_prices(
        &mut self,
        tenant: TenantId,
        skus: &[Sku],
    ) -> Result<CatalogPrices, StoreError> {
        write::catalog_prices(&mut self.0, tenant, skus).await
    }

    async fn lock_product(
        &mut self,
        tenant: TenantId,
        id: ProductId,
    ) -> Result<Option<ProductRecord>, StoreError> {
        write::product(&mut self.0, tenant, id, true).await
    }

    async fn update_product(
        &mut self,
        tenant: TenantId,
        product: &Product,
    ) -> Result<(), StoreError> {
        write::update_product(&mut self.0, tenant, product).await
    }

    async fn lock_stock_level(
        &mut self,
        tenant: TenantId,
        sku: &Sku,
        location: &Code,
        now: DateTime<Utc>,
    ) -> Result<Option<StockLevel>, StoreError> {
        write::lock_stock_level(&mut self.0, tenant, sku, location, now).await
    }

    async fn insert_order(&mut self, tenant: TenantId, order: &Order) -> Result<(), StoreError> {
        write::insert_order(&mut self.0, tenant, order).await
    }

    async fn append_events(&mut self, events: &[NewEvent]) -> Result<(), StoreError> {
        write::append_events(&mut self.0, events).await
    }

    async fn record_command(
        &mut self,
        events: &[NewEvent],
        audit: &NewAuditRecord,
        tenant: TenantId,
        record: &NewIdempotencyRecord<'_>,
    ) -> Result<(), StoreError> {
        write::record_command(&mut self.0, events, audit, tenant, record).await
    }

    async fn write_change(
        &mut self,
        change: &OrderChange,
    ) -> Result<Option<StockMovement>, StoreError> {
        crate::effect::write_change(&mut self.0, change).await
    }

    async fn insert_inbox(
        &mut self,
        group: &str,
        event: EventId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        write::insert_inbox(&mut self.0, group, event, now).await
    }

    async fn upsert_dead_letter(&mut self, letter: &DeadLetterRecord) -> Result<(), StoreError> {
        write::upsert_dead_letter(&mut self.0, letter).await
    }

    async fn insert_webhook_delivery(
        &mut self,
        source: &str,
        delivery_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        write::insert_webhook_delivery(&mut self.0, source, delivery_id, now).await
    }

    async fn order_still(
        &mut self,
        tenant: TenantId,
        id: OrderId,
        status: &str,
        saga: &Saga,
    ) -> Result<bool, StoreError> {
        write::order_still(&mut self.0, tenant, id, status, saga).await
    }

    async fn lock_order(
        &mut self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderState>, StoreError> {
        write::lock_order(&mut self.0, tenant, id).await
    }

    async fn update_order(
        &mut self,
        tenant: TenantId,
        id: OrderId,
        status: &str,
        saga: &Saga,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        write::update_order(&mut self.0, tenant, id, status, saga, now).await
    }

    async fn lock_stock(
        &mut self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError> {
        write::lock_stock(&mut self.0, tenant, skus).await
    }

    async fn read_stock(
        &mut self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError> {
        write::read_stock(&mut self.0, tenant, skus).await
    }

    async fn shift_stock(
        &mut self,
        tenant: TenantId,
        delta: StockLevel,
        movement: &StockMovement,
    ) -> Result<bool, StoreError> {
        write::shift_stock(&mut self.0, tenant, delta, movement).await
    }

    async fn insert_journal_entry(
        &mut self,
        tenant: TenantId,
        entry: &NewJournalEntry,
    ) -> Result<(), StoreError> {
        write::insert_journal_entry(&mut self.0, tenant, entry).await
    }

    async fn insert_audit(&mut self, record: &NewAuditRecord) -> Result<(), StoreError> {
        write::insert_audit(&mut self.0, record).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.0.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.0.rollback().await
    }
}
