//! Every step and compensation of the saga, one decision at a time.

use uuid::Uuid;

use super::*;
use crate::ids::EventId;

const GROUP: &str = "checkout";

fn event(n: u128) -> EventId {
    EventId::from_uuid(Uuid::from_u128(n))
}

/// The event being applied is event 1; a cancellation's asked event is event 2.
fn context() -> Context {
    Context {
        group: GROUP,
        event: event(1),
        asked: None,
        shipment_settled: true,
    }
}

fn cancelling() -> Context {
    Context {
        asked: Some(event(2)),
        ..context()
    }
}

fn key(n: u128, step: &'static str) -> StepKey {
    StepKey {
        group: GROUP,
        event: event(n),
        step,
    }
}

fn held() -> Vec<Reservation> {
    vec![Reservation {
        sku: "TEE".into(),
        location: "east".into(),
        quantity: 2,
    }]
}

/// A saga holding stock, with the partner references of the steps up to `status`.
fn saga_at(status: OrderStatus) -> Saga {
    use OrderStatus as S;
    let past = |steps: &[OrderStatus]| steps.contains(&status);
    Saga {
        reservations: held(),
        reservations_held: past(&[S::Reserved, S::Authorized, S::Captured]),
        authorization_id: past(&[S::Authorized, S::Captured]).then(|| "auth_1".into()),
        authorization_entry: past(&[S::Authorized, S::Captured])
            .then(|| key(9, "authorize").to_string()),
        capture_id: past(&[S::Captured]).then(|| "cap_1".into()),
        ..Saga::default()
    }
}

/// The decision for `trigger` on an order at `status` with `saga`, as a function of the
/// answers so far.
fn at(
    status: OrderStatus,
    saga: &Saga,
    trigger: Trigger,
    context: Context,
) -> impl Fn(&[Answer]) -> Decision + '_ {
    move |answers| decide(status, saga, trigger, &context, answers)
}

fn requested(mut saga: Saga) -> Saga {
    saga.cancel_requested = true;
    saga
}

fn outcome(decision: Decision) -> Outcome {
    match decision {
        Decision::Commit(outcome) => *outcome,
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn authorized(id: &str) -> Answer {
    Answer::Authorized {
        authorization_id: id.into(),
    }
}

fn captured(id: &str) -> Answer {
    Answer::Captured {
        capture_id: id.into(),
    }
}

fn refunded(id: &str) -> Answer {
    Answer::Refunded {
        refund_id: id.into(),
    }
}

fn types(outcome: &Outcome) -> Vec<EventType> {
    outcome
        .announcements
        .iter()
        .map(Announcement::event_type)
        .collect()
}

#[test]
fn a_placed_order_reserves_unless_a_cancellation_was_requested() {
    let saga = Saga::default();
    let placed = |saga: &Saga, status| decide(status, saga, Trigger::Placed, &context(), &[]);
    assert_eq!(placed(&saga, OrderStatus::Placed), Decision::Reserve);
    assert_eq!(
        placed(&requested(saga.clone()), OrderStatus::Placed),
        Decision::Skip
    );
    assert_eq!(placed(&saga, OrderStatus::Cancelled), Decision::Skip);
}

#[test]
fn reserving_holds_the_chosen_stock_or_cancels_for_the_missing_sku() {
    let done = reserved(&Saga::default(), Ok(held()));
    assert_eq!(done.status, OrderStatus::Reserved);
    assert!(done.saga.reservations_held);
    assert_eq!(done.saga.reservations, held());
    assert_eq!(done.stock, StockMove::Reserve(held()));
    assert_eq!(types(&done), [EventType::OrderStockReserved]);

    let out = reserved(&Saga::default(), Err(OutOfStock { sku: "TEE".into() }));
    assert_eq!(out.status, OrderStatus::Cancelled);
    assert_eq!(out.saga.cancel_reason.as_deref(), Some("out_of_stock:TEE"));
    assert_eq!(out.stock, StockMove::Keep, "nothing was held");
    assert_eq!(
        out.announcements[0].data(),
        json!({"reason": "out_of_stock", "sku": "TEE"})
    );
}

#[test]
fn authorizing_records_the_authorization_and_books_its_pending_entry() {
    let saga = saga_at(OrderStatus::Reserved);
    let step = at(
        OrderStatus::Reserved,
        &saga,
        Trigger::StockReserved,
        context(),
    );
    assert_eq!(
        step(&[]),
        Decision::Call(Call::Authorize {
            key: key(1, "authorize")
        })
    );
    let done = outcome(step(&[authorized("auth_7")]));
    assert_eq!(done.status, OrderStatus::Authorized);
    assert_eq!(done.saga.authorization_id.as_deref(), Some("auth_7"));
    let entry = key(1, "authorize");
    assert_eq!(done.saga.authorization_entry, Some(entry.to_string()));
    assert_eq!(done.bookings, [Booking::Authorization(entry)]);
    assert_eq!(types(&done), [EventType::OrderPaymentAuthorized]);
    assert_eq!(done.stock, StockMove::Keep);
}

#[test]
fn a_declined_card_cancels_and_releases_the_stock() {
    let saga = saga_at(OrderStatus::Reserved);
    let declined = Answer::Declined {
        reason: "card_declined".into(),
    };
    let done = outcome(decide(
        OrderStatus::Reserved,
        &saga,
        Trigger::StockReserved,
        &context(),
        &[declined],
    ));
    assert_eq!(done.status, OrderStatus::Cancelled);
    assert_eq!(done.saga.cancel_reason.as_deref(), Some("payment_declined"));
    assert!(!done.saga.reservations_held);
    assert_eq!(done.stock, StockMove::Release(held()));
    assert!(done.bookings.is_empty());
    assert_eq!(
        done.announcements[0].data(),
        json!({"reason": "payment_declined", "detail": "card_declined"})
    );
}

/// The race of a cancellation and an authorization in flight: a step that has not called yet
/// stops for the request, one that has called stores what the provider did.
#[test]
fn a_cancellation_request_stops_a_step_only_before_its_call() {
    let saga = requested(saga_at(OrderStatus::Reserved));
    let step = at(
        OrderStatus::Reserved,
        &saga,
        Trigger::StockReserved,
        context(),
    );
    assert_eq!(step(&[]), Decision::Skip);
    let done = outcome(step(&[authorized("auth_7")]));
    assert_eq!(done.status, OrderStatus::Authorized);
    assert!(done.saga.cancel_requested, "the cancellation still follows");

    let saga = requested(saga_at(OrderStatus::Authorized));
    let capture = at(
        OrderStatus::Authorized,
        &saga,
        Trigger::PaymentAuthorized,
        context(),
    );
    assert_eq!(capture(&[]), Decision::Skip);
    assert_eq!(
        outcome(capture(&[captured("cap_7")])).status,
        OrderStatus::Captured
    );
}

#[test]
fn a_step_whose_order_moved_on_does_nothing_even_after_its_call() {
    let saga = saga_at(OrderStatus::Authorized);
    for (trigger, answers) in [
        (Trigger::StockReserved, vec![authorized("auth_7")]),
        (Trigger::PaymentAuthorized, vec![captured("cap_7")]),
        (
            Trigger::PaymentCaptured,
            vec![Answer::Shipment {
                shipment_id: "shp_1".into(),
                tracking_number: "TRK1".into(),
            }],
        ),
        (Trigger::Delivered, vec![]),
        (Trigger::Returned, vec![]),
    ] {
        let decision = decide(OrderStatus::Cancelled, &saga, trigger, &context(), &answers);
        assert_eq!(decision, Decision::Skip, "{trigger:?}");
    }
}

#[test]
fn capturing_posts_the_authorization_and_books_the_sale() {
    let saga = saga_at(OrderStatus::Authorized);
    let step = at(
        OrderStatus::Authorized,
        &saga,
        Trigger::PaymentAuthorized,
        context(),
    );
    assert_eq!(
        step(&[]),
        Decision::Call(Call::Capture {
            key: key(1, "capture"),
            authorization_id: "auth_1".into()
        })
    );
    let done = outcome(step(&[captured("cap_7")]));
    assert_eq!(done.status, OrderStatus::Captured);
    assert_eq!(done.saga.capture_id.as_deref(), Some("cap_7"));
    assert_eq!(done.bookings, [Booking::Capture(key(1, "capture"))]);
    assert!(
        done.saga.reservations_held,
        "stock stays held until shipped"
    );
}

#[test]
fn a_failed_capture_voids_the_authorization_then_cancels() {
    let saga = saga_at(OrderStatus::Authorized);
    let step = at(
        OrderStatus::Authorized,
        &saga,
        Trigger::PaymentAuthorized,
        context(),
    );
    assert_eq!(
        step(&[Answer::CaptureFailed]),
        Decision::Call(Call::Void {
            key: key(1, "void"),
            authorization_id: "auth_1".into()
        })
    );
    let done = outcome(step(&[Answer::CaptureFailed, Answer::Voided]));
    assert_eq!(done.status, OrderStatus::Cancelled);
    assert_eq!(done.saga.cancel_reason.as_deref(), Some("capture_failed"));
    assert_eq!(done.bookings, [Booking::Void(key(1, "void"))]);
    assert_eq!(done.stock, StockMove::Release(held()));
    // A capture refused because a cancellation voided first leaves the order to it.
    assert_eq!(step(&[Answer::AuthorizationVoided]), Decision::Skip);
    assert!(matches!(
        step(&[Answer::CaptureFailed, Answer::AuthorizationCaptured]),
        Decision::Refuse(_)
    ));
}

#[test]
fn fulfilment_completion_and_refund_follow_their_answers() {
    let saga = saga_at(OrderStatus::Captured);
    let ship = at(
        OrderStatus::Captured,
        &saga,
        Trigger::PaymentCaptured,
        context(),
    );
    assert_eq!(
        ship(&[]),
        Decision::Call(Call::Ship {
            key: key(1, "shipment")
        })
    );
    let shipment = Answer::Shipment {
        shipment_id: "shp_1".into(),
        tracking_number: "TRK1".into(),
    };
    let done = outcome(ship(&[shipment]));
    assert_eq!(done.status, OrderStatus::FulfillmentRequested);
    assert_eq!(done.saga.tracking_number.as_deref(), Some("TRK1"));

    let complete = |status| decide(status, &saga, Trigger::Delivered, &context(), &[]);
    assert_eq!(
        outcome(complete(OrderStatus::Delivered)).status,
        OrderStatus::Completed
    );
    assert_eq!(complete(OrderStatus::Shipped), Decision::Skip);

    let refund = at(OrderStatus::Returned, &saga, Trigger::Returned, context());
    assert_eq!(
        refund(&[]),
        Decision::Call(Call::Refund {
            key: key(1, "refund"),
            capture_id: "cap_1".into()
        })
    );
    let done = outcome(refund(&[refunded("re_1")]));
    assert_eq!(done.status, OrderStatus::Refunded);
    assert_eq!(done.bookings, [Booking::Refund(key(1, "refund"))]);
}

#[test]
fn cancelling_a_placed_order_clears_the_request_and_cancels() {
    let saga = requested(Saga::default());
    let done = outcome(decide(
        OrderStatus::Placed,
        &saga,
        Trigger::CancellationRequested,
        &context(),
        &[],
    ));
    assert_eq!(done.status, OrderStatus::Cancelled);
    assert!(!done.saga.cancel_requested);
    assert_eq!(done.saga.cancel_reason.as_deref(), Some("requested"));
    assert_eq!(done.stock, StockMove::Keep);
}

/// The fix of the race: a cancellation of a reserved order asks the provider again under the
/// authorization step's key, and voids what it finds.
#[test]
fn cancelling_a_reserved_order_finds_its_authorization_and_voids_it() {
    let saga = requested(saga_at(OrderStatus::Reserved));
    let step = at(
        OrderStatus::Reserved,
        &saga,
        Trigger::CancellationRequested,
        cancelling(),
    );
    assert_eq!(
        step(&[]),
        Decision::Call(Call::Authorize {
            key: key(2, "authorize")
        })
    );
    assert_eq!(
        step(&[authorized("auth_7")]),
        Decision::Call(Call::Void {
            key: key(1, "void"),
            authorization_id: "auth_7".into()
        })
    );
    let done = outcome(step(&[authorized("auth_7"), Answer::Voided]));
    assert_eq!(done.status, OrderStatus::Cancelled);
    assert_eq!(done.saga.authorization_id.as_deref(), Some("auth_7"));
    assert_eq!(
        done.saga.authorization_entry,
        Some(key(2, "authorize").to_string())
    );
    assert_eq!(
        done.bookings,
        [
            Booking::Authorization(key(2, "authorize")),
            Booking::Void(key(1, "void"))
        ]
    );
    assert_eq!(
        types(&done),
        [EventType::OrderPaymentAuthorized, EventType::OrderCancelled]
    );
    assert_eq!(done.stock, StockMove::Release(held()));
    assert!(!done.saga.cancel_requested);

    let declined = Answer::Declined {
        reason: "card_declined".into(),
    };
    let done = outcome(step(&[declined]));
    assert_eq!(done.status, OrderStatus::Cancelled);
    assert!(done.bookings.is_empty() && done.saga.authorization_id.is_none());

    let blind = decide(
        OrderStatus::Reserved,
        &saga,
        Trigger::CancellationRequested,
        &context(),
        &[],
    );
    assert!(matches!(blind, Decision::Refuse(_)), "{blind:?}");
}

#[test]
fn cancelling_an_authorized_order_voids_it() {
    let saga = requested(saga_at(OrderStatus::Authorized));
    let step = at(
        OrderStatus::Authorized,
        &saga,
        Trigger::CancellationRequested,
        cancelling(),
    );
    assert_eq!(
        step(&[]),
        Decision::Call(Call::Void {
            key: key(1, "void"),
            authorization_id: "auth_1".into()
        })
    );
    let done = outcome(step(&[Answer::Voided]));
    assert_eq!(done.status, OrderStatus::Cancelled);
    assert_eq!(done.bookings, [Booking::Void(key(1, "void"))]);
    assert_eq!(types(&done), [EventType::OrderCancelled]);
}

/// A void refused because the capture step reached the provider: the capture is found under
/// that step's key and refunded, and the ledger books both.
#[test]
fn cancelling_an_order_whose_capture_raced_it_refunds_the_capture() {
    let saga = requested(saga_at(OrderStatus::Authorized));
    let step = at(
        OrderStatus::Authorized,
        &saga,
        Trigger::CancellationRequested,
        cancelling(),
    );
    let raced = [Answer::AuthorizationCaptured];
    assert_eq!(
        step(&raced),
        Decision::Call(Call::Capture {
            key: key(2, "capture"),
            authorization_id: "auth_1".into()
        })
    );
    let found = [Answer::AuthorizationCaptured, captured("cap_7")];
    assert_eq!(
        step(&found),
        Decision::Call(Call::Refund {
            key: key(1, "refund"),
            capture_id: "cap_7".into()
        })
    );
    let done = outcome(step(&[
        Answer::AuthorizationCaptured,
        captured("cap_7"),
        refunded("re_7"),
    ]));
    assert_eq!(done.status, OrderStatus::Cancelled);
    assert_eq!(done.saga.capture_id.as_deref(), Some("cap_7"));
    assert_eq!(done.saga.refund_id.as_deref(), Some("re_7"));
    assert_eq!(
        done.bookings,
        [
            Booking::Capture(key(2, "capture")),
            Booking::Refund(key(1, "refund"))
        ]
    );
    assert_eq!(
        types(&done),
        [EventType::OrderPaymentCaptured, EventType::OrderCancelled]
    );
    let contradiction = [Answer::AuthorizationCaptured, Answer::CaptureFailed];
    assert!(matches!(step(&contradiction), Decision::Refuse(_)));
}

#[test]
fn cancelling_a_captured_order_refunds_it() {
    let saga = requested(saga_at(OrderStatus::Captured));
    let step = at(
        OrderStatus::Captured,
        &saga,
        Trigger::CancellationRequested,
        context(),
    );
    assert_eq!(
        step(&[]),
        Decision::Call(Call::Refund {
            key: key(1, "refund"),
            capture_id: "cap_1".into()
        })
    );
    let done = outcome(step(&[refunded("re_1")]));
    assert_eq!(done.status, OrderStatus::Cancelled);
    assert_eq!(done.bookings, [Booking::Refund(key(1, "refund"))]);
    assert_eq!(done.stock, StockMove::Release(held()));
}

#[test]
fn a_cancellation_too_late_only_clears_the_request() {
    for status in [
        OrderStatus::FulfillmentRequested,
        OrderStatus::Shipped,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
    ] {
        let saga = requested(saga_at(OrderStatus::Captured));
        let done = outcome(decide(
            status,
            &saga,
            Trigger::CancellationRequested,
            &context(),
            &[],
        ));
        assert_eq!(done.status, status);
        assert!(!done.saga.cancel_requested);
        assert!(done.announcements.is_empty() && done.bookings.is_empty());
        assert_eq!(done.stock, StockMove::Keep);
    }
}

#[test]
fn every_trigger_names_its_event_and_back() {
    for trigger in Trigger::ALL {
        assert_eq!(Trigger::of(trigger.event_type()), Some(trigger));
    }
    assert_eq!(Trigger::of(EventType::OrderShipped), None);
    assert_eq!(
        asking_event(OrderStatus::Reserved),
        Some(EventType::OrderStockReserved)
    );
    assert_eq!(
        asking_event(OrderStatus::Authorized),
        Some(EventType::OrderPaymentAuthorized)
    );
    assert_eq!(asking_event(OrderStatus::Captured), None);
}

/// A captured order whose shipment step is a dead letter may be on its way to the customer:
/// its cancellation waits for that letter rather than refund it.
#[test]
fn cancelling_a_captured_order_waits_for_a_shipment_step_of_unknown_outcome() {
    let saga = requested(saga_at(OrderStatus::Captured));
    let unsettled = Context {
        shipment_settled: false,
        ..context()
    };
    let decision = decide(
        OrderStatus::Captured,
        &saga,
        Trigger::CancellationRequested,
        &unsettled,
        &[],
    );
    assert!(matches!(decision, Decision::Wait(_)), "{decision:?}");
}

/// A cancellation that refunded before another step shipped the order books its refund all
/// the same, and a later return completes with that refund instead of refunding twice.
#[test]
fn a_refund_made_too_late_is_booked_and_not_repeated_by_a_return() {
    let saga = requested(saga_at(OrderStatus::Captured));
    let done = outcome(decide(
        OrderStatus::FulfillmentRequested,
        &saga,
        Trigger::CancellationRequested,
        &context(),
        &[refunded("re_1")],
    ));
    assert_eq!(done.status, OrderStatus::FulfillmentRequested);
    assert_eq!(done.saga.refund_id.as_deref(), Some("re_1"));
    assert_eq!(done.bookings, [Booking::Refund(key(1, "refund"))]);

    let returned = outcome(decide(
        OrderStatus::Returned,
        &done.saga,
        Trigger::Returned,
        &context(),
        &[],
    ));
    assert_eq!(returned.status, OrderStatus::Refunded);
    assert!(returned.bookings.is_empty(), "the refund is booked once");
}
