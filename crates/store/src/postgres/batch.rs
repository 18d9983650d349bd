//! Group commit of prepared effects on PostgreSQL: the effects that consumers hand the store at
//! about the same moment are stored by one call of the `write_effects` function (migration
//! `0004_effect_batches.sql`), in one transaction.
//!
//! Stored one by one, every effect costs a round trip and a commit of its own, and on two cores
//! those, not the statements, bound PostgreSQL: a settled order is about seven effects, and each
//! commit is a wait for the disk and a context switch for the client and the server alike. So an
//! effect joins a queue; a writer task takes everything queued (up to [`BATCH_COUNT_MAX`])
//! whenever one of its [`BATCHES_IN_FLIGHT_MAX`] calls is free, and answers every effect of the
//! batch with what it alone would have come to. The more effects are under way, the more each
//! call carries, as with SQLite's group commit (`sqlite::group`).
//!
//! What a caller relies on is unchanged: an effect is stored exactly when its answer says
//! `Written`, and the answer comes after the commit. A batch that fails as a whole (an entry
//! that does not balance, an id used twice, a lost connection) is stored again effect by effect
//! through `write_effect`, so that each effect gets its own answer and one bad effect cannot
//! take the others down with it.

use std::cmp::Ordering;
use std::sync::Arc;

use sqlx::types::Json;
use sqlx::{PgPool, Row};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::LOCK_CLASS_PARTITION_KEY;
use super::columns::{EventColumns, partition_lock_ids};
use crate::effect::{EffectOutcome, Once, OrderChange};
use crate::{StoreError, corrupt};

/// Effects stored by one call at most: bounds the call's arrays and how many effects one
/// failed call sends down the slow path.
pub const BATCH_COUNT_MAX: usize = 128;
/// Calls under way at once.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Calls of `write_effect` under way at once when effects are stored one by one (after a batch
/// failed as a whole): a few, well below the pool's connections.
const ONE_BY_ONE_CALLS_MAX: usize = 4;
/// Effects waiting for a call at most; a consumer that finds the queue full waits. About what
/// the dispatchers of one process have under way at once (`tally-dispatch`'s lane limits).
const QUEUE_COUNT_MAX: usize = 1024;

const CALL: &str = "SELECT write_effects($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
     $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, \
     $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, \
     $50, $51, $52, $53, $54, $55, $56)";

/// An effect waiting for the writer, with where its answer goes.
struct Queued {
    once: Once,
    change: OrderChange,
    answer: oneshot::Sender<Result<EffectOutcome, StoreError>>,
}

/// The queue of effects to store, shared by every clone of the store.
#[derive(Debug, Clone)]
pub(super) struct EffectQueue {
    sender: mpsc::Sender<Queued>,
}

impl EffectQueue {
    /// Starts the writer task on the current runtime; it ends when the last clone of the queue
    /// is dropped.
    pub(super) fn start(pool: PgPool) -> Self {
        // Two calls let the client build one batch while the server runs the other; batches
        // lock in one order (see the migration), so they cannot deadlock each other.
        let sender = super::gather::start(
            QUEUE_COUNT_MAX,
            BATCH_COUNT_MAX,
            BATCHES_IN_FLIGHT_MAX,
            move |batch| {
                let pool = pool.clone();
                async move { write_batch(&pool, batch).await }
            },
        );
        Self { sender }
    }

    /// Stores `change`, made once by `once`, with whatever else is queued, and answers once the
    /// batch committed (or what kept this effect from being stored).
    pub(super) async fn write(
        &self,
        once: Once,
        change: OrderChange,
    ) -> Result<EffectOutcome, StoreError> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            once,
            change,
            answer,
        };
        self.sender
            .send(queued)
            .await
            .map_err(|_| StoreError::CommitFailed("the effect writer has stopped".to_owned()))?;
        answered.await.map_err(|_| {
            StoreError::CommitFailed("the effect writer stopped before answering".to_owned())
        })?
    }
}

/// Stores one batch and answers each of its effects.
async fn write_batch(pool: &PgPool, mut batch: Vec<Queued>) {
    metrics::histogram!("tally_effect_batch_size").record(batch.len() as f64);
    // The rows that make effects once are the first locks a batch takes: in one order for all.
    batch.sort_by(|a, b| once_order(&a.once, &b.once));
    let outcomes = match call(pool, &batch).await {
        Ok(outcomes) if outcomes.len() == batch.len() => outcomes,
        Ok(outcomes) => {
            // Committed, but which effect came to what is unknown: the store is not what this
            // code expects, and every effect of the batch says so.
            let error = format!(
                "write_effects answered {} outcomes for {} effects",
                outcomes.len(),
                batch.len()
            );
            for queued in batch {
                let _ = queued.answer.send(Err(StoreError::Corrupt(error.clone())));
            }
            return;
        }
        Err(error) if error.is_unavailable() => {
            // Storing them one by one would only wait for the pool again, 128 times over.
            for queued in batch {
                let failed = StoreError::CommitFailed(format!("the effect batch failed: {error}"));
                let _ = queued.answer.send(Err(failed));
            }
            return;
        }
        Err(error) => {
            tracing::debug!(%error, effects = batch.len(), "an effect batch failed; storing its effects one by one");
            one_by_one(pool, batch).await;
            return;
        }
    };
    // Copies of one effect are neighbours in the batch, the first of them the one whose row
    // makes them once. A later copy found that row and came to 'applied'; if the first was not
    // written after all (its order changed, its stock was taken), the row was taken back, and
    // the copy, which alone would have waited for the first and then been decided itself, is
    // stored on its own after the batch.
    let mut again = Vec::new();
    let mut first: Option<(Once, bool)> = None;
    for (queued, outcome) in batch.into_iter().zip(outcomes) {
        match &first {
            Some((once, kept)) if *once == queued.once => {
                if !kept {
                    again.push(queued);
                    continue;
                }
            }
            _ => {
                let kept = matches!(outcome.as_str(), "written" | "applied");
                first = Some((queued.once.clone(), kept));
            }
        }
        let answer = outcome_of(&outcome, &queued.change);
        // A caller that stopped waiting needs no answer: its effect is stored or not either way.
        let _ = queued.answer.send(answer);
    }
    one_by_one(pool, again).await;
}

/// Stores each effect in a call of its own, a few at a time, so that a failed batch does not
/// take the pool from commands and the relay.
async fn one_by_one(pool: &PgPool, effects: Vec<Queued>) {
    let calls = Arc::new(Semaphore::new(ONE_BY_ONE_CALLS_MAX));
    let mut tasks = tokio::task::JoinSet::new();
    for queued in effects {
        let (pool, calls) = (pool.clone(), Arc::clone(&calls));
        tasks.spawn(async move {
            // Never closed, so acquiring cannot fail; were it to, the call runs unbounded.
            let _call = calls.acquire_owned().await.ok();
            let answer = super::effect::write(&pool, &queued.once, &queued.change).await;
            let _ = queued.answer.send(answer);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Inbox rows before webhook deliveries, each by key.
fn once_order(a: &Once, b: &Once) -> Ordering {
    match (a, b) {
        (Once::Inbox { group, event }, Once::Inbox { group: g, event: e }) => {
            (group, event.as_uuid()).cmp(&(g, e.as_uuid()))
        }
        (Once::Inbox { .. }, Once::Webhook { .. }) => Ordering::Less,
        (Once::Webhook { .. }, Once::Inbox { .. }) => Ordering::Greater,
        (
            Once::Webhook { source, delivery },
            Once::Webhook {
                source: s,
                delivery: d,
            },
        ) => (source, delivery).cmp(&(s, d)),
    }
}

/// What one effect's outcome in the batch means for it (see the migration).
fn outcome_of(outcome: &str, change: &OrderChange) -> Result<EffectOutcome, StoreError> {
    match outcome {
        "written" => Ok(EffectOutcome::Written),
        "applied" => Ok(EffectOutcome::AlreadyApplied),
        "changed" => Ok(EffectOutcome::OrderChanged),
        other => {
            let movement = other
                .strip_prefix("taken:")
                .or_else(|| other.strip_prefix("refused:"))
                .and_then(|index| index.parse::<usize>().ok())
                .and_then(|index| change.stock.get(index.checked_sub(1)?))
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("write_effects answered '{other}' for an effect"))
                })?;
            crate::effect::refusal(movement)
        }
    }
}

/// One call for the whole batch; its outcomes in the batch's order.
async fn call(pool: &PgPool, batch: &[Queued]) -> Result<Vec<String>, StoreError> {
    let columns = Columns::of(batch)?;
    let changes = || batch.iter().map(|q| &q.change);
    let query = sqlx::query(CALL)
        .bind(columns.once_groups)
        .bind(columns.once_events)
        .bind(columns.once_sources)
        .bind(columns.once_deliveries)
        .bind(changes().map(|c| c.tenant.as_uuid()).collect::<Vec<_>>())
        .bind(changes().map(|c| c.order.as_uuid()).collect::<Vec<_>>())
        .bind(
            changes()
                .map(|c| c.expected_status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            changes()
                .map(|c| Json(&c.expected_saga))
                .collect::<Vec<_>>(),
        )
        .bind(changes().map(|c| c.status.as_str()).collect::<Vec<_>>())
        .bind(changes().map(|c| Json(&c.saga)).collect::<Vec<_>>())
        .bind(changes().map(|c| c.at).collect::<Vec<_>>())
        .bind(
            changes()
                .map(|c| c.audit.tenant_id.as_uuid())
                .collect::<Vec<_>>(),
        )
        .bind(changes().map(|c| c.audit.id).collect::<Vec<_>>())
        .bind(changes().map(|c| c.audit.at).collect::<Vec<_>>())
        .bind(changes().map(|c| c.audit.body.as_str()).collect::<Vec<_>>())
        .bind(
            changes()
                .map(|c| c.audit.entity_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            changes()
                .map(|c| c.audit.entity_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(columns.entry_effects)
        .bind(columns.entry_ids)
        .bind(columns.entry_kinds)
        .bind(columns.entry_pending)
        .bind(columns.entry_bodies)
        .bind(columns.entry_orders)
        .bind(columns.entry_times)
        .bind(columns.posting_effects)
        .bind(columns.posting_entries)
        .bind(columns.posting_lines)
        .bind(columns.posting_accounts)
        .bind(columns.posting_currencies)
        .bind(columns.posting_amounts)
        .bind(LOCK_CLASS_PARTITION_KEY)
        .bind(columns.lock_ids)
        .bind(columns.event_effects);
    let query = columns
        .events
        .bind(query)
        .bind(columns.move_from)
        .bind(columns.move_count)
        .bind(columns.move_effects)
        .bind(columns.move_skus)
        .bind(columns.move_locations)
        .bind(columns.move_kinds)
        .bind(columns.move_quantities)
        .bind(columns.move_orders)
        .bind(columns.move_times)
        .bind(columns.move_on_hand)
        .bind(columns.move_reserved);
    let row = query.fetch_one(pool).await?;
    Ok(row.try_get::<Vec<String>, _>(0)?)
}

/// The batch's rows that are not one per effect, each with the index (from 1) of its effect.
#[derive(Default)]
struct Columns {
    once_groups: Vec<Option<&'static str>>,
    once_events: Vec<Option<Uuid>>,
    once_sources: Vec<Option<&'static str>>,
    once_deliveries: Vec<Option<String>>,
    entry_effects: Vec<i32>,
    entry_ids: Vec<String>,
    entry_kinds: Vec<String>,
    entry_pending: Vec<Option<String>>,
    entry_bodies: Vec<String>,
    entry_orders: Vec<Option<Uuid>>,
    entry_times: Vec<chrono::DateTime<chrono::Utc>>,
    posting_effects: Vec<i32>,
    posting_entries: Vec<String>,
    posting_lines: Vec<i32>,
    posting_accounts: Vec<String>,
    posting_currencies: Vec<String>,
    posting_amounts: Vec<i64>,
    lock_ids: Vec<i32>,
    event_effects: Vec<i32>,
    events: EventColumns,
    move_from: Vec<i32>,
    move_count: Vec<i32>,
    move_effects: Vec<i32>,
    move_skus: Vec<String>,
    move_locations: Vec<String>,
    move_kinds: Vec<&'static str>,
    move_quantities: Vec<i64>,
    move_orders: Vec<Option<Uuid>>,
    move_times: Vec<chrono::DateTime<chrono::Utc>>,
    move_on_hand: Vec<i64>,
    move_reserved: Vec<i64>,
}

impl Columns {
    fn of(batch: &[Queued]) -> Result<Self, StoreError> {
        let index = |i: usize| i32::try_from(i + 1).map_err(|e| corrupt("effect index", e));
        let mut columns = Columns {
            lock_ids: partition_lock_ids(batch.iter().flat_map(|q| &q.change.events)),
            events: EventColumns::of(batch.iter().flat_map(|q| &q.change.events))?,
            ..Columns::default()
        };
        for (i, queued) in batch.iter().enumerate() {
            let effect = index(i)?;
            columns.push_once(&queued.once);
            let change = &queued.change;
            for entry in &change.journal {
                columns.entry_effects.push(effect);
                columns.entry_ids.push(entry.id.clone());
                columns.entry_kinds.push(entry.kind.clone());
                columns.entry_pending.push(entry.pending_id.clone());
                columns.entry_bodies.push(entry.body.to_string());
                columns
                    .entry_orders
                    .push(entry.order_id.map(|id| id.as_uuid()));
                columns.entry_times.push(entry.created_at);
                for (line, posting) in entry.postings.iter().enumerate() {
                    columns.posting_effects.push(effect);
                    columns.posting_entries.push(entry.id.clone());
                    columns
                        .posting_lines
                        .push(i32::try_from(line).map_err(|e| corrupt("posting line", e))?);
                    columns.posting_accounts.push(posting.account.clone());
                    columns.posting_currencies.push(posting.currency.clone());
                    columns.posting_amounts.push(posting.amount_minor);
                }
            }
            columns
                .event_effects
                .extend(std::iter::repeat_n(effect, change.events.len()));
            columns.push_moves(effect, change)?;
        }
        Ok(columns)
    }

    fn push_once(&mut self, once: &Once) {
        match once {
            Once::Inbox { group, event } => {
                self.once_groups.push(Some(group));
                self.once_events.push(Some(event.as_uuid()));
                self.once_sources.push(None);
                self.once_deliveries.push(None);
            }
            Once::Webhook { source, delivery } => {
                self.once_groups.push(None);
                self.once_events.push(None);
                self.once_sources.push(Some(source));
                self.once_deliveries.push(Some(delivery.clone()));
            }
        }
    }

    fn push_moves(&mut self, effect: i32, change: &OrderChange) -> Result<(), StoreError> {
        let from = self.move_effects.len() + 1;
        self.move_from
            .push(i32::try_from(from).map_err(|e| corrupt("move index", e))?);
        self.move_count
            .push(i32::try_from(change.stock.len()).map_err(|e| corrupt("move count", e))?);
        for movement in &change.stock {
            let delta = movement.kind.delta(movement.quantity);
            self.move_effects.push(effect);
            self.move_skus.push(movement.sku.clone());
            self.move_locations.push(movement.location.clone());
            self.move_kinds.push(movement.kind.as_str());
            self.move_quantities.push(movement.quantity);
            self.move_orders
                .push(movement.order_id.map(|id| id.as_uuid()));
            self.move_times.push(movement.at);
            self.move_on_hand.push(delta.on_hand);
            self.move_reserved.push(delta.reserved);
        }
        Ok(())
    }
}
