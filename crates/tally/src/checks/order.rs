//! One order's stored status and saga state against its timeline.

use super::*;
use tally_domain::checkout::lifecycle::{self, may_move};

/// What an order event does to its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    To(OrderStatus),
    /// A client asked to cancel: only a flag changes; the saga cancels at its next step.
    CancellationRequested,
    NotAboutAnOrder,
}

/// The move an event makes, by the domain's order lifecycle.
fn move_of(event: EventType) -> Move {
    match (event, lifecycle::status_after(event)) {
        (_, Some(status)) => Move::To(status),
        (EventType::OrderCancellationRequested, None) => Move::CancellationRequested,
        (_, None) => Move::NotAboutAnOrder,
    }
}

/// The violations of one order's stored status and saga state against its timeline (its
/// event types, oldest first): the first event is its placement; every event follows from the
/// status before it; no event happens twice; the last status event leaves the stored status;
/// and the saga's partner references and reservation hold fit what the events say.
pub fn order_violations(order: &OrderRecord, events: &[&str]) -> Vec<String> {
    let mut violations = Vec::new();
    let stored = OrderStatus::parse(&order.status).ok();
    if stored.is_none() {
        violations.push(format!("status '{}' is not an order status", order.status));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for event in events {
        *counts.entry(event).or_default() += 1;
    }
    for (event, count) in counts.iter().filter(|(_, count)| **count > 1) {
        violations.push(format!("{event} happened {count} times, not once"));
    }
    match events.first() {
        None => violations.push("has no events, not even its placement".to_owned()),
        Some(&first) if first != EventType::OrderPlaced.as_str() => violations.push(format!(
            "its first event is {first}, not {}",
            EventType::OrderPlaced.as_str()
        )),
        Some(_) => {}
    }
    let walked = walk(events, &mut violations);
    if let (Some(stored), Some(walked)) = (stored, walked)
        && stored != walked
    {
        violations.push(format!(
            "status is '{}' but its timeline leaves it '{}'",
            stored.as_str(),
            walked.as_str()
        ));
    }
    if let Some(stored) = stored {
        saga_violations(order, stored, events, &mut violations);
    }
    violations
}

/// Follows the first occurrence of each event (repeats are reported by the caller) and
/// returns the status the timeline leaves the order in.
fn walk(events: &[&str], violations: &mut Vec<String>) -> Option<OrderStatus> {
    let mut status: Option<OrderStatus> = None;
    for (index, &raw) in events.iter().enumerate() {
        if events[..index].contains(&raw) {
            continue;
        }
        let Some(event) = EventType::parse(raw) else {
            violations.push(format!("event {raw} is of no known type"));
            continue;
        };
        let at = status.map_or("before placement", OrderStatus::as_str);
        match (move_of(event), status) {
            (Move::NotAboutAnOrder, _) => {
                violations.push(format!("event {raw} is not about an order"));
            }
            (Move::CancellationRequested, Some(from)) if cancellable(from) => {}
            (Move::CancellationRequested, _) => {
                violations.push(format!("cancellation was requested at '{at}'"));
            }
            (Move::To(to), Some(from)) if !may_move(from, to) => {
                violations.push(format!(
                    "{raw} follows '{at}', from which no step moves an order to '{}'",
                    to.as_str()
                ));
                status = Some(to);
            }
            (Move::To(to), _) => status = Some(to),
        }
    }
    status
}

/// The saga records a partner reference exactly when the timeline has the event of its step
/// (a refund also when a captured order was cancelled), a cancel reason exactly when the order
/// was cancelled, and holds reservations exactly from reserving stock to handing the goods to
/// the carrier.
fn saga_violations(
    order: &OrderRecord,
    status: OrderStatus,
    events: &[&str],
    violations: &mut Vec<String>,
) {
    let has = |event: EventType| events.contains(&event.as_str());
    let saga = &order.saga;
    let cancelled_after_capture =
        status == OrderStatus::Cancelled && has(EventType::OrderPaymentCaptured);
    let refunded = has(EventType::OrderRefunded) || cancelled_after_capture;
    let holding = matches!(
        status,
        OrderStatus::Reserved
            | OrderStatus::Authorized
            | OrderStatus::Captured
            | OrderStatus::FulfillmentRequested
    );
    // (field, whether the saga records it, whether its step happened, the step).
    let fields = [
        (
            "authorization_id",
            saga.authorization_id.is_some(),
            has(EventType::OrderPaymentAuthorized),
            "the payment was authorized",
        ),
        (
            "capture_id",
            saga.capture_id.is_some(),
            has(EventType::OrderPaymentCaptured),
            "the payment was captured",
        ),
        (
            "shipment_id",
            saga.shipment_id.is_some(),
            has(EventType::OrderFulfillmentRequested),
            "fulfillment was requested",
        ),
        (
            "refund_id",
            saga.refund_id.is_some(),
            refunded,
            "the payment was refunded",
        ),
        (
            "cancel_reason",
            saga.cancel_reason.is_some(),
            has(EventType::OrderCancelled),
            "the order was cancelled",
        ),
    ];
    for (field, recorded, happened, step) in fields {
        if recorded && !happened {
            violations.push(format!("saga {field} is set, but nothing says {step}"));
        } else if happened && !recorded {
            violations.push(format!("saga {field} is unset, but {step}"));
        }
    }
    if saga.reservations_held != holding {
        let (is, holds) = if holding {
            ("unset", "holds")
        } else {
            ("set", "holds no")
        };
        violations.push(format!(
            "saga reservations_held is {is}, but status '{}' {holds} stock",
            status.as_str()
        ));
    }
}
