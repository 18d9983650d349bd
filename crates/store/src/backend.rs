//! [`Store`] written once for both engines: each method runs the statements of [`crate::read`]
//! or [`crate::write`] on a connection its engine gives it ([`Backend`]), or, where the engines
//! work differently (the log's sequencing, leases, effects, audit sealing, PostgreSQL's
//! gathered order reads), asks the engine.

use std::collections::HashSet;
use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_domain::ids::{EventId, OrderId, ProductId, TenantId};
use uuid::Uuid;

use crate::effect::{EffectOutcome, PreparedEffect};
use crate::exec::{Arg, Exec, Finish, args};
use crate::records::*;
use crate::tx::EngineTx;
use crate::{Engine, Lease, Store, StoreError, Tx, read, write};

/// What an engine gives the store: connections to run statements on, and the mechanisms that
/// differ between engines.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug + 'static {
    const ENGINE: Engine;

    /// A connection for one call's reads: on SQLite a read transaction, so every read made
    /// through it sees one snapshot (of durable writes only); on PostgreSQL a pooled connection.
    type Reader<'a>: Exec + Send
    where
        Self: 'a;
    fn reader(&self) -> impl Future<Output = Result<Self::Reader<'_>, StoreError>> + Send;

    /// Reads that must see one snapshot on every engine (PostgreSQL: a read-only transaction
    /// at `REPEATABLE READ`).
    type Snapshot<'a>: Exec + Send
    where
        Self: 'a;
    fn snapshot(&self) -> impl Future<Output = Result<Self::Snapshot<'_>, StoreError>> + Send;

    /// A write transaction: on SQLite a member of the writer's group commit.
    type Writer: Exec + Finish + Send + 'static;
    fn writer(&self) -> impl Future<Output = Result<Self::Writer, StoreError>> + Send;

    /// Runs one statement in a transaction of its own; the rows it changed.
    fn write_alone(
        &self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Number of partitions of the embedded log, fixed when the database was created.
    fn partitions(&self) -> u32;

    fn write_effect(
        &self,
        effect: PreparedEffect,
    ) -> impl Future<Output = Result<EffectOutcome, StoreError>> + Send;
    fn record_inbox(
        &self,
        group: &str,
        events: &[EventId],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn order(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> impl Future<Output = Result<Option<OrderRecord>, StoreError>> + Send;
    fn order_and_timeline(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> impl Future<Output = Result<Option<(OrderRecord, Vec<TimelineEntry>)>, StoreError>> + Send;
    fn sequence_outbox(&self, limit: u32) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn join(&self, group: &str) -> impl Future<Output = Result<Box<dyn Lease>, StoreError>> + Send;
    fn members(&self, group: &str) -> impl Future<Output = Result<u32, StoreError>> + Send;
    fn try_lease(
        &self,
        group: &str,
        partition: u32,
    ) -> impl Future<Output = Result<Option<Box<dyn Lease>>, StoreError>> + Send;
    fn seal_audit(&self, limit: u32) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

#[async_trait]
impl<B: Backend> Store for B {
    fn engine(&self) -> Engine {
        B::ENGINE
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        Ok(Box::new(EngineTx(self.writer().await?)))
    }

    async fn write_effect(&self, effect: PreparedEffect) -> Result<EffectOutcome, StoreError> {
        Backend::write_effect(self, effect).await
    }

    async fn record_inbox(
        &self,
        group: &str,
        events: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Backend::record_inbox(self, group, events, now).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.reader()
            .await?
            .fetch_optional("SELECT 1 AS up", &[])
            .await?;
        Ok(())
    }

    async fn create_tenant(&self, tenant: &NewTenant) -> Result<(), StoreError> {
        self.write_alone(
            "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)",
            &args![tenant.id.as_uuid(), tenant.name.as_str(), tenant.created_at],
        )
        .await?;
        Ok(())
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<(), StoreError> {
        self.write_alone(
            "INSERT INTO api_keys (id, tenant_id, key_hash, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &args![
                key.id.as_uuid(),
                key.tenant_id.as_uuid(),
                &key.key_hash[..],
                key.scopes.as_str(),
                key.created_at
            ],
        )
        .await?;
        Ok(())
    }

    async fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        read::find_api_key(&mut self.reader().await?, key_hash).await
    }

    async fn find_idempotency_record(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        write::find_idempotency_record(&mut self.reader().await?, tenant, key).await
    }

    async fn purge_idempotency_records(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.write_alone(
            "DELETE FROM idempotency_records WHERE (tenant_id, key) IN \
             (SELECT tenant_id, key FROM idempotency_records WHERE expires_at <= $1 LIMIT $2)",
            &args![now, limit],
        )
        .await
    }

    async fn product(
        &self,
        tenant: TenantId,
        id: ProductId,
    ) -> Result<Option<ProductRecord>, StoreError> {
        write::product(&mut self.reader().await?, tenant, id, false).await
    }

    async fn stock_levels(
        &self,
        tenant: TenantId,
        sku: &str,
    ) -> Result<Option<Vec<StockRecord>>, StoreError> {
        read::stock_levels(&mut self.reader().await?, tenant, sku).await
    }

    async fn read_stock(
        &self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError> {
        write::read_stock(&mut self.reader().await?, tenant, skus).await
    }

    async fn order(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        Backend::order(self, tenant, id).await
    }

    async fn timeline(
        &self,
        tenant: TenantId,
        subject: &str,
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        read::timeline(&mut self.reader().await?, tenant, subject).await
    }

    async fn order_and_timeline(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<(OrderRecord, Vec<TimelineEntry>)>, StoreError> {
        Backend::order_and_timeline(self, tenant, id).await
    }

    async fn orders(
        &self,
        tenant: TenantId,
        filter: &OrderFilter,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        read::orders(&mut self.reader().await?, tenant, filter, limit).await
    }

    fn log_partitions(&self) -> u32 {
        self.partitions()
    }

    async fn sequence_outbox(&self, limit: u32) -> Result<u64, StoreError> {
        Backend::sequence_outbox(self, limit).await
    }

    async fn read_log(
        &self,
        partition: Option<u32>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEvent>, StoreError> {
        read::read_log(&mut self.reader().await?, partition, after, limit).await
    }

    async fn consumer_offset(&self, group: &str, partition: u32) -> Result<i64, StoreError> {
        read::consumer_offset(&mut self.reader().await?, group, partition).await
    }

    async fn commit_consumer_offset(
        &self,
        group: &str,
        partition: u32,
        position: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write_alone(
            read::UPSERT_OFFSET,
            &[
                group.into(),
                Arg::int4(partition)?,
                position.into(),
                now.into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn position_before(
        &self,
        partition: u32,
        time: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        read::position_before(&mut self.reader().await?, partition, time).await
    }

    async fn outbox_pending(&self) -> Result<i64, StoreError> {
        read::outbox_pending(&mut self.reader().await?).await
    }

    async fn log_backlog(&self, group: &str) -> Result<i64, StoreError> {
        read::log_backlog(&mut self.reader().await?, group, self.partitions()).await
    }

    async fn join(&self, group: &str) -> Result<Box<dyn Lease>, StoreError> {
        Backend::join(self, group).await
    }

    async fn members(&self, group: &str) -> Result<u32, StoreError> {
        Backend::members(self, group).await
    }

    async fn try_lease(
        &self,
        group: &str,
        partition: u32,
    ) -> Result<Option<Box<dyn Lease>>, StoreError> {
        Backend::try_lease(self, group, partition).await
    }

    async fn event(&self, id: EventId) -> Result<Option<LogEvent>, StoreError> {
        read::event(&mut self.reader().await?, id).await
    }

    async fn inbox_holds(
        &self,
        group: &str,
        events: &[EventId],
    ) -> Result<HashSet<EventId>, StoreError> {
        read::inbox_holds(&mut self.reader().await?, group, events).await
    }

    async fn dead_letter_unsettled(&self, group: &str, event: EventId) -> Result<bool, StoreError> {
        read::dead_letter_unsettled(&mut self.reader().await?, group, event).await
    }

    async fn dead_letters(
        &self,
        tenant: TenantId,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        read::dead_letters(&mut self.reader().await?, tenant, status, limit).await
    }

    async fn dead_letter(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<DeadLetterRecord>, StoreError> {
        read::dead_letter(&mut self.reader().await?, tenant, id).await
    }

    async fn set_dead_letter_status(
        &self,
        tenant: TenantId,
        id: Uuid,
        from: &str,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer().await?;
        let moved = read::set_dead_letter_status(&mut tx, tenant, id, from, to, now).await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn seal_audit(&self, limit: u32) -> Result<u64, StoreError> {
        Backend::seal_audit(self, limit).await
    }

    async fn audit_chain(&self, tenant: TenantId) -> Result<AuditChain, StoreError> {
        read::audit_chain(&mut self.snapshot().await?, tenant).await
    }

    async fn audit_of(
        &self,
        tenant: TenantId,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<Vec<AuditRow>, StoreError> {
        read::audit_of(&mut self.reader().await?, tenant, entity_type, entity_id).await
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        read::tenants(&mut self.reader().await?).await
    }

    async fn journal(&self, tenant: TenantId) -> Result<Vec<StoredEntry>, StoreError> {
        read::journal(&mut self.snapshot().await?, tenant).await
    }

    async fn account_postings(
        &self,
        tenant: TenantId,
        account: &str,
    ) -> Result<Vec<AccountPosting>, StoreError> {
        read::account_postings(&mut self.reader().await?, tenant, account).await
    }

    async fn settled_orders(&self, tenant: TenantId) -> Result<Vec<(OrderId, String)>, StoreError> {
        read::settled_orders(&mut self.reader().await?, tenant).await
    }

    async fn stock_reconciliation(&self) -> Result<Vec<StockReconciliation>, StoreError> {
        read::stock_reconciliation(&mut self.snapshot().await?).await
    }

    async fn order_status_counts(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        read::order_status_counts(&mut self.reader().await?, tenant).await
    }

    async fn dead_letters_to_retry(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        read::dead_letters_to_retry(&mut self.reader().await?, group, limit).await
    }
}
