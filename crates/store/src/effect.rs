//! A consumer's effect on an order, or a partner webhook's, whose rows were all made before
//! the store's writer was taken: what the writer does for it is a fixed list of statements,
//! which lets the embedded engine run many such effects back to back in one hold of its single
//! writer (see `sqlite::group`), instead of passing the writer from task to task between them.

use chrono::{DateTime, Utc};
use tally_domain::checkout::Saga;
use tally_domain::ids::{EventId, OrderId, TenantId};

use crate::records::{
    DeadLetterRecord, MovementKind, NewAuditRecord, NewEvent, NewJournalEntry, StockMovement,
};
use crate::{StoreError, Tx};

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
        match self.write_refusable(tx).await? {
            None => Ok(()),
            Some(movement) => Err(crate::stock::refused(movement)),
        }
    }

    /// Writes the change in `tx` up to a stock move its row refuses, which it returns; the
    /// caller must then roll back.
    async fn write_refusable(&self, tx: &mut dyn Tx) -> Result<Option<&StockMovement>, StoreError> {
        tx.update_order(self.tenant, self.order, &self.status, &self.saga, self.at)
            .await?;
        for entry in &self.journal {
            tx.insert_journal_entry(self.tenant, entry).await?;
        }
        tx.insert_audit(&self.audit).await?;
        tx.append_events(&self.events).await?;
        crate::stock::shift(tx, self.tenant, &self.stock).await
    }
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
    /// Inserts the row in `tx`; `false` when it was there already.
    async fn insert(&self, tx: &mut dyn Tx, at: DateTime<Utc>) -> Result<bool, StoreError> {
        match self {
            Once::Inbox { group, event } => tx.insert_inbox(group, *event, at).await,
            Once::Webhook { source, delivery } => {
                tx.insert_webhook_delivery(source, delivery, at).await
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

/// Stores `effect` in a command transaction of its own, through [`Tx`]: how engines without a
/// faster way do it.
pub(crate) async fn write_in(
    mut tx: Box<dyn Tx>,
    effect: &PreparedEffect,
) -> Result<EffectOutcome, StoreError> {
    let change = &effect.change;
    let outcome = if !effect.once.insert(tx.as_mut(), change.at).await? {
        EffectOutcome::AlreadyApplied
    } else if !tx
        .order_still(
            change.tenant,
            change.order,
            &change.expected_status,
            &change.expected_saga,
        )
        .await?
    {
        tx.rollback().await?;
        return Ok(EffectOutcome::OrderChanged);
    } else if let Some(movement) = change.write_refusable(tx.as_mut()).await? {
        let outcome = refusal(movement)?;
        tx.rollback().await?;
        return Ok(outcome);
    } else {
        EffectOutcome::Written
    };
    match &effect.settles {
        Some(letter) => {
            tx.upsert_dead_letter(&settled(letter, change.at)).await?;
            tx.commit().await?;
        }
        None if outcome == EffectOutcome::Written => tx.commit().await?,
        None => tx.rollback().await?,
    }
    Ok(outcome)
}
