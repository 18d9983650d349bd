//! The checkout saga's consumer: for each order event, the next step or a compensation, as
//! [`tally_domain::checkout::decide`] decides; this module only reads, calls and writes.
//!
//! Every step follows "persist intent, then call the partner, then commit the result": the
//! event that asks for a step is the persisted intent; the partner call carries the key
//! (group, event id, step), so a step retried after a crash is applied by the partner once;
//! the result commits with the order's new status, its ledger entries, its audit record, its
//! events and the inbox row, in one transaction. The decision is made on the order as read
//! before the calls; should the order have changed by the time the result is stored (a
//! cancellation request raced the step), it is made again, with the same answers, on the order
//! as locked, and a decision that would need another call then starts the step over, under the
//! same keys. A cancellation asks the provider again under the key of a step whose outcome it
//! cannot know (see the decisions' module doc).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::json;
use tally_dispatch::{Delivery, EffectError, Handler};
use tally_domain::checkout::choose_reservations;
use tally_domain::checkout::decide::{
    self, Answer, CALLS_PER_STEP_MAX, Call, Context, Decision, Outcome, Trigger, asking_event,
};
use tally_domain::event::EventType;
use tally_domain::ids::{EventId, OrderId};
use tally_domain::inventory::StockLevel;
use tally_domain::order::OrderStatus;
use tally_store::{LogEvent, OrderRecord, OrderState, Tx};

use crate::books;
use crate::partners::Partners;

/// The consumer group that runs the checkout saga.
pub const CHECKOUT_GROUP: &str = "checkout";

#[derive(Debug)]
pub struct Checkout {
    partners: Partners,
}

impl Checkout {
    pub fn new(partners: Partners) -> Self {
        Self { partners }
    }
}

/// The order an event is about: its subject.
pub(crate) fn order_of(event: &LogEvent) -> Result<OrderId, EffectError> {
    event
        .subject
        .parse()
        .map_err(|_| EffectError::Permanent(format!("event {} has no order subject", event.id)))
}

/// What partners know an order by (see [`tally_domain::order::partner_reference`]).
pub(crate) fn partner_reference(event: &LogEvent, order: OrderId) -> String {
    tally_domain::order::partner_reference(event.tenant_id, order)
}

/// One attempt at applying an event: what it is about and what partners answered so far.
#[derive(Debug)]
struct Attempt<'a> {
    event: &'a LogEvent,
    order: OrderId,
    trigger: Trigger,
    context: Context,
    answers: Vec<Answer>,
}

impl Attempt<'_> {
    fn decide(&self, state: &OrderState) -> Result<Decision, EffectError> {
        Ok(decide::decide(
            status_of(state)?,
            &state.saga,
            self.trigger,
            &self.context,
            &self.answers,
        ))
    }
}

#[async_trait]
impl Handler for Checkout {
    fn group(&self) -> &'static str {
        CHECKOUT_GROUP
    }

    fn wants(&self, event_type: &str) -> bool {
        EventType::parse(event_type).and_then(Trigger::of).is_some()
    }

    async fn handle(&self, event: &LogEvent, delivery: &Delivery) -> Result<(), EffectError> {
        let Some(trigger) = EventType::parse(&event.event_type).and_then(Trigger::of) else {
            return Ok(());
        };
        let order = order_of(event)?;
        let (snapshot, asked, shipment_settled) = read(delivery, event, order, trigger).await?;
        let mut attempt = Attempt {
            event,
            order,
            trigger,
            context: Context {
                group: CHECKOUT_GROUP,
                event: event.id,
                asked,
                shipment_settled,
            },
            answers: Vec::new(),
        };
        loop {
            match attempt.decide(&snapshot)? {
                Decision::Skip => return skip(delivery).await,
                Decision::Refuse(reason) => {
                    return Err(EffectError::Permanent(format!("order {order}: {reason}")));
                }
                Decision::Wait(reason) => {
                    return Err(EffectError::Transient(format!("order {order}: {reason}")));
                }
                Decision::Reserve => return reserve(&attempt, delivery, snapshot).await,
                Decision::Commit(outcome) => {
                    return commit(&attempt, delivery, snapshot, &outcome).await;
                }
                Decision::Call(call) => {
                    if attempt.answers.len() >= CALLS_PER_STEP_MAX {
                        return Err(EffectError::Permanent(format!(
                            "order {order}: the {trigger:?} step asked for more than \
                             {CALLS_PER_STEP_MAX} partner calls"
                        )));
                    }
                    let answer = self.call(&call, event, order, &snapshot.record).await?;
                    attempt.answers.push(answer);
                }
            }
        }
    }
}

impl Checkout {
    /// Makes one partner call; the amount of a money call is the order's total.
    async fn call(
        &self,
        call: &Call,
        event: &LogEvent,
        order: OrderId,
        record: &OrderRecord,
    ) -> Result<Answer, EffectError> {
        let total = record.total_minor;
        match call {
            Call::Authorize { key } => {
                let reference = partner_reference(event, order);
                self.partners
                    .authorize(&key.to_string(), &reference, total, &record.currency)
                    .await
            }
            Call::Capture {
                key,
                authorization_id,
            } => {
                self.partners
                    .capture(&key.to_string(), authorization_id, total)
                    .await
            }
            Call::Void {
                key,
                authorization_id,
            } => self.partners.void(&key.to_string(), authorization_id).await,
            Call::Refund { key, capture_id } => {
                self.partners
                    .refund(&key.to_string(), capture_id, total)
                    .await
            }
            Call::Ship { key } => {
                let lines = record
                    .lines
                    .iter()
                    .map(|l| json!({"sku": l.sku, "quantity": l.quantity}))
                    .collect();
                let reference = partner_reference(event, order);
                self.partners
                    .create_shipment(&key.to_string(), &reference, lines)
                    .await
            }
        }
    }
}

/// The order before the step, read without a lock, and for a cancellation what its
/// [`Context`] needs: the event that asked for the partner call the order's status awaits (read
/// with the order, as of one moment), and for a captured order whether its shipment step is
/// settled (read before the order the decision is made on).
async fn read(
    delivery: &Delivery,
    event: &LogEvent,
    order: OrderId,
    trigger: Trigger,
) -> Result<(OrderState, Option<EventId>, bool), EffectError> {
    let missing = || EffectError::Permanent(format!("order {order} does not exist"));
    let store = delivery.store();
    if trigger != Trigger::CancellationRequested {
        let record = store
            .order(event.tenant_id, order)
            .await?
            .ok_or_else(missing)?;
        return Ok((state_of(record), None, true));
    }
    let (record, timeline) = store
        .order_and_timeline(event.tenant_id, order)
        .await?
        .ok_or_else(missing)?;
    let state = state_of(record);
    let status = status_of(&state)?;
    let event_of = |wanted: EventType| {
        timeline
            .iter()
            .rev()
            .find(|entry| entry.event_type == wanted.as_str())
            .map(|entry| entry.event_id)
    };
    let asked = asking_event(status).and_then(event_of);
    let shipping = event_of(EventType::OrderPaymentCaptured);
    let (OrderStatus::Captured, Some(shipping)) = (status, shipping) else {
        return Ok((state, asked, true));
    };
    // A captured order's refund waits while its shipment step is parked. Whether it is is read
    // first and the order again after, so that a shipment step applied in between shows in
    // the order the decision is made on.
    let shipment_settled = !store
        .dead_letter_unsettled(CHECKOUT_GROUP, shipping)
        .await?;
    let record = store
        .order(event.tenant_id, order)
        .await?
        .ok_or_else(missing)?;
    Ok((state_of(record), asked, shipment_settled))
}

fn state_of(record: OrderRecord) -> OrderState {
    OrderState {
        saga: record.saga.clone(),
        record,
    }
}

fn status_of(state: &OrderState) -> Result<OrderStatus, EffectError> {
    OrderStatus::parse(&state.record.status).map_err(|e| EffectError::Permanent(e.reason))
}

/// Opens the step's transaction and locks the order; `None` when the event was applied before.
async fn open(
    delivery: &Delivery,
    event: &LogEvent,
    order: OrderId,
) -> Result<Option<(Box<dyn Tx>, OrderState)>, EffectError> {
    let Some(mut tx) = delivery.begin().await? else {
        return Ok(None);
    };
    let state = tx
        .lock_order(event.tenant_id, order)
        .await?
        .ok_or_else(|| EffectError::Permanent(format!("order {order} does not exist")))?;
    Ok(Some((tx, state)))
}

/// Stores `outcome`, decided on `snapshot`, as a prepared effect: the store's writer only checks
/// that the order is unchanged and stores the rows (on SQLite, together with other steps in one
/// hold of the writer). Should the order have changed, the attempt decides again, with the
/// answers it has, on the order as locked.
async fn commit(
    attempt: &Attempt<'_>,
    delivery: &Delivery,
    snapshot: OrderState,
    outcome: &Outcome,
) -> Result<(), EffectError> {
    let clock = delivery.clock();
    let partitions = delivery.store().log_partitions();
    let change = books::prepare(attempt.event, &snapshot, outcome, clock, partitions)?;
    if delivery.write(change).await? {
        return Ok(());
    }
    let Some((mut tx, state)) = open(delivery, attempt.event, attempt.order).await? else {
        return Ok(());
    };
    match attempt.decide(&state)? {
        Decision::Commit(outcome) => {
            books::prepare(attempt.event, &state, &outcome, clock, partitions)?
                .write(tx.as_mut())
                .await?;
            delivery.finish(tx).await
        }
        Decision::Skip => delivery.finish(tx).await,
        // The answers were for the order as it was: the step starts over on the order as it
        // is, under the same keys, so the partners answer what they did.
        Decision::Call(_) | Decision::Reserve | Decision::Refuse(_) | Decision::Wait(_) => {
            tx.rollback().await?;
            Err(EffectError::Transient(format!(
                "order {} changed while its {:?} step called partners; deciding again",
                attempt.order, attempt.trigger
            )))
        }
    }
}

/// Reserves every line's stock, or cancels the order when some line is out of stock.
///
/// The reservation is planned on the order and the stock as last committed, read without a
/// lock, and stored as a prepared effect whose stock moves come last (on PostgreSQL in one
/// round trip, on SQLite as one of many effects in a single hold of the writer): a busy SKU's
/// row then stays locked only for its own update and the commit, not for the whole step, which
/// is what limits how many orders for one SKU can be reserved per second. Should the order have
/// changed or other orders have taken the units meanwhile, or the plan be to cancel, the step
/// is decided again on rows locked first.
async fn reserve(
    attempt: &Attempt<'_>,
    delivery: &Delivery,
    snapshot: OrderState,
) -> Result<(), EffectError> {
    let tenant = attempt.event.tenant_id;
    let lines = order_lines(&snapshot);
    let skus: Vec<String> = lines.iter().map(|(sku, _)| sku.clone()).collect();
    let clock = delivery.clock();
    let partitions = delivery.store().log_partitions();
    let seen = delivery.store().read_stock(tenant, &skus).await?;
    // A cancellation is for good: it is decided on locked rows only.
    if let Ok(reservations) = choose_reservations(&lines, &by_location(&seen)) {
        let outcome = decide::reserved(&snapshot.saga, Ok(reservations));
        let change = books::prepare(attempt.event, &snapshot, &outcome, clock, partitions)?;
        if delivery.write(change).await? {
            return Ok(());
        }
    }
    let Some((mut tx, state)) = open(delivery, attempt.event, attempt.order).await? else {
        return Ok(());
    };
    if attempt.decide(&state)? != Decision::Reserve {
        return delivery.finish(tx).await;
    }
    let locked = tx.lock_stock(tenant, &skus).await?;
    let chosen = choose_reservations(&lines, &by_location(&locked));
    let outcome = decide::reserved(&state.saga, chosen);
    books::prepare(attempt.event, &state, &outcome, clock, partitions)?
        .write(tx.as_mut())
        .await?;
    delivery.finish(tx).await
}

/// The order's lines as (SKU, quantity).
fn order_lines(state: &OrderState) -> Vec<(String, u32)> {
    state
        .record
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.quantity))
        .collect()
}

/// Stock levels by SKU, then location.
fn by_location(
    rows: &[tally_store::LockedStock],
) -> BTreeMap<String, BTreeMap<String, StockLevel>> {
    let mut stock: BTreeMap<String, BTreeMap<String, StockLevel>> = BTreeMap::new();
    for row in rows {
        stock
            .entry(row.sku.clone())
            .or_default()
            .insert(row.location.clone(), row.level);
    }
    stock
}

/// Marks the event applied without doing anything: the order has moved on.
async fn skip(delivery: &Delivery) -> Result<(), EffectError> {
    delivery.applied().await
}
