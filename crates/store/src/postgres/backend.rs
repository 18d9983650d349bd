//! What PostgreSQL gives the store (see [`crate::backend`]): pooled connections and
//! transactions, and the mechanisms of many processes sharing one database (the relay's
//! sequencing of the outbox, session-locked leases, effects and order reads gathered into
//! batches, audit sealing under an advisory lock).

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Transaction};
use tally_domain::ids::{EventId, OrderId, TenantId};

use super::PgStore;
use crate::backend::Backend;
use crate::effect::{EffectOutcome, PreparedEffect};
use crate::exec::{Arg, Exec, args};
use crate::records::{OrderRecord, TimelineEntry};
use crate::rows::Fields;
use crate::{Engine, Lease, StoreError, read, write};

impl Backend for PgStore {
    const ENGINE: Engine = Engine::Postgres;

    type Reader<'a> = PoolConnection<Postgres>;

    async fn reader(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    type Snapshot<'a> = Transaction<'static, Postgres>;

    async fn snapshot(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        tx.execute(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            &[],
        )
        .await?;
        Ok(tx)
    }

    type Writer = Transaction<'static, Postgres>;

    async fn writer(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// A statement is its own transaction: one round trip.
    async fn write_alone(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        self.pool.acquire().await?.execute(sql, args).await
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn write_effect(&self, effect: PreparedEffect) -> Result<EffectOutcome, StoreError> {
        match effect.settles {
            // A retried dead letter is rare: its settling goes through the statements of every
            // engine.
            Some(_) => crate::effect::write_alone(self.pool.begin().await?, &effect).await,
            None => self.effects.write(effect.once, effect.change).await,
        }
    }

    /// One statement, which is its own transaction, instead of a round trip per row; rows in the
    /// order effect batches take them (see `batch`), so that the two cannot deadlock. (Its
    /// signature repeats SQLite's: the method of [`Backend`] both implement.)
    async fn record_inbox(
        &self,
        group: &str,
        events: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write_alone(
            "INSERT INTO inbox (group_name, event_id, applied_at) \
             SELECT $1, event_id, $3 FROM unnest($2::uuid[]) AS e(event_id) ORDER BY event_id \
             ON CONFLICT DO NOTHING",
            &[
                group.into(),
                Arg::Uuids(events.iter().map(|e| e.as_uuid()).collect()),
                now.into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn order(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        self.reads.order(tenant, id).await
    }

    /// One statement, so one snapshot: the order and its events as of one moment.
    async fn order_and_timeline(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<(OrderRecord, Vec<TimelineEntry>)>, StoreError> {
        self.reads.order_and_timeline(tenant, id).await
    }

    async fn sequence_outbox(&self, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The head row serializes relays: positions are handed out by one transaction at a
        // time, and each sees every row committed before it took the lock (READ COMMITTED
        // takes a fresh snapshot per statement).
        let head = tx
            .fetch_optional("SELECT position FROM log_head WHERE id = 1 FOR UPDATE", &[])
            .await?
            .ok_or_else(|| StoreError::Corrupt("the log head row is missing".into()))?
            .int("position")?;
        let positioned = tx
            .execute(
                "WITH pending AS ( \
                     SELECT seq, $1::bigint + row_number() OVER (ORDER BY seq) AS position \
                     FROM (SELECT seq FROM events WHERE position IS NULL ORDER BY seq LIMIT $2) p \
                 ) \
                 UPDATE events e SET position = pending.position FROM pending \
                 WHERE e.seq = pending.seq",
                &args![head, limit],
            )
            .await?;
        if positioned > 0 {
            let count =
                i64::try_from(positioned).map_err(|e| crate::corrupt("positioned rows", e))?;
            tx.execute(
                "UPDATE log_head SET position = position + $1 WHERE id = 1",
                &args![count],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(positioned)
    }

    async fn join(&self, group: &str) -> Result<Box<dyn Lease>, StoreError> {
        Ok(Box::new(super::lease::join(&self.pool, group).await?))
    }

    async fn members(&self, group: &str) -> Result<u32, StoreError> {
        super::lease::members(&self.pool, group).await
    }

    async fn try_lease(
        &self,
        group: &str,
        partition: u32,
    ) -> Result<Option<Box<dyn Lease>>, StoreError> {
        Ok(super::lease::try_lease(&self.pool, group, partition)
            .await?
            .map(|lease| Box::new(lease) as Box<dyn Lease>))
    }

    /// One sealer at a time, under an advisory lock: chains are extended strictly one after
    /// another, and every record of a batch is sealed in one statement.
    async fn seal_audit(&self, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, 0)",
            &[Arg::Int4(Some(super::LOCK_CLASS_AUDIT_SEALER))],
        )
        .await?;
        let (unsealed, heads) = read::audit_drafts(&mut tx, limit).await?;
        if unsealed.is_empty() {
            return Ok(0);
        }
        let (sealed, heads) = crate::audit::seal(unsealed, heads)?;
        tx.execute(
            "UPDATE audit_records a SET sequence = s.sequence, prev_hash = s.prev_hash, \
             hash = s.hash FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]) \
             AS s(seq, sequence, prev_hash, hash) WHERE a.seq = s.seq",
            &[
                Arg::Ints(sealed.iter().map(|(seq, _)| *seq).collect()),
                Arg::Ints(sealed.iter().map(|(_, s)| s.sequence).collect()),
                Arg::ByteLists(sealed.iter().map(|(_, s)| s.prev_hash.to_vec()).collect()),
                Arg::ByteLists(sealed.iter().map(|(_, s)| s.hash.to_vec()).collect()),
            ],
        )
        .await?;
        for (tenant, head) in &heads {
            write::upsert_audit_head(&mut tx, *tenant, head).await?;
        }
        tx.commit().await?;
        Ok(sealed.len() as u64)
    }
}
