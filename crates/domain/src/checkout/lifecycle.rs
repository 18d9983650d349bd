//! The order lifecycle as one table: which status each order event leaves its order in, and
//! which moves between statuses any writer makes. The saga's steps, the carrier's webhooks
//! ([`crate::order::ShipmentUpdate`]) and the cancel and return commands each make a move of
//! this table; the checker (`tally check`) verifies stored orders against it.

use super::{cancellable, returnable};
use crate::event::EventType;
use crate::order::OrderStatus;

/// The status an event of `event` leaves its order in; `None` for events that change no
/// status (a cancellation request only flags the saga) or are not about an order.
pub const fn status_after(event: EventType) -> Option<OrderStatus> {
    match event {
        EventType::OrderPlaced => Some(OrderStatus::Placed),
        EventType::OrderStockReserved => Some(OrderStatus::Reserved),
        EventType::OrderPaymentAuthorized => Some(OrderStatus::Authorized),
        EventType::OrderPaymentCaptured => Some(OrderStatus::Captured),
        EventType::OrderFulfillmentRequested => Some(OrderStatus::FulfillmentRequested),
        EventType::OrderShipped => Some(OrderStatus::Shipped),
        EventType::OrderDelivered => Some(OrderStatus::Delivered),
        EventType::OrderCompleted => Some(OrderStatus::Completed),
        EventType::OrderCancelled => Some(OrderStatus::Cancelled),
        EventType::OrderReturned => Some(OrderStatus::Returned),
        EventType::OrderRefunded => Some(OrderStatus::Refunded),
        EventType::OrderCancellationRequested
        | EventType::ProductCreated
        | EventType::ProductUpdated
        | EventType::InventoryAdjusted => None,
    }
}

/// Whether some writer moves an order from `from` to `to`: the saga's steps one after the
/// other, the carrier's webhooks, cancellation (by the saga, from any cancellable status), and
/// return (by the command, from any returnable status). Placement starts an order.
pub const fn may_move(from: OrderStatus, to: OrderStatus) -> bool {
    match to {
        OrderStatus::Placed => false,
        OrderStatus::Reserved => matches!(from, OrderStatus::Placed),
        OrderStatus::Authorized => matches!(from, OrderStatus::Reserved),
        OrderStatus::Captured => matches!(from, OrderStatus::Authorized),
        OrderStatus::FulfillmentRequested => matches!(from, OrderStatus::Captured),
        OrderStatus::Shipped => matches!(from, OrderStatus::FulfillmentRequested),
        OrderStatus::Delivered => matches!(from, OrderStatus::Shipped),
        OrderStatus::Completed => matches!(from, OrderStatus::Delivered),
        OrderStatus::Cancelled => cancellable(from),
        OrderStatus::Returned => returnable(from),
        OrderStatus::Refunded => matches!(from, OrderStatus::Returned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::ShipmentUpdate;

    /// The carrier's updates are moves of the table, and the forward path ranks rise along it.
    #[test]
    fn the_carriers_updates_and_the_ranks_follow_the_table() {
        for update in [ShipmentUpdate::Shipped, ShipmentUpdate::Delivered] {
            let (from, to, event) = update.transition();
            assert!(may_move(from, to), "{update:?}");
            assert_eq!(status_after(event), Some(to));
        }
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                if may_move(from, to)
                    && let (Some(a), Some(b)) = (from.lifecycle_rank(), to.lifecycle_rank())
                {
                    assert!(a < b, "{from:?} → {to:?} goes back on the path");
                }
            }
        }
    }
}
