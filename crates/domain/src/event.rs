//! Events a decision emits. The store wraps each draft into a CloudEvents 1.0 envelope (id, time,
//! tenant, sequence, correlation) and writes it to the outbox in the decision's transaction.

use serde::Serialize;

/// Every event type Tally publishes. The string form is the CloudEvents `type`; a new version
/// of a payload is a new variant, never an edit of an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    ProductCreated,
    InventoryAdjusted,
    OrderPlaced,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::ProductCreated,
        EventType::InventoryAdjusted,
        EventType::OrderPlaced,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::ProductCreated => "tally.product.created.v1",
            EventType::InventoryAdjusted => "tally.inventory.adjusted.v1",
            EventType::OrderPlaced => "tally.order.placed.v1",
        }
    }

    /// The category an event belongs to; on Kafka, one topic per category.
    pub const fn category(self) -> &'static str {
        match self {
            EventType::ProductCreated => "catalog",
            EventType::InventoryAdjusted => "inventory",
            EventType::OrderPlaced => "order",
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
