//! Leases within the one process that owns the database file.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::group::Writer;
use crate::StoreError;
use crate::exec::{Arg, Exec};
use crate::lease::Lease;

/// The leases held in this process, by group and partition.
pub(crate) type Held = Arc<Mutex<HashSet<(String, u32)>>>;

fn lock(held: &Held) -> MutexGuard<'_, HashSet<(String, u32)>> {
    // The set is consistent after any panic: insert and remove are single operations.
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
pub(crate) struct SqliteLease {
    writer: Writer,
    held: Held,
    group: String,
    partition: u32,
}

pub(crate) fn try_lease(
    writer: &Writer,
    held: &Held,
    group: &str,
    partition: u32,
) -> Option<SqliteLease> {
    lock(held)
        .insert((group.to_owned(), partition))
        .then(|| SqliteLease {
            writer: writer.clone(),
            held: Arc::clone(held),
            group: group.to_owned(),
            partition,
        })
}

/// The name under which members of `group` are held.
fn members_of(group: &str) -> String {
    format!("members:{group}")
}

/// Joins `group` under the first free member number.
pub(crate) fn join(writer: &Writer, held: &Held, group: &str) -> SqliteLease {
    let name = members_of(group);
    let mut member = 0;
    loop {
        if let Some(lease) = try_lease(writer, held, &name, member) {
            return lease;
        }
        member += 1;
    }
}

pub(crate) fn members(held: &Held, group: &str) -> u32 {
    let name = members_of(group);
    let count = lock(held).iter().filter(|(g, _)| *g == name).count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

impl Drop for SqliteLease {
    fn drop(&mut self) {
        lock(&self.held).remove(&(self.group.clone(), self.partition));
    }
}

// The accessors below repeat PostgreSQL's lease in shape: each engine's lease holds its group
// and partition as fields; what differs is confirming, committing and releasing.
#[async_trait]
impl Lease for SqliteLease {
    fn group(&self) -> &str {
        &self.group
    }

    fn partition(&self) -> u32 {
        self.partition
    }

    async fn confirm(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn commit_offset(&mut self, position: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut member = self.writer.begin().await?;
        member
            .execute(
                crate::read::UPSERT_OFFSET,
                &[
                    self.group.as_str().into(),
                    Arg::int4(self.partition)?,
                    position.into(),
                    now.into(),
                ],
            )
            .await?;
        member.commit().await
    }

    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}
