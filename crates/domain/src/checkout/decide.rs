//! The checkout saga's decisions, as pure functions of the order's status and saga state, the
//! event being applied, and what partners answered so far in this attempt.
//!
//! The consumer asks [`decide`] what to do; it answers with a partner call to make (after which
//! it is asked again with the answer appended), an [`Outcome`] to store, or nothing. Nothing
//! here reads a clock, draws an id or performs I/O: the same inputs give the same decision, so a
//! simulation can drive every interleaving of events, faults and partner answers from a seed.
//!
//! # Partner calls whose outcome is unknown
//!
//! A partner may apply a call and answer with an error, or answer after the caller gave up.
//! Every call carries a key derived from the event whose step makes it ([`StepKey`]), and a
//! provider answers a repeated call under one key with what it did the first time. So:
//!
//! - A forward step that has called its partner in this attempt stores what the partner
//!   answered, even if a cancellation was requested meanwhile; the cancellation, later in the
//!   order's lane, then undoes it. Only a step that has not called yet stops for a cancellation.
//! - A step may stop (for a cancellation request) or fail for good after an earlier attempt or
//!   an earlier process called its partner. So a cancellation of a `reserved` order never
//!   assumes that no authorization exists: it asks the provider again under the authorization
//!   step's own key, and voids the authorization the provider answers with. The same goes for
//!   a capture: a void refused because the authorization was captured makes the cancellation
//!   ask for the capture under the capture step's key, and refund it.
//!
//! Either way the ledger books what the provider did, under the entry ids the step itself
//! would have used, and the timeline says so (`payment_authorized` or `payment_captured`,
//! then `cancelled`).

use std::fmt;

use serde_json::{Value, json};

use super::{OutOfStock, Reservation, Saga, cancellable};
use crate::event::EventType;
use crate::idempotency::step_key;
use crate::ids::EventId;
use crate::order::OrderStatus;

/// The most partner calls one step makes: a cancellation of an authorized order whose capture
/// raced it makes three (the void, the capture asked again, the refund).
pub const CALLS_PER_STEP_MAX: usize = 3;

/// The events the checkout saga acts on: each asks for one step, or for a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Reserve stock.
    Placed,
    /// Authorize the payment.
    StockReserved,
    /// Capture the payment.
    PaymentAuthorized,
    /// Ask the carrier to ship.
    PaymentCaptured,
    /// Complete the order.
    Delivered,
    /// Refund the payment of goods sent back.
    Returned,
    /// Cancel, undoing what the saga did.
    CancellationRequested,
}

impl Trigger {
    pub const ALL: [Trigger; 7] = [
        Trigger::Placed,
        Trigger::StockReserved,
        Trigger::PaymentAuthorized,
        Trigger::PaymentCaptured,
        Trigger::Delivered,
        Trigger::Returned,
        Trigger::CancellationRequested,
    ];

    /// The trigger an event of `event_type` is, if the saga acts on it.
    pub const fn of(event_type: EventType) -> Option<Self> {
        match event_type {
            EventType::OrderPlaced => Some(Trigger::Placed),
            EventType::OrderStockReserved => Some(Trigger::StockReserved),
            EventType::OrderPaymentAuthorized => Some(Trigger::PaymentAuthorized),
            EventType::OrderPaymentCaptured => Some(Trigger::PaymentCaptured),
            EventType::OrderDelivered => Some(Trigger::Delivered),
            EventType::OrderReturned => Some(Trigger::Returned),
            EventType::OrderCancellationRequested => Some(Trigger::CancellationRequested),
            EventType::ProductCreated
            | EventType::ProductUpdated
            | EventType::InventoryAdjusted
            | EventType::OrderFulfillmentRequested
            | EventType::OrderShipped
            | EventType::OrderCompleted
            | EventType::OrderCancelled
            | EventType::OrderRefunded => None,
        }
    }

    pub const fn event_type(self) -> EventType {
        match self {
            Trigger::Placed => EventType::OrderPlaced,
            Trigger::StockReserved => EventType::OrderStockReserved,
            Trigger::PaymentAuthorized => EventType::OrderPaymentAuthorized,
            Trigger::PaymentCaptured => EventType::OrderPaymentCaptured,
            Trigger::Delivered => EventType::OrderDelivered,
            Trigger::Returned => EventType::OrderReturned,
            Trigger::CancellationRequested => EventType::OrderCancellationRequested,
        }
    }
}

/// The event that asked for the partner call an order in `status` awaits, whose outcome a
/// cancellation must find out ([`Context::asked`]): its `stock_reserved` event while
/// reserved (the authorization), its `payment_authorized` event while authorized (the capture).
pub const fn asking_event(status: OrderStatus) -> Option<EventType> {
    match status {
        OrderStatus::Reserved => Some(EventType::OrderStockReserved),
        OrderStatus::Authorized => Some(EventType::OrderPaymentAuthorized),
        OrderStatus::Placed
        | OrderStatus::Captured
        | OrderStatus::FulfillmentRequested
        | OrderStatus::Shipped
        | OrderStatus::Delivered
        | OrderStatus::Completed
        | OrderStatus::Cancelled
        | OrderStatus::Returned
        | OrderStatus::Refunded => None,
    }
}

/// What one step's partner call and journal entry are derived from: the saga's consumer group,
/// the event whose step makes it, and the step. Its text, `{group}:{event}:{step}`, is the
/// partner call's idempotency key and the journal entry's id, so a step repeated by a retry, a
/// redelivery or a cancellation that asks again makes the same call and books the same entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepKey {
    pub group: &'static str,
    pub event: EventId,
    pub step: &'static str,
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&step_key(self.group, self.event, self.step))
    }
}

/// What a decision knows besides the order: which group decides, about which event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The consumer group running the saga; part of every [`StepKey`].
    pub group: &'static str,
    /// The event being applied.
    pub event: EventId,
    /// For a cancellation, the event of [`asking_event`] for the order's status (`None`
    /// otherwise): the cancellation asks the provider again under that step's key.
    pub asked: Option<EventId>,
    /// For a cancellation, whether the shipment step is settled: `false` while its
    /// `payment_captured` event is parked as a dead letter not yet applied, whose call to the
    /// carrier may have been made. A carrier cannot be asked whether it holds a shipment without
    /// making one, so the cancellation of a captured order waits for that letter rather than
    /// refund goods that may be on their way. (The lane applies an order's events in order, so
    /// an earlier event not parked is applied by the time the cancellation runs.) Read before
    /// the order, so that a shipment step applied after it was read is seen in the order.
    pub shipment_settled: bool,
}

impl Context {
    fn key(&self, step: &'static str) -> StepKey {
        self.key_of(self.event, step)
    }

    fn key_of(&self, event: EventId, step: &'static str) -> StepKey {
        StepKey {
            group: self.group,
            event,
            step,
        }
    }
}

/// A partner call the saga makes before it decides again. The amount of a money call is
/// always the order's total; the adapter reads it from the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Authorize {
        key: StepKey,
    },
    Capture {
        key: StepKey,
        authorization_id: String,
    },
    Void {
        key: StepKey,
        authorization_id: String,
    },
    Refund {
        key: StepKey,
        capture_id: String,
    },
    Ship {
        key: StepKey,
    },
}

/// What a partner answered to a [`Call`]. Errors (timeouts, 5xx) are not answers: the step
/// fails and is retried with the same keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Authorized {
        authorization_id: String,
    },
    Declined {
        reason: String,
    },
    Captured {
        capture_id: String,
    },
    /// The capture was refused: the authorization stays open.
    CaptureFailed,
    /// The capture was refused because the authorization is voided.
    AuthorizationVoided,
    /// The authorization is voided, by this call or an earlier one.
    Voided,
    /// The void was refused because the authorization is captured.
    AuthorizationCaptured,
    Refunded {
        refund_id: String,
    },
    Shipment {
        shipment_id: String,
        tracking_number: String,
    },
}

/// What the saga does next for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The event no longer applies: only the inbox records it.
    Skip,
    /// Call a partner, then decide again with its answer.
    Call(Call),
    /// Choose locations for the order's lines from stock, then store [`reserved`]'s outcome.
    Reserve,
    /// Store this, with the inbox row, in one transaction.
    Commit(Box<Outcome>),
    /// The order and the answers contradict each other: retrying cannot help.
    Refuse(String),
    /// Not yet: another step's outcome must be known first; retry later.
    Wait(String),
}

/// A step's writes: the order's new status and saga state, the journal entries, the events and
/// the stock moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: OrderStatus,
    pub saga: Saga,
    pub bookings: Vec<Booking>,
    /// In the order they happened; the last is what the step did.
    pub announcements: Vec<Announcement>,
    pub stock: StockMove,
}

/// A journal entry a step books, derived from the event whose step did it at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booking {
    /// The pending entry of an authorization; its id is the saga's `authorization_entry`.
    Authorization(StepKey),
    /// The post of the pending entry and the sale; `post.step` is `capture`.
    Capture(StepKey),
    /// The void of the pending entry.
    Void(StepKey),
    Refund(StepKey),
}

/// What a step does to the order's stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockMove {
    Keep,
    /// Hold these units for the order.
    Reserve(Vec<Reservation>),
    /// Give back the units the order held.
    Release(Vec<Reservation>),
}

/// Why the saga cancelled an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    OutOfStock { sku: String },
    PaymentDeclined { detail: String },
    CaptureFailed,
    Requested,
}

impl CancelReason {
    /// The saga's `cancel_reason`.
    pub fn code(&self) -> String {
        match self {
            CancelReason::OutOfStock { sku } => format!("out_of_stock:{sku}"),
            CancelReason::PaymentDeclined { .. } => "payment_declined".to_owned(),
            CancelReason::CaptureFailed => "capture_failed".to_owned(),
            CancelReason::Requested => "requested".to_owned(),
        }
    }
}

/// An event a step emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    StockReserved {
        reservations: Vec<Reservation>,
    },
    PaymentAuthorized {
        authorization_id: String,
    },
    PaymentCaptured {
        capture_id: String,
    },
    FulfillmentRequested {
        shipment_id: String,
        tracking_number: String,
    },
    Completed,
    Cancelled(CancelReason),
    Refunded {
        refund_id: String,
    },
}

impl Announcement {
    pub const fn event_type(&self) -> EventType {
        match self {
            Announcement::StockReserved { .. } => EventType::OrderStockReserved,
            Announcement::PaymentAuthorized { .. } => EventType::OrderPaymentAuthorized,
            Announcement::PaymentCaptured { .. } => EventType::OrderPaymentCaptured,
            Announcement::FulfillmentRequested { .. } => EventType::OrderFulfillmentRequested,
            Announcement::Completed => EventType::OrderCompleted,
            Announcement::Cancelled(_) => EventType::OrderCancelled,
            Announcement::Refunded { .. } => EventType::OrderRefunded,
        }
    }

    /// The event's data, without the `order_id` every order event carries.
    pub fn data(&self) -> Value {
        match self {
            Announcement::StockReserved { reservations } => json!({"reservations": reservations}),
            Announcement::PaymentAuthorized { authorization_id } => {
                json!({"authorization_id": authorization_id})
            }
            Announcement::PaymentCaptured { capture_id } => json!({"capture_id": capture_id}),
            Announcement::FulfillmentRequested {
                shipment_id,
                tracking_number,
            } => json!({"shipment_id": shipment_id, "tracking_number": tracking_number}),
            Announcement::Completed => json!({}),
            Announcement::Cancelled(CancelReason::OutOfStock { sku }) => {
                json!({"reason": "out_of_stock", "sku": sku})
            }
            Announcement::Cancelled(CancelReason::PaymentDeclined { detail }) => {
                json!({"reason": "payment_declined", "detail": detail})
            }
            Announcement::Cancelled(CancelReason::CaptureFailed) => {
                json!({"reason": "capture_failed", "detail": null})
            }
            Announcement::Cancelled(CancelReason::Requested) => {
                json!({"reason": "requested", "detail": null})
            }
            Announcement::Refunded { refund_id } => json!({"refund_id": refund_id}),
        }
    }
}

/// What the saga does for `trigger` on an order in `status` with `saga`, given the `answers`
/// of the calls this attempt made so far (in order).
pub fn decide(
    status: OrderStatus,
    saga: &Saga,
    trigger: Trigger,
    context: &Context,
    answers: &[Answer],
) -> Decision {
    match trigger {
        Trigger::Placed if status == OrderStatus::Placed && !saga.cancel_requested => {
            Decision::Reserve
        }
        Trigger::Placed => Decision::Skip,
        Trigger::StockReserved => authorize(status, saga, context, answers),
        Trigger::PaymentAuthorized => capture(status, saga, context, answers),
        Trigger::PaymentCaptured => fulfil(status, saga, context, answers),
        Trigger::Delivered => complete(status, saga),
        Trigger::Returned => refund(status, saga, context, answers),
        Trigger::CancellationRequested => cancel(status, saga, context, answers),
    }
}

/// The reservation step's outcome with what stock allowed: the order holds its units, or is
/// cancelled for the first line no location covers.
pub fn reserved(saga: &Saga, chosen: Result<Vec<Reservation>, OutOfStock>) -> Outcome {
    match chosen {
        Ok(reservations) => {
            let mut saga = saga.clone();
            saga.reservations.clone_from(&reservations);
            saga.reservations_held = true;
            Outcome {
                status: OrderStatus::Reserved,
                saga,
                bookings: Vec::new(),
                announcements: vec![Announcement::StockReserved {
                    reservations: reservations.clone(),
                }],
                stock: StockMove::Reserve(reservations),
            }
        }
        Err(OutOfStock { sku }) => cancelled(
            saga.clone(),
            CancelReason::OutOfStock { sku },
            Vec::new(),
            Vec::new(),
        ),
    }
}

/// Whether a forward step that moves orders on from `from` applies: the order is still there,
/// and either no cancellation was requested or this attempt has called the partner already (its
/// answer is stored, and the cancellation undoes it).
fn applies(status: OrderStatus, saga: &Saga, from: OrderStatus, answers: &[Answer]) -> bool {
    status == from && (!answers.is_empty() || !saga.cancel_requested)
}

fn unexpected(step: &str, status: OrderStatus, answers: &[Answer]) -> Decision {
    Decision::Refuse(format!(
        "the {step} step of an order at '{}' cannot follow the answers {answers:?}",
        status.as_str()
    ))
}

fn commit(outcome: Outcome) -> Decision {
    Decision::Commit(Box::new(outcome))
}

/// A forward step's outcome: the order moves to `status` with `saga`, books `bookings` and
/// announces it; its stock stays as it is.
fn advanced(
    status: OrderStatus,
    saga: Saga,
    bookings: Vec<Booking>,
    announcement: Announcement,
) -> Decision {
    commit(Outcome {
        status,
        saga,
        bookings,
        announcements: vec![announcement],
        stock: StockMove::Keep,
    })
}

fn authorize(status: OrderStatus, saga: &Saga, context: &Context, answers: &[Answer]) -> Decision {
    if !applies(status, saga, OrderStatus::Reserved, answers) {
        return Decision::Skip;
    }
    let key = context.key("authorize");
    match answers {
        [] => Decision::Call(Call::Authorize { key }),
        [Answer::Authorized { authorization_id }] => {
            let mut saga = saga.clone();
            record_authorization(&mut saga, authorization_id, key);
            let announcement = Announcement::PaymentAuthorized {
                authorization_id: authorization_id.clone(),
            };
            let booking = Booking::Authorization(key);
            advanced(OrderStatus::Authorized, saga, vec![booking], announcement)
        }
        [Answer::Declined { reason }] => commit(cancelled(
            saga.clone(),
            CancelReason::PaymentDeclined {
                detail: reason.clone(),
            },
            Vec::new(),
            Vec::new(),
        )),
        _ => unexpected("authorization", status, answers),
    }
}

fn record_authorization(saga: &mut Saga, authorization_id: &str, key: StepKey) {
    saga.authorization_id = Some(authorization_id.to_owned());
    saga.authorization_entry = Some(key.to_string());
}

fn capture(status: OrderStatus, saga: &Saga, context: &Context, answers: &[Answer]) -> Decision {
    if !applies(status, saga, OrderStatus::Authorized, answers) {
        return Decision::Skip;
    }
    let Some(authorization_id) = saga.authorization_id.clone() else {
        return Decision::Refuse("an authorized order has no authorization id".to_owned());
    };
    let void_key = context.key("void");
    match answers {
        [] => Decision::Call(Call::Capture {
            key: context.key("capture"),
            authorization_id,
        }),
        [Answer::Captured { capture_id }] => {
            let mut saga = saga.clone();
            saga.capture_id = Some(capture_id.clone());
            let announcement = Announcement::PaymentCaptured {
                capture_id: capture_id.clone(),
            };
            let booking = Booking::Capture(context.key("capture"));
            advanced(OrderStatus::Captured, saga, vec![booking], announcement)
        }
        [Answer::CaptureFailed] => Decision::Call(Call::Void {
            key: void_key,
            authorization_id,
        }),
        [Answer::CaptureFailed, Answer::Voided] => commit(cancelled(
            saga.clone(),
            CancelReason::CaptureFailed,
            vec![Booking::Void(void_key)],
            Vec::new(),
        )),
        // A cancellation voided the authorization first; it cancels the order, and this step
        // has nothing left to do.
        [Answer::AuthorizationVoided] => Decision::Skip,
        _ => unexpected("capture", status, answers),
    }
}

fn fulfil(status: OrderStatus, saga: &Saga, context: &Context, answers: &[Answer]) -> Decision {
    if !applies(status, saga, OrderStatus::Captured, answers) {
        return Decision::Skip;
    }
    match answers {
        [] => Decision::Call(Call::Ship {
            key: context.key("shipment"),
        }),
        [
            Answer::Shipment {
                shipment_id,
                tracking_number,
            },
        ] => {
            let mut saga = saga.clone();
            saga.shipment_id = Some(shipment_id.clone());
            saga.tracking_number = Some(tracking_number.clone());
            let announcement = Announcement::FulfillmentRequested {
                shipment_id: shipment_id.clone(),
                tracking_number: tracking_number.clone(),
            };
            advanced(
                OrderStatus::FulfillmentRequested,
                saga,
                Vec::new(),
                announcement,
            )
        }
        _ => unexpected("fulfillment", status, answers),
    }
}

fn complete(status: OrderStatus, saga: &Saga) -> Decision {
    if status != OrderStatus::Delivered {
        return Decision::Skip;
    }
    let completed = Announcement::Completed;
    advanced(OrderStatus::Completed, saga.clone(), Vec::new(), completed)
}

fn refund(status: OrderStatus, saga: &Saga, context: &Context, answers: &[Answer]) -> Decision {
    let (OrderStatus::Returned, Some(capture_id)) = (status, saga.capture_id.clone()) else {
        return Decision::Skip;
    };
    let key = context.key("refund");
    // A cancellation too late to stop the shipment refunded the payment already, and booked
    // it: the return completes with that refund.
    if let Some(refund_id) = saga.refund_id.clone() {
        let refunded = Announcement::Refunded { refund_id };
        return advanced(OrderStatus::Refunded, saga.clone(), Vec::new(), refunded);
    }
    match answers {
        [] => Decision::Call(Call::Refund { key, capture_id }),
        [Answer::Refunded { refund_id }] => {
            let mut saga = saga.clone();
            saga.refund_id = Some(refund_id.clone());
            let refunded = Announcement::Refunded {
                refund_id: refund_id.clone(),
            };
            advanced(
                OrderStatus::Refunded,
                saga,
                vec![Booking::Refund(key)],
                refunded,
            )
        }
        _ => unexpected("refund", status, answers),
    }
}

/// A cancellation at the client's request: undoes what the saga did at the provider, whatever
/// the outcome of a step that may have been in flight, then cancels. Too late once the carrier
/// has the order: only the request flag clears.
fn cancel(status: OrderStatus, saga: &Saga, context: &Context, answers: &[Answer]) -> Decision {
    let mut saga = saga.clone();
    saga.cancel_requested = false;
    match status {
        _ if !cancellable(status) => too_late(status, saga, context, answers),
        OrderStatus::Placed => requested(saga, Vec::new(), Vec::new()),
        OrderStatus::Reserved => cancel_reserved(saga, context, answers),
        OrderStatus::Authorized => cancel_authorized(saga, context, answers),
        OrderStatus::Captured => cancel_captured(saga, context, answers),
        _ => unexpected("cancellation", status, answers),
    }
}

/// The order cancelled at the client's request.
fn requested(saga: Saga, bookings: Vec<Booking>, before: Vec<Announcement>) -> Decision {
    commit(cancelled(saga, CancelReason::Requested, bookings, before))
}

/// Cancels a captured order by refunding its capture, once its shipment step is settled.
fn cancel_captured(mut saga: Saga, context: &Context, answers: &[Answer]) -> Decision {
    let Some(capture_id) = saga.capture_id.clone() else {
        return Decision::Refuse("a captured order has no capture id".to_owned());
    };
    let key = context.key("refund");
    match answers {
        [] if !context.shipment_settled => Decision::Wait(
            "the order's shipment step is a dead letter and may have reached the carrier: \
             retry it first"
                .to_owned(),
        ),
        [] => Decision::Call(Call::Refund { key, capture_id }),
        [Answer::Refunded { refund_id }] => {
            saga.refund_id = Some(refund_id.clone());
            requested(saga, vec![Booking::Refund(key)], Vec::new())
        }
        _ => unexpected("cancellation", OrderStatus::Captured, answers),
    }
}

/// A cancellation of an order past the point of cancelling: the request flag clears. Should
/// this attempt have refunded the capture before another step moved the order on (a retried
/// dead letter shipping it meanwhile), the refund is booked all the same: the money went back,
/// and the ledger says so; the order goes on to the customer, and `tally check` names it.
fn too_late(
    status: OrderStatus,
    mut saga: Saga,
    context: &Context,
    answers: &[Answer],
) -> Decision {
    let mut bookings = Vec::new();
    if let Some(Answer::Refunded { refund_id }) = answers.last() {
        if saga.capture_id.is_none() {
            return unexpected("cancellation", status, answers);
        }
        saga.refund_id = Some(refund_id.clone());
        bookings.push(Booking::Refund(context.key("refund")));
    }
    commit(Outcome {
        status,
        saga,
        bookings,
        announcements: Vec::new(),
        stock: StockMove::Keep,
    })
}

/// Cancels a reserved order. Its authorization step may have reached the provider (an answer
/// lost, a step stopped by the cancellation request after an attempt, a process killed): the
/// provider is asked again under that step's key, and whatever it authorized is voided.
fn cancel_reserved(mut saga: Saga, context: &Context, answers: &[Answer]) -> Decision {
    let Some(asked) = context.asked else {
        return Decision::Refuse("a reserved order has no stock_reserved event".to_owned());
    };
    let authorize_key = context.key_of(asked, "authorize");
    let void_key = context.key("void");
    match answers {
        [] => Decision::Call(Call::Authorize { key: authorize_key }),
        [Answer::Declined { .. }] => requested(saga, Vec::new(), Vec::new()),
        [Answer::Authorized { authorization_id }] => Decision::Call(Call::Void {
            key: void_key,
            authorization_id: authorization_id.clone(),
        }),
        [Answer::Authorized { authorization_id }, Answer::Voided] => {
            record_authorization(&mut saga, authorization_id, authorize_key);
            let found = Announcement::PaymentAuthorized {
                authorization_id: authorization_id.clone(),
            };
            commit(cancelled(
                saga,
                CancelReason::Requested,
                vec![
                    Booking::Authorization(authorize_key),
                    Booking::Void(void_key),
                ],
                vec![found],
            ))
        }
        _ => unexpected("cancellation", OrderStatus::Reserved, answers),
    }
}

/// Cancels an authorized order by voiding its authorization. A void refused because the
/// authorization was captured means the capture step reached the provider: the capture is
/// asked for again under that step's key, and refunded.
fn cancel_authorized(mut saga: Saga, context: &Context, answers: &[Answer]) -> Decision {
    let Some(authorization_id) = saga.authorization_id.clone() else {
        return Decision::Refuse("an authorized order has no authorization id".to_owned());
    };
    let void_key = context.key("void");
    let refund_key = context.key("refund");
    let capture_key = context.asked.map(|asked| context.key_of(asked, "capture"));
    match (answers, capture_key) {
        ([], _) => Decision::Call(Call::Void {
            key: void_key,
            authorization_id,
        }),
        ([Answer::Voided], _) => requested(saga, vec![Booking::Void(void_key)], Vec::new()),
        ([Answer::AuthorizationCaptured], Some(key)) => Decision::Call(Call::Capture {
            key,
            authorization_id,
        }),
        (
            [
                Answer::AuthorizationCaptured,
                Answer::Captured { capture_id },
            ],
            Some(_),
        ) => Decision::Call(Call::Refund {
            key: refund_key,
            capture_id: capture_id.clone(),
        }),
        (
            [
                Answer::AuthorizationCaptured,
                Answer::Captured { capture_id },
                Answer::Refunded { refund_id },
            ],
            Some(capture_key),
        ) => {
            saga.capture_id = Some(capture_id.clone());
            saga.refund_id = Some(refund_id.clone());
            let found = Announcement::PaymentCaptured {
                capture_id: capture_id.clone(),
            };
            commit(cancelled(
                saga,
                CancelReason::Requested,
                vec![Booking::Capture(capture_key), Booking::Refund(refund_key)],
                vec![found],
            ))
        }
        ([Answer::AuthorizationCaptured, ..], None) => Decision::Refuse(
            "an authorized order has no payment_authorized event to find its capture by".to_owned(),
        ),
        _ => unexpected("cancellation", OrderStatus::Authorized, answers),
    }
}

/// The order cancelled for `reason`: its stock given back, `bookings` booked, and
/// `before` announced ahead of the cancellation (what the step found had happened).
fn cancelled(
    mut saga: Saga,
    reason: CancelReason,
    bookings: Vec<Booking>,
    mut before: Vec<Announcement>,
) -> Outcome {
    saga.cancel_reason = Some(reason.code());
    let stock = if saga.reservations_held {
        saga.reservations_held = false;
        StockMove::Release(saga.reservations.clone())
    } else {
        StockMove::Keep
    };
    before.push(Announcement::Cancelled(reason));
    Outcome {
        status: OrderStatus::Cancelled,
        saga,
        bookings,
        announcements: before,
        stock,
    }
}

#[cfg(test)]
mod tests;
