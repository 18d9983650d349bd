//! Events a decision emits. The store wraps each draft into a CloudEvents 1.0 envelope (id, time,
//! tenant, sequence, correlation) and writes it to the outbox in the decision's transaction.

use serde::Serialize;

/// Every event type Tally publishes. The string form is the CloudEvents `type`; a new version
/// of a payload is a new variant, never an edit of an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    ProductCreated,
    ProductUpdated,
    InventoryAdjusted,
    OrderPlaced,
    OrderStockReserved,
    OrderPaymentAuthorized,
    OrderPaymentCaptured,
    OrderFulfillmentRequested,
    OrderShipped,
    OrderDelivered,
    OrderCompleted,
    OrderCancelled,
    OrderReturned,
    OrderRefunded,
    /// A client asked to cancel; the saga cancels at its next step, undoing what it did.
    OrderCancellationRequested,
}

impl EventType {
    pub const ALL: [EventType; 15] = [
        EventType::ProductCreated,
        EventType::ProductUpdated,
        EventType::InventoryAdjusted,
        EventType::OrderPlaced,
        EventType::OrderStockReserved,
        EventType::OrderPaymentAuthorized,
        EventType::OrderPaymentCaptured,
        EventType::OrderFulfillmentRequested,
        EventType::OrderShipped,
        EventType::OrderDelivered,
        EventType::OrderCompleted,
        EventType::OrderCancelled,
        EventType::OrderReturned,
        EventType::OrderRefunded,
        EventType::OrderCancellationRequested,
    ];

    /// The message a customer with an address is sent for an event of this type, if any: the
    /// notifications consumer sends it, the checker verifies it was sent.
    pub const fn customer_template(self) -> Option<&'static str> {
        match self {
            EventType::OrderPaymentCaptured => Some("order_confirmed"),
            EventType::OrderShipped => Some("order_shipped"),
            EventType::OrderDelivered => Some("order_delivered"),
            EventType::OrderCancelled => Some("order_cancelled"),
            EventType::OrderRefunded => Some("order_refunded"),
            EventType::ProductCreated
            | EventType::ProductUpdated
            | EventType::InventoryAdjusted
            | EventType::OrderPlaced
            | EventType::OrderStockReserved
            | EventType::OrderPaymentAuthorized
            | EventType::OrderFulfillmentRequested
            | EventType::OrderCompleted
            | EventType::OrderReturned
            | EventType::OrderCancellationRequested => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::ProductCreated => "tally.product.created.v1",
            EventType::ProductUpdated => "tally.product.updated.v1",
            EventType::InventoryAdjusted => "tally.inventory.adjusted.v1",
            EventType::OrderPlaced => "tally.order.placed.v1",
            EventType::OrderStockReserved => "tally.order.stock_reserved.v1",
            EventType::OrderPaymentAuthorized => "tally.order.payment_authorized.v1",
            EventType::OrderPaymentCaptured => "tally.order.payment_captured.v1",
            EventType::OrderFulfillmentRequested => "tally.order.fulfillment_requested.v1",
            EventType::OrderShipped => "tally.order.shipped.v1",
            EventType::OrderDelivered => "tally.order.delivered.v1",
            EventType::OrderCompleted => "tally.order.completed.v1",
            EventType::OrderCancelled => "tally.order.cancelled.v1",
            EventType::OrderReturned => "tally.order.returned.v1",
            EventType::OrderRefunded => "tally.order.refunded.v1",
            EventType::OrderCancellationRequested => "tally.order.cancellation_requested.v1",
        }
    }

    /// The category an event belongs to; on Kafka, one topic per category.
    pub const fn category(self) -> &'static str {
        match self {
            EventType::ProductCreated | EventType::ProductUpdated => "catalog",
            EventType::InventoryAdjusted => "inventory",
            EventType::OrderPlaced
            | EventType::OrderStockReserved
            | EventType::OrderPaymentAuthorized
            | EventType::OrderPaymentCaptured
            | EventType::OrderFulfillmentRequested
            | EventType::OrderShipped
            | EventType::OrderDelivered
            | EventType::OrderCompleted
            | EventType::OrderCancelled
            | EventType::OrderReturned
            | EventType::OrderRefunded
            | EventType::OrderCancellationRequested => "order",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// An event before the store gives it an id, a time and a log position.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    pub event_type: EventType,
    /// CloudEvents `subject`: the id of the entity the event is about.
    pub subject: String,
    /// Events with the same partition key are seen by every consumer in commit order: the order
    /// id for order events, the SKU for inventory events, the product id for catalog events.
    pub partition_key: String,
    pub data: serde_json::Value,
}

impl EventDraft {
    pub fn new(
        event_type: EventType,
        subject: String,
        partition_key: String,
        data: &impl Serialize,
    ) -> Self {
        // Serializing plain domain structs into a `Value` cannot fail: they hold no maps with
        // non-string keys and no types with failing `Serialize` impls.
        let data = serde_json::to_value(data).unwrap_or_else(|error| {
            panic!("event payload of {event_type:?} must serialize: {error}")
        });
        Self {
            event_type,
            subject,
            partition_key,
            data,
        }
    }
}
