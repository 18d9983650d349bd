//! What the embedded engine gives the store (see [`crate::backend`]): readers, the writer's
//! members, and the mechanisms of a single writer (effects run as queued jobs of the writer,
//! events positioned as inserted, leases held in the process).

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tally_domain::ids::{EventId, OrderId, TenantId};

use super::group::Member;
use super::sql::OnConnection;
use super::{Reader, SqliteStore};
use crate::backend::Backend;
use crate::effect::{EffectOutcome, PreparedEffect};
use crate::exec::{Arg, Exec, Finish, args};
use crate::records::{OrderRecord, TimelineEntry};
use crate::{Engine, Lease, StoreError, read, write};

impl Finish for Member {
    async fn commit(self) -> Result<(), StoreError> {
        Member::commit(self).await
    }

    async fn rollback(self) -> Result<(), StoreError> {
        Member::rollback(self).await
    }
}

impl Backend for SqliteStore {
    const ENGINE: Engine = Engine::Sqlite;

    type Reader<'a> = Reader<'a>;

    async fn reader(&self) -> Result<Reader<'_>, StoreError> {
        self.readers.get().await
    }

    /// A reader is a snapshot already.
    type Snapshot<'a> = Reader<'a>;

    async fn snapshot(&self) -> Result<Reader<'_>, StoreError> {
        self.readers.get().await
    }

    type Writer = Member;

    async fn writer(&self) -> Result<Member, StoreError> {
        self.writer.begin().await
    }

    async fn write_alone(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let mut member = self.writer.begin().await?;
        let changed = member.execute(sql, args).await?;
        member.commit().await?;
        Ok(changed)
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    /// As one queued job of the writer: the effect's statements run back to back, without a
    /// task switch between them (see `group`).
    async fn write_effect(&self, effect: PreparedEffect) -> Result<EffectOutcome, StoreError> {
        self.writer
            .answer(move |connection| {
                // Statements on SQLite finish before they return, so the write is ready at its
                // first poll.
                crate::effect::write_with(&mut OnConnection(connection), &effect)
                    .now_or_never()
                    .unwrap_or_else(|| {
                        Err(StoreError::Corrupt(
                            "an effect's statements waited on the writer".into(),
                        ))
                    })
            })
            .await
    }

    async fn record_inbox(
        &self,
        group: &str,
        events: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut member = self.writer.begin().await?;
        for event in events {
            write::insert_inbox(&mut member, group, *event, now).await?;
        }
        member.commit().await
    }

    async fn order(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        read::order(&mut self.readers.get().await?, tenant, id).await
    }

    /// On one reader, so one snapshot for the order and its timeline.
    async fn order_and_timeline(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<(OrderRecord, Vec<TimelineEntry>)>, StoreError> {
        read::order_and_timeline(&mut self.readers.get().await?, tenant, id).await
    }

    /// Positions are given on insert: see the module documentation.
    async fn sequence_outbox(&self, _limit: u32) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn join(&self, group: &str) -> Result<Box<dyn Lease>, StoreError> {
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
    ) -> Result<Option<Box<dyn Lease>>, StoreError> {
        Ok(
            super::lease::try_lease(&self.writer, &self.leases, group, partition)
                .map(|lease| Box::new(lease) as Box<dyn Lease>),
        )
    }

    /// The chain is computed from committed rows on a reader, away from the writer: parsing,
    /// canonicalizing and hashing a batch took the writer for milliseconds. The writer then
    /// only stores the result, after checking that no other sealer moved a head meanwhile.
    async fn seal_audit(&self, limit: u32) -> Result<u64, StoreError> {
        let (unsealed, heads) = read::audit_drafts(&mut self.readers.get().await?, limit).await?;
        if unsealed.is_empty() {
            return Ok(0);
        }
        let before = heads.clone();
        let (sealed, heads) = crate::audit::seal(unsealed, heads)?;
        let mut member = self.writer.begin().await?;
        for (tenant, head) in &heads {
            let current = read::audit_head(&mut member, *tenant).await?;
            if current.map(|h| h.sequence) != before.get(tenant).map(|h| h.sequence) {
                // Another sealer got there first; the next pass starts from its heads.
                member.rollback().await?;
                return Ok(0);
            }
            write::upsert_audit_head(&mut member, *tenant, head).await?;
        }
        for (seq, seal) in &sealed {
            let changed = member
                .execute(
                    "UPDATE audit_records SET sequence = $1, prev_hash = $2, hash = $3 \
                     WHERE seq = $4 AND sequence IS NULL",
                    &args![seal.sequence, &seal.prev_hash[..], &seal.hash[..], *seq],
                )
                .await?;
            if changed != 1 {
                // Sealed by another sealer since it was read; the next pass starts afresh.
                member.rollback().await?;
                return Ok(0);
            }
        }
        member.commit().await?;
        Ok(sealed.len() as u64)
    }
}
