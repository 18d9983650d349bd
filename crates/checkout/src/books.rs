//! What a saga step writes besides the order: its journal entries, its audit record and its
//! events, gathered by [`Step`] and committed with the inbox row in one transaction.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tally_dispatch::{Delivery, EffectError};
use tally_domain::checkout::Saga;
use tally_domain::event::{EventDraft, EventType};
use tally_domain::ids::OrderId;
use tally_domain::money::Currency;
use tally_domain::order::OrderStatus;
use tally_ledger::{EntryKind, JournalEntry, payment};
use tally_store::audit::{Actor, Change, cause_of};
use tally_store::effect::OrderChange;
use tally_store::log::{Causes, envelope};
use tally_store::{LogEvent, NewJournalEntry, OrderState, PostingRecord, Tx};

use crate::saga::CHECKOUT_GROUP;

fn ledger_error(error: impl std::fmt::Display) -> EffectError {
    // A refused entry is a bug in how the saga uses the ledger: retrying cannot fix it.
    EffectError::Permanent(format!("ledger: {error}"))
}

fn currency_of(state: &OrderState) -> Result<Currency, EffectError> {
    Currency::parse(&state.record.currency).map_err(|e| EffectError::Permanent(e.reason))
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
fn authorization_entry(state: &OrderState) -> Result<JournalEntry, EffectError> {
    let id =
        state.saga.authorization_entry.clone().ok_or_else(|| {
            EffectError::Permanent("the order has no authorization entry".to_owned())
        })?;
    payment::authorize(
        id,
        state.record.id,
        state.record.total_minor,
        currency_of(state)?,
    )
    .map_err(ledger_error)
}

pub(crate) fn authorization(
    event: &LogEvent,
    state: &OrderState,
    now: DateTime<Utc>,
) -> Result<NewJournalEntry, EffectError> {
    let id = payment::entry_id(CHECKOUT_GROUP, event.id, "authorize");
    let entry = payment::authorize(
        id,
        state.record.id,
        state.record.total_minor,
        currency_of(state)?,
    )
    .map_err(ledger_error)?;
    Ok(row(&entry, state.record.id, now))
}

pub(crate) fn capture(
    event: &LogEvent,
    state: &OrderState,
    now: DateTime<Utc>,
) -> Result<Vec<NewJournalEntry>, EffectError> {
    let authorization = authorization_entry(state)?;
    let captured = payment::capture(
        &authorization,
        state.record.total_minor,
        payment::entry_id(CHECKOUT_GROUP, event.id, "capture"),
        payment::entry_id(CHECKOUT_GROUP, event.id, "sale"),
    )
    .map_err(ledger_error)?;
    Ok(vec![
        row(&captured.post, state.record.id, now),
        row(&captured.sale, state.record.id, now),
    ])
}

pub(crate) fn void(
    event: &LogEvent,
    state: &OrderState,
    now: DateTime<Utc>,
) -> Result<NewJournalEntry, EffectError> {
    let authorization = authorization_entry(state)?;
    let entry = tally_ledger::void(
        &authorization,
        payment::entry_id(CHECKOUT_GROUP, event.id, "void"),
    )
    .map_err(ledger_error)?;
    Ok(row(&entry, state.record.id, now))
}

pub(crate) fn refund(
    event: &LogEvent,
    state: &OrderState,
    now: DateTime<Utc>,
) -> Result<NewJournalEntry, EffectError> {
    let id = payment::entry_id(CHECKOUT_GROUP, event.id, "refund");
    let entry =
        payment::refund(id, state.record.total_minor, currency_of(state)?).map_err(ledger_error)?;
    Ok(row(&entry, state.record.id, now))
}

/// One saga step's writes: a status change (or none), the ledger entries it books, the events
/// it causes and its audit record.
#[derive(Debug)]
pub(crate) struct Step<'a> {
    event: &'a LogEvent,
    order: OrderId,
    /// The order's status and saga before the step.
    status_before: String,
    saga_before: Saga,
    status: Option<OrderStatus>,
    drafts: Vec<EventDraft>,
    journal: Vec<NewJournalEntry>,
    now: DateTime<Utc>,
}

impl<'a> Step<'a> {
    pub(crate) fn new(
        event: &'a LogEvent,
        order: OrderId,
        state: &OrderState,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            event,
            order,
            status_before: state.record.status.clone(),
            saga_before: state.saga.clone(),
            status: None,
            drafts: Vec::new(),
            journal: Vec::new(),
            now,
        }
    }

    /// When the step happens.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Moves the order to `status` and announces it with an event of `event_type`.
    pub(crate) fn advance(&mut self, status: OrderStatus, event_type: EventType, data: Value) {
        self.status = Some(status);
        self.also(event_type, data);
    }

    /// Announces something without moving the order.
    pub(crate) fn also(&mut self, event_type: EventType, mut data: Value) {
        data["order_id"] = json!(self.order);
        let key = self.order.to_string();
        self.drafts
            .push(EventDraft::new(event_type, key.clone(), key, &data));
    }

    /// Books a ledger entry with the step.
    pub(crate) fn book(&mut self, entry: NewJournalEntry) {
        self.journal.push(entry);
    }

    /// The step's change, ready to store, for the order as `state` leaves it: everything but
    /// the inserts themselves, so that it can be made before the step takes the store's writer.
    pub(crate) fn prepare(self, state: &OrderState, partitions: u32) -> OrderChange {
        let tenant = self.event.tenant_id;
        let status = self
            .status
            .map_or_else(|| state.record.status.clone(), |s| s.as_str().to_owned());
        let causes = Causes {
            correlation_id: self.event.correlation_id.clone(),
            causation_id: Some(self.event.id.to_string()),
            traceparent: self.event.traceparent.clone(),
        };
        let events: Vec<_> = self
            .drafts
            .into_iter()
            .map(|draft| envelope(draft, tenant, partitions, self.now, &causes))
            .collect();
        let action = events
            .first()
            .map_or("saga_state_changed", |e| e.event_type);
        let change = Change {
            entity_type: "order",
            entity_id: self.order.to_string(),
            action,
            before: Some(json!({"status": self.status_before, "saga": self.saga_before})),
            after: Some(json!({"status": status, "saga": state.saga})),
        };
        let actor = Actor::System(CHECKOUT_GROUP.to_owned());
        let audit =
            tally_store::audit::record(tenant, self.now, actor, change, cause_of(self.event));
        OrderChange {
            tenant,
            order: self.order,
            expected_status: self.status_before,
            expected_saga: self.saga_before,
            status,
            saga: state.saga.clone(),
            at: self.now,
            journal: self.journal,
            audit,
            events,
            stock: Vec::new(),
        }
    }

    /// Writes the order, the ledger entries, the events and the audit record in `tx`, which
    /// holds the order's lock, then finishes the delivery.
    pub(crate) async fn commit(
        self,
        mut tx: Box<dyn Tx>,
        state: &OrderState,
        delivery: &Delivery,
    ) -> Result<(), EffectError> {
        self.prepare(state, delivery.store().log_partitions())
            .write(tx.as_mut())
            .await?;
        delivery.finish(tx).await
    }
}
