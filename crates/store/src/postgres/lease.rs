//! Leases as session advisory locks, each on a connection detached from the pool.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Row};

use super::LOCK_CLASS_LEASE;
use crate::exec::Exec;
use crate::lease::Lease;
use crate::log::key_lock_id;
use crate::{StoreError, corrupt};

#[derive(Debug)]
pub(crate) struct PgLease {
    connection: PgConnection,
    group: String,
    partition: u32,
    lock_class: i32,
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
    take(
        pool,
        group,
        partition,
        LOCK_CLASS_LEASE,
        lock_id(group, partition),
    )
    .await
}

/// The lock class of the memberships of `group`: one class per group, so that members can be
/// counted in `pg_locks`.
fn member_class(group: &str) -> i32 {
    key_lock_id(&format!("members:{group}"))
}

/// Joins `group` under a random member number.
pub(crate) async fn join(pool: &PgPool, group: &str) -> Result<PgLease, StoreError> {
    loop {
        let member: u32 = rand::random();
        let lock_id = i32::from_ne_bytes(member.to_ne_bytes());
        if let Some(lease) = take(pool, group, member, member_class(group), lock_id).await? {
            return Ok(lease);
        }
    }
}

/// Live members of `group`.
pub(crate) async fn members(pool: &PgPool, group: &str) -> Result<u32, StoreError> {
    // pg_locks shows the first key of a two-key advisory lock as an oid: its bits, unsigned.
    // Advisory locks belong to one database, but pg_locks lists every database's.
    let class = i64::from(u32::from_ne_bytes(member_class(group).to_ne_bytes()));
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
         AND granted AND classid::int8 = $1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(class)
    .fetch_one(pool)
    .await?;
    u32::try_from(count).map_err(|e| corrupt("member count", e))
}

async fn take(
    pool: &PgPool,
    group: &str,
    partition: u32,
    lock_class: i32,
    lock_id: i32,
) -> Result<Option<PgLease>, StoreError> {
    let mut connection = pool.acquire().await?;
    let taken: bool = sqlx::query("SELECT pg_try_advisory_lock($1, $2)")
        .bind(lock_class)
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
        lock_class,
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
        self.connection
            .execute(
                crate::read::UPSERT_OFFSET,
                &[
                    self.group.as_str().into(),
                    crate::exec::Arg::int4(self.partition)?,
                    position.into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(self.lock_class)
            .bind(self.lock_id)
            .execute(&mut self.connection)
            .await?;
        self.connection.close().await?;
        Ok(())
    }
}
