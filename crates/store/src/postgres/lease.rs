//! Leases as session advisory locks, each on a connection detached from the pool.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Row};

use super::LOCK_CLASS_LEASE;
use super::store::UPSERT_OFFSET;
use crate::lease::Lease;
use crate::log::key_lock_id;
use crate::{StoreError, corrupt};

#[derive(Debug)]
pub(crate) struct PgLease {
    connection: PgConnection,
    group: String,
    partition: u32,
    lock_id: i32,
}

fn lock_id(group: &str, partition: u32) -> i32 {
    key_lock_id(&format!("{group}/{partition}"))
}

/// Takes the lease of `group` on `partition` when no other session holds it.
pub(crate) async fn try_lease(
    pool: &PgPool,
    group: &str,
    partition: u32,
) -> Result<Option<PgLease>, StoreError> {
    let mut connection = pool.acquire().await?;
    let lock_id = lock_id(group, partition);
    let taken: bool = sqlx::query("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LOCK_CLASS_LEASE)
        .bind(lock_id)
        .fetch_one(&mut *connection)
        .await?
        .try_get(0)?;
    if !taken {
        return Ok(None);
    }
    // The lock lives as long as this session: the connection leaves the pool with it, so that
    // nothing else runs on it and it is never handed back holding the lock.
    Ok(Some(PgLease {
        connection: connection.detach(),
        group: group.to_owned(),
        partition,
        lock_id,
    }))
}

#[async_trait]
impl Lease for PgLease {
    fn group(&self) -> &str {
        &self.group
    }

    fn partition(&self) -> u32 {
        self.partition
    }

    async fn confirm(&mut self) -> Result<(), StoreError> {
        self.connection.ping().await?;
        Ok(())
    }

    async fn commit_offset(&mut self, position: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(UPSERT_OFFSET)
            .bind(&self.group)
            .bind(i32::try_from(self.partition).map_err(|e| corrupt("partition", e))?)
            .bind(position)
            .bind(now)
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    async fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(LOCK_CLASS_LEASE)
            .bind(self.lock_id)
            .execute(&mut self.connection)
            .await?;
        self.connection.close().await?;
        Ok(())
    }
}
