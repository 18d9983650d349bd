//! Reads of one order by id, gathered: the reads that callers make at about the same moment
//! (each saga step, notifications, carrier webhooks, `GET /v1/orders/{id}`) go to PostgreSQL as
//! one statement.
//!
//! An order is read about ten times on its way to settled, each read a statement of a few
//! microseconds of work behind a round trip and a wake-up of a server process: on two cores it
//! is those, not the reads, that cost. Gathered (see [`super::gather`]), the reads under way
//! share a round trip, and a read made alone still goes at once.
//!
//! A read sees what had committed when its statement started, which is after the read was
//! asked for: what a statement of its own would have seen, or later.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tally_domain::ids::{EventId, OrderId, TenantId};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::StoreError;
use crate::records::{OrderRecord, TimelineEntry};

/// Reads carried by one statement at most.
const READS_PER_CALL_MAX: usize = 64;
/// Statements under way at once, of each kind of read.
const CALLS_MAX: usize = 2;
/// Reads waiting for a statement at most; a caller that finds the queue full waits.
const QUEUE_COUNT_MAX: usize = 1024;

/// Many orders by (tenant, id): every column of each, its tenant and id among them to find the
/// read it answers.
const SELECT_ORDERS: &str = "SELECT o.* FROM unnest($1::uuid[], $2::uuid[]) AS w(tenant_id, id) \
     JOIN orders o ON o.tenant_id = w.tenant_id AND o.id = w.id";

/// Many orders with their timelines: the ids, types and times of the events whose subject is
/// the order's id, in log order (NULL when there are none), each order and its events as of the
/// statement's one snapshot.
const SELECT_ORDERS_AND_TIMELINES: &str = "SELECT o.*, t.timeline_ids, t.timeline_types, \
     t.timeline_times FROM unnest($1::uuid[], $2::uuid[]) AS w(tenant_id, id) \
     JOIN orders o ON o.tenant_id = w.tenant_id AND o.id = w.id \
     LEFT JOIN LATERAL (SELECT array_agg(e.id ORDER BY e.seq) AS timeline_ids, \
     array_agg(e.type ORDER BY e.seq) AS timeline_types, \
     array_agg(e.time ORDER BY e.seq) AS timeline_times FROM events e \
     WHERE e.tenant_id = o.tenant_id AND e.subject = o.id::text) t ON true";

/// One read waiting for its statement, and where its answer goes.
struct Wanted<T> {
    tenant: TenantId,
    id: OrderId,
    answer: oneshot::Sender<Result<Option<T>, StoreError>>,
}

/// An order and its timeline, as `Store::order_and_timeline` answers.
pub(super) type OrderAndTimeline = (OrderRecord, Vec<TimelineEntry>);

/// The queues of order reads, shared by every clone of the store.
#[derive(Debug, Clone)]
pub(super) struct OrderReads {
    orders: mpsc::Sender<Wanted<OrderRecord>>,
    with_timelines: mpsc::Sender<Wanted<OrderAndTimeline>>,
}

/// What a kind of read asks and how it reads its answers.
struct Kind<T> {
    sql: &'static str,
    decode: fn(&PgRow) -> Result<T, StoreError>,
}

// Not derived: a derive would ask `T` to be `Copy` too.
impl<T> Clone for Kind<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Kind<T> {}

const ORDERS: Kind<OrderRecord> = Kind {
    sql: SELECT_ORDERS,
    decode: crate::rows::order,
};

const ORDERS_AND_TIMELINES: Kind<OrderAndTimeline> = Kind {
    sql: SELECT_ORDERS_AND_TIMELINES,
    decode: order_and_timeline,
};

impl OrderReads {
    /// Starts the tasks that make the statements, on the current runtime; they end when the
    /// last clone is dropped.
    pub(super) fn start(pool: &PgPool) -> Self {
        Self {
            orders: gathered(pool.clone(), ORDERS),
            with_timelines: gathered(pool.clone(), ORDERS_AND_TIMELINES),
        }
    }

    /// The order, as of a moment after this call.
    pub(super) async fn order(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        ask(&self.orders, tenant, id).await
    }

    /// The order and its timeline, both as of one moment after this call.
    pub(super) async fn order_and_timeline(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<OrderAndTimeline>, StoreError> {
        ask(&self.with_timelines, tenant, id).await
    }
}

fn gathered<T: Send + 'static>(pool: PgPool, kind: Kind<T>) -> mpsc::Sender<Wanted<T>> {
    super::gather::start(
        QUEUE_COUNT_MAX,
        READS_PER_CALL_MAX,
        CALLS_MAX,
        move |batch| {
            let pool = pool.clone();
            async move { read_batch(&pool, kind, batch).await }
        },
    )
}

async fn ask<T>(
    queue: &mpsc::Sender<Wanted<T>>,
    tenant: TenantId,
    id: OrderId,
) -> Result<Option<T>, StoreError> {
    let (answer, answered) = oneshot::channel();
    queue
        .send(Wanted { tenant, id, answer })
        .await
        .map_err(|_| StoreError::CommitFailed("the order reader has stopped".to_owned()))?;
    answered.await.map_err(|_| {
        StoreError::CommitFailed("the order reader stopped before answering".to_owned())
    })?
}

/// Reads a batch in one statement and answers each read. Should the statement fail (the
/// connection, most likely), each read is made again on its own and answered with its own
/// outcome, as it would have been without the batch.
async fn read_batch<T: Send + 'static>(pool: &PgPool, kind: Kind<T>, mut batch: Vec<Wanted<T>>) {
    metrics::histogram!("tally_order_read_batch_size").record(batch.len() as f64);
    if batch.len() == 1
        && let Some(wanted) = batch.pop()
    {
        return read_one(pool, kind, wanted).await;
    }
    let error = match fetch(pool, kind, &batch).await {
        Ok(rows) => return answer(kind, batch, &rows),
        Err(error) => error,
    };
    tracing::debug!(%error, reads = batch.len(), "an order read batch failed; reading each on its own");
    let mut reads = tokio::task::JoinSet::new();
    for wanted in batch {
        let pool = pool.clone();
        reads.spawn(async move { read_one(&pool, kind, wanted).await });
    }
    while reads.join_next().await.is_some() {}
}

async fn read_one<T>(pool: &PgPool, kind: Kind<T>, wanted: Wanted<T>) {
    match fetch(pool, kind, std::slice::from_ref(&wanted)).await {
        Ok(rows) => answer(kind, vec![wanted], &rows),
        // A caller that stopped waiting needs no answer.
        Err(error) => drop(wanted.answer.send(Err(error))),
    }
}

async fn fetch<T>(
    pool: &PgPool,
    kind: Kind<T>,
    batch: &[Wanted<T>],
) -> Result<Vec<PgRow>, StoreError> {
    let query = sqlx::query(kind.sql)
        .bind(batch.iter().map(|w| w.tenant.as_uuid()).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| w.id.as_uuid()).collect::<Vec<_>>());
    Ok(query.fetch_all(pool).await?)
}

/// Answers each read with its order's row, or none if no row came for it.
fn answer<T>(kind: Kind<T>, batch: Vec<Wanted<T>>, rows: &[PgRow]) {
    let keyed: Result<HashMap<(Uuid, Uuid), &PgRow>, sqlx::Error> = rows
        .iter()
        .map(|row| Ok(((row.try_get("tenant_id")?, row.try_get("id")?), row)))
        .collect();
    let keyed = match keyed {
        Ok(keyed) => keyed,
        Err(error) => {
            for wanted in batch {
                let corrupt = StoreError::Corrupt(format!("an order read by id: {error}"));
                let _ = wanted.answer.send(Err(corrupt));
            }
            return;
        }
    };
    for wanted in batch {
        let row = keyed.get(&(wanted.tenant.as_uuid(), wanted.id.as_uuid()));
        let _ = wanted
            .answer
            .send(row.map(|row| (kind.decode)(row)).transpose());
    }
}

/// An order and its timeline from a row of `SELECT_ORDERS_AND_TIMELINES`.
fn order_and_timeline(row: &PgRow) -> Result<OrderAndTimeline, StoreError> {
    let ids: Vec<Uuid> = row
        .try_get::<Option<_>, _>("timeline_ids")?
        .unwrap_or_default();
    let types: Vec<String> = row
        .try_get::<Option<_>, _>("timeline_types")?
        .unwrap_or_default();
    let times: Vec<DateTime<Utc>> = row
        .try_get::<Option<_>, _>("timeline_times")?
        .unwrap_or_default();
    let order = crate::rows::order(row)?;
    if ids.len() != types.len() || ids.len() != times.len() {
        return Err(StoreError::Corrupt(format!(
            "order {}'s timeline came as {} ids, {} types and {} times",
            order.id,
            ids.len(),
            types.len(),
            times.len()
        )));
    }
    let timeline = ids
        .into_iter()
        .zip(types)
        .zip(times)
        .map(|((id, event_type), time)| TimelineEntry {
            event_id: EventId::from_uuid(id),
            event_type,
            time,
        })
        .collect();
    Ok((order, timeline))
}
