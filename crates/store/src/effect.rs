//! A consumer's effect on an order, or a partner webhook's, whose rows were all made before
//! the store's writer was taken: what the writer does for it is a fixed list of statements,
//! which lets the embedded engine run many such effects back to back in one hold of its single
//! writer (see `sqlite::group`), instead of passing the writer from task to task between them.

use chrono::{DateTime, Utc};
use tally_domain::checkout::Saga;
use tally_domain::ids::{EventId, OrderId, TenantId};

use crate::exec::{Exec, Finish};
use crate::records::{
    DeadLetterRecord, MovementKind, NewAuditRecord, NewEvent, NewJournalEntry, StockMovement,
};
use crate::{StoreError, Tx, write};

/// A change to one order, with everything it writes beside the order: its ledger entries,
/// audit record, events and stock movements. It holds only if the order is still in
/// `expected_status` with `expected_saga`, as when the change was made.
#[derive(Debug, Clone)]
pub struct OrderChange {
    pub tenant: TenantId,
    pub order: OrderId,
    pub expected_status: String,
    pub expected_saga: Saga,
    pub status: String,
    pub saga: Saga,
    pub at: DateTime<Utc>,
    pub journal: Vec<NewJournalEntry>,
    pub audit: NewAuditRecord,
    pub events: Vec<NewEvent>,
    /// Moves of stock for the order (from [`crate::stock::movements`]), written last, so that a
    /// busy SKU's row stays locked for its own update and the commit only. A move of the order's
    /// own hold (releasing, shipping, returning) that its row refuses means the store is
    /// inconsistent; a reservation, planned on stock read without a lock, that its row refuses
    /// means other orders took the units since: [`EffectOutcome::StockTaken`].
    pub stock: Vec<StockMovement>,
}

impl OrderChange {
    /// Writes the change in `tx`, whose caller has checked the order (or locked it and made
    /// the change from what it found).
    pub async fn write(&self, tx: &mut dyn Tx) -> Result<(), StoreError> {
        match tx.write_change(self).await? {
            None => Ok(()),
            Some(movement) => Err(crate::stock::refused(&movement)),
        }
    }
}

/// Writes `change` up to a stock move its row refuses, which it returns (the caller must then
/// roll back): the order, its ledger entries, its audit record, its events, and its stock
/// moves last, so that a busy SKU's row stays locked for its own update and the commit only.
pub(crate) async fn write_change<X: Exec>(
    x: &mut X,
    change: &OrderChange,
) -> Result<Option<StockMovement>, StoreError> {
    write::update_order(
        x,
        change.tenant,
        change.order,
        &change.status,
        &change.saga,
        change.at,
    )
    .await?;
    for entry in &change.journal {
        write::insert_journal_entry(x, change.tenant, entry).await?;
    }
    write::insert_audit(x, &change.audit).await?;
    write::append_events(x, &change.events).await?;
    for movement in &change.stock {
        let delta = movement.kind.delta(movement.quantity);
        if !write::shift_stock(x, change.tenant, delta, movement).await? {
            return Ok(Some(movement.clone()));
        }
    }
    Ok(None)
}

/// What a refused stock move of an effect means: other orders took the units of a
/// reservation (`Ok`), or the store is inconsistent (`Err`).
pub(crate) fn refusal(movement: &StockMovement) -> Result<EffectOutcome, StoreError> {
    match movement.kind {
        MovementKind::Reserved => Ok(EffectOutcome::StockTaken),
        _ => Err(crate::stock::refused(movement)),
    }
}

/// What makes an effect happen once: a row that only its first delivery can insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// A consumer group's inbox row for the event it applies.
    Inbox { group: &'static str, event: EventId },
    /// A partner's webhook delivery, by the id the partner gave it.
    Webhook {
        source: &'static str,
        delivery: String,
    },
}

impl Once {
    /// Inserts the row; `false` when it was there already.
    async fn insert<X: Exec>(&self, x: &mut X, at: DateTime<Utc>) -> Result<bool, StoreError> {
        match self {
            Once::Inbox { group, event } => write::insert_inbox(x, group, *event, at).await,
            Once::Webhook { source, delivery } => {
                write::insert_webhook_delivery(x, source, delivery, at).await
            }
        }
    }
}

/// One effect, ready to store: the row that makes it exactly once, and its change to an order.
#[derive(Debug, Clone)]
pub struct PreparedEffect {
    pub once: Once,
    /// A retried dead letter to mark settled with the effect, or `None` from a partition.
    pub settles: Option<DeadLetterRecord>,
    pub change: OrderChange,
}

/// What became of a prepared effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectOutcome {
    /// Stored and committed.
    Written,
    /// The group had applied the event (or the webhook delivery was applied) before: nothing
    /// of it was stored (but a retried dead letter is marked settled).
    AlreadyApplied,
    /// The order is no longer as the effect expected: nothing was stored, and the effect must
    /// be made again from the order as it is now.
    OrderChanged,
    /// A reservation no longer fits its stock row: other orders took the units since the
    /// reservation was planned. Nothing was stored, and the step must be decided again on the
    /// stock as it is now.
    StockTaken,
}

/// What a retried dead letter becomes once its event's effect is stored or found applied.
pub fn settled(letter: &DeadLetterRecord, now: DateTime<Utc>) -> DeadLetterRecord {
    DeadLetterRecord {
        status: "retried".to_owned(),
        updated_at: now,
        ..letter.clone()
    }
}

/// Writes `effect` in the transaction `x` runs in: the statements every engine runs for an
/// effect (PostgreSQL's batches run the same in one function call, see `postgres::batch`).
/// Returns whether to keep what it wrote, and the outcome.
pub(crate) async fn write_with<X: Exec>(
    x: &mut X,
    effect: &PreparedEffect,
) -> Result<(bool, EffectOutcome), StoreError> {
    let change = &effect.change;
    let outcome = if !effect.once.insert(x, change.at).await? {
        EffectOutcome::AlreadyApplied
    } else if !write::order_still(
        x,
        change.tenant,
        change.order,
        &change.expected_status,
        &change.expected_saga,
    )
    .await?
    {
        return Ok((false, EffectOutcome::OrderChanged));
    } else if let Some(movement) = write_change(x, change).await? {
        return Ok((false, refusal(&movement)?));
    } else {
        EffectOutcome::Written
    };
    if let Some(letter) = &effect.settles {
        write::upsert_dead_letter(x, &settled(letter, change.at)).await?;
        return Ok((true, outcome));
    }
    Ok((outcome == EffectOutcome::Written, outcome))
}

/// Stores `effect` in a transaction of its own, and commits it or rolls it back.
pub(crate) async fn write_alone<X: Exec + Finish>(
    mut x: X,
    effect: &PreparedEffect,
) -> Result<EffectOutcome, StoreError> {
    let (keep, outcome) = write_with(&mut x, effect).await?;
    if keep {
        x.commit().await?;
    } else {
        x.rollback().await?;
    }
    Ok(outcome)
}
