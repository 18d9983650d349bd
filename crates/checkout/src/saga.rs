//! The checkout saga's consumer: for each order event, the next step or a compensation.
//!
//! Every step follows "persist intent, then call the partner, then commit the result": the
//! event that asks for a step is the persisted intent; the partner call carries the key
//! (group, event id, step), so a step retried after a crash is applied by the partner once;
//! the result commits with the order's new status, its ledger entry, its audit record, the next
//! event and the inbox row, in one transaction. A step finds the order in the status it
//! expects or does nothing: a cancellation that raced it wins, and what the step already did
//! at the partner is compensated.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::json;
use tally_dispatch::{Delivery, EffectError, Handler};
use tally_domain::checkout::{OutOfStock, cancellable, choose_reservations};
use tally_domain::event::EventType;
use tally_domain::ids::OrderId;
use tally_domain::inventory::StockLevel;
use tally_domain::order::OrderStatus;
use tally_store::effect::OrderChange;
use tally_store::{LogEvent, MovementKind, OrderState, Tx};

use crate::books::{self, Step};
use crate::partners::{Authorization, Capture, Partners};

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

/// What partners know an order by: tenant and order, so webhooks find their way back.
pub(crate) fn partner_reference(event: &LogEvent, order: OrderId) -> String {
    format!("{}/{order}", event.tenant_id)
}

#[async_trait]
impl Handler for Checkout {
    fn group(&self) -> &'static str {
        CHECKOUT_GROUP
    }

    fn wants(&self, event_type: &str) -> bool {
        matches!(
            EventType::parse(event_type),
            Some(
                EventType::OrderPlaced
                    | EventType::OrderStockReserved
                    | EventType::OrderPaymentAuthorized
                    | EventType::OrderPaymentCaptured
                    | EventType::OrderDelivered
                    | EventType::OrderReturned
                    | EventType::OrderCancellationRequested
            )
        )
    }

    async fn handle(&self, event: &LogEvent, delivery: &Delivery) -> Result<(), EffectError> {
        let order = order_of(event)?;
        match EventType::parse(&event.event_type) {
            Some(EventType::OrderPlaced) => reserve(event, order, delivery).await,
            Some(EventType::OrderStockReserved) => self.authorize(event, order, delivery).await,
            Some(EventType::OrderPaymentAuthorized) => self.capture(event, order, delivery).await,
            Some(EventType::OrderPaymentCaptured) => self.fulfil(event, order, delivery).await,
            Some(EventType::OrderDelivered) => complete(event, order, delivery).await,
            Some(EventType::OrderReturned) => self.refund(event, order, delivery).await,
            Some(EventType::OrderCancellationRequested) => {
                self.cancel(event, order, delivery).await
            }
            _ => Ok(()),
        }
    }
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

/// Commits a step whose writes follow from the order alone, with no stock to lock. `plan`
/// applies the step to an order (`false`: it does not apply, and only the inbox row is
/// written). It runs on `snapshot`, the order as read before the partner call, before the step
/// takes the store's writer, which then only checks that the order is unchanged and stores the
/// rows (on SQLite, together with other steps in one hold of the writer). Should the order have
/// changed meanwhile (a cancellation request raced the step), or should the step not apply to
/// the snapshot, `plan` runs again on the order as locked, as every step did before.
async fn commit_step<F>(
    delivery: &Delivery,
    event: &LogEvent,
    order: OrderId,
    snapshot: OrderState,
    plan: F,
) -> Result<(), EffectError>
where
    F: Fn(&mut OrderState, &mut Step<'_>) -> Result<bool, EffectError>,
{
    let now = delivery.clock().now();
    let partitions = delivery.store().log_partitions();
    let prepare = |mut state: OrderState| -> Result<Option<OrderChange>, EffectError> {
        let mut step = Step::new(event, order, &state, now);
        if !plan(&mut state, &mut step)? {
            return Ok(None);
        }
        Ok(Some(step.prepare(&state, partitions)))
    };
    if let Some(change) = prepare(snapshot)?
        && delivery.write(change).await?
    {
        return Ok(());
    }
    let Some((mut tx, state)) = open(delivery, event, order).await? else {
        return Ok(());
    };
    if let Some(change) = prepare(state)? {
        change.write(tx.as_mut()).await?;
    }
    delivery.finish(tx).await
}

fn status_of(state: &OrderState) -> Result<OrderStatus, EffectError> {
    OrderStatus::parse(&state.record.status).map_err(|e| EffectError::Permanent(e.reason))
}

/// The order's status before the step, read without a lock, to skip partner calls for orders
/// that have moved on.
async fn current_status(
    delivery: &Delivery,
    event: &LogEvent,
    order: OrderId,
) -> Result<OrderState, EffectError> {
    let record = delivery
        .store()
        .order(event.tenant_id, order)
        .await?
        .ok_or_else(|| EffectError::Permanent(format!("order {order} does not exist")))?;
    Ok(OrderState {
        saga: record.saga.clone(),
        record,
    })
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
async fn reserve(event: &LogEvent, order: OrderId, delivery: &Delivery) -> Result<(), EffectError> {
    let mut state = current_status(delivery, event, order).await?;
    if status_of(&state)? == OrderStatus::Placed && !state.saga.cancel_requested {
        let lines = order_lines(&state);
        let skus: Vec<String> = lines.iter().map(|(sku, _)| sku.clone()).collect();
        let seen = delivery.store().read_stock(event.tenant_id, &skus).await?;
        // A cancellation is for good: it is decided on locked rows only.
        if let Ok(reservations) = choose_reservations(&lines, &by_location(&seen)) {
            let now = delivery.clock().now();
            let mut step = Step::new(event, order, &state, now);
            let moves =
                tally_store::stock::movements(order, &reservations, MovementKind::Reserved, now);
            hold(&mut step, &mut state, reservations);
            let mut change = step.prepare(&state, delivery.store().log_partitions());
            change.stock = moves;
            if delivery.write(change).await? {
                return Ok(());
            }
        }
    }
    let Some((tx, state)) = open(delivery, event, order).await? else {
        return Ok(());
    };
    if status_of(&state)? != OrderStatus::Placed || state.saga.cancel_requested {
        return delivery.finish(tx).await;
    }
    reserve_locked(event, order, delivery, tx, state).await
}

/// The reservation step on stock rows locked before it is planned.
async fn reserve_locked(
    event: &LogEvent,
    order: OrderId,
    delivery: &Delivery,
    mut tx: Box<dyn Tx>,
    mut state: OrderState,
) -> Result<(), EffectError> {
    let lines = order_lines(&state);
    let skus: Vec<String> = lines.iter().map(|(sku, _)| sku.clone()).collect();
    let locked = tx.lock_stock(event.tenant_id, &skus).await?;
    let now = delivery.clock().now();
    let mut step = Step::new(event, order, &state, now);
    match choose_reservations(&lines, &by_location(&locked)) {
        Ok(reservations) => {
            tally_store::stock::move_reservations(
                tx.as_mut(),
                event.tenant_id,
                order,
                &reservations,
                MovementKind::Reserved,
                now,
            )
            .await?;
            hold(&mut step, &mut state, reservations);
        }
        Err(OutOfStock { sku }) => {
            state.saga.cancel_reason = Some(format!("out_of_stock:{sku}"));
            step.advance(
                OrderStatus::Cancelled,
                EventType::OrderCancelled,
                json!({"reason": "out_of_stock", "sku": sku}),
            );
        }
    }
    step.commit(tx, &state, delivery).await
}

/// The order now holds `reservations`: the step advances it to reserved.
fn hold(
    step: &mut Step,
    state: &mut OrderState,
    reservations: Vec<tally_domain::checkout::Reservation>,
) {
    state.saga.reservations = reservations;
    state.saga.reservations_held = true;
    step.advance(
        OrderStatus::Reserved,
        EventType::OrderStockReserved,
        json!({"reservations": state.saga.reservations}),
    );
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

impl Checkout {
    async fn authorize(
        &self,
        event: &LogEvent,
        order: OrderId,
        delivery: &Delivery,
    ) -> Result<(), EffectError> {
        let snapshot = current_status(delivery, event, order).await?;
        if status_of(&snapshot)? != OrderStatus::Reserved || snapshot.saga.cancel_requested {
            return skip(delivery).await;
        }
        let record = &snapshot.record;
        let key = delivery.idempotency_key("authorize");
        let answer = self
            .partners
            .authorize(
                &key,
                &partner_reference(event, order),
                record.total_minor,
                &record.currency,
            )
            .await?;
        let reason = match answer {
            Authorization::Authorized { authorization_id } => {
                return commit_step(delivery, event, order, snapshot, |state, step| {
                    let entry = books::authorization(event, state, step.now())?;
                    state.saga.authorization_id = Some(authorization_id.clone());
                    state.saga.authorization_entry = Some(entry.id.clone());
                    step.book(entry);
                    step.advance(
                        OrderStatus::Authorized,
                        EventType::OrderPaymentAuthorized,
                        json!({"authorization_id": authorization_id}),
                    );
                    Ok(true)
                })
                .await;
            }
            Authorization::Declined { reason } => reason,
        };
        let Some((mut tx, mut state)) = open(delivery, event, order).await? else {
            return Ok(());
        };
        let now = delivery.clock().now();
        let mut step = Step::new(event, order, &state, now);
        cancel(
            tx.as_mut(),
            event,
            order,
            &mut state,
            &mut step,
            ("payment_declined", Some(reason)),
            now,
        )
        .await?;
        step.commit(tx, &state, delivery).await
    }

    async fn capture(
        &self,
        event: &LogEvent,
        order: OrderId,
        delivery: &Delivery,
    ) -> Result<(), EffectError> {
        let state = current_status(delivery, event, order).await?;
        let (Some(authorization_id), OrderStatus::Authorized, false) = (
            state.saga.authorization_id.clone(),
            status_of(&state)?,
            state.saga.cancel_requested,
        ) else {
            return skip(delivery).await;
        };
        let key = delivery.idempotency_key("capture");
        let answer = self
            .partners
            .capture(&key, &authorization_id, state.record.total_minor)
            .await?;
        if answer == Capture::Failed {
            self.partners
                .void(&delivery.idempotency_key("void"), &authorization_id)
                .await?;
        }
        if let Capture::Captured { capture_id } = answer {
            return commit_step(delivery, event, order, state, |state, step| {
                for entry in books::capture(event, state, step.now())? {
                    step.book(entry);
                }
                state.saga.capture_id = Some(capture_id.clone());
                step.advance(
                    OrderStatus::Captured,
                    EventType::OrderPaymentCaptured,
                    json!({"capture_id": capture_id}),
                );
                Ok(true)
            })
            .await;
        }
        let Some((mut tx, mut state)) = open(delivery, event, order).await? else {
            return Ok(());
        };
        let now = delivery.clock().now();
        let mut step = Step::new(event, order, &state, now);
        step.book(books::void(event, &state, now)?);
        cancel(
            tx.as_mut(),
            event,
            order,
            &mut state,
            &mut step,
            ("capture_failed", None),
            now,
        )
        .await?;
        step.commit(tx, &state, delivery).await
    }

    async fn fulfil(
        &self,
        event: &LogEvent,
        order: OrderId,
        delivery: &Delivery,
    ) -> Result<(), EffectError> {
        let snapshot = current_status(delivery, event, order).await?;
        if status_of(&snapshot)? != OrderStatus::Captured || snapshot.saga.cancel_requested {
            return skip(delivery).await;
        }
        let lines = json!(
            snapshot
                .record
                .lines
                .iter()
                .map(|l| json!({"sku": l.sku, "quantity": l.quantity}))
                .collect::<Vec<_>>()
        );
        let shipment = self
            .partners
            .create_shipment(
                &delivery.idempotency_key("shipment"),
                &partner_reference(event, order),
                lines,
            )
            .await?;
        commit_step(delivery, event, order, snapshot, |state, step| {
            state.saga.shipment_id = Some(shipment.shipment_id.clone());
            state.saga.tracking_number = Some(shipment.tracking_number.clone());
            step.advance(
                OrderStatus::FulfillmentRequested,
                EventType::OrderFulfillmentRequested,
                json!({"shipment_id": shipment.shipment_id, "tracking_number": shipment.tracking_number}),
            );
            Ok(true)
        })
        .await
    }

    async fn refund(
        &self,
        event: &LogEvent,
        order: OrderId,
        delivery: &Delivery,
    ) -> Result<(), EffectError> {
        let state = current_status(delivery, event, order).await?;
        let (Some(capture_id), OrderStatus::Returned) =
            (state.saga.capture_id.clone(), status_of(&state)?)
        else {
            return skip(delivery).await;
        };
        let key = delivery.idempotency_key("refund");
        let refund_id = self
            .partners
            .refund(&key, &capture_id, state.record.total_minor)
            .await?;
        commit_step(delivery, event, order, state, |state, step| {
            step.book(books::refund(event, state, step.now())?);
            state.saga.refund_id = Some(refund_id.clone());
            step.advance(
                OrderStatus::Refunded,
                EventType::OrderRefunded,
                json!({"refund_id": refund_id}),
            );
            Ok(true)
        })
        .await
    }

    /// Cancels at a client's request, undoing what the saga did: the authorization is voided,
    /// a capture refunded, the reservation released. Too late once the carrier has the order.
    async fn cancel(
        &self,
        event: &LogEvent,
        order: OrderId,
        delivery: &Delivery,
    ) -> Result<(), EffectError> {
        let state = current_status(delivery, event, order).await?;
        let status = status_of(&state)?;
        let compensated = if !cancellable(status) {
            None
        } else if let (OrderStatus::Authorized, Some(authorization_id)) =
            (status, &state.saga.authorization_id)
        {
            self.partners
                .void(&delivery.idempotency_key("void"), authorization_id)
                .await?;
            Some(Compensation::Voided)
        } else if let (OrderStatus::Captured, Some(capture_id)) = (status, &state.saga.capture_id) {
            let key = delivery.idempotency_key("refund");
            let refund_id = self
                .partners
                .refund(&key, capture_id, state.record.total_minor)
                .await?;
            Some(Compensation::Refunded(refund_id))
        } else {
            Some(Compensation::Nothing)
        };
        let Some((mut tx, mut state)) = open(delivery, event, order).await? else {
            return Ok(());
        };
        let now = delivery.clock().now();
        let mut step = Step::new(event, order, &state, now);
        state.saga.cancel_requested = false;
        match compensated {
            // Too late to cancel: the order keeps its status; only the request flag clears.
            None => {}
            Some(compensation) => {
                match compensation {
                    Compensation::Voided => step.book(books::void(event, &state, now)?),
                    Compensation::Refunded(refund_id) => {
                        step.book(books::refund(event, &state, now)?);
                        state.saga.refund_id = Some(refund_id);
                    }
                    Compensation::Nothing => {}
                }
                cancel(
                    tx.as_mut(),
                    event,
                    order,
                    &mut state,
                    &mut step,
                    ("requested", None),
                    now,
                )
                .await?;
            }
        }
        step.commit(tx, &state, delivery).await
    }
}

/// What a cancellation undid at the payment provider.
#[derive(Debug)]
enum Compensation {
    Nothing,
    Voided,
    Refunded(String),
}

/// Completes a delivered order.
async fn complete(
    event: &LogEvent,
    order: OrderId,
    delivery: &Delivery,
) -> Result<(), EffectError> {
    let snapshot = current_status(delivery, event, order).await?;
    commit_step(delivery, event, order, snapshot, |state, step| {
        if status_of(state)? != OrderStatus::Delivered {
            return Ok(false);
        }
        step.advance(OrderStatus::Completed, EventType::OrderCompleted, json!({}));
        Ok(true)
    })
    .await
}

/// Cancels the order within a step: gives back its stock and announces why (a reason code and
/// the partner's words, if any).
async fn cancel(
    tx: &mut dyn Tx,
    event: &LogEvent,
    order: OrderId,
    state: &mut OrderState,
    step: &mut Step<'_>,
    (reason, detail): (&str, Option<String>),
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), EffectError> {
    tally_store::stock::release(tx, event.tenant_id, order, &mut state.saga, now).await?;
    state.saga.cancel_reason = Some(reason.to_owned());
    step.advance(
        OrderStatus::Cancelled,
        EventType::OrderCancelled,
        json!({"reason": reason, "detail": detail}),
    );
    Ok(())
}

/// Marks the event applied without doing anything: the order has moved on.
async fn skip(delivery: &Delivery) -> Result<(), EffectError> {
    delivery.applied().await
}
