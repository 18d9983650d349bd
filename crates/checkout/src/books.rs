//! What a saga step writes, made from its decision's [`Outcome`]: the order's new status and
//! saga state, its journal entries, its events, its audit record and its stock moves, committed
//! with the inbox row in one transaction.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tally_dispatch::EffectError;
use tally_domain::checkout::Saga;
use tally_domain::checkout::decide::{Booking, Outcome, StepKey, StockMove};
use tally_domain::event::EventDraft;
use tally_domain::ids::OrderId;
use tally_domain::money::Currency;
use tally_ledger::{EntryKind, JournalEntry, payment};
use tally_store::audit::{Actor, Change, cause_of};
use tally_store::effect::OrderChange;
use tally_store::log::{Causes, envelope};
use tally_store::stock::movements;
use tally_store::{
    LogEvent, MovementKind, NewJournalEntry, OrderRecord, OrderState, PostingRecord,
};

use crate::saga::CHECKOUT_GROUP;

fn ledger_error(error: impl std::fmt::Display) -> EffectError {
    // A refused entry is a bug in how the saga uses the ledger: retrying cannot fix it.
    EffectError::Permanent(format!("ledger: {error}"))
}

fn currency_of(record: &OrderRecord) -> Result<Currency, EffectError> {
    Currency::parse(&record.currency).map_err(|e| EffectError::Permanent(e.reason))
}

/// The row form of a ledger entry.
fn row(entry: &JournalEntry, order: OrderId, now: DateTime<Utc>) -> NewJournalEntry {
    let kind = match entry.kind() {
        EntryKind::Posted => "posted",
        EntryKind::Pending => "pending",
        EntryKind::PostPending { .. } => "post_pending",
        EntryKind::VoidPending { .. } => "void_pending",
    };
    NewJournalEntry {
        id: entry.id().to_owned(),
        kind: kind.to_owned(),
        pending_id: entry.kind().pending_id().map(str::to_owned),
        order_id: Some(order),
        postings: entry
            .postings()
            .iter()
            .map(|p| PostingRecord {
                account: p.account.as_str().to_owned(),
                currency: p.currency.code().to_owned(),
                amount_minor: p.amount_minor,
            })
            .collect(),
        body: serde_json::to_value(entry).unwrap_or(Value::Null),
        created_at: now,
    }
}

/// The authorization's pending entry, rebuilt from what the saga recorded: the entry is a pure
/// function of its id, the order and its total, so it comes back equal to the one written.
fn authorization_entry(record: &OrderRecord, saga: &Saga) -> Result<JournalEntry, EffectError> {
    let id = saga
        .authorization_entry
        .clone()
        .ok_or_else(|| EffectError::Permanent("the order has no authorization entry".to_owned()))?;
    payment::authorize(id, record.id, record.total_minor, currency_of(record)?)
        .map_err(ledger_error)
}

/// The journal id of one step's entry: the step's key, as the ledger spells ids.
fn entry_id(key: StepKey, step: &str) -> String {
    payment::entry_id(key.group, key.event, step)
}

/// The journal entries of `booking` for the order `record`, whose saga after the step is
/// `saga` (which names the authorization's pending entry).
fn entries(
    booking: Booking,
    record: &OrderRecord,
    saga: &Saga,
) -> Result<Vec<JournalEntry>, EffectError> {
    let total = record.total_minor;
    let entries = match booking {
        Booking::Authorization(key) => {
            let id = entry_id(key, key.step);
            // The saga names the entry by the same key; a mismatch would orphan the entry.
            assert_eq!(saga.authorization_entry.as_deref(), Some(id.as_str()));
            vec![
                payment::authorize(id, record.id, total, currency_of(record)?)
                    .map_err(ledger_error)?,
            ]
        }
        Booking::Capture(key) => {
            let captured = payment::capture(
                &authorization_entry(record, saga)?,
                total,
                entry_id(key, "capture"),
                entry_id(key, "sale"),
            )
            .map_err(ledger_error)?;
            vec![captured.post, captured.sale]
        }
        Booking::Void(key) => vec![
            tally_ledger::void(&authorization_entry(record, saga)?, entry_id(key, key.step))
                .map_err(ledger_error)?,
        ],
        Booking::Refund(key) => vec![
            payment::refund(entry_id(key, key.step), total, currency_of(record)?)
                .map_err(ledger_error)?,
        ],
    };
    Ok(entries)
}

/// The change that stores `outcome`, the decision of the step applying `event` to the order as
/// it was (`before`): the order's status and saga, the journal entries, the events, the audit
/// record and the stock moves, everything but the inserts themselves, so that it can be made
/// before the step takes the store's writer.
pub(crate) fn prepare(
    event: &LogEvent,
    before: &OrderState,
    outcome: &Outcome,
    clock: &dyn tally_domain::clock::Clock,
    partitions: u32,
) -> Result<OrderChange, EffectError> {
    let now = clock.now();
    let tenant = event.tenant_id;
    let order = before.record.id;
    let mut journal = Vec::new();
    for booking in &outcome.bookings {
        for entry in entries(*booking, &before.record, &outcome.saga)? {
            journal.push(row(&entry, order, now));
        }
    }
    let causes = Causes {
        correlation_id: event.correlation_id.clone(),
        causation_id: Some(event.id.to_string()),
        traceparent: event.traceparent.clone(),
    };
    let key = order.to_string();
    let events: Vec<_> = outcome
        .announcements
        .iter()
        .map(|announcement| {
            let mut data = announcement.data();
            data["order_id"] = json!(order);
            let draft = EventDraft::new(announcement.event_type(), key.clone(), key.clone(), &data);
            let id = tally_domain::ids::EventId::from_uuid(clock.fresh_id());
            envelope(id, draft, tenant, partitions, now, &causes)
        })
        .collect();
    // The last event is what the step did; the ones before it, what it found had happened.
    let action = events.last().map_or("saga_state_changed", |e| e.event_type);
    let status = outcome.status.as_str().to_owned();
    let change = Change {
        entity_type: "order",
        entity_id: key,
        action,
        before: Some(json!({"status": before.record.status, "saga": before.saga})),
        after: Some(json!({"status": status, "saga": outcome.saga})),
    };
    let actor = Actor::System(CHECKOUT_GROUP.to_owned());
    let audit = tally_store::audit::record(
        clock.fresh_id(),
        tenant,
        now,
        actor,
        change,
        cause_of(event),
    );
    let stock = match &outcome.stock {
        StockMove::Keep => Vec::new(),
        StockMove::Reserve(reservations) => {
            movements(order, reservations, MovementKind::Reserved, now)
        }
        StockMove::Release(reservations) => {
            movements(order, reservations, MovementKind::Released, now)
        }
    };
    Ok(OrderChange {
        tenant,
        order,
        expected_status: before.record.status.clone(),
        expected_saga: before.saga.clone(),
        status,
        saga: outcome.saga.clone(),
        at: now,
        journal,
        audit,
        events,
        stock,
    })
}

#[cfg(test)]
mod tests {
    use tally_domain::checkout::decide::StepKey;
    use tally_domain::ids::EventId;

    /// The saga names an authorization's pending entry by its step's key, the ledger by its
    /// entry id: both must spell it alike, or a capture would not find the entry it posts.
    #[test]
    fn a_step_key_spells_the_ledger_entry_id_of_its_step() {
        let key = StepKey {
            group: super::CHECKOUT_GROUP,
            event: EventId::generate(),
            step: "authorize",
        };
        assert_eq!(key.to_string(), super::entry_id(key, "authorize"));
    }
}
